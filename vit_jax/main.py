"""Command line: `python -m vit_jax.main --config=configs/quickstart.py[:arg] [--workdir=DIR] [--config.key=value]`.

Runs `config.trainer` (default 'train': vit_jax.train.train_and_evaluate). Running the same command on the same
workdir resumes from its latest checkpoint. Without --workdir a fresh folder under ./workdirs is used and printed.
Multi-host: pass --distributed (or set VIT_JAX_DISTRIBUTED=1) to call jax.distributed.initialize(), which reads
the coordinator and process ids from flags or the cluster environment (TPU pods, SLURM, ...).
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string('config', None, 'Config file, optionally with an argument: configs/vit_b16.py:cifar10.')
flags.DEFINE_string('workdir', None, 'Where checkpoints and metrics go; a fresh folder when unset.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (multi-host runs).')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0 (else from the environment).')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes (else from the environment).')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process (else from the environment).')
flags.DEFINE_integer('heartbeat_timeout', 100, 'Multi-host: seconds without a heartbeat after which a dead peer '
                     'process ends the job (jax.distributed). A stuck but alive peer: config.peer_timeout_seconds.')
flags.DEFINE_bool('verbose', False, 'Also print library logging (absl/Orbax/TensorFlow/JAX INFO lines), hidden by '
                  'default.')

_OVERRIDES: list[tuple[str, str]] = []


def _split_overrides(argv: Sequence[str]) -> list[str]:
    """Removes `--config.a.b=value` (or `--config.a.b value`) from argv and records them."""
    from vit_jax import config_utils

    rest, overrides = config_utils.split_overrides(argv)
    _OVERRIDES.extend(overrides)
    return rest


def initialize_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None, heartbeat_timeout: Optional[int] = None) -> None:
    """jax.distributed.initialize from explicit values or the environment (no-op for a single process).

    `heartbeat_timeout` (seconds, JAX's default 100): a peer process that stops sending heartbeats (killed, or its
    machine died) ends every process of the job after this long, instead of leaving them blocked in a collective.
    """
    import jax

    kw = {k: v for k, v in dict(coordinator_address=coordinator_address, num_processes=num_processes,
                                process_id=process_id, heartbeat_timeout_seconds=heartbeat_timeout).items()
          if v is not None}
    jax.distributed.initialize(**kw)


def main(argv: Sequence[str]) -> None:
    del argv
    from vit_jax import console

    console.setup(verbose=FLAGS.verbose)  # Before TensorFlow / JAX are imported: their C++ logging reads env vars.
    if FLAGS.distributed or os.environ.get('VIT_JAX_DISTRIBUTED'):
        initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                               FLAGS.heartbeat_timeout)
    from vit_jax import config_utils, train

    if not FLAGS.config:
        raise app.UsageError('--config is required, e.g. --config=configs/quickstart.py')
    try:
        config = config_utils.load(FLAGS.config)
        for k, v in _OVERRIDES:
            config_utils.override(config, k, v)
        config_utils.validate(config)
    except ValueError as e:
        print(f'Config error: {e}', file=sys.stderr)
        sys.exit(2)
    trainer = config.get('trainer', 'train')
    if trainer != 'train':
        raise app.UsageError(f"config.trainer={trainer!r}: only 'train' exists (methods plug in as objectives).")
    from vit_jax import data, lock

    try:
        train.train_and_evaluate(config, FLAGS.workdir)
    except (config_utils.ConfigError, train.ResumeMismatchError, lock.WorkdirBusyError,
            data.DatasetNotPreparedError) as e:
        print(f'Error: {e}', file=sys.stderr)  # One line: these name the problem and the fix.
        sys.exit(2)


def run() -> None:
    app.run(main, argv=_split_overrides(sys.argv))


if __name__ == '__main__':
    run()
