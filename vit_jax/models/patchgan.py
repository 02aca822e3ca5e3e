"""Multi-scale PatchGAN discriminator with spectral norm + InstanceNorm (MUNIT's `MsImageDis`, as QueryOTR uses it)
and DiffAugment (Zhao et al., 2020) in JAX.

Per scale: reflect-pad 1 -> conv 4x4 s2 -> 64 channels -> LeakyReLU(0.2) (no norm); then `n_layers - 1` times
[reflect-pad 1 -> spectrally normalised conv 4x4 s2 doubling the channels -> InstanceNorm (no affine) -> LeakyReLU];
then a plain conv 4x4 s1 (zero padding 1) to one logit map. Scale s + 1 sees the input average-pooled 3x3 / stride 2
(padding 1, padding not counted). QueryOTR: 2 scales, 4 layers, 64 channels; hinge losses summed over scales.

Spectral norm keeps its power-iteration vector `u` and `sigma` in the 'batch_stats' collection (flax
`nn.SpectralNorm`); pass `update_stats=True` in the discriminator's own step (one power iteration per call, as
PyTorch's `spectral_norm` in training mode).

This differs from `vit_jax.models.vqgan.PatchGAN` (taming's single-scale D with GroupNorm and zero padding), which
stays as it is for PeCo.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import layers

Array = jax.Array


def _reflect_pad(x: Array, p: int) -> Array:
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode='reflect')


class PatchDiscriminator(nn.Module):
    """One scale of the multi-scale discriminator; returns a [B, h, w, 1] logit map."""

    ndf: int = 64  # Channels of the first conv.
    n_layers: int = 4  # Strided convs (the first without norm).
    spectral_norm: bool = True  # Spectral norm on the normalised convs ('sn' of 'snin').
    instance_norm: bool = True  # InstanceNorm (no affine) on the normalised convs ('in' of 'snin').
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array, update_stats: bool = False) -> Array:
        init = layers.torch_kernel_init  # PyTorch's default conv init.
        h = nn.Conv(self.ndf, (4, 4), strides=(2, 2), padding='VALID', kernel_init=init, dtype=self.dtype,
                    name='conv_0')(_reflect_pad(x, 1))
        h = nn.leaky_relu(h, 0.2)
        c = self.ndf
        for i in range(1, self.n_layers):
            c *= 2
            conv = nn.Conv(c, (4, 4), strides=(2, 2), padding='VALID', kernel_init=init, dtype=self.dtype,
                           name=f'conv_{i}')
            h = _reflect_pad(h, 1)
            if self.spectral_norm:
                h = nn.SpectralNorm(conv, name=f'sn_{i}')(h, update_stats=update_stats)
            else:
                h = conv(h)
            if self.instance_norm:
                h = nn.InstanceNorm(epsilon=1e-5, use_scale=False, use_bias=False, dtype=self.dtype)(h)
            h = nn.leaky_relu(h, 0.2)
        return nn.Conv(1, (4, 4), padding=1, kernel_init=init, dtype=self.dtype, name='conv_out')(h).astype(
            jnp.float32)


class MultiScalePatchGAN(nn.Module):
    """`num_scales` PatchDiscriminators on successively 2x average-pooled inputs; returns a list of logit maps."""

    num_scales: int = 2  # Scales.
    ndf: int = 64  # Channels of each scale's first conv.
    n_layers: int = 4  # Strided convs per scale.
    spectral_norm: bool = True  # See PatchDiscriminator.
    instance_norm: bool = True  # See PatchDiscriminator.
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array, update_stats: bool = False) -> list[Array]:
        outs = []
        for s in range(self.num_scales):
            outs.append(PatchDiscriminator(ndf=self.ndf, n_layers=self.n_layers, spectral_norm=self.spectral_norm,
                                           instance_norm=self.instance_norm, dtype=self.dtype,
                                           name=f'scale_{s}')(x, update_stats))
            if s + 1 < self.num_scales:
                x = nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), count_include_pad=False)
        return outs


def hinge_d_loss(real_logits: Sequence[Array], fake_logits: Sequence[Array]) -> Array:
    """sum over scales of mean relu(1 - D(real)) + mean relu(1 + D(fake))."""
    return sum(jnp.mean(jax.nn.relu(1.0 - r)) + jnp.mean(jax.nn.relu(1.0 + f))
               for r, f in zip(real_logits, fake_logits))


def hinge_g_loss(fake_logits: Sequence[Array]) -> Array:
    """sum over scales of -mean D(fake)."""
    return sum(-jnp.mean(f) for f in fake_logits)


# ----------------------------------------------------------------------------------------------------------------
# DiffAugment (policy 'color,translation,cutout'), NHWC, per-example randomness.
# ----------------------------------------------------------------------------------------------------------------
def rand_brightness(x: Array, rng: Array) -> Array:
    """x + U(-0.5, 0.5) per example."""
    return x + (jax.random.uniform(rng, (x.shape[0], 1, 1, 1), x.dtype) - 0.5)


def rand_saturation(x: Array, rng: Array) -> Array:
    """Scales the deviation from the per-pixel channel mean by U(0, 2)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    return (x - mean) * (jax.random.uniform(rng, (x.shape[0], 1, 1, 1), x.dtype) * 2.0) + mean


def rand_contrast(x: Array, rng: Array) -> Array:
    """Scales the deviation from the per-image mean by U(0.5, 1.5)."""
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) * (jax.random.uniform(rng, (x.shape[0], 1, 1, 1), x.dtype) + 0.5) + mean


def rand_translation(x: Array, rng: Array, ratio: float = 0.125) -> Array:
    """Shifts each image by integers in [-ratio * size, ratio * size] (rounded), filling with zeros."""
    b, h, w, _ = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ry, rx = jax.random.split(rng)
    ty = jax.random.randint(ry, (b, 1, 1), -sh, sh + 1)
    tx = jax.random.randint(rx, (b, 1, 1), -sw, sw + 1)
    gy = jnp.clip(jnp.arange(h)[None, :, None] + ty + 1, 0, h + 1)
    gx = jnp.clip(jnp.arange(w)[None, None, :] + tx + 1, 0, w + 1)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return xp[jnp.arange(b)[:, None, None], gy, gx]


def rand_cutout(x: Array, rng: Array, ratio: float = 0.5) -> Array:
    """Zeroes one (ratio * h) x (ratio * w) square per image at a random centre (clipped at the borders)."""
    b, h, w, _ = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ry, rx = jax.random.split(rng)
    oy = jax.random.randint(ry, (b, 1, 1), 0, h + (1 - ch % 2))
    ox = jax.random.randint(rx, (b, 1, 1), 0, w + (1 - cw % 2))
    y0, x0 = oy - ch // 2, ox - cw // 2
    r = jnp.arange(h)[None, :, None]
    c = jnp.arange(w)[None, None, :]
    inside = (r >= y0) & (r < y0 + ch) & (c >= x0) & (c < x0 + cw)
    return x * (1.0 - inside.astype(x.dtype))[..., None]


_AUGMENTS = {
    'color': (rand_brightness, rand_saturation, rand_contrast),
    'translation': (rand_translation,),
    'cutout': (rand_cutout,),
}


def diff_augment(x: Array, rng: Array, policy: str = 'color,translation,cutout') -> Array:
    """DiffAugment: differentiable augmentations applied in the order of `policy` ('' or None: identity)."""
    if not policy:
        return x
    fns = []
    for name in policy.split(','):
        name = name.strip()
        if name not in _AUGMENTS:
            raise ValueError(f'Unknown DiffAugment policy {name!r}; choose from {sorted(_AUGMENTS)}.')
        fns.extend(_AUGMENTS[name])
    for i, fn in enumerate(fns):
        x = fn(x, jax.random.fold_in(rng, i))
    return x
