"""Official DPT checkpoints (isl-org/DPT, `dpt/{models,blocks,vit}.py`) -> `DPT`.

DPTDepthModel (`dpt_large-midas`, `dpt_hybrid-midas`, the KITTI / NYU fine-tunes) and DPTSegmentationModel
(`dpt_large-ade20k`, `dpt_hybrid-ade20k`) with a timm ViT-L/16 (`vitl16_384`), ViT-B/16 (`vitb16_384`) or the
R50+ViT-B/16 hybrid (`vitb_rn50_384`) backbone. Official names (n = 1..4) -> vit_jax:

    pretrained.model.cls_token / pos_embed / patch_embed.proj -> cls / Transformer/posembed_input/pos_embedding /
                                                                 embedding
    pretrained.model.blocks.{i}.* / norm / head               -> Transformer/encoderblock_{i}/* / encoder_norm / head
                                                                 (timm's 1000-way classifier, unused by DPT; kept with
                                                                 backbone_classes=1000, dropped with 0)
    pretrained.model.patch_embed.backbone.stem.conv / stem.norm
                                                              -> conv_root / gn_root                 (hybrid)
    ...backbone.stages.{s}.blocks.{j}.conv{1,2,3} / norm{1,2,3} / downsample.conv / downsample.norm
                                                              -> block{s+1}/unit{j+1}/conv{1,2,3} / gn{1,2,3} /
                                                                 conv_proj / gn_proj                 (hybrid)
    pretrained.act_postprocess{n}.0.project.0                 -> neck/reassemble{n}/readout_project ('project' readout)
    pretrained.act_postprocess{n}.3 / .4                      -> neck/reassemble{n}/projection / resize (a transposed
                                                                 conv for n = 1, 2: kernel flipped; a stride-2 conv
                                                                 for n = 4). The hybrid's n = 1, 2 are identities on
                                                                 the ResNet stages (no weights).
    scratch.layer{n}_rn                                       -> neck/layer{n}_rn
    scratch.refinenet{n}.resConfUnit{1,2}.conv{1,2} / bn{1,2} / out_conv
                                                              -> neck/refinenet{n}/resConfUnit{1,2}/conv{1,2} /
                                                                 bn{1,2} / out_conv
    scratch.output_conv.{0,2,4} (depth)                       -> depth_head/conv1, conv2, conv3
    scratch.output_conv.{0,1,4} (segmentation)                -> seg_head/conv, bn, classifier
    auxlayer.{0,1,4} (segmentation)                           -> aux_head/conv, bn, classifier (build the model with
                                                                 aux_head=True: the official module always has it)

BatchNorm running statistics go to `batch_stats` (`num_batches_tracked` is dropped). The layers' hyper-parameters
(depth vs segmentation head, readout, hooks, backbone) must be those of the model; a mismatch leaves keys unread or
variables missing, and both are errors.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vit_jax.models.vit import VisionTransformer
from vit_jax.porting import common, registry

_P = 'pretrained.model.'


def timm_resnetv2(sd: registry.StateDict, prefix: str, num_stages: int) -> dict:
    """timm ResNetV2 (non-pre-activation bottlenecks with StdConv + GroupNorm, the ViT-hybrid backbone:
    `stem.conv`, `stem.norm`, `stages.{s}.blocks.{j}.*`) -> vit_jax `resnet_stem` names."""
    params = {'conv_root': common.conv(sd, f'{prefix}stem.conv', bias=False),
              'gn_root': common.norm(sd, f'{prefix}stem.norm')}
    for s in range(num_stages):
        block, j = {}, 0
        while f'{prefix}stages.{s}.blocks.{j}.conv1.weight' in sd:
            b = f'{prefix}stages.{s}.blocks.{j}'
            unit = {f'conv{c}': common.conv(sd, f'{b}.conv{c}', bias=False) for c in (1, 2, 3)}
            unit.update({f'gn{c}': common.norm(sd, f'{b}.norm{c}') for c in (1, 2, 3)})
            if f'{b}.downsample.conv.weight' in sd:
                unit['conv_proj'] = common.conv(sd, f'{b}.downsample.conv', bias=False)
                unit['gn_proj'] = common.norm(sd, f'{b}.downsample.norm')
            block[f'unit{j + 1}'] = unit
            j += 1
        params[f'block{s + 1}'] = block
    return params


def conv_transpose(sd: registry.StateDict, prefix: str) -> dict:
    """torch ConvTranspose2d (in, out, kh, kw) -> flax ConvTranspose {'kernel': (kh, kw, in, out), 'bias'}.

    flax's ConvTranspose (transpose_kernel=False) does not flip the kernel, torch's does: flipped spatially."""
    w = np.asarray(sd[f'{prefix}.weight'])
    return {'kernel': np.ascontiguousarray(np.transpose(w, (2, 3, 0, 1))[::-1, ::-1]),
            'bias': np.asarray(sd[f'{prefix}.bias'])}


def fusion_block(sd: registry.StateDict, prefix: str, use_bn: bool, *, out_conv: str = 'out_conv',
                 unit: str = 'resConfUnit', conv: str = 'conv', bn: str = 'bn') -> tuple[dict, dict]:
    """A FeatureFusionBlock `prefix` -> (params, batch_stats) of `refinenet{n}`: `{out_conv}` and two
    ResidualConvUnits `{unit}{1,2}` of two 3x3 convs `{conv}{1,2}` (biased without BatchNorm), with `use_bn` a
    BatchNorm `{bn}{1,2}` after each (the official names by default)."""
    block, stats = {'out_conv': common.conv(sd, f'{prefix}.{out_conv}')}, {}
    for u in (1, 2):
        p, params, unit_stats = f'{prefix}.{unit}{u}', {}, {}
        for c in (1, 2):
            params[f'conv{c}'] = common.conv(sd, f'{p}.{conv}{c}', bias=not use_bn)
            if use_bn:
                params[f'bn{c}'], unit_stats[f'bn{c}'] = common.batchnorm(sd, f'{p}.{bn}{c}')
        block[f'resConfUnit{u}'] = params
        if unit_stats:
            stats[f'resConfUnit{u}'] = unit_stats
    return block, stats


def _head(sd: registry.StateDict, prefix: str) -> tuple[dict, dict]:
    bn_p, bn_s = common.batchnorm(sd, f'{prefix}.1')
    return ({'conv': common.conv(sd, f'{prefix}.0', bias=False), 'bn': bn_p,
             'classifier': common.conv(sd, f'{prefix}.4')}, {'bn': bn_s})


@registry.official('dpt', source='isl-org/DPT', models=('DPT-',))
def convert(sd: registry.StateDict, model: Any) -> dict:
    """isl-org/DPT (DPTDepthModel / DPTSegmentationModel; ViT-L/16, ViT-B/16, R50+ViT-B/16 hybrid) -> DPT."""
    sd.ignore(r'.*\.num_batches_tracked')
    if f'{_P}dist_token' in sd:
        raise registry.ConversionError('official:dpt: the checkpoint has a DeiT-distilled backbone '
                                       '(pretrained.model.dist_token), which vit_jax DPT does not have.')
    hybrid = any(k.startswith(f'{_P}patch_embed.backbone.') for k in sd)
    if hybrid != (model.stem == 'resnet'):
        raise registry.ConversionError(
            f'official:dpt: the checkpoint has {"a ResNet-hybrid" if hybrid else "a plain ViT"} backbone but the '
            f'model is built with stem={model.stem!r}; use {"DPT-Hybrid" if hybrid else "DPT-Large / DPT-Base"}.')
    params = common.timm_vit(sd, _P, model.num_layers, model.num_heads)
    if hybrid:
        params.update(timm_resnetv2(sd, f'{_P}patch_embed.backbone.', len(model.resnet_layers)))
    if model.backbone_classes:
        params['head'] = common.linear(sd, f'{_P}head')
    else:  # timm's ImageNet classifier takes no part in DPT; a model built without it drops it.
        sd.ignore(r'pretrained\.model\.head\.(weight|bias)')

    factors = model.reassemble_factors
    if factors is None:  # As DPT.__call__: to 1/4, 1/8, 1/16, 1/32 of the input.
        stride = VisionTransformer(stem=model.stem, patch_size=model.patch_size, resnet_layers=model.resnet_layers,
                                   parent=None).total_stride
        factors = tuple(stride / (4 * 2**i) for i in range(len(model.hooks)))
    neck, neck_stats = {}, {}
    for n, hook in enumerate(model.hooks, start=1):
        ap = f'pretrained.act_postprocess{n}'
        if isinstance(hook, str):  # A ResNet-stage tap: the official act_postprocess is an identity.
            if any(k.startswith(f'{ap}.') for k in sd):
                raise registry.ConversionError(
                    f'official:dpt: the checkpoint has weights in {ap} (a ViT-block tap) but the model taps '
                    f'{hook!r} there; build it with the checkpoint\'s hooks.')
            continue
        r = {}
        if model.readout == 'project':
            r['readout_project'] = common.linear(sd, f'{ap}.0.project.0')
        r['projection'] = common.conv(sd, f'{ap}.3')
        # ConvTranspose2d upsamples (act_postprocess1/2), a stride-2 Conv2d downsamples (act_postprocess4).
        if factors[n - 1] > 1:
            r['resize'] = conv_transpose(sd, f'{ap}.4')
        elif factors[n - 1] < 1:
            r['resize'] = common.conv(sd, f'{ap}.4')
        neck[f'reassemble{n}'] = r
    use_bn = model.fusion_bn if model.fusion_bn is not None else model.head == 'segmentation'
    for n in range(1, len(model.hooks) + 1):
        neck[f'layer{n}_rn'] = common.conv(sd, f'scratch.layer{n}_rn', bias=False)
        neck[f'refinenet{n}'], block_stats = fusion_block(sd, f'scratch.refinenet{n}', use_bn)
        if block_stats:
            neck_stats[f'refinenet{n}'] = block_stats
    params['neck'] = neck
    stats = {'neck': neck_stats} if neck_stats else {}

    is_seg = 'scratch.output_conv.1.weight' in sd  # The segmentation head's BatchNorm (the depth head has none).
    if is_seg != (model.head == 'segmentation'):
        raise registry.ConversionError(
            f'official:dpt: the checkpoint has a {"segmentation" if is_seg else "depth"} head '
            f'(DPT{"Segmentation" if is_seg else "Depth"}Model) but the model is built with head={model.head!r}.')
    if is_seg:
        params['seg_head'], stats['seg_head'] = _head(sd, 'scratch.output_conv')
        has_aux = 'auxlayer.0.weight' in sd
        if has_aux and not model.aux_head:
            raise registry.ConversionError(
                'official:dpt: the checkpoint has the auxiliary head (auxlayer.*) of DPTSegmentationModel; build '
                'the model with aux_head=True to receive it.')
        if model.aux_head:
            params['aux_head'], stats['aux_head'] = _head(sd, 'auxlayer')
    else:
        params['depth_head'] = {'conv1': common.conv(sd, 'scratch.output_conv.0'),
                                'conv2': common.conv(sd, 'scratch.output_conv.2'),
                                'conv3': common.conv(sd, 'scratch.output_conv.4')}
    return {'params': params, 'batch_stats': stats}
