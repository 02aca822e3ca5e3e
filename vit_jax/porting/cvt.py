"""Official CvT checkpoints (microsoft/CvT, `lib/models/cls_cvt.py`) -> `CvT`.

Official names (stage i, block j) -> vit_jax:

    stage{i}.patch_embed.proj / .norm            -> stage_{i}_embedding / stage_{i}_embedding_norm
    stage{i}.cls_token (1, 1, D)                 -> stage_{i}_cls                       (stages with CLS_TOKEN)
    stage{i}.blocks.{j}.norm1 / norm2            -> stage_{i}_block_{j}/LayerNorm_0 / LayerNorm_2
    ...attn.conv_proj_{q,k,v}.conv (depthwise)   -> .../MultiHeadDotProductAttention_1/qkv_transform/
                                                    conv_proj_{q,k,v}/conv
    ...attn.conv_proj_{q,k,v}.bn                 -> .../conv_proj_{q,k,v}/bn (params) and the running statistics
                                                    in `batch_stats` (num_batches_tracked is dropped)
    ...attn.proj_{q,k,v} / attn.proj             -> .../query, key, value / out
    ...mlp.fc1 / mlp.fc2                         -> .../MlpBlock_3/Dense_0 / Dense_1
    norm / head                                  -> norm / head

`QKV_PROJ_METHOD` per stage: 'dw_bn' has the conv + BN projections above; 'linear' none; 'avg' (average pooling for
k/v, identity for q) has no weights either, so the projection keys are read only for the model's 'dw_bn' stages
(a checkpoint whose method differs from the model's leaves keys unread or misses them: both are errors).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vit_jax.porting import common, registry


def _per_stage(value: Any, n: int) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


@registry.official('cvt', source='microsoft/CvT', models=('CvT-',))
def convert(sd: registry.StateDict, model: Any) -> dict:
    """microsoft/CvT (ConvolutionalVisionTransformer, cls_cvt.py) -> CvT."""
    common.require_loop_layout(model, 'cvt')
    n = len(model.embed_dims)
    depths, heads = _per_stage(model.depths, n), _per_stage(model.num_heads, n)
    methods, cls_token = _per_stage(model.qkv_method, n), _per_stage(model.cls_token, n)
    sd.ignore(r'.*\.num_batches_tracked')
    params, stats = {}, {}
    for i in range(n):
        s, st = f'stage{i}', f'stage_{i}'
        params[f'{st}_embedding'] = common.conv(sd, f'{s}.patch_embed.proj')
        params[f'{st}_embedding_norm'] = common.norm(sd, f'{s}.patch_embed.norm')
        if cls_token[i]:
            params[f'{st}_cls'] = np.asarray(sd[f'{s}.cls_token'])
        elif f'{s}.cls_token' in sd:
            raise registry.ConversionError(
                f'official:cvt: the checkpoint has {s}.cls_token but the model is built without a class token in '
                f'stage {i}; build it with cls_token[{i}]=True (the checkpoint config CLS_TOKEN).')
        if methods[i] not in ('dw_bn', 'linear', 'avg'):
            raise registry.ConversionError(f"official:cvt: unknown qkv_method {methods[i]!r} in stage {i}; the "
                                           "official QKV_PROJ_METHOD is 'dw_bn', 'avg' or 'linear'.")
        has_conv = any(k.startswith(f'{s}.blocks.') and '.attn.conv_proj_' in k for k in sd)
        if has_conv != (methods[i] == 'dw_bn'):
            raise registry.ConversionError(
                f'official:cvt: stage {i} of the checkpoint {"has" if has_conv else "has no"} convolutional q/k/v '
                f'projections (attn.conv_proj_*), but the model is built with qkv_method={methods[i]!r} there; '
                f"build it with the checkpoint's QKV_PROJ_METHOD ({'dw_bn' if has_conv else 'avg or linear'}).")
        for j in range(depths[i]):
            b = f'{s}.blocks.{j}'
            attn = {}
            if methods[i] == 'dw_bn':
                proj_p, proj_s = {}, {}
                for w in 'qkv':
                    bn_p, bn_s = common.batchnorm(sd, f'{b}.attn.conv_proj_{w}.bn')
                    proj_p[f'conv_proj_{w}'] = {'conv': common.conv(sd, f'{b}.attn.conv_proj_{w}.conv', bias=False),
                                                'bn': bn_p}
                    proj_s[f'conv_proj_{w}'] = {'bn': bn_s}
                attn['qkv_transform'] = proj_p
                stats[f'{st}_block_{j}'] = {'MultiHeadDotProductAttention_1': {'qkv_transform': proj_s}}
            attn.update(common.separate_attention(sd, heads[i], f'{b}.attn.proj_q', f'{b}.attn.proj_k',
                                                  f'{b}.attn.proj_v', f'{b}.attn.proj'))
            params[f'{st}_block_{j}'] = common.encoder_block(sd, b, attn)
    params['norm'] = common.norm(sd, 'norm')
    params.update(common.classifier_head(sd, 'cvt', model.num_classes))
    return {'params': params, 'batch_stats': stats}
