"""Inception-v3 weights (torchvision `inception_v3`, pytorch-fid's `pt_inception-2015-12-05`) -> vit_jax.

    python -m vit_jax.convert --from=official:inception --model=InceptionV3-FID pt_inception-2015-12-05-6726825d.pth \\
        --out inception.npz          # then evals.<name>.inception.weights=inception.npz (FID / IS)

Module names equal torchvision's attributes (`Conv2d_1a_3x3.{conv, bn}`, `Mixed_5b.branch1x1.{conv, bn}`, ..., `fc`),
so the conversion walks the model's own tree: conv (O, I, kh, kw) -> (kh, kw, I, O), BatchNorm weight/bias ->
`params`, running mean/var -> `batch_stats`. `AuxLogits.*` (the auxiliary classifier, not built) and
`num_batches_tracked` are ignored.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from vit_jax import models
from vit_jax.models.inception import InceptionV3
from vit_jax.porting import registry
from vit_jax.porting.common import to_numpy


@registry.official('inception', source='pytorch/vision, mseitzer/pytorch-fid', models=('InceptionV3',))
def convert(sd: registry.StateDict, model: InceptionV3) -> dict:
    """Inception-v3, torchvision's layout ('torchvision' or pytorch-fid's 'fid' variant); BN stats in `batch_stats`."""
    if not isinstance(model, InceptionV3):
        raise registry.ConversionError(f'official:inception converts into InceptionV3, not {type(model).__name__}.')
    sd.ignore(r'AuxLogits\..*', r'.*\.num_batches_tracked')
    shapes = models.init_shapes(model)
    params: dict = {}
    stats: dict = {}

    def walk(p_tree: dict, path: tuple[str, ...], p_out: dict, s_out: dict) -> None:
        for name, sub in p_tree.items():
            here = path + (name,)
            prefix = '.'.join(here)
            if name == 'fc':
                p_out['fc'] = {'kernel': to_numpy(sd['fc.weight']).T, 'bias': to_numpy(sd['fc.bias'])}
            elif 'conv' in sub and 'bn' in sub:  # A BasicConv2d.
                w = to_numpy(sd[f'{prefix}.conv.weight'])
                p_out[name] = {'conv': {'kernel': np.transpose(w, (2, 3, 1, 0))},
                               'bn': {'scale': to_numpy(sd[f'{prefix}.bn.weight']),
                                      'bias': to_numpy(sd[f'{prefix}.bn.bias'])}}
                s_out[name] = {'bn': {'mean': to_numpy(sd[f'{prefix}.bn.running_mean']),
                                      'var': to_numpy(sd[f'{prefix}.bn.running_var'])}}
            else:
                p_out[name], s_out[name] = {}, {}
                walk(sub, here, p_out[name], s_out[name])

    walk(shapes['params'], (), params, stats)
    return {'params': params, 'batch_stats': stats}


def from_torch_state_dict(state_dict: dict, variant: Optional[str] = None) -> tuple[InceptionV3, dict]:
    """`(InceptionV3, {'params', 'batch_stats'})` from a torchvision or pytorch-fid Inception-v3 state dict.

    The class count comes from `fc.weight`; `variant` defaults to 'fid' for 1008 classes (pytorch-fid's weights),
    else 'torchvision'. Any key left unread, any missing key and any shape mismatch is a ConversionError.
    """
    sd = registry.unwrap(state_dict)
    if 'Conv2d_1a_3x3.conv.weight' not in sd:
        raise registry.ConversionError('Not an Inception-v3 state dict: no Conv2d_1a_3x3.conv.weight (top-level '
                                       f'keys: {sorted({k.split(".")[0] for k in sd})}).')
    num_classes = int(np.shape(sd['fc.weight'])[0]) if 'fc.weight' in sd else 0
    model = InceptionV3(num_classes=num_classes, variant=variant or ('fid' if num_classes == 1008 else 'torchvision'))
    return model, registry.from_official('inception', sd, model)


def save_variables(path: str, variables: dict) -> None:
    """Writes {'params', 'batch_stats'} as one .npz (params at the top level, `model_state/batch_stats/...`)."""
    from vit_jax import checkpoint

    checkpoint.save_npz(path, variables['params'], model_state={k: v for k, v in variables.items() if k != 'params'})


def load_variables(path: str) -> dict:
    """Reads an Inception variables file back into {'params', 'batch_stats'} (`models.inception.load_variables`)."""
    from vit_jax.models import inception

    return inception.load_variables(path)
