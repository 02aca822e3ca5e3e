"""Official pycls ViT checkpoints (facebookresearch/pycls, `pycls/models/vit.py`) -> ViT_P / ViT_C.

"Early Convolutions Help Transformers See Better" (Xiao et al., 2021): ViT_P (patchify stem) and ViT_C (a stack of
3x3 conv-BN-ReLU then a 1x1 conv). The vit_jax models are `VisionTransformer(stem='patch' | 'conv')`, registered as
'ViTP-*' / 'ViTC-*' (LayerNorm eps 1e-5, exact GELU as pycls). Official names -> vit_jax:

    stem.patchify (Conv2d, k = stride = patch)    -> embedding                          (ViT_P)
    stem.cstem{i}_conv (3x3, no bias)             -> stem/conv_{i}                       (ViT_C)
    stem.cstem{i}_bn (BatchNorm2d)                -> stem/bn_{i} (+ batch_stats mean/var; num_batches_tracked unused)
    stem.cstem_last_conv (1x1, bias)              -> stem/embedding
    class_token (1, 1, D)                         -> cls          (CLASSIFIER_TYPE token; 'pooled' has none: 'gap')
    pos_embedding (T, 1, D)  (sequence-first)     -> Transformer/posembed_input/pos_embedding (1, T, D)
    encoder.block_{i}.ln_1 / ln_2                 -> Transformer/encoderblock_{i}/LayerNorm_0 / LayerNorm_2
    encoder.block_{i}.self_attention.block.in_proj_weight / in_proj_bias (3D, D) [q; k; v]
                                                  -> .../MultiHeadDotProductAttention_1/{query,key,value}
    encoder.block_{i}.self_attention.block.out_proj -> .../MultiHeadDotProductAttention_1/out
    encoder.block_{i}.mlp_block.linear_1 / linear_2 -> .../MlpBlock_3/Dense_0 / Dense_1
    encoder.ln                                    -> Transformer/encoder_norm
    head.head_fc                                  -> head

pycls' ViT has no other variant; the checkpoint files (`.pyth`) hold `{'model_state': ...}`, unwrapped by
`registry.unwrap`.
"""

from __future__ import annotations

import re
from typing import Any

from vit_jax.porting import common, registry


def in_proj_attention(sd: registry.StateDict, prefix: str, num_heads: int) -> dict:
    """torch nn.MultiheadAttention (`in_proj_weight` [q; k; v], `in_proj_bias`, `out_proj`) -> MultiHeadAttention."""
    out = common.split_qkv(sd[f'{prefix}.in_proj_weight'], sd.get(f'{prefix}.in_proj_bias'), num_heads)
    return {**out, 'out': common.attention_out(sd, f'{prefix}.out_proj', num_heads)}


@registry.official('vit_c', source='facebookresearch/pycls', models=('ViTP-', 'ViTC-'))
def convert(sd: registry.StateDict, model: Any) -> dict:
    """facebookresearch/pycls ViT (patchify or conv stem, token or pooled classifier) -> VisionTransformer."""
    name = type(model).__name__
    if name != 'VisionTransformer':
        raise registry.ConversionError(f'official:vit_c converts into VisionTransformer (ViTP-* / ViTC-*), not {name}.')
    ckpt_stem = 'conv' if any(k.startswith('stem.cstem') for k in sd) else 'patch'
    if model.stem != ckpt_stem:
        raise registry.ConversionError(
            f'official:vit_c: the checkpoint has a {"conv (stem.cstem*)" if ckpt_stem == "conv" else "patchify"} '
            f'stem, the model stem={model.stem!r}; build a {"ViTC" if ckpt_stem == "conv" else "ViTP"}-* model.')
    has_cls = 'class_token' in sd
    want = 'token' if has_cls else 'gap'
    if model.classifier != want:
        raise registry.ConversionError(
            f'official:vit_c: the checkpoint {"has" if has_cls else "has no"} class_token (CLASSIFIER_TYPE '
            f'{"token" if has_cls else "pooled"}); build the model with classifier={want!r}.')
    problems = []
    if model.posemb != 'learn':
        problems.append(f"posemb='learn' (got {model.posemb!r})")
    if abs(model.norm_eps - 1e-5) > 1e-12:
        problems.append(f'norm_eps=1e-5 (cfg.LN.EPS; got {model.norm_eps})')
    if model.activation != 'gelu_exact':
        problems.append(f"activation='gelu_exact' (torch nn.GELU; got {model.activation!r})")
    if model.representation_size is not None or model.distill_token or model.norm != 'layernorm':
        problems.append('no representation_size, no distillation token, norm=layernorm')
    if problems:
        raise registry.ConversionError('official:vit_c: pycls ViTs need ' + ', '.join(problems) + '; the registered '
                                       'ViTP-* / ViTC-* models have these settings.')
    heads = model.num_heads
    params: dict = {}
    stats: dict = {}
    if ckpt_stem == 'patch':
        params['embedding'] = common.conv(sd, 'stem.patchify')
    else:
        n = len([k for k in sd if re.fullmatch(r'stem\.cstem\d+_conv\.weight', k)])
        stem, stem_stats = {}, {}
        for i in range(n):
            stem[f'conv_{i}'] = common.conv(sd, f'stem.cstem{i}_conv', bias=False)
            stem[f'bn_{i}'], stem_stats[f'bn_{i}'] = common.batchnorm(sd, f'stem.cstem{i}_bn')
        stem['embedding'] = common.conv(sd, 'stem.cstem_last_conv')
        params['stem'], stats['stem'] = stem, stem_stats
        sd.ignore(r'stem\.cstem\d+_bn\.num_batches_tracked')
    if has_cls:
        params['cls'] = sd['class_token'].reshape(1, 1, -1)
    tr: dict = {'posembed_input': {'pos_embedding': sd['pos_embedding'].transpose(1, 0, 2)}}
    for i in range(model.num_layers):
        p = f'encoder.block_{i}'
        tr[f'encoderblock_{i}'] = {
            'LayerNorm_0': common.norm(sd, f'{p}.ln_1'),
            'MultiHeadDotProductAttention_1': in_proj_attention(sd, f'{p}.self_attention.block', heads),
            'LayerNorm_2': common.norm(sd, f'{p}.ln_2'),
            'MlpBlock_3': {'Dense_0': common.linear(sd, f'{p}.mlp_block.linear_1'),
                           'Dense_1': common.linear(sd, f'{p}.mlp_block.linear_2')},
        }
    tr['encoder_norm'] = common.norm(sd, 'encoder.ln')
    params['Transformer'] = tr
    if model.num_classes:
        params['head'] = common.linear(sd, 'head.head_fc')
    return {'params': params, 'batch_stats': stats}
