"""Official DHVT checkpoints (ArieSeirack/DHVT, `vision_transformer.py` with `apply_dhvt=True`) -> vit_jax.

    model = models.get_model('DHVT-T/4', num_classes=100)
    variables = convert.from_official('dhvt', torch.load(path, weights_only=True)['model'], model)

Official names: `patch_embed.{pre_affine, post_affine}.{alpha, beta}`, `patch_embed.proj.{2i}.{0: conv, 1: BN}` (SOPE),
`cls_token`, `blocks.{i}.{norm1, attn.{qkv, proj, ht_proj, ht_norm, pos_embed}, norm2, mlp.{conv1..3, bn1..3,
compress, excitation}}`, `norm`, `head`. BatchNorm running statistics become `batch_stats`.
"""

from __future__ import annotations

from typing import Any

from vit_jax.models.dhvt import DHVT
from vit_jax.porting import registry
from vit_jax.porting.common import batchnorm, conv, fused_attention, linear, norm, to_numpy

# SOPE convs per patch size (official ConvPatchEmbed).
SOPE_CONVS = {16: 4, 4: 2, 2: 1}


@registry.official('dhvt', source='ArieSeirack/DHVT', models=('DHVT-', 'dhvt_'))
def convert(sd: registry.StateDict, model: DHVT) -> dict:
    """DHVT (SOPE + HI-MHSA + DAFF); `batch_stats` from the BatchNorm running statistics."""
    if not isinstance(model, DHVT):
        raise registry.ConversionError(f'official:dhvt converts into a DHVT model, not {type(model).__name__}.')
    sd.ignore(r'.*\.num_batches_tracked')
    h = model.num_heads
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}

    def affine(prefix):
        return {k: to_numpy(sd[f'{prefix}.{k}']).reshape(-1) for k in ('alpha', 'beta')}

    if model.patch_size not in SOPE_CONVS:
        raise registry.ConversionError(f'DHVT patch_size must be one of {sorted(SOPE_CONVS)}; got {model.patch_size}.')
    sope, sope_stats = {'pre_affine': affine('patch_embed.pre_affine'),
                        'post_affine': affine('patch_embed.post_affine')}, {}
    for i in range(SOPE_CONVS[model.patch_size]):
        seq = f'patch_embed.proj.{2 * i}'  # Sequential(conv3x3 block, GELU, conv3x3 block, GELU, ...).
        sope[f'conv_{i}'] = conv(sd, f'{seq}.0', bias=False)
        sope[f'bn_{i}'], sope_stats[f'bn_{i}'] = batchnorm(sd, f'{seq}.1')
    params['sope'], stats['sope'] = sope, sope_stats
    params['cls'] = to_numpy(sd['cls_token'])
    t, ts = {}, {}
    for i in range(model.num_layers):
        p = f'blocks.{i}'
        attn = {'ht_proj': linear(sd, f'{p}.attn.ht_proj'), 'ht_norm': norm(sd, f'{p}.attn.ht_norm'),
                'head_pos_embed': to_numpy(sd[f'{p}.attn.pos_embed']),
                'MultiHeadDotProductAttention_0': fused_attention(sd, f'{p}.attn', h)}
        daff, daff_stats = {}, {}
        for k in (1, 2, 3):
            daff[f'conv{k}'] = conv(sd, f'{p}.mlp.conv{k}')
            daff[f'bn{k}'], daff_stats[f'bn{k}'] = batchnorm(sd, f'{p}.mlp.bn{k}')
        daff['compress'] = linear(sd, f'{p}.mlp.compress')
        daff['excitation'] = linear(sd, f'{p}.mlp.excitation')
        t[f'encoderblock_{i}'] = {'LayerNorm_0': norm(sd, f'{p}.norm1'), 'attn': attn,
                                  'LayerNorm_2': norm(sd, f'{p}.norm2'), 'daff': daff}
        ts[f'encoderblock_{i}'] = {'daff': daff_stats}
    t['encoder_norm'] = norm(sd, 'norm')
    params['Transformer'], stats['Transformer'] = t, ts
    if model.num_classes:
        params['head'] = linear(sd, 'head')
    return {'params': params, 'batch_stats': stats}
