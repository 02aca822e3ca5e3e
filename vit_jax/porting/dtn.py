"""Official DTN checkpoints (wqshao126/DTN, `models/vit_norm_mix.py` + `models/normkit/norms/dtn.py`) -> `DTNViT`.

The paper's ConViT-style ViT (`vit_norm_ti_star`, `vit_norm_s`, `vit_norm_s_star`, `vit_norm_b`, `vit_norm_b_star`):
DTN in both norms of blocks [0, local_up_to_layer), LayerNorm after; the class token joins before block
`local_up_to_layer`; no q/k/v bias by default. Official names -> vit_jax:

    patch_embed.proj (Conv2d)            -> embedding
    cls_token (1, 1, D)                  -> cls
    pos_embed (1, N, D)  (patches only)  -> Transformer/posembed_input/pos_embedding   (absent: use_pos_embed=False)
    blocks.{i}.norm1 / norm2             -> Transformer/encoderblock_{i}/LayerNorm_0 / LayerNorm_2
        DTN: weight, bias                -> scale, bias
             mean_norm_weight (h,)       -> mean_norm_weight        (absent in 'dtn_var')
             var_norm_weight (h,)        -> var_norm_weight
             pos_proj (Linear 3 -> h)    -> pos_proj
        nn.LayerNorm: weight, bias       -> scale, bias
    blocks.{i}.attn.qkv / attn.proj      -> .../MultiHeadDotProductAttention_1/{query,key,value} / out
    blocks.{i}.mlp.fc1 / fc2             -> .../MlpBlock_3/Dense_0 / Dense_1
    norm / head                          -> Transformer/encoder_norm / head

The DTN's `rel_indices` is a plain attribute (not in the state dict) and `avg_pool` has no weights. The other
normalisers of the official `NormSelect` (batch, power, insnorm, gnorm, scale) and the `vit_norm.py` / `pvt_norm.py`
networks have no vit_jax counterpart and are refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vit_jax.porting import common, registry

_DTN_NORMS = ('dtn', 'dtn_var', 'dtn_pool')


def _add_dtn_weights(sd: registry.StateDict, prefix: str, p: dict) -> None:
    """Adds the DTN weights of norm `prefix` to its converted LayerNorm params `p` (scale, bias)."""
    if f'{prefix}.mean_norm_weight' in sd:
        p['mean_norm_weight'] = sd[f'{prefix}.mean_norm_weight']
    p['var_norm_weight'] = sd[f'{prefix}.var_norm_weight']
    p['pos_proj'] = common.linear(sd, f'{prefix}.pos_proj')


@registry.official('dtn', source='wqshao126/DTN', models=('DTN-ViT-',))
def convert(sd: registry.StateDict, model: Any) -> dict:
    """wqshao126/DTN `vit_norm_mix` ViTs (DTN, dtn_var or LayerNorm) -> DTNViT."""
    if type(model).__name__ != 'DTNViT':
        raise registry.ConversionError(f'official:dtn converts into DTNViT (DTN-ViT-*), not {type(model).__name__}.')
    if 'to_patch_embedding.1.weight' in sd or any(k.startswith('transformer.layers.') for k in sd):
        raise registry.ConversionError(
            'official:dtn: this is the `vit_norm.py` ViT (to_patch_embedding, transformer.layers.*), which has no '
            'vit_jax counterpart; only the paper\'s `vit_norm_mix.py` networks (DTN-ViT-*) convert.')
    heads, depth = model.num_heads, model.num_layers
    if model.local_up_to_layer >= depth:
        raise registry.ConversionError(
            f'official:dtn: local_up_to_layer={model.local_up_to_layer} >= depth {depth}: the official network then '
            'never concatenates its class token and classifies the first patch token, while DTNViT averages the '
            'tokens; such a checkpoint would not compute the same function.')
    model_dtn = model.norm in _DTN_NORMS
    if not model_dtn and model.norm != 'layernorm':
        raise registry.ConversionError(f'official:dtn: model norm {model.norm!r} has no official counterpart; build '
                                       f'the model with norm in {_DTN_NORMS + ("layernorm",)}.')
    tr: dict = {}
    if model.posemb:
        tr['posembed_input'] = {'pos_embedding': sd['pos_embed']}
    elif 'pos_embed' in sd:
        raise registry.ConversionError('official:dtn: the checkpoint has pos_embed (use_pos_embed=True) but the '
                                       'model is built with posemb=False.')
    for i in range(depth):
        p = f'blocks.{i}'
        ckpt_dtn = f'{p}.norm1.var_norm_weight' in sd
        want_dtn = model_dtn and i < model.local_up_to_layer
        if ckpt_dtn != want_dtn:
            raise registry.ConversionError(
                f'official:dtn: {p}.norm1 is {"a DTN" if ckpt_dtn else "a LayerNorm"} in the checkpoint but '
                f'{"a DTN" if want_dtn else "a LayerNorm"} in the model (norm={model.norm!r}, '
                f'local_up_to_layer={model.local_up_to_layer}); build the model with the checkpoint\'s norm_type and '
                'local_up_to_layer.')
        if ckpt_dtn:
            has_mean = f'{p}.norm1.mean_norm_weight' in sd
            if has_mean == (model.norm == 'dtn_var'):
                raise registry.ConversionError(
                    f'official:dtn: {p}.norm1 {"has" if has_mean else "has no"} mean_norm_weight, so the checkpoint '
                    f'is {"not " if has_mean else ""}a dtn_var model; the model is built with norm={model.norm!r}.')
        attn = common.fused_attention(sd, f'{p}.attn', heads)
        if model.qkv_bias != ('bias' in attn['query']):
            raise registry.ConversionError(
                f'official:dtn: {p}.attn.qkv {"has" if "bias" in attn["query"] else "has no"} bias; build the model '
                f'with qkv_bias={"bias" in attn["query"]}.')
        blk = common.encoder_block(sd, p, attn)
        if ckpt_dtn:
            _add_dtn_weights(sd, f'{p}.norm1', blk['LayerNorm_0'])
            _add_dtn_weights(sd, f'{p}.norm2', blk['LayerNorm_2'])
        tr[f'encoderblock_{i}'] = blk
    tr['encoder_norm'] = common.norm(sd, 'norm')
    params: dict = {
        'embedding': common.conv(sd, 'patch_embed.proj'),
        'cls': np.asarray(sd['cls_token']).reshape(1, 1, -1),
        'Transformer': tr,
    }
    params.update(common.classifier_head(sd, 'dtn', model.num_classes))
    return {'params': params}
