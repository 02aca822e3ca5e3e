"""Config files, command-line overrides and validation, with errors that name the problem and the fix.

    config = config_utils.load('configs/vit_b16.py:cifar10')
    config_utils.override(config, 'optimizer.momentum', '0.8')   # strings are parsed as Python literals
    config_utils.validate(config)

`base_config()` is the schema every training config starts from (the keys `validate` and `--config.X` rely on);
what configs share beyond it (the `:arg` parser, recipes) is in the `configs` package (configs/common.py).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import os
import sys
from typing import Any, Sequence

import ml_collections

REQUIRED_KEYS = ('seed', 'model', 'dataset', 'batch_size', 'total_steps', 'log_every', 'eval_every',
                 'checkpoint_every', 'keep_checkpoints', 'optimizer', 'lr', 'evals', 'objective')
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # Holds configs/ in a checkout.


class ConfigError(ValueError):
    """A configuration problem, found before any compilation."""


def _package_module(path: str) -> tuple[str | None, str]:
    """('configs.vit_b16', root) for a file inside packages (folders with __init__.py) under `root`, else (None, '')."""
    folder, parts = os.path.dirname(path), [os.path.splitext(os.path.basename(path))[0]]
    while os.path.isfile(os.path.join(folder, '__init__.py')):
        parts.insert(0, os.path.basename(folder))
        folder = os.path.dirname(folder)
    return ('.'.join(parts), folder) if len(parts) > 1 else (None, '')


def _register_package(name: str, root: str) -> None:
    """Makes the package folder `root/name` importable as `name` from any working directory (sys.path untouched)."""
    folder = os.path.join(root, name)
    existing = sys.modules.get(name)
    if existing is not None:
        paths = [os.path.realpath(p) for p in getattr(existing, '__path__', [])]
        if os.path.realpath(folder) not in paths:
            raise ConfigError(f'Cannot import {folder} as the package {name!r}: another {name!r} is already '
                              f'imported from {paths or existing.__file__}.')
        return
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, '__init__.py'),
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def load(spec: str) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` by calling its `get_config(arg)` (or `get_config()` without an argument).

    A file inside a package (configs/, experiments/vtab1k/) is imported as that package's module, so configs import
    each other and configs/common.py as `from configs import common`, whatever the working directory. Any other file
    (e.g. a copy of a config elsewhere) is run from its path, with this checkout's `configs` package importable.
    """
    path, arg = (spec.split(':', 1) + [None])[:2] if ':' in spec else (spec, None)
    if not os.path.exists(path):
        here = os.path.join(REPO_ROOT, path)
        if os.path.exists(here):
            path = here
        else:
            raise ConfigError(f'Config file {path!r} not found (run from the repository root, or pass a full path).')
    path = os.path.abspath(path)
    module_name, root = _package_module(path)
    try:
        if module_name:
            _register_package(module_name.split('.')[0], root)
            module = importlib.import_module(module_name)
        else:
            if importlib.util.find_spec('configs') is None and os.path.isfile(
                    os.path.join(REPO_ROOT, 'configs', '__init__.py')):
                _register_package('configs', REPO_ROOT)
            module_spec = importlib.util.spec_from_file_location(f'_vit_jax_config_{abs(hash(path))}', path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
    except ModuleNotFoundError as e:
        if (e.name or '').split('.')[0] not in ('configs', 'experiments'):
            raise
        raise ConfigError(f'{path} imports {e.name!r}, which is not importable here: the configs package is the '
                          f"repository's configs/ folder (an installed vit_jax does not include it). Run from a "
                          f'checkout, or put the folder holding configs/ on PYTHONPATH.') from None
    if not hasattr(module, 'get_config'):
        raise ConfigError(f'{path} has no get_config() function.')
    config = module.get_config(arg) if arg is not None else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(config)
    return config


def _suggest(key: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=3, cutoff=0.5)
    return f' Did you mean: {", ".join(close)}?' if close else ''


def _parse(value: Any, like: Any, key: str) -> Any:
    if not isinstance(value, str) or isinstance(like, str):
        return value
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    if like is None or parsed is None:
        return parsed
    if isinstance(like, bool) and not isinstance(parsed, bool):
        raise ConfigError(f'--config.{key} expects a bool (True/False), got {value!r}.')
    if isinstance(like, (int, float)) and not isinstance(like, bool):
        if not isinstance(parsed, (int, float)) or isinstance(parsed, bool):
            raise ConfigError(f'--config.{key} expects a number, got {value!r}.')
        if isinstance(like, int) and isinstance(parsed, float):
            if not parsed.is_integer():
                raise ConfigError(f'--config.{key} expects an integer, got {value!r}.')
            parsed = int(parsed)
        return float(parsed) if isinstance(like, float) else parsed
    if isinstance(like, (tuple, list)) and isinstance(parsed, (tuple, list)):
        return type(like)(parsed)
    return parsed


def override(config: ml_collections.ConfigDict, dotted_key: str, value: Any) -> None:
    """Sets `config.a.b = value` after checking that the key exists (close matches listed otherwise).

    Keys under `config.model` may be any field of the model (checked when the model is built).
    """
    parts = dotted_key.split('.')
    node = config
    for i, p in enumerate(parts[:-1]):
        if p not in node:
            where = '.'.join(parts[:i]) or 'config'
            raise ConfigError(f'Unknown config key {".".join(parts[:i + 1])!r}.{_suggest(p, node.keys())} '
                              f'Keys of {where}: {", ".join(sorted(node.keys()))}.')
        node = node[p]
        if not isinstance(node, (ml_collections.ConfigDict, dict)):
            raise ConfigError(f'{".".join(parts[:i + 1])} is a {type(node).__name__}, not a section.')
    last = parts[-1]
    open_section = parts[0] in ('model', 'evals', 'data', 'objective') and len(parts) >= 2
    if last not in node and not open_section:
        where = '.'.join(parts[:-1]) or 'config'
        raise ConfigError(f'Unknown config key {dotted_key!r}.{_suggest(last, node.keys())} '
                          f'Keys of {where}: {", ".join(sorted(node.keys()))}.')
    like = node[last] if last in node else None
    parsed = _parse(value, like, dotted_key)
    try:
        if isinstance(node, ml_collections.ConfigDict):
            with node.unlocked():
                node[last] = parsed
        else:
            node[last] = parsed
    except TypeError as e:  # ml_collections refuses a value of another type than the default's.
        raise ConfigError(f'--config.{dotted_key}={value!r} has the wrong type: {e}') from None


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks keys and types that every training config needs, before anything is compiled."""
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ConfigError(f'The config lacks required keys: {", ".join(missing)}. See configs/quickstart.py.')
    if 'name' not in config.model:
        raise ConfigError('config.model.name is required (a registered model name; see models.list_models()).')
    for key in ('batch_size', 'total_steps', 'log_every', 'keep_checkpoints'):
        v = config[key]
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            hint = ' (the last N checkpoints are kept; 0 would delete every one)' if key == 'keep_checkpoints' else ''
            raise ConfigError(f'config.{key} must be a positive integer, got {v!r}{hint}.')
    for key in ('eval_every', 'checkpoint_every'):
        v = config[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(f'config.{key} must be a non-negative integer, got {v!r}.')
    on_nonfinite = config.get('on_nonfinite', 'stop')
    if on_nonfinite not in ('stop', 'skip'):
        raise ConfigError(f"config.on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}.")
    for key in ('peer_timeout_seconds', 'lock_stale_seconds', 'stop_at_step'):
        v = config.get(key, 0)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
            raise ConfigError(f'config.{key} must be a non-negative number, got {v!r}.')
    if not isinstance(config.dataset, str):
        raise ConfigError(f'config.dataset must be a string (a TFDS name, "digits" or "folder:/path"), '
                          f'got {config.dataset!r}.')
    base_lr = config.lr.get('base', None)
    if not isinstance(base_lr, (int, float)) or isinstance(base_lr, bool):
        raise ConfigError(f'config.lr.base must be a number, got {base_lr!r}.')
    from vit_jax import optim

    try:  # The schedule checks its own options (lr.decay ...) when called: once here, not while tracing.
        optim.lr_schedule(config.lr, int(config.total_steps))(0)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    accum = config.optimizer.get('accum_steps', 1) or 1
    if config.batch_size % accum:
        raise ConfigError(f'batch_size={config.batch_size} is not divisible by optimizer.accum_steps={accum}.')
    for key in ('optimizer', 'lr', 'objective', 'evals', 'model'):
        if not isinstance(config[key], (ml_collections.ConfigDict, dict)):
            raise ConfigError(f'config.{key} must be a section (dict), got {type(config[key]).__name__}.')
    from vit_jax import models, sharding

    models.get_entry(config.model.name)  # Unknown model names fail here, with the registered list.
    options = {k: v for k, v in config.model.items() if k != 'name'}
    try:  # Unknown or invalid model options: the module is built (no weights) once, here.
        models.get_model(config.model.name, **options)
    except (ValueError, TypeError) as e:
        raise ConfigError(f'config.model: {e}') from None
    impl = options.get('attention_impl', 'auto')
    if impl != 'auto':  # Checked here, not when the first step is traced.
        from vit_jax.models import layers

        if impl not in layers.ATTENTION_IMPLS:
            raise ConfigError(f'config.model.attention_impl={impl!r} is not one of {layers.ATTENTION_IMPLS}.')
        import jax

        if impl == 'cudnn' and jax.default_backend() != 'gpu':
            raise ConfigError(f"config.model.attention_impl='cudnn' needs an NVIDIA GPU; this process runs on "
                              f"{jax.default_backend()!r}. Use 'auto' (or 'xla').")
    from vit_jax import optim

    try:
        optim.check_config(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        mesh = sharding.make_mesh(config.get('mesh', None))
        sharding.local_batch_size(config.batch_size, mesh)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def schedule_warnings(config: ml_collections.ConfigDict) -> list[str]:
    """One-line warnings for a learning-rate schedule that does not fit the run (the run still starts)."""
    total = int(config.total_steps)
    lr = config.lr
    warmup = int(lr.get('warmup_steps', 0) or 0)
    base, end = float(lr.get('base', 0.0)), float(lr.get('end', 0.0) or 0.0)
    decay = lr.get('decay', 'cosine')
    out = []
    if warmup >= total:
        peak = base * min(1.0, total / warmup) if warmup else base
        out.append(f'lr.warmup_steps={warmup} is not shorter than total_steps={total}: the learning rate never '
                   f'reaches lr.base={base:g} (it peaks at {peak:.3g}) and never decays. Lower '
                   f'--config.lr.warmup_steps (e.g. to {max(total // 10, 0)}).')
    elif warmup > total // 2:
        out.append(f'lr.warmup_steps={warmup} is more than half of total_steps={total}: {total - warmup} step(s) '
                   f'are left for the {decay!r} decay.')
    if decay in ('cosine', 'linear', 'poly') and end > base:
        out.append(f'lr.end={end:g} is above lr.base={base:g}: the {decay!r} schedule rises after the warm-up.')
    if decay == 'constant' and 'end' in lr and end != base and end:
        out.append(f"lr.end={end:g} is ignored by lr.decay='constant' (the rate stays at lr.base={base:g}).")
    return out


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every training config (each config file overrides what its recipe needs)."""
    c = ml_collections.ConfigDict()
    c.trainer = 'train'  # The one trainer.
    c.seed = 0  # Seeds init, data order, augmentation and dropout.
    c.model = ml_collections.ConfigDict({'name': 'ViT-B/16'})  # Registered name + field overrides.
    c.dataset = 'digits'  # 'digits', a TFDS name, or 'folder:/path' (train/<class>/*.jpg, test/<class>/*.jpg).
    c.data = ml_collections.ConfigDict(dict(
        data_dir=None,  # TFDS data_dir (None: TFDS default, ~/tensorflow_datasets).
        train_split='train',  # Split used for training.
        # None: the dataset's own default, else the ViT release's ('inception_crop', 'resize', flip=True).
        train_pp=None,  # Train preprocessing: 'inception_crop', 'resize_crop', 'resize' or a pipe of ops.
        eval_pp=None,  # Eval preprocessing: 'resize' (the ViT release) or 'resize_crop'.
        value_range=(-1.0, 1.0),  # Pixel range fed to the model.
        flip=None,  # Random horizontal flips in training.
        shuffle_buffer=10_000,  # tf.data shuffle buffer.
        max_bad_fraction=0.01,  # Stop when more than this fraction of training examples cannot be decoded.
    ))
    c.batch_size = 512  # Global batch over all devices and processes.
    c.eval_batch_size = 0  # 0: same as batch_size.
    c.total_steps = 10_000  # Optimizer updates.
    c.log_every = 50  # Steps between training-metric logs.
    c.eval_every = 1000  # Steps between evaluations (0: only at the end).
    c.checkpoint_every = 1000  # Steps between checkpoints (0: only at the end).
    c.keep_checkpoints = 3  # Checkpoints kept (>= 1).
    c.on_nonfinite = 'stop'  # 'stop' or 'skip' when a loss, gradient, update or new parameter is not finite.
    c.peer_timeout_seconds = 1800  # Multi-process: end the job when no step or save progresses this long (0: off).
    c.lock_stale_seconds = 300  # A workdir lock whose heartbeat is older than this is a dead run's: taken over.
    c.stop_at_step = 0  # If > 0: save and exit at this step (a job-length limit); the same command resumes.
    c.tensorboard = True  # Also write TensorBoard events.
    c.optimizer = ml_collections.ConfigDict(dict(
        name='sgd',  # 'sgd', 'adam', 'adamw', 'lamb', 'lars' (+ trust_coefficient, MAE's linear probing).
        momentum=0.9, nesterov=False, b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.0,  # Decoupled for adamw/lamb, coupled L2 for sgd and adam (torch.optim.SGD / Adam).
        wd_mask='all',  # 'all', 'no_bias_norm', 'kernels' or a regex of parameter names.
        grad_clip_norm=1.0,  # Global-norm clipping (0/None: off).
        accum_steps=1,  # Micro-batches per update (memory), same result as one big batch.
        ema_decay=None,  # EMA of weights used by the evaluators (e.g. 0.9999), or None.
        freeze=None,  # Regex of parameters kept frozen.
        accumulator_dtype=None,  # Momentum dtype for SGD (the release uses 'bfloat16').
        mu_dtype=None,  # First-moment dtype for adam/adamw/lamb (e.g. 'bfloat16'); None: the parameters' dtype.
    ))
    c.lr = ml_collections.ConfigDict(dict(base=0.03, warmup_steps=500, decay='cosine', end=0.0))
    c.objective = ml_collections.ConfigDict(dict(type='classification', label_smoothing=0.0, loss='softmax'))
    c.evals = ml_collections.ConfigDict(dict(val=dict(type='classification', split='test', every=0)))
    c.init_from = ml_collections.ConfigDict(dict(path=None, dont_load=('head/.*',)))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))  # Device mesh axes.
    c.sharding_rules = ()  # ((regex, 'replicate' | 'fsdp' | (axis, ...)), ...) per-parameter overrides.
    c.sharding_min_size = 2**14  # FSDP leaves arrays with fewer elements replicated.
    return c


def split_overrides(argv, prefix: str = '--config.') -> tuple[list, list[tuple[str, str]]]:
    """Splits `--config.a.b=value` (or `--config.a.b value`; another `prefix` such as '--model.') out of argv:
    (the other args, [(key, value), ...])."""
    rest, overrides, i = [], [], 0
    argv = list(argv)
    while i < len(argv):
        a = argv[i]
        if a.startswith(prefix):
            body = a[len(prefix):]
            if '=' in body:
                k, v = body.split('=', 1)
            elif i + 1 < len(argv):
                k, v = body, argv[i + 1]
                i += 1
            else:
                raise SystemExit(f'{a} needs a value ({prefix}key=value).')
            overrides.append((k, v))
        else:
            rest.append(a)
        i += 1
    return rest, overrides
