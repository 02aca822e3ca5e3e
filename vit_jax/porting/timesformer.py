"""Official TimeSformer checkpoints (facebookresearch/TimeSformer, `timesformer/models/vit.py`) -> `TimeSformer`.

The released `.pyth` files hold `{'model_state': {...}}` with every key under `model.` (the `vit_base_patch16_224`
wrapper's `self.model`); `registry.unwrap` removes the wrapper, this module the prefix. Official names -> vit_jax:

    cls_token (1, 1, D)                 -> cls
    pos_embed (1, 1 + N, D)             -> Transformer/posembed_input/pos_embedding
    time_embed (1, T, D)                -> Transformer/time_embedding            (not in space_only)
    patch_embed.proj (Conv2d)           -> embedding
    blocks.{i}.norm1 / attn.qkv, attn.proj
                                        -> Transformer/encoderblock_{i}/LayerNorm_0 / MultiHeadDotProductAttention_1
    blocks.{i}.temporal_norm1 / temporal_attn.{qkv,proj} / temporal_fc   (divided_space_time only)
                                        -> .../temporal_norm / temporal_attention / temporal_fc
    blocks.{i}.norm2 / mlp.fc1, mlp.fc2 -> .../LayerNorm_2 / MlpBlock_3/Dense_0, Dense_1
    norm / head                         -> Transformer/encoder_norm / head

The official code has the attention types 'divided_space_time', 'space_only' and 'joint_space_time'; the model's
'sparse_local_global' and 'axial' have no official checkpoint layout and are refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vit_jax.porting import common, registry

OFFICIAL_ATTENTION_TYPES = ('divided_space_time', 'space_only', 'joint_space_time')


def _strip_model_prefix(sd: registry.StateDict) -> registry.StateDict:
    """Keys under `model.` (the official wrapper module) without the prefix; a bare VisionTransformer unchanged."""
    if not sd or not all(k.startswith('model.') for k in sd):
        return sd
    return registry.StateDict({k[len('model.'):]: v for k, v in dict.items(sd)})


@registry.official('timesformer', source='facebookresearch/TimeSformer', models=('TimeSformer',))
def convert(sd: registry.StateDict, model: Any) -> dict:
    """facebookresearch/TimeSformer (divided_space_time, space_only, joint_space_time) -> TimeSformer."""
    attention_type = getattr(model, 'attention_type', None)
    if attention_type not in OFFICIAL_ATTENTION_TYPES:
        raise registry.ConversionError(
            f'official:timesformer: the official code has attention types {OFFICIAL_ATTENTION_TYPES}; the model is '
            f'built with attention_type={attention_type!r}, which has no official checkpoint. Build the model with '
            'the attention_type of the checkpoint (its config TIMESFORMER.ATTENTION_TYPE).')
    inner = _strip_model_prefix(sd)
    has_temporal = any(k.startswith('blocks.') and '.temporal_attn.' in k for k in inner)
    if has_temporal != (attention_type == 'divided_space_time'):
        raise registry.ConversionError(
            f'official:timesformer: the checkpoint {"has" if has_temporal else "has no"} temporal attention '
            f'(blocks.*.temporal_attn), so it is {"" if has_temporal else "not "}a divided_space_time model, but '
            f'the model is built with attention_type={attention_type!r}. Build it with the checkpoint\'s '
            'attention_type.')
    if attention_type != 'space_only' and 'time_embed' not in inner:
        raise registry.ConversionError(
            f'official:timesformer: the checkpoint has no time_embed (a space_only model?) but the model is built '
            f'with attention_type={attention_type!r}.')
    heads = model.num_heads
    tr: dict = {'posembed_input': {'pos_embedding': inner['pos_embed']}}
    if attention_type != 'space_only':
        tr['time_embedding'] = inner['time_embed']
    for i in range(model.num_layers):
        p = f'blocks.{i}'
        blk = common.timm_block(inner, p, heads)
        if attention_type == 'divided_space_time':
            blk['temporal_norm'] = common.norm(inner, f'{p}.temporal_norm1')
            blk['temporal_attention'] = common.fused_attention(inner, f'{p}.temporal_attn', heads)
            blk['temporal_fc'] = common.linear(inner, f'{p}.temporal_fc')
        tr[f'encoderblock_{i}'] = blk
    tr['encoder_norm'] = common.norm(inner, 'norm')
    params = {
        'embedding': common.conv(inner, 'patch_embed.proj'),
        'cls': np.asarray(inner['cls_token']),
        'Transformer': tr,
    }
    params.update(common.classifier_head(inner, 'timesformer', model.num_classes))
    sd.read.update(f'model.{k}' if inner is not sd else k for k in inner.read)
    return {'params': params}
