"""torchvision VGG weights (`vgg{11,13,16,19}`, no BatchNorm) -> vit_jax `VGG` (QueryOTR's perceptual network).

    python -m vit_jax.convert --from=official:vgg --model=VGG19 --model.num_classes=0 vgg19-dcbb9e9d.pth --out vgg19.npz

torchvision's `features.{idx}` convs become `conv{block}_{i}`, `classifier.{0,3,6}` become `fc6`, `fc7`, `fc8` (the
first classifier kernel is permuted from PyTorch's CHW flatten order to NHWC). A model built with `num_classes=0`
(convolutional features only, the perceptual net) takes the convs of a full checkpoint and leaves its classifier.
"""

from __future__ import annotations

from typing import Optional

from vit_jax.models.vgg import VGG, VGG_BLOCKS, VGG_WIDTHS, feature_index
from vit_jax.porting import registry
from vit_jax.porting.common import conv, linear


@registry.official('vgg', source='pytorch/vision', models=('VGG',))
def convert(sd: registry.StateDict, model: VGG) -> dict:
    """torchvision VGG-11/13/16/19 (features, and the classifier when the model has one)."""
    if not isinstance(model, VGG):
        raise registry.ConversionError(f'official:vgg converts into VGG, not {type(model).__name__}.')
    params = {name: conv(sd, f'features.{i}') for name, i in feature_index(model.depth).items()}
    if model.num_classes:
        fc6 = linear(sd, 'classifier.0')
        c = params[f'conv5_{VGG_BLOCKS[model.depth][-1]}']['kernel'].shape[-1]
        # PyTorch flattens [C, 7, 7]; here the map is [7, 7, C].
        fc6['kernel'] = fc6['kernel'].reshape(c, 7, 7, -1).transpose(1, 2, 0, 3).reshape(49 * c, -1)
        params['fc6'] = fc6
        params['fc7'] = linear(sd, 'classifier.3')
        params['fc8'] = linear(sd, 'classifier.6')
    else:
        sd.ignore(r'classifier\.[036]\.(weight|bias)')  # A features-only model: the checkpoint's classifier is unused.
    return {'params': params}


def from_torch_state_dict(state_dict: dict, *, depth: Optional[int] = None) -> tuple[VGG, dict]:
    """`(VGG, {'params'})` from torchvision's `vgg{11,13,16,19}().state_dict()` (features only or full); the depth,
    width and class count are read from the shapes."""
    sd = registry.unwrap(state_dict)
    n_convs = len([k for k in sd if k.startswith('features.') and k.endswith('.weight')])
    depth = depth or {8: 11, 10: 13, 13: 16, 16: 19}.get(n_convs)
    if depth not in VGG_BLOCKS:
        raise registry.ConversionError(f'Cannot infer the VGG depth from {n_convs} convolutions; pass depth=.')
    first = int(sd['features.0.weight'].shape[0])
    if VGG_WIDTHS[0] % first:
        raise registry.ConversionError(f'The first VGG conv has {first} channels, not 64 / an integer.')
    num_classes = int(sd['classifier.6.weight'].shape[0]) if 'classifier.6.weight' in sd else 0
    model = VGG(num_classes=num_classes, depth=depth, width_divisor=VGG_WIDTHS[0] // first)
    return model, registry.from_official('vgg', sd, model)
