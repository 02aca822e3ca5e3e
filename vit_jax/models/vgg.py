"""VGG (Simonyan & Zisserman, 2015) in torchvision's layout: the perceptual network of QueryOTR (VGG19, ImageNet).

3x3 convs (padding 1) with ReLU, 2x2 max pools after each block; with `num_classes` the torchvision classifier
(adaptive 7x7 average pool, 4096-4096-classes with ReLU and dropout). `out` holds every ReLU output under its
usual name ('relu1_1', 'relu1_2', 'relu2_1', ..., 'relu5_4') and the pooled maps ('pool1'..'pool5'); perceptual
losses read e.g. relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (SPADE / QueryOTR). Inputs are ImageNet-normalised
RGB (the frozen-net wrapper `objectives.frozen.FrozenNet` does that from the run's value range).

Parameter names are `conv{block}_{i}` and `fc6`, `fc7`, `fc8`; `from_torch_state_dict` converts torchvision's
`features.{idx}` / `classifier.{0,3,6}` keys (the first classifier kernel is permuted from PyTorch's CHW flatten
order to NHWC). `width_divisor` shrinks every layer for fast test stand-ins.
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


def from_torch_state_dict(state_dict: dict, *, depth: Optional[int] = None) -> tuple[VGG, dict]:
    """`(VGG, {'params'})` from torchvision's `vgg{11,13,16,19}().state_dict()` (features only or full)."""
    from vit_jax import convert

    sd = {k.removeprefix('module.'): convert.to_numpy(v) for k, v in state_dict.items()}
    n_convs = len([k for k in sd if k.startswith('features.') and k.endswith('.weight')])
    depth = depth or {8: 11, 10: 13, 13: 16, 16: 19}.get(n_convs)
    if depth not in VGG_BLOCKS:
        raise ValueError(f'Cannot infer the VGG depth from {n_convs} convolutions; pass depth=.')
    first = int(sd['features.0.weight'].shape[0])
    if VGG_WIDTHS[0] % first:
        raise ValueError(f'The first VGG conv has {first} channels, not 64 / an integer.')
    divisor = VGG_WIDTHS[0] // first
    params = {}
    read = set()
    for name, i in feature_index(depth).items():
        params[name] = convert.conv(sd, f'features.{i}')
        read |= {f'features.{i}.weight', f'features.{i}.bias'}
    num_classes = 0
    if 'classifier.6.weight' in sd:
        num_classes = int(sd['classifier.6.weight'].shape[0])
        fc6 = convert.linear(sd, 'classifier.0')
        c = params[f'conv5_{VGG_BLOCKS[depth][-1]}']['kernel'].shape[-1]
        # PyTorch flattens [C, 7, 7]; here the map is [7, 7, C].
        fc6['kernel'] = fc6['kernel'].reshape(c, 7, 7, -1).transpose(1, 2, 0, 3).reshape(49 * c, -1)
        params['fc6'] = fc6
        params['fc7'] = convert.linear(sd, 'classifier.3')
        params['fc8'] = convert.linear(sd, 'classifier.6')
        read |= {f'classifier.{i}.{w}' for i in (0, 3, 6) for w in ('weight', 'bias')}
    unread = sorted(set(sd) - read)
    if unread:
        raise ValueError(f'Unconverted VGG weights (a VGG with BatchNorm?): {unread[:8]}.')
    return VGG(num_classes=num_classes, depth=depth, width_divisor=divisor), {'params': params}


def perceptual_layer_names(layers_: Sequence[str]) -> tuple[str, ...]:
    """Validates names like 'relu3_1' against VGG's outputs."""
    names = tuple(str(n) for n in layers_)
    for n in names:
        if not (n.startswith('relu') or n.startswith('pool')):
            raise ValueError(f'Unknown VGG feature {n!r}; use relu{{block}}_{{i}} or pool{{block}} names.')
    return names



def main(argv: Optional[list[str]] = None) -> int:
    """`python -m vit_jax.models.vgg vgg19-dcbb9e9d.pth vgg19.npz [--with_classifier]`."""
    import argparse

    from vit_jax import checkpoint, convert

    p = argparse.ArgumentParser(prog='python -m vit_jax.models.vgg', description=(
        'Convert a torchvision VGG state dict to .npz (features only by default: the perceptual-loss network, '
        "model overrides num_classes=0)."))
    p.add_argument('input')
    p.add_argument('output')
    p.add_argument('--with_classifier', action='store_true', help='Keep fc6-fc8 (then num_classes=1000).')
    args = p.parse_args(argv)
    sd = convert.read_torch_state_dict(args.input)
    if not args.with_classifier:
        sd = {k: v for k, v in sd.items() if not k.startswith('classifier.')}
    model, variables = from_torch_state_dict(sd)
    checkpoint.save_npz(args.output, variables['params'])
    print(f'Wrote {args.output}: VGG{model.depth} (num_classes={model.num_classes}).')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
