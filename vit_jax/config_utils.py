"""Config files, command-line overrides and validation, with errors that name the problem and the fix.

    config = config_utils.load('configs/vit_b16.py:cifar10')
    config_utils.override(config, 'optimizer.momentum', '0.8')   # strings are parsed as Python literals
    config_utils.validate(config)
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any, Sequence

import ml_collections

REQUIRED_KEYS = ('seed', 'model', 'dataset', 'batch_size', 'total_steps', 'log_every', 'eval_every',
                 'checkpoint_every', 'keep_checkpoints', 'optimizer', 'lr', 'evals', 'objective')


class ConfigError(ValueError):
    """A configuration problem, found before any compilation."""


def load(spec: str) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` by calling its `get_config(arg)` (or `get_config()` without an argument)."""
    path, arg = (spec.split(':', 1) + [None])[:2] if ':' in spec else (spec, None)
    if not os.path.exists(path):
        here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)
        if os.path.exists(here):
            path = here
        else:
            raise ConfigError(f'Config file {path!r} not found (run from the repository root, or pass a full path).')
    module_spec = importlib.util.spec_from_file_location(f'_vit_jax_config_{abs(hash(path))}', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
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
        name='sgd',  # 'sgd', 'adam', 'adamw', 'lamb'.
        momentum=0.9, nesterov=False, b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.0,  # Decoupled for adamw/lamb, L2 for sgd.
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


def digits_recipe(model: dict, *, train_pp: str = 'random_shift', steps: int = 1500, warmup_steps: int = 100,
                  lr: float = 2e-3, weight_decay: float = 0.05, batch_size: int = 128, tiny: bool = False):
    """The CPU-sized classification recipe on the built-in digits that the family quickstarts share: AdamW with
    weight decay off biases and norms, cosine with warm-up, label smoothing 0.1, random 1-pixel shifts, no flips.

    `model` is `config.model` (name, image_size and overrides; num_classes is set to 10). `tiny=True` is the
    short form the tests run: batch 64, no intermediate evaluations or checkpoints, no TensorBoard.
    """
    c = base_config()
    c.dataset = 'digits'
    c.model = dict(num_classes=10, **model)
    c.data.train_pp = train_pp
    c.data.flip = False  # Mirrored digits are other digits.
    c.batch_size = batch_size
    c.total_steps = steps
    c.log_every = 100
    c.eval_every = 500
    c.checkpoint_every = 500
    c.optimizer = dict(c.optimizer, name='adamw', weight_decay=weight_decay, wd_mask='no_bias_norm',
                       grad_clip_norm=1.0)
    c.lr = dict(base=lr, warmup_steps=warmup_steps, decay='cosine', end=1e-5)
    c.objective.label_smoothing = 0.1
    c.evals.val = dict(type='classification', split='test', every=500)
    if tiny:
        c.batch_size = 64
        c.log_every = 50
        c.eval_every = 0
        c.checkpoint_every = 0
        c.tensorboard = False
        c.evals.val.every = 0
    return c


def robust_digits_recipe(model: dict) -> ml_collections.ConfigDict:
    """The CPU-sized training recipe of the adversarial-training configs on the built-in digits (robust_vit_digits,
    pyramid_at_digits): `model` (a dict for `config.model`) on 16 px digits resized, not shifted (the attacks are the
    perturbation), batch 64, 400 steps, AdamW (weight decay 0.05 off biases and norms, clipping at 1), lr 3e-3,
    cosine with 20 warm-up steps; evaluation only at the end, on all 360 test digits in one batch. The configs add
    the objective and the evaluators.
    """
    c = base_config()
    c.dataset = 'digits'
    c.model = dict(model)
    c.data.train_pp = 'resize'
    c.data.flip = False
    c.batch_size = 64
    c.eval_batch_size = 360
    c.total_steps = 400
    c.log_every = 100
    c.eval_every = 0
    c.checkpoint_every = 0
    c.optimizer = dict(c.optimizer, name='adamw', weight_decay=0.05, wd_mask='no_bias_norm', grad_clip_norm=1.0)
    c.lr = dict(base=3e-3, warmup_steps=20, decay='cosine', end=1e-5)
    return c


LABEL_SCARCE_SPLIT = 'train[:10%]'  # 143 of the 1437 training digits: a fixed random subset.
LABEL_SCARCE_STEPS = 400


def label_scarce_digits(c: ml_collections.ConfigDict, *, lr: float, dont_load: Sequence[str],
                        init_path: str | None = None, layer_decay: float | None = None) -> ml_collections.ConfigDict:
    """The fine-tune / scratch comparison after self-supervised pretraining on the digits (PeCo, MILAN configs).

    Label-scarce, as self-supervised pretraining is meant to be used: the pretraining sees all 1437 training images
    without labels; the classifier sees the labels of LABEL_SCARCE_SPLIT for LABEL_SCARCE_STEPS steps at batch 128
    (AdamW, weight decay 0.05 off biases and norms, no clipping, cosine with 30 warm-up steps, label smoothing 0.1,
    random shifts) and is evaluated once, on the 360 test digits. Sets everything but `c.model` / `c.dataset`;
    `init_path` (the pretraining's workdir, None for scratch) and `dont_load` go to `init_from`.
    """
    c.data.train_pp = 'random_shift'
    c.data.flip = False
    c.batch_size = 128
    c.data.train_split = LABEL_SCARCE_SPLIT
    c.total_steps = LABEL_SCARCE_STEPS
    c.log_every = 50
    c.eval_every = 0
    c.checkpoint_every = 0
    c.tensorboard = False
    c.optimizer = ml_collections.ConfigDict(dict(c.optimizer.to_dict(), name='adamw', weight_decay=0.05,
                                                 wd_mask='no_bias_norm', grad_clip_norm=None,
                                                 layer_decay=layer_decay))
    c.lr = ml_collections.ConfigDict(dict(base=lr, warmup_steps=30, decay='cosine', end=1e-5))
    c.objective = ml_collections.ConfigDict(dict(type='classification', label_smoothing=0.1, loss='softmax'))
    c.evals = ml_collections.ConfigDict(dict(val=dict(type='classification', split='test', every=0)))
    c.init_from = ml_collections.ConfigDict(dict(path=init_path, dont_load=tuple(dont_load)))
    return c


DPT_DECODER = ('neck/.*', 'depth_head/.*', 'seg_head/.*', 'aux_head/.*')


def dpt_depth_finetune(variant: str, *, init: str | None, dataset: str, image_size: tuple[int, int], data: dict,
                       batch_size: int, steps: int, max_depth: float, evals: dict) -> ml_collections.ConfigDict:
    """The monocular-depth fine-tuning recipe of the DPT configs (NYU v2, KITTI): DPT-`variant` with a depth head,
    Adam (no weight decay, no clipping) with the backbone at 1/10 of the decoder's learning rate (1e-5 / 1e-4, the
    paper's monodepth setting), cosine to 1e-6, the MiDaS scale- and shift-invariant loss with gradient matching
    (alpha 0.5, 4 scales) in disparity, evaluation every 5000 steps in inverse depth with per-image scale and shift.

    `data` updates `config.data`; `evals` updates the depth evaluator (split, batch_size, crop); `init` is a ViT
    release checkpoint (its BiT epsilons for the Hybrid: resnet_variant='release') whose decoder is not loaded.
    """
    c = base_config()
    c.dataset = dataset
    c.model = dict(name=f'DPT-{variant}', image_size=tuple(image_size), head='depth', backbone_classes=0)
    if variant == 'Hybrid' and init:
        c.model.resnet_variant = 'release'
    c.data = dict(c.data, **data)
    c.batch_size = batch_size
    c.total_steps = steps
    c.log_every = 100
    c.eval_every = 5_000
    c.checkpoint_every = 5_000
    c.optimizer = dict(c.optimizer, name='adam', weight_decay=0.0, grad_clip_norm=0.0,
                       lr_mults=((r'^(?!(neck|depth_head|seg_head|aux_head)/)', 0.1),))
    c.lr = dict(base=1e-4, warmup_steps=0, decay='cosine', end=1e-6)
    c.objective = dict(type='depth', loss='ssi_mse', alpha=0.5, scales=4, target_space='disparity', min_depth=1e-3,
                       max_depth=max_depth)
    c.evals = dict(val=dict(dict(type='depth', every=5_000, prediction='inverse_depth', align='scale_shift',
                                 min_depth=1e-3, max_depth=max_depth), **evals))
    c.init_from = dict(path=init, dont_load=DPT_DECODER + ('head/.*', 'pre_logits/.*'))
    return c


def dense_digits_recipe(model: dict, *, steps: int, lr: float, objective: dict, evals: dict,
                        dont_load: Sequence[str], tiny: bool = False):
    """The CPU-sized dense-prediction recipe on the built-in 'dense_digits' that the Segmenter and DPT configs
    share: 20000 freshly drawn training canvases (2000 are memorised long before a tiny ViT learns which digit a
    stroke belongs to), batch 32, AdamW (weight decay 0.01 off biases and norms, clipping at 1), cosine with 50
    warm-up steps, evaluation on the 500 test canvases (glyphs training never sees) every quarter of the run.

    `model` is `config.model`; `objective` / `evals` the dense objective and the evaluator entry ('every' is set
    here); `dont_load` the decoder's parameters for `init_from` (a ViT checkpoint initialises the backbone).
    `tiny=True` is the short form the smoke tests run: 10 steps on 2000 canvases, no evaluation, no checkpoints.
    """
    c = base_config()
    c.dataset = 'dense_digits'
    c.model = dict(model)
    c.data = dict(c.data, train_pp='dense_decode|dense_random_crop', eval_pp='dense_decode|dense_resize',
                  flip=False, dense_num_train=20000)
    c.batch_size = 32
    c.total_steps = steps
    c.log_every = 100
    c.eval_every = max(steps // 4, 1)
    c.checkpoint_every = c.eval_every
    c.optimizer = dict(c.optimizer, name='adamw', weight_decay=0.01, wd_mask='no_bias_norm', grad_clip_norm=1.0)
    c.lr = dict(base=lr, warmup_steps=50, decay='cosine', end=1e-5)
    c.objective = dict(objective)
    c.evals = dict(val=dict(evals, split='test', every=c.eval_every))
    c.init_from = dict(path=None, dont_load=tuple(dont_load))
    if tiny:
        c.data.dense_num_train = 2000
        c.total_steps = 10
        c.log_every = 5
        c.eval_every = 0
        c.checkpoint_every = 0
    return c
