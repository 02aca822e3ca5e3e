"""Inception-v3 (Szegedy et al., 2016) in Flax, in torchvision's layout and pytorch-fid's FID variant, and the
`InceptionFeatures` interface used for FID and Inception Score.

Module names equal torchvision's attribute names (`Conv2d_1a_3x3/conv`, `Conv2d_1a_3x3/bn`, `Mixed_5b/branch1x1/...`,
`fc`), so a state dict converts by renaming only (`vit_jax/porting/inception.py`). Every BasicConv2d is a conv without
bias, BatchNorm (eps 1e-3, running statistics in 'batch_stats') and ReLU.

Variants (`variant`):
  'torchvision': `torchvision.models.inception_v3` (1000 classes; average pools count the padding).
  'fid': pytorch-fid's `FIDInceptionA/C/E_1/E_2` port of the TF FID graph (1008 classes; the average pools of
         Mixed_5b-5d, 6b-6e and 7b do not count the padding; Mixed_7c's pool branch is a 3x3 max pool). The
         weights are pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`; its input is resized to 299x299
         (bilinear, align_corners=False) and scaled from [0, 1] to [-1, 1].

    net = InceptionFeatures(weights='pt_inception.npz')   # or weights=None: a frozen random-init stand-in
    pool3, logits = net(images01)                         # images in [0, 1], any size; [B, 2048], [B, 1008]
    net.frozen_random                                     # True for the stand-in: name metrics *_random_features

Convert a PyTorch file once: `python -m vit_jax.convert --from=official:inception --model=InceptionV3-FID
pt_inception-2015-12-05-6726825d.pth --out inception.npz`.
The auxiliary classifier (`AuxLogits.*`) is not built; its weights are ignored by the converter.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import layers, register

log = logging.getLogger(__name__)

Array = jax.Array


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU (torchvision's BasicConv2d)."""

    features: int  # Output channels.
    kernel_size: int | Sequence[int] = 1  # Kernel (h, w).
    strides: int = 1  # Stride.
    padding: int | Sequence[int] = 0  # Zero padding (h, w).
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        ph, pw = _pair(self.padding)
        x = nn.Conv(self.features, _pair(self.kernel_size), strides=(self.strides, self.strides),
                    padding=((ph, ph), (pw, pw)), use_bias=False, dtype=self.dtype,
                    kernel_init=nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal'), name='conv')(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3, dtype=self.dtype, name='bn')(x)
        return nn.relu(x)


def _avg3(x: Array, count_include_pad: bool) -> Array:
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=count_include_pad)


def _max3s2(x: Array) -> Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
    """1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (Mixed_5b-5d)."""

    pool_features: int  # Channels of the pool branch.
    count_include_pad: bool = True  # Average pool counts the padding (torchvision) or not (FID).
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        c = lambda f, k=1, p=0, name=None: BasicConv2d(f, k, padding=p, dtype=self.dtype, name=name)  # noqa: E731
        b1 = c(64, name='branch1x1')(x, train)
        b5 = c(64, 5, 2, name='branch5x5_2')(c(48, name='branch5x5_1')(x, train), train)
        b3 = c(64, name='branch3x3dbl_1')(x, train)
        b3 = c(96, 3, 1, name='branch3x3dbl_3')(c(96, 3, 1, name='branch3x3dbl_2')(b3, train), train)
        bp = c(self.pool_features, name='branch_pool')(_avg3(x, self.count_include_pad), train)
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 (Mixed_6a)."""

    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        b3 = BasicConv2d(384, 3, strides=2, dtype=self.dtype, name='branch3x3')(x, train)
        d = BasicConv2d(64, 1, dtype=self.dtype, name='branch3x3dbl_1')(x, train)
        d = BasicConv2d(96, 3, padding=1, dtype=self.dtype, name='branch3x3dbl_2')(d, train)
        d = BasicConv2d(96, 3, strides=2, dtype=self.dtype, name='branch3x3dbl_3')(d, train)
        return jnp.concatenate([b3, d, _max3s2(x)], axis=-1)


class InceptionC(nn.Module):
    """1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1 (Mixed_6b-6e)."""

    channels_7x7: int  # Width of the factorised 7x7 branches.
    count_include_pad: bool = True  # See InceptionA.
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        c7 = self.channels_7x7
        c = lambda f, k=1, p=0, name=None: BasicConv2d(f, k, padding=p, dtype=self.dtype, name=name)  # noqa: E731
        b1 = c(192, name='branch1x1')(x, train)
        b7 = c(c7, name='branch7x7_1')(x, train)
        b7 = c(c7, (1, 7), (0, 3), name='branch7x7_2')(b7, train)
        b7 = c(192, (7, 1), (3, 0), name='branch7x7_3')(b7, train)
        d = c(c7, name='branch7x7dbl_1')(x, train)
        d = c(c7, (7, 1), (3, 0), name='branch7x7dbl_2')(d, train)
        d = c(c7, (1, 7), (0, 3), name='branch7x7dbl_3')(d, train)
        d = c(c7, (7, 1), (3, 0), name='branch7x7dbl_4')(d, train)
        d = c(192, (1, 7), (0, 3), name='branch7x7dbl_5')(d, train)
        bp = c(192, name='branch_pool')(_avg3(x, self.count_include_pad), train)
        return jnp.concatenate([b1, b7, d, bp], axis=-1)


class InceptionD(nn.Module):
    """1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 (Mixed_7a)."""

    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        c = lambda f, k=1, s=1, p=0, name=None: BasicConv2d(f, k, strides=s, padding=p, dtype=self.dtype,  # noqa
                                                            name=name)
        b3 = c(320, 3, 2, name='branch3x3_2')(c(192, name='branch3x3_1')(x, train), train)
        b7 = c(192, name='branch7x7x3_1')(x, train)
        b7 = c(192, (1, 7), 1, (0, 3), name='branch7x7x3_2')(b7, train)
        b7 = c(192, (7, 1), 1, (3, 0), name='branch7x7x3_3')(b7, train)
        b7 = c(192, 3, 2, name='branch7x7x3_4')(b7, train)
        return jnp.concatenate([b3, b7, _max3s2(x)], axis=-1)


class InceptionE(nn.Module):
    """1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1 (Mixed_7b, 7c)."""

    pool: str = 'avg'  # 'avg' (torchvision; FID's E_1 without counting padding) or 'max' (FID's E_2).
    count_include_pad: bool = True  # See InceptionA.
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        c = lambda f, k=1, p=0, name=None: BasicConv2d(f, k, padding=p, dtype=self.dtype, name=name)  # noqa: E731
        b1 = c(320, name='branch1x1')(x, train)
        b3 = c(384, name='branch3x3_1')(x, train)
        b3 = jnp.concatenate([c(384, (1, 3), (0, 1), name='branch3x3_2a')(b3, train),
                              c(384, (3, 1), (1, 0), name='branch3x3_2b')(b3, train)], axis=-1)
        d = c(448, name='branch3x3dbl_1')(x, train)
        d = c(384, 3, 1, name='branch3x3dbl_2')(d, train)
        d = jnp.concatenate([c(384, (1, 3), (0, 1), name='branch3x3dbl_3a')(d, train),
                             c(384, (3, 1), (1, 0), name='branch3x3dbl_3b')(d, train)], axis=-1)
        if self.pool == 'max':
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg3(x, self.count_include_pad)
        bp = c(192, name='branch_pool')(pooled, train)
        return jnp.concatenate([b1, b3, d, bp], axis=-1)


class InceptionV3(nn.Module):
    """Inception-v3 classifier; `out['pool3']` is the 2048-d pooled feature used by FID."""

    num_classes: int = 1000  # Classes (1008 for the FID weights); 0: no fc.
    image_size: int = 299  # Input resolution (any size >= 75 works; the weights expect 299).
    variant: str = 'torchvision'  # 'torchvision' or 'fid' (see the module docstring).
    dropout_rate: float = 0.5  # Dropout before fc (training only).
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> tuple[Optional[Array], dict[str, Array]]:
        layers.check_images(images, name='InceptionV3')
        if min(images.shape[1:3]) < 75:
            raise ValueError(f'InceptionV3 needs inputs of at least 75x75, got {tuple(images.shape[1:3])}.')
        if self.variant not in ('torchvision', 'fid'):
            raise ValueError(f"InceptionV3 variant must be 'torchvision' or 'fid', got {self.variant!r}.")
        fid = self.variant == 'fid'
        cip = not fid
        dt = self.dtype
        out = {}
        x = images.astype(dt)
        x = BasicConv2d(32, 3, strides=2, dtype=dt, name='Conv2d_1a_3x3')(x, train)
        x = BasicConv2d(32, 3, dtype=dt, name='Conv2d_2a_3x3')(x, train)
        x = BasicConv2d(64, 3, padding=1, dtype=dt, name='Conv2d_2b_3x3')(x, train)
        x = _max3s2(x)
        out['block0'] = x
        x = BasicConv2d(80, 1, dtype=dt, name='Conv2d_3b_1x1')(x, train)
        x = BasicConv2d(192, 3, dtype=dt, name='Conv2d_4a_3x3')(x, train)
        x = _max3s2(x)
        out['block1'] = x
        x = InceptionA(32, cip, dtype=dt, name='Mixed_5b')(x, train)
        x = InceptionA(64, cip, dtype=dt, name='Mixed_5c')(x, train)
        x = InceptionA(64, cip, dtype=dt, name='Mixed_5d')(x, train)
        x = InceptionB(dtype=dt, name='Mixed_6a')(x, train)
        for name, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
            x = InceptionC(c7, cip, dtype=dt, name=name)(x, train)
        out['block2'] = x
        x = InceptionD(dtype=dt, name='Mixed_7a')(x, train)
        x = InceptionE('avg', cip, dtype=dt, name='Mixed_7b')(x, train)
        x = InceptionE('max' if fid else 'avg', cip, dtype=dt, name='Mixed_7c')(x, train)
        pool3 = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        out['pool3'] = out['pre_logits'] = pool3
        if not self.num_classes:
            return None, out
        h = nn.Dropout(self.dropout_rate)(pool3, deterministic=not train)
        fc = nn.Dense(self.num_classes, dtype=dt, name='fc')
        logits = fc(h).astype(jnp.float32)
        # torch-fidelity's 'logits_unbiased' (the Inception Score features of its FID network): fc without bias.
        out['logits_unbiased'] = logits - fc.variables['params']['bias'].astype(jnp.float32)
        return logits, out


register('InceptionV3', InceptionV3, aliases=('Inception-v3',), paper='inception')
register('InceptionV3-FID', InceptionV3, paper='inception', num_classes=1008, variant='fid')


def load_variables(path: str) -> dict:
    """{'params', 'batch_stats'} of an Inception `.npz`: parameters at the top level and `model_state/batch_stats/...`
    (as `python -m vit_jax.convert --from=official:inception` writes), or `params/...` + `batch_stats/...`."""
    with np.load(path, allow_pickle=False) as f:
        flat = {k: f[k] for k in f.files}
    tree = flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})
    if 'model_state' in tree:  # checkpoint.MODEL_STATE_PREFIX
        tree = {'params': {k: v for k, v in tree.items() if k != 'model_state'}, **tree['model_state']}
    if 'params' not in tree or 'batch_stats' not in tree:
        raise ValueError(f'{path!r} is not an Inception variables file (parameters and model_state/batch_stats/... '
                         'keys, as written by `python -m vit_jax.convert --from=official:inception`).')
    return tree


# ----------------------------------------------------------------------------------------------------------------
# The FID / IS feature interface.
# ----------------------------------------------------------------------------------------------------------------
class InceptionFeatures:
    """`net(images01) -> (pool3 [B, 2048], logits [B, K])` from a frozen Inception-v3.

    Args:
      weights: a `.npz` written by the converter CLI (`python -m vit_jax.convert`), or None for a frozen random-init
        stand-in (`frozen_random=True`: metrics must then be named as stand-ins, e.g. `fid_random_features`).
      variant: 'fid' (pytorch-fid; logits have 1008 classes) or 'torchvision'.
      resize: side the images are resized to (bilinear, align_corners=False, as pytorch-fid); 299 for real
        weights. Smaller values (>= 75) only make sense for the stand-in in tests.
      unbiased_logits: return fc without its bias (torch-fidelity's Inception Score features).
      seed: init seed of the stand-in.
    """

    def __init__(self, weights: Optional[str] = None, *, variant: str = 'fid', resize: int = 299,
                 unbiased_logits: bool = False, seed: int = 0):
        self.variant = variant
        self.resize = int(resize)
        self.unbiased_logits = bool(unbiased_logits)
        num_classes = 1008 if variant == 'fid' else 1000
        if weights:
            variables = load_variables(weights)
            num_classes = int(np.shape(variables['params']['fc']['kernel'])[1])
            self.frozen_random = False
        else:
            self.frozen_random = True
        self.model = InceptionV3(num_classes=num_classes, variant=variant, image_size=self.resize)
        if not weights:
            x = jnp.zeros((1, self.resize, self.resize, 3), jnp.float32)
            variables = jax.jit(lambda: self.model.init(jax.random.PRNGKey(seed), x, train=False))()
            msg = ('!!! Inception-v3 has NO pretrained weights: FID / IS use a FROZEN RANDOM-INIT STAND-IN and are '
                   'reported as fid_random_features / is_random_features (not comparable with any paper). Convert '
                   "pytorch-fid's pt_inception weights with `python -m vit_jax.convert --from=official:inception "
                   '--model=InceptionV3-FID` to get FID. !!!')
            log.warning(msg)
        self.variables = jax.tree_util.tree_map(jnp.asarray, variables)
        self._fn = jax.jit(self._apply)

    def _apply(self, variables: dict, images01: Array) -> tuple[Array, Array]:
        x = images01.astype(jnp.float32)
        if x.shape[1:3] != (self.resize, self.resize):
            x = layers.resize_bilinear(x, (self.resize, self.resize), align_corners=False)
        if self.variant == 'fid':
            x = 2.0 * x - 1.0  # pytorch-fid: [0, 1] -> [-1, 1].
        else:  # torchvision weights expect ImageNet normalisation.
            x = (x - jnp.asarray([0.485, 0.456, 0.406])) / jnp.asarray([0.229, 0.224, 0.225])
        logits, out = self.model.apply(variables, x, train=False)
        return out['pool3'], out['logits_unbiased'] if self.unbiased_logits else logits

    def __call__(self, images01: Array) -> tuple[Array, Array]:
        """Images in [0, 1] (NHWC, any size) -> (pool3 [B, 2048], logits [B, num_classes])."""
        return self._fn(self.variables, images01)
