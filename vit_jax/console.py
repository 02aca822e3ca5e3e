"""What the command-line tools print: the run's own lines, library logging only on request.

    from vit_jax import console
    console.setup(verbose=False)   # before TensorFlow or JAX is imported (their C++ logging reads the environment)

Quiet (the default of `python -m vit_jax.main`): TensorFlow's and XLA's C++ INFO/WARNING lines (oneDNN notices,
the "absl::InitializeLog" preamble), absl/Orbax INFO lines (one per checkpoint file operation), JAX's INFO lines
(the libtpu probe) and TensorFlow's Python warnings are hidden; JAX warnings and errors still show. vit_jax's own
log lines are printed plainly (`message`, `Warning: message`). Verbose (`--verbose`): nothing is hidden and every
logger prints at INFO in absl's format.
"""

from __future__ import annotations

import logging
import os
import sys

# Read by TensorFlow / XLA / gRPC when their C++ runtime loads, so set before the first import of TF or JAX.
QUIET_ENV = {
    'TF_CPP_MIN_LOG_LEVEL': '2',  # C++ INFO and WARNING off (oneDNN notices, port.cc, cpu_feature_guard).
    'GRPC_VERBOSITY': 'ERROR',
    'GLOG_minloglevel': '2',
}
# Python loggers whose INFO/WARNING lines are library chatter for a user of the command line.
QUIET_LOGGERS = {
    'absl': logging.ERROR,  # Orbax (and other absl.logging users): an INFO line per checkpoint file operation.
    'orbax': logging.ERROR,
    'tensorflow': logging.ERROR,
    'jax': logging.WARNING,  # The libtpu / CUDA backend probes are INFO; real warnings still show.
    'matplotlib': logging.WARNING,
    'PIL': logging.WARNING,
}


class _PlainFormatter(logging.Formatter):
    """`message` for INFO, `Warning: message` / `Error: message` above it."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += '\n' + self.formatException(record.exc_info)
        if record.levelno >= logging.ERROR:
            return f'Error: {msg}'
        if record.levelno >= logging.WARNING:
            return f'Warning: {msg}'
        return msg


def quiet_environment() -> None:
    """Sets the C++ logging variables of TensorFlow / XLA / gRPC (a value the user set is kept)."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with file descriptor 2 pointed at /dev/null.

    TensorFlow 2.21 prints its oneDNN notice (twice, with an "absl::InitializeLog" preamble) from C++ while it is
    imported, whatever TF_CPP_MIN_LOG_LEVEL says; only the import is silenced. An import error is not swallowed: it
    is raised again, with its message, where TensorFlow is imported next.
    """
    if 'tensorflow' in sys.modules:
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # No real stderr (some notebook or service set-ups).
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    except Exception:  # Raised again, visibly, by the next import.
        sys.modules.pop('tensorflow', None)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def setup(verbose: bool = False) -> None:
    """Console logging for a command-line run: quiet libraries (default) or everything at INFO (`verbose`)."""
    from absl import logging as absl_logging

    if verbose:
        absl_logging.set_verbosity(absl_logging.INFO)
        return
    quiet_environment()
    import_tensorflow_quietly()
    absl_logging.set_verbosity(absl_logging.WARNING)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    own = logging.getLogger('vit_jax')
    own.setLevel(logging.INFO)
    if not any(getattr(h, '_vit_jax_console', False) for h in own.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
        handler._vit_jax_console = True
        own.addHandler(handler)
    own.propagate = False
