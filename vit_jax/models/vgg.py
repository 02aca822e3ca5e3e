"""VGG (Simonyan & Zisserman, 2015) in torchvision's layout: the perceptual network of QueryOTR (VGG19, ImageNet).

3x3 convs (padding 1) with ReLU, 2x2 max pools after each block; with `num_classes` the torchvision classifier
(adaptive 7x7 average pool, 4096-4096-classes with ReLU and dropout). `out` holds every ReLU output under its
usual name ('relu1_1', 'relu1_2', 'relu2_1', ..., 'relu5_4') and the pooled maps ('pool1'..'pool5'); perceptual
losses read e.g. relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (SPADE / QueryOTR). Inputs are ImageNet-normalised
RGB (the frozen-net wrapper `objectives.frozen.FrozenNet` does that from the run's value range).

Parameter names are `conv{block}_{i}` and `fc6`, `fc7`, `fc8`; torchvision's weights convert with
`python -m vit_jax.convert --from=official:vgg --model=VGG19 --model.num_classes=0 vgg19.pth --out vgg19.npz`
(`vit_jax/porting/vgg.py`). `width_divisor` shrinks every layer for fast test stand-ins.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import layers, register

Array = jax.Array

VGG_BLOCKS = {  # Convs per block.
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
VGG_WIDTHS = (64, 128, 256, 512, 512)


def adaptive_avg_pool(x: Array, size: int) -> Array:
    """PyTorch AdaptiveAvgPool2d(size) on NHWC (bins [floor(i H / s), ceil((i + 1) H / s)))."""
    h, w = x.shape[1:3]
    if (h, w) == (size, size):
        return x
    rows = []
    for i in range(size):
        y0, y1 = (i * h) // size, -(-((i + 1) * h) // size)
        cols = []
        for j in range(size):
            x0, x1 = (j * w) // size, -(-((j + 1) * w) // size)
            cols.append(jnp.mean(x[:, y0:y1, x0:x1], axis=(1, 2)))
        rows.append(jnp.stack(cols, axis=1))
    return jnp.stack(rows, axis=1)


class VGG(nn.Module):
    """VGG-11/13/16/19 (no BatchNorm), torchvision layout."""

    num_classes: int = 1000  # Classes; 0: convolutional features only (no classifier).
    image_size: int = 224  # Input resolution (any size works for the features).
    depth: int = 19  # 11, 13, 16 or 19.
    width_divisor: int = 1  # Divides every width (test stand-ins).
    dropout_rate: float = 0.5  # Classifier dropout (training only).
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> tuple[Optional[Array], dict[str, Array]]:
        layers.check_images(images, name='VGG')
        if self.depth not in VGG_BLOCKS:
            raise ValueError(f'VGG depth must be one of {sorted(VGG_BLOCKS)}, got {self.depth}.')
        out = {}
        x = images.astype(self.dtype)
        for b, (n, width) in enumerate(zip(VGG_BLOCKS[self.depth], VGG_WIDTHS), start=1):
            for i in range(1, n + 1):
                x = nn.Conv(max(width // self.width_divisor, 1), (3, 3), padding=1, dtype=self.dtype,
                            kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
                            name=f'conv{b}_{i}')(x)
                x = nn.relu(x)
                out[f'relu{b}_{i}'] = x
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            out[f'pool{b}'] = x
        if not self.num_classes:
            return None, out
        x = adaptive_avg_pool(x, 7).reshape(x.shape[0], -1)
        hidden = max(4096 // self.width_divisor, 1)
        for name in ('fc6', 'fc7'):
            x = nn.relu(nn.Dense(hidden, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01), name=name)(x))
            x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        out['pre_logits'] = x
        logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01),
                          name='fc8')(x)
        return logits.astype(jnp.float32), out


register('VGG19', VGG, aliases=('VGG-19',), paper='vgg', depth=19)
register('VGG16', VGG, aliases=('VGG-16',), paper='vgg', depth=16)


def feature_index(depth: int = 19) -> dict[str, int]:
    """conv name -> index in torchvision's `features` Sequential (convs, ReLUs and pools counted)."""
    idx, names = 0, {}
    for b, n in enumerate(VGG_BLOCKS[depth], start=1):
        for i in range(1, n + 1):
            names[f'conv{b}_{i}'] = idx
            idx += 2  # conv, ReLU
        idx += 1  # max pool
    return names


def perceptual_layer_names(layers_: Sequence[str]) -> tuple[str, ...]:
    """Validates names like 'relu3_1' against VGG's outputs."""
    names = tuple(str(n) for n in layers_)
    for n in names:
        if not (n.startswith('relu') or n.startswith('pool')):
            raise ValueError(f'Unknown VGG feature {n!r}; use relu{{block}}_{{i}} or pool{{block}} names.')
    return names
