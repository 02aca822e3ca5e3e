"""Frozen pretrained networks behind narrow interfaces: perceptual nets (PeCo), tokenizers (BEiT/PeCo MIM targets)
and feature teachers (MILAN).

Each is any registered vit_jax model plus weights loaded from a file (`.npz` as written by `checkpoint.save_npz`
or `convert`, or a training workdir / Orbax checkpoint, optionally `path:subtree`). Without weights the network
is built with a fixed-seed random init, a loud warning is logged, and `frozen_random` is True: objectives then
name their metrics as stand-ins (e.g. `perceptual_loss_random_features`), never as the paper's.

Config of one network (a dict / ConfigDict):

    dict(model='ViT-B/16',                 # registered model name
         overrides=dict(num_classes=0),    # model fields
         weights=None,                     # .npz file, workdir or checkpoint; None: random stand-in
         allow_random=True,                # False: refuse to run without weights
         input_mean=None, input_std=None)  # normalisation the network expects, for images in [0, 1]

Objectives put the frozen variables (host arrays) in `Objective.frozen[name]`: the trainer passes them to the jitted
step once per run as replicated, non-donated inputs (never constants of the program, never in a checkpoint); the
step calls the networks in eval mode under `stop_gradient` on the parameters (gradients still flow through them to
their inputs).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import registry

log = logging.getLogger(__name__)

Array = jax.Array


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if hasattr(cfg, 'get'):
        v = cfg.get(key, default)
    else:
        v = getattr(cfg, key, default)
    return default if v is None else v


@dataclasses.dataclass
class FrozenNet:
    """A frozen network: the module, its variables (numpy, host) and whether they are a random stand-in."""

    model: Any
    variables: dict
    frozen_random: bool
    what: str
    input_mean: Optional[np.ndarray] = None
    input_std: Optional[np.ndarray] = None
    value_range: tuple[float, float] = (-1.0, 1.0)

    def preprocess(self, images: Array) -> Array:
        """Images in the run's value range -> the network's expected input (mean/std on [0, 1] when set)."""
        if self.input_mean is None:
            return images
        lo, hi = self.value_range
        x = (images - lo) / (hi - lo)
        return (x - jnp.asarray(self.input_mean)) / jnp.asarray(self.input_std)


def load_frozen(cfg: Any, what: str, *, image_size: Optional[Sequence[int]] = None,
                value_range: Sequence[float] = (-1.0, 1.0), seed: int = 0) -> FrozenNet:
    """Builds the frozen network described by `cfg` (see the module docstring; loaded by `models.load`, the run's
    `image_size` unless `cfg` sets one); `what` names it in messages."""
    from vit_jax import models

    if not _get(cfg, 'model'):
        raise ValueError(f'The {what} needs a model name (config key `model`, a registered name such as '
                         "'ViT-B/16').")
    spec = models.as_spec(cfg)
    if spec.weights is None and not bool(_get(cfg, 'allow_random', True)):
        raise ValueError(f'The {what} ({spec.name}) has no weights (config key `weights`: a .npz file or a '
                         'workdir) and allow_random=False.')
    model, variables = models.load(spec, defaults={'image_size': tuple(image_size)} if image_size else None,
                                   seed=seed)
    if spec.weights is not None:
        log.info('Loaded the %s (%s) from %s.', what, spec.name, spec.weights)
    else:
        msg = (f'!!! The {what} ({spec.name}) has NO pretrained weights: using a FROZEN RANDOM-INIT STAND-IN. '
               'Metrics that depend on it are named *_random_* and are not comparable with the paper. Set `weights` '
               'to a converted file to run the real method. !!!')
        log.warning(msg)
        print(msg, flush=True)
    mean, std = _get(cfg, 'input_mean'), _get(cfg, 'input_std')
    return FrozenNet(model=model, variables=variables, frozen_random=spec.weights is None, what=what,
                     input_mean=None if mean is None else np.asarray(mean, np.float32),
                     input_std=None if std is None else np.asarray(std, np.float32),
                     value_range=tuple(float(v) for v in value_range))


def apply_frozen(net: FrozenNet, variables: Any, images: Array, **kwargs) -> tuple[Any, dict]:
    """Runs a frozen net in eval mode; its parameters get no gradient (the images still do)."""
    variables = jax.lax.stop_gradient(variables)
    return net.model.apply(variables, net.preprocess(images), train=False, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Perceptual features (PeCo).
# ----------------------------------------------------------------------------------------------------------------
def perceptual_features(net: FrozenNet, variables: Any, images: Array, feature_layers: Sequence[int]
                        ) -> list[Array]:
    """Intermediate block outputs (`out['encoder/block_XX']`, 0-based indices) of a frozen vit_jax model."""
    _, out = apply_frozen(net, variables, images)
    feats = []
    for i in feature_layers:
        key = f'encoder/block_{int(i):02d}'
        if key not in out:
            have = sorted(k for k in out if k.startswith('encoder/'))
            raise ValueError(f'The perceptual net has no {key!r}; it exposes {have}.')
        feats.append(out[key])
    return feats


def perceptual_loss(net: FrozenNet, variables: Any, x: Array, y: Array, feature_layers: Sequence[int]) -> Array:
    """sum_l mean((f_l(x) - f_l(y))^2): each layer's squared distance normalised by its C*H*W (or C*T)."""
    fx = perceptual_features(net, variables, jnp.concatenate([x, y], 0), feature_layers)
    n = x.shape[0]
    return sum(jnp.mean((f[:n] - f[n:]) ** 2) for f in fx)


# ----------------------------------------------------------------------------------------------------------------
# Tokenizers (MIM targets).
# ----------------------------------------------------------------------------------------------------------------
class Tokenizer:
    """`encode(variables, images) -> int32 [B, h, w]` codes; `variables` (from `init_variables`) are a frozen input."""

    vocab_size: int
    frozen_random: bool = False
    name: str = 'tokenizer'

    def init_variables(self) -> Any:
        """Host (numpy) variables."""
        raise NotImplementedError

    def encode(self, variables: Any, images: Array) -> Array:
        raise NotImplementedError


TOKENIZERS = registry.Registry('tokenizer type')  # Tokenizer classes `cls(cfg, image_size=, value_range=)`.


def build_tokenizer(cfg: Any, *, image_size: Sequence[int], value_range: Sequence[float] = (-1.0, 1.0)) -> Tokenizer:
    """The tokenizer of `cfg.type` ('vqgan' or the test stand-in 'random_projection')."""
    return TOKENIZERS.get(_get(cfg, 'type', 'vqgan'))(cfg, image_size=tuple(image_size),
                                                      value_range=tuple(value_range))


@TOKENIZERS.register('vqgan')
class VQGANTokenizer(Tokenizer):
    """A trained vit_jax VQGAN (e.g. the PeCo tokenizer of `configs/peco_tokenizer.py`), from a file or workdir."""

    name = 'vqgan'

    def __init__(self, cfg: Any, *, image_size: Sequence[int], value_range: Sequence[float]):
        net_cfg = dict(model=_get(cfg, 'model', 'PeCo-VQGAN-f16'), overrides=_get(cfg, 'overrides', {}),
                       weights=_get(cfg, 'weights'), allow_random=_get(cfg, 'allow_random', False))
        self.net = load_frozen(net_cfg, 'tokenizer', image_size=image_size, value_range=value_range)
        self.vocab_size = int(self.net.model.num_codes)
        self.frozen_random = self.net.frozen_random
        self.downsampling = self.net.model.downsampling

    def init_variables(self) -> Any:
        return self.net.variables

    def encode(self, variables: Any, images: Array) -> Array:
        model = self.net.model
        v = jax.lax.stop_gradient(variables)
        return jax.lax.stop_gradient(model.apply(v, self.net.preprocess(images), method=model.encode))



@TOKENIZERS.register('random_projection')
class RandomProjectionTokenizer(Tokenizer):
    """Test stand-in (specs 1b): a fixed random projection of each p x p pixel patch, quantised to the nearest of
    K fixed random unit codes. Deterministic, cheap, and not PeCo: metrics with it are stand-in figures."""

    name = 'random_projection'

    def __init__(self, cfg: Any, *, image_size: Sequence[int], value_range: Sequence[float]):
        self.patch = int(_get(cfg, 'patch_size', 16))
        self.vocab_size = int(_get(cfg, 'vocab_size', 8192))
        self.dim = int(_get(cfg, 'dim', 16))
        self.seed = int(_get(cfg, 'seed', 0))
        self.frozen_random = True
        self.downsampling = self.patch
        log.warning('MIM targets come from the random-projection STAND-IN tokenizer, not a trained PeCo codebook.')

    def init_variables(self) -> Any:
        rng = np.random.default_rng(self.seed)
        proj = rng.normal(size=(self.patch * self.patch * 3, self.dim)).astype(np.float32)
        codes = rng.normal(size=(self.vocab_size, self.dim)).astype(np.float32)
        codes /= np.linalg.norm(codes, axis=1, keepdims=True)
        return {'proj': proj, 'codes': codes}

    def encode(self, variables: Any, images: Array) -> Array:
        b, h, w, c = images.shape
        p = self.patch
        x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // p, w // p, -1)
        x = x - x.mean(-1, keepdims=True)
        z = x @ variables['proj']
        z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-6)
        return jax.lax.stop_gradient(jnp.argmax(z @ variables['codes'].T, -1).astype(jnp.int32))

