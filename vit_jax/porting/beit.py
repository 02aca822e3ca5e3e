"""Official BEiT checkpoints (microsoft/unilm `beit/`: `modeling_pretrain.py` and `modeling_finetune.py`) -> `BEiT`.

PeCo's released models (microsoft/PeCo) are trained with this code and share the layout. Official names -> vit_jax:

    patch_embed.proj (Conv2d)               -> embedding
    cls_token / mask_token (1, 1, D)        -> cls / mask_token          (mask_token: pre-training only)
    pos_embed (1, 1 + N, D)                 -> Transformer/posembed_input/pos_embedding   (use_abs_pos_emb)
    rel_pos_bias.relative_position_bias_table ((2h-1)(2w-1)+3, heads)
                                            -> Transformer/rel_pos_bias/relative_position_bias_table      ('shared')
    blocks.{i}.attn.relative_position_bias_table
                                            -> Transformer/encoderblock_{i}_rel_pos_bias/...           ('per_layer')
    *.relative_position_index               buffers, recomputed by the model (no weights): ignored
    blocks.{i}.norm1 / norm2                -> Transformer/encoderblock_{i}/LayerNorm_0 / LayerNorm_2
    blocks.{i}.attn.qkv.weight (3 D', D), no bias; q_bias, v_bias (D')
                                            -> .../MultiHeadDotProductAttention_1/{query,key,value} (key bias = 0,
                                               exactly BEiT's: the official forward concatenates zeros for k)
    blocks.{i}.attn.proj                    -> .../MultiHeadDotProductAttention_1/out
    blocks.{i}.mlp.fc1 / fc2                -> .../MlpBlock_3/Dense_0 / Dense_1
    blocks.{i}.gamma_1 / gamma_2            -> .../gamma_1 / gamma_2      (init_values > 0: model layer_scale set)
    norm                                    -> Transformer/encoder_norm   (fine-tuned, use_mean_pooling=False)
                                            -> mim_norm                   (pre-training: norm before lm_head)
    lm_head                                 -> mim_head                   (model vocab_size)
    fc_norm / head                          -> fc_norm / head             (fine-tuned; fc_norm: mean pooling)

The model must be built with the checkpoint's options: `rel_pos_bias` ('shared' / 'per_layer' / 'none'),
`abs_posemb`, `layer_scale` (any non-None value when gamma_* exist), `classifier` ('gap' with fc_norm, else 'token'),
`use_mask_token` and `vocab_size` (pre-training; then `final_norm=False`: the official `norm` feeds only the LM head).
Refused, naming the key: a checkpoint with both a shared and per-layer tables (BEiT fine-tuning with both flags;
the model adds one table), `attn_head_dim` != D / heads (qkv rows != 3 D), and options the model lacks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vit_jax.porting import common, registry


def _err(msg: str) -> registry.ConversionError:
    return registry.ConversionError(f'official:beit: {msg}')


def beit_attention(sd: registry.StateDict, prefix: str, num_heads: int, dim: int) -> dict:
    """BEiT Attention (qkv without bias + q_bias / v_bias, proj) -> MultiHeadAttention params (key bias zero)."""
    w = sd[f'{prefix}.qkv.weight']
    if w.shape != (3 * dim, dim):
        raise _err(f'{prefix}.qkv.weight has shape {w.shape}, not (3 D, D) = {(3 * dim, dim)}: a custom '
                   'attn_head_dim, which the vit_jax BEiT (head_dim = D / heads) does not have.')
    hd = dim // num_heads
    q_bias, v_bias = sd.get(f'{prefix}.q_bias'), sd.get(f'{prefix}.v_bias')
    zeros = np.zeros((dim,), np.float32)
    biases = (zeros if q_bias is None else q_bias, zeros, zeros if v_bias is None else v_bias)
    out = {}
    for i, name in enumerate(('query', 'key', 'value')):
        out[name] = {'kernel': w[i * dim:(i + 1) * dim].T.reshape(dim, num_heads, hd),
                     'bias': np.asarray(biases[i], np.float32).reshape(num_heads, hd)}
    out['out'] = common.attention_out(sd, f'{prefix}.proj', num_heads)
    return out


@registry.official('beit', source='microsoft/unilm (beit/)', models=('BEiT-',))
def convert(sd: registry.StateDict, model: Any) -> dict:
    """microsoft/unilm BEiT pre-training (VisionTransformerForMaskedImageModeling) and fine-tuned layouts -> BEiT."""
    if type(model).__name__ != 'BEiT':
        raise _err(f'converts into BEiT (BEiT-*), not {type(model).__name__}.')
    d, heads, depth = model.hidden_size, model.num_heads, model.num_layers
    shared = 'rel_pos_bias.relative_position_bias_table' in sd
    per_layer = 'blocks.0.attn.relative_position_bias_table' in sd
    if shared and per_layer:
        raise _err('the checkpoint has both rel_pos_bias.relative_position_bias_table (shared) and '
                   'blocks.*.attn.relative_position_bias_table (per layer); the vit_jax BEiT adds one table, not both.')
    ckpt_rel = 'shared' if shared else 'per_layer' if per_layer else 'none'
    if model.rel_pos_bias != ckpt_rel:
        raise _err(f"the checkpoint's relative position bias is {ckpt_rel!r}; build the model with "
                   f'rel_pos_bias={ckpt_rel!r} (got {model.rel_pos_bias!r}).')
    if model.abs_posemb != ('pos_embed' in sd):
        raise _err(f'the checkpoint {"has" if "pos_embed" in sd else "has no"} pos_embed; build the model with '
                   f'abs_posemb={"pos_embed" in sd}.')
    has_gamma = 'blocks.0.gamma_1' in sd
    if has_gamma != (model.layer_scale is not None):
        raise _err(f'the checkpoint {"has" if has_gamma else "has no"} layer scale (blocks.0.gamma_1); build the '
                   f'model with layer_scale={"0.1 (any value)" if has_gamma else "None"}.')
    is_mim = 'lm_head.weight' in sd
    final_norm = (model.classifier != 'gap') if model.final_norm is None else model.final_norm
    if is_mim:
        vocab = sd['lm_head.weight'].shape[0]
        if model.vocab_size != vocab or final_norm or not model.use_mask_token:
            raise _err(f'a pre-training checkpoint (lm_head over {vocab} visual tokens, norm before it): build the '
                       f'model with vocab_size={vocab}, final_norm=False, use_mask_token=True (got vocab_size='
                       f'{model.vocab_size}, final_norm={final_norm}, use_mask_token={model.use_mask_token}).')
        if model.num_classes:
            raise _err('a pre-training checkpoint has no classifier head; build the model with num_classes=0.')
    else:
        if model.vocab_size:
            raise _err(f'the checkpoint has no lm_head; build the model with vocab_size=None '
                       f'(got {model.vocab_size}).')
        pooled = 'fc_norm.weight' in sd
        if (model.classifier == 'gap') != pooled or final_norm == pooled:
            raise _err(f'the checkpoint {"has fc_norm (use_mean_pooling)" if pooled else "has norm, no fc_norm"}; '
                       f'build the model with classifier={"gap" if pooled else "token"!r} and final_norm left None '
                       f'(got classifier={model.classifier!r}, final_norm={model.final_norm}).')
        if model.use_mask_token != ('mask_token' in sd):
            raise _err(f'the checkpoint {"has" if "mask_token" in sd else "has no"} mask_token; build the model with '
                       f'use_mask_token={"mask_token" in sd}.')
    sd.ignore(r'(.*\.)?relative_position_index')

    tr: dict = {}
    if model.abs_posemb:
        tr['posembed_input'] = {'pos_embedding': sd['pos_embed']}
    if shared:
        tr['rel_pos_bias'] = {'relative_position_bias_table': sd['rel_pos_bias.relative_position_bias_table']}
    for i in range(depth):
        p = f'blocks.{i}'
        blk = common.encoder_block(sd, p, beit_attention(sd, f'{p}.attn', heads, d))
        if has_gamma:
            blk['gamma_1'], blk['gamma_2'] = sd[f'{p}.gamma_1'], sd[f'{p}.gamma_2']
        tr[f'encoderblock_{i}'] = blk
        if per_layer:
            tr[f'encoderblock_{i}_rel_pos_bias'] = {
                'relative_position_bias_table': sd[f'{p}.attn.relative_position_bias_table']}
    params: dict = {'embedding': common.conv(sd, 'patch_embed.proj'), 'cls': sd['cls_token'].reshape(1, 1, -1)}
    if model.use_mask_token:
        params['mask_token'] = sd['mask_token'].reshape(1, 1, -1)
    if is_mim:
        params['mim_norm'] = common.norm(sd, 'norm')
        params['mim_head'] = common.linear(sd, 'lm_head')
    elif final_norm:
        tr['encoder_norm'] = common.norm(sd, 'norm')
    else:
        params['fc_norm'] = common.norm(sd, 'fc_norm')
    params['Transformer'] = tr
    params.update(common.classifier_head(sd, 'beit', model.num_classes))
    return {'params': params}
