"""BiT ResNet (weight-standardised convs + GroupNorm), the stem of the ViT release's hybrid models.

Names follow the release (`conv_root`, `gn_root`, `block{i}/unit{j}/conv{1,2,3}`, `gn{1,2,3}`, `conv_proj`,
`gn_proj`) so the released R50+ViT-B/16 and R26+ViT-S/32 `.npz` files load directly.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def weight_standardize(w: Array, axis: Sequence[int], eps: float, style: str = 'std') -> Array:
    """Standardises a conv kernel to zero mean and unit (population) std over `axis`.

    style 'std': (w - mean) / (std + eps) (the ViT release); 'var': (w - mean) / sqrt(var + eps) (timm's
    StdConv2dSame and HuggingFace BiT, e.g. the DPT-Hybrid backbone with eps 1e-8).
    """
    w = w - jnp.mean(w, axis=axis, keepdims=True)
    if style == 'var':
        return w / jnp.sqrt(jnp.mean(jnp.square(w), axis=axis, keepdims=True) + eps)
    if style != 'std':
        raise ValueError(f"Weight standardisation style must be 'std' or 'var', got {style!r}.")
    return w / (jnp.std(w, axis=axis, keepdims=True) + eps)


# Epsilons (weight-standardisation style and eps, GroupNorm eps) of the two BiT conventions.
RESNET_VARIANTS = {
    'release': dict(ws_style='std', ws_eps=1e-5, gn_eps=1e-6),  # The ViT release (flax GroupNorm default eps).
    'timm': dict(ws_style='var', ws_eps=1e-8, gn_eps=1e-5),  # timm vit_*_resnet50_* / HuggingFace BiT (DPT-Hybrid).
}


class StdConv(nn.Conv):
    """Convolution with weight standardisation over (H, W, Cin) (BiT)."""

    ws_eps: float = 1e-5  # Standardisation epsilon.
    ws_style: str = 'std'  # 'std' (the release) or 'var' (timm / HuggingFace); see weight_standardize.

    def param(self, name: str, *args, **kwargs):
        param = super().param(name, *args, **kwargs)
        if name == 'kernel':
            param = weight_standardize(param, axis=(0, 1, 2), eps=self.ws_eps, style=self.ws_style)
        return param


class ResidualUnit(nn.Module):
    """Bottleneck unit: 1x1 -> 3x3 (strided) -> 1x1 (4x width), GroupNorm after each, projection shortcut."""

    features: int  # Bottleneck width; the output has 4x this.
    strides: tuple[int, int] = (1, 1)  # Stride of the 3x3 conv and the projection.
    dtype: Any = jnp.float32  # Compute dtype.
    variant: str = 'release'  # Epsilon convention, a key of RESNET_VARIANTS ('release' or 'timm').

    @nn.compact
    def __call__(self, x: Array) -> Array:
        v = RESNET_VARIANTS[self.variant]
        conv = lambda f, k, s=(1, 1), name=None: StdConv(f, k, strides=s, use_bias=False, dtype=self.dtype,  # noqa
                                                          ws_eps=v['ws_eps'], ws_style=v['ws_style'], name=name)
        gn = lambda name, **kw: nn.GroupNorm(epsilon=v['gn_eps'], dtype=self.dtype, name=name, **kw)  # noqa: E731
        residual = x
        if x.shape[-1] != self.features * 4 or self.strides != (1, 1):
            residual = gn('gn_proj')(conv(self.features * 4, (1, 1), self.strides, 'conv_proj')(x))
        y = nn.relu(gn('gn1')(conv(self.features, (1, 1), name='conv1')(x)))
        y = nn.relu(gn('gn2')(conv(self.features, (3, 3), self.strides, 'conv2')(y)))
        y = gn('gn3', scale_init=nn.initializers.zeros)(conv(self.features * 4, (1, 1), name='conv3')(y))
        return nn.relu(residual + y)


class ResNetStage(nn.Module):
    """A stage of `block_size` residual units (`unit1` ... `unitN`); the first one carries the stride."""

    block_size: int  # Units in the stage.
    nout: int  # Bottleneck width.
    first_stride: tuple[int, int]  # Stride of the first unit.
    dtype: Any = jnp.float32  # Compute dtype.
    variant: str = 'release'  # Epsilon convention, a key of RESNET_VARIANTS.

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = ResidualUnit(self.nout, strides=self.first_stride, dtype=self.dtype, variant=self.variant, name='unit1')(x)
        for i in range(1, self.block_size):
            x = ResidualUnit(self.nout, dtype=self.dtype, variant=self.variant, name=f'unit{i + 1}')(x)
        return x


def resnet_stem(x: Array, num_layers: Sequence[int] = (3, 4, 9), width_factor: float = 1.0,
                dtype: Any = jnp.float32, *, variant: str = 'release', stages: Optional[dict] = None) -> Array:
    """The hybrid's ResNet: root (7x7/2 StdConv, GN, ReLU, 3x3/2 max-pool) then the stages.

    Call it inside a parent's `@nn.compact` method: the modules land in the parent's scope with the release's
    top-level names (`conv_root`, `gn_root`, `block1`, ...). The output stride is 4 * 2^(len(num_layers) - 1):
    16 for R50's three stages (3, 4, 9), 32 for R26's four; `num_layers=()` is the root only (R+ViT-Ti/16).
    `variant` picks the epsilon convention (RESNET_VARIANTS); a dict passed as `stages` receives the root output
    ('root', stride 4) and every stage's output ('block1', 'block2', ...) (DPT-Hybrid taps block1 and block2).
    """
    v = RESNET_VARIANTS[variant]
    width = int(64 * width_factor)
    x = StdConv(width, (7, 7), strides=(2, 2), use_bias=False, dtype=dtype, ws_eps=v['ws_eps'],
                ws_style=v['ws_style'], name='conv_root')(x)
    x = nn.relu(nn.GroupNorm(epsilon=v['gn_eps'], dtype=dtype, name='gn_root')(x))
    x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='SAME')
    if stages is not None:
        stages['root'] = x
    for i, block_size in enumerate(num_layers):
        x = ResNetStage(block_size, width * 2**i, first_stride=(1, 1) if i == 0 else (2, 2), dtype=dtype,
                        variant=variant, name=f'block{i + 1}')(x)
        if stages is not None:
            stages[f'block{i + 1}'] = x
    return x
