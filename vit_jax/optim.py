"""Optax pipelines and learning-rate schedules built from a config.

    config.optimizer = dict(name='sgd', momentum=0.9, weight_decay=0.0, wd_mask='no_bias_norm', grad_clip_norm=1.0,
                            accum_steps=1, ema_decay=None, layer_decay=None)
    config.lr = dict(base=0.03, warmup_steps=500, decay='cosine', end=0.0)

The chain is: clip by global norm -> optimizer (SGD+momentum / Adam / AdamW / LAMB) -> learning rate (-> optional
layer-wise decay, `layer_decay`: BEiT/MAE fine-tuning), with weight decay restricted by a mask: coupled L2 for 'sgd'
and 'adam' (torch.optim.SGD / torch.optim.Adam with weight_decay), decoupled for 'adamw' and 'lamb'.
Gradient accumulation (`accum_steps`) splits each global batch into micro-batches inside the train step (see
`objectives.base`), so `total_steps` always counts optimizer updates.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from vit_jax.models import layers

OPTIMIZERS = ('sgd', 'adam', 'adamw', 'lamb', 'lars')  # config.optimizer.name
DECAYS = ('cosine', 'linear', 'constant', 'rsqrt', 'poly')  # config.lr.decay
LR_KEYS = ('base', 'warmup_steps', 'decay', 'end', 'power')  # Every key of config.lr that `lr_schedule` reads.


def _did_you_mean(value: Any, options: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(value), options, n=2, cutoff=0.5)
    return f' Did you mean {" or ".join(repr(c) for c in close)}?' if close else ''


def check_config(config: Any) -> None:
    """Raises ValueError (one line, naming the key and the choices) for an optimizer or schedule setting that `make`
    or `lr_schedule` would reject or silently ignore: the optimizer name, lr.decay, unknown lr keys, non-numeric
    or negative schedule values, regexes that do not compile, dtype names."""
    opt, lr = config.optimizer, config.lr
    name = opt.get('name', 'sgd')
    if name not in OPTIMIZERS:
        raise ValueError(f'optimizer.name={name!r} is not an optimizer.{_did_you_mean(name, OPTIMIZERS)} '
                         f'Choices: {", ".join(OPTIMIZERS)}.')
    unknown = [k for k in lr.keys() if k not in LR_KEYS]
    if unknown:
        k = unknown[0]
        raise ValueError(f'Unknown schedule key lr.{k}.{_did_you_mean(k, LR_KEYS)} Keys of lr: {", ".join(LR_KEYS)}.')
    decay = lr.get('decay', 'cosine')
    if decay not in DECAYS:
        raise ValueError(f'lr.decay={decay!r} is not a schedule.{_did_you_mean(decay, DECAYS)} '
                         f'Choices: {", ".join(DECAYS)}.')
    for key in ('base', 'end', 'power', 'warmup_steps'):
        v = lr.get(key, None)
        if v is None and key in ('end', 'power', 'warmup_steps'):
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise ValueError(f'lr.{key} must be a non-negative number, got {v!r}.')
    if int(lr.get('warmup_steps', 0) or 0) != lr.get('warmup_steps', 0):
        raise ValueError(f'lr.warmup_steps must be a whole number of steps, got {lr.warmup_steps!r}.')
    for key in ('wd_mask', 'freeze'):
        v = opt.get(key, None)
        if isinstance(v, str) and not (key == 'wd_mask' and v in ('all', 'no_bias_norm', 'kernels')):
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f'optimizer.{key}={v!r} is not a valid regex ({e}).') from None
    for key in ('accumulator_dtype', 'mu_dtype'):
        v = opt.get(key, None)
        if v:
            try:
                jnp.dtype(v)
            except TypeError:
                raise ValueError(f"optimizer.{key}={v!r} is not a dtype (e.g. 'bfloat16', 'float32').") from None


def lr_schedule(lr_config: Any, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 then 'cosine' / 'linear' / 'constant' / 'rsqrt' / 'poly' decay to `end` at `total_steps`.

    'poly' is mmseg's polynomial decay, (base - end) * (1 - t)^power + end with `power` (default 0.9) from the config.
    """
    base = float(lr_config.get('base', 1e-3))
    warmup = int(lr_config.get('warmup_steps', 0))
    decay = lr_config.get('decay', 'cosine')
    end = float(lr_config.get('end', 0.0))
    decay_steps = max(total_steps - warmup, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = jnp.minimum(1.0, (step + 1.0) / warmup) if warmup > 0 else 1.0
        t = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
        if decay == 'cosine':
            f = end / base + (1 - end / base) * 0.5 * (1.0 + jnp.cos(jnp.pi * t)) if base else 0.0
        elif decay == 'linear':
            f = 1.0 - t * (1.0 - end / base) if base else 0.0
        elif decay == 'constant':
            f = 1.0
        elif decay == 'rsqrt':
            f = jnp.sqrt(jnp.maximum(warmup, 1) / jnp.maximum(step, jnp.maximum(warmup, 1)))
        elif decay == 'poly':
            power = float(lr_config.get('power', 0.9))
            f = end / base + (1 - end / base) * (1.0 - t) ** power if base else 0.0
        else:
            raise ValueError(f"lr.decay must be 'cosine', 'linear', 'constant', 'rsqrt' or 'poly', got {decay!r}.")
        return base * warm * f

    return schedule


def _path_str(path: tuple) -> str:
    return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def weight_decay_mask(params: Any, mask: str | Callable | None) -> Any:
    """A boolean tree: which parameters get weight decay.

    'all': every parameter; 'no_bias_norm': kernels and embeddings only (no biases, norm scales, cls/pos
    embeddings: the convention of DeiT / pycls / CCT); 'kernels': only `kernel` leaves; a regex: names matching it.
    """
    if mask is None or mask == 'all':
        return jax.tree_util.tree_map(lambda _: True, params)
    if callable(mask):
        return mask(params)

    def decide(path, leaf):
        name = _path_str(path)
        last = name.split('/')[-1]
        if mask == 'kernels':
            return last == 'kernel'
        if mask == 'no_bias_norm':
            if getattr(leaf, 'ndim', 2) <= 1:
                return False  # Biases and norm scales/offsets.
            return not re.search(r'(^|/)(cls|pos_embedding|pos_embed|posemb|cls_token|.*token)$', name)
        return re.search(mask, name) is not None

    return jax.tree_util.tree_map_with_path(decide, params)


def make(config: Any, params: Any, total_steps: int, *, optimizer: Any = None, schedule: Optional[Callable] = None
         ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax transformation and the schedule described by `config.optimizer` and `config.lr`.

    `params` may be shapes (ShapeDtypeStructs): only names, ranks and shapes are read. `optimizer` (settings with
    the keys of `config.optimizer`) and `schedule` (a function of the step) replace the config's, e.g. for a
    discriminator with its own Adam betas and learning rate.
    """
    opt = config.optimizer if optimizer is None else optimizer
    schedule = lr_schedule(config.lr, total_steps) if schedule is None else schedule
    name = opt.get('name', 'sgd')
    wd = float(opt.get('weight_decay', 0.0) or 0.0)
    mask = weight_decay_mask(params, opt.get('wd_mask', 'all'))
    chain = []
    clip = opt.get('grad_clip_norm', None)
    if clip:
        chain.append(optax.clip_by_global_norm(float(clip)))
    if name == 'sgd':
        momentum = opt.get('momentum', 0.9)
        if wd:
            chain.append(optax.add_decayed_weights(wd, mask))  # Coupled L2, as classic SGD.
        if momentum:
            acc_dtype = opt.get('accumulator_dtype', None)
            chain.append(optax.trace(decay=float(momentum), nesterov=bool(opt.get('nesterov', False)),
                                     accumulator_dtype=jnp.dtype(acc_dtype) if acc_dtype else None))
    elif name in ('adam', 'adamw'):
        if wd and name == 'adam':  # Coupled L2 before the moments, as torch.optim.Adam(weight_decay=...).
            chain.append(optax.add_decayed_weights(wd, mask))
        mu_dtype = opt.get('mu_dtype', None)  # First-moment dtype (e.g. 'bfloat16' halves its memory).
        chain.append(optax.scale_by_adam(b1=float(opt.get('b1', 0.9)), b2=float(opt.get('b2', 0.999)),
                                         eps=float(opt.get('eps', 1e-8)),
                                         mu_dtype=jnp.dtype(mu_dtype) if mu_dtype else None))
        if wd and name == 'adamw':
            chain.append(optax.add_decayed_weights(wd, mask))
    elif name == 'lamb':
        mu_dtype = opt.get('mu_dtype', None)
        chain.append(optax.scale_by_adam(b1=float(opt.get('b1', 0.9)), b2=float(opt.get('b2', 0.999)),
                                         eps=float(opt.get('eps', 1e-6)),
                                         mu_dtype=jnp.dtype(mu_dtype) if mu_dtype else None))
        if wd:
            chain.append(optax.add_decayed_weights(wd, mask))
        chain.append(optax.scale_by_trust_ratio())
    elif name == 'lars':
        # LARS as MAE / MoCo v3 linear probing use it (their util/lars.py): for weights of rank >= 2 only, weight
        # decay is added to the gradient and the result scaled by trust_coefficient * ||w|| / ||g + wd w|| (1 where
        # either norm is 0); biases and norm parameters take the plain gradient. Then momentum, then the lr.
        rank2 = jax.tree_util.tree_map(lambda p: len(getattr(p, 'shape', ())) > 1, params)
        if wd:
            chain.append(optax.add_decayed_weights(wd, jax.tree_util.tree_map(lambda a, b: a and b, rank2, mask)))
        chain.append(optax.masked(optax.scale_by_trust_ratio(
            trust_coefficient=float(opt.get('trust_coefficient', 0.001))), rank2))
        chain.append(optax.trace(decay=float(opt.get('momentum', 0.9)), nesterov=False))
    else:
        raise ValueError(f"optimizer.name must be one of {OPTIMIZERS}, got {name!r}.")
    chain.append(optax.scale_by_learning_rate(schedule))
    layer_decay = opt.get('layer_decay', None)
    if layer_decay:
        chain.append(scale_by_layer_decay(params, float(layer_decay)))
    lr_mults = opt.get('lr_mults', None)
    if lr_mults:
        chain.append(scale_by_name(params, lr_mults))
    freeze = opt.get('freeze', None)
    tx = optax.chain(*chain)
    if freeze:
        labels = jax.tree_util.tree_map(lambda f: 'frozen' if f else 'train', frozen_mask(params, freeze))
        tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
    return tx, schedule


def frozen_mask(params: Any, freeze: Optional[str]) -> Any:
    """A boolean tree: which parameters `optimizer.freeze` (a regex searched in the '/'-joined names) keeps
    frozen (all False for None)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: bool(freeze) and re.search(freeze, _path_str(p)) is not None,
                                            params)


def stop_frozen_gradients(params: Any, freeze: Optional[str]) -> Any:
    """`params` with `stop_gradient` on the frozen ones: differentiating a loss of the result computes no backward
    pass that only frozen parameters need (a linear probe's encoder), and their gradients are zeros."""
    if not freeze:
        return params
    return jax.tree_util.tree_map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params,
                                  frozen_mask(params, freeze))


def layer_ids(params: Any) -> tuple[Any, int]:
    """(tree of layer ids, number of blocks L) for layer-wise lr decay (BEiT / MAE fine-tuning).

    Id 0: the embeddings (`embedding`, `cls`, `mask_token`, position embeddings, a shared relative-position table);
    id i + 1: everything in encoder block i (`encoderblock_{i}...`, its per-layer bias `encoderblock_{i}_{bias}`; a
    scanned segment `encoderblock[_{a}-{b}]/...` gets the id vector a+1..b+1 along its stacked axis, see
    `layers.encoder_layer`); id L + 1: the rest (final norm, heads).
    """
    def layer_of(name: str, leaf: Any) -> Optional[np.ndarray]:
        hit = layers.encoder_layer(name) if re.search(r'(^|/)encoderblock[_/]', name) else None
        if hit is None:
            return None
        first, stacked = hit
        if not stacked:
            return np.asarray(first + 1)
        return np.arange(first + 1, first + 1 + leaf.shape[0]).reshape((-1,) + (1,) * (len(leaf.shape) - 1))

    flat = [(_path_str(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
    hits = [h for h in (layer_of(n, leaf) for n, leaf in flat) if h is not None]
    num = max(int(h.max()) for h in hits) if hits else 0
    embed = re.compile(r'(^|/)(embedding|cls|mask_token|pos_embedding|posembed_input|rel_pos_bias|stem|conv_stem)'
                       r'(/|$)')

    def lid(path, leaf):
        name = _path_str(path)
        hit = layer_of(name, leaf)
        if hit is not None:
            return int(hit) if hit.ndim == 0 else hit
        if embed.search(name):
            return 0
        return num + 1

    return jax.tree_util.tree_map_with_path(lid, params), num


def scale_by_layer_decay(params: Any, decay: float) -> optax.GradientTransformation:
    """Multiplies each parameter's update by decay ** (L + 1 - layer_id) (see `layer_ids`; the head keeps 1)."""
    ids, num = layer_ids(params)
    # numpy (static) scales: `params` may be shapes.
    scales = jax.tree_util.tree_map(lambda i: np.float32(decay) ** (num + 1 - np.asarray(i)).astype(np.float32), ids)

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def scale_by_name(params: Any, mults: Any) -> optax.GradientTransformation:
    """Multiplies the updates of parameters whose '/'-joined name matches a regex by its factor (`lr_mults`).

    `mults` is ((regex, factor), ...) or {regex: factor}; the first match wins, others keep factor 1 (e.g. DPT's
    backbone at 1/10 of the decoder's learning rate: (('^(?!neck|depth_head|seg_head|aux_head)', 0.1),)).
    """
    rules = list(mults.items()) if hasattr(mults, 'items') else [tuple(r) for r in mults]

    def factor(path, _):
        name = _path_str(path)
        for regex, f in rules:
            if re.search(regex, name):
                return float(f)
        return 1.0

    factors = jax.tree_util.tree_map_with_path(factor, params)  # Python floats: static, fine under tracing.

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map(lambda u, f: u * f, updates, factors), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def flat_names(tree: Any) -> list[str]:
    """'/'-joined names of every leaf of a nested dict."""
    return ['/'.join(k) for k in traverse_util.flatten_dict(tree)]
