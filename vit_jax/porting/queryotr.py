"""Official QueryOTR checkpoints (Kaiseem/QueryOTR `TransGen`) and MAE-pytorch encoders -> vit_jax.

    model = models.get_model('QueryOTR')
    variables = convert.from_official('queryotr', torch.load(path, weights_only=True), model)   # {'gen': ...}

Official names (the generator, saved as `{'gen': state_dict}`): `transformer_encoder.{patch_embed.proj,
blocks.{i}.{norm1, attn.{qkv, q_bias, v_bias, proj}, norm2, mlp.fc1, mlp.fc2}, norm}`, `qem.{noise_mlp.{0,1,3,4,6},
res_blocks.{i}.{conv1, conv2 (+ conv2.conv_offset_mask: the deformable conv), norm1, norm2}, norm, embed}`,
`transformer_decoder.{i}.{norm1, attn, norm2, cross_attn.{q, kv, q_bias, v_bias, proj}, norm3, mlp}`,
`psm.{proj, bias}`. The encoder's classifier head (`transformer_encoder.head`, unused by the generator) is ignored.

`params_from_state_dict` converts the parts a state dict holds, e.g. an MAE-pytorch pretraining checkpoint
(`encoder.*`, the paper's encoder initialisation; `python -m vit_jax.convert --from=official:queryotr --partial`).
"""

from __future__ import annotations

import re

import numpy as np

from vit_jax.models.queryotr import QueryOTR
from vit_jax.porting import registry
from vit_jax.porting.common import attention_in, attention_out, check_fixed_table, conv, linear, norm, to_numpy

# Keys that hold no generator weights: the encoder's classifier head, MAE's decoder and mask token.
_IGNORED = (r'(transformer_encoder|encoder)\.head\..*', r'decoder\..*', r'encoder_to_decoder\..*', r'mask_token')
_POS_EMBED = r'(transformer_encoder\.|encoder\.)?pos_embed'


def _attn(sd: dict, prefix: str, heads: int, *, cross: bool = False) -> dict:
    """BEiT/MAE-style attention (one qkv or q + kv Linear without bias, separate q_bias / v_bias) -> q/k/v/out.

    The key bias does not exist there; it is set to zero (a key bias only shifts every logit of a query by the
    same amount, which the softmax ignores).
    """
    if cross:
        q_w = to_numpy(sd[f'{prefix}.q.weight'])
        k_w, v_w = np.split(to_numpy(sd[f'{prefix}.kv.weight']), 2, axis=0)
    else:
        q_w, k_w, v_w = np.split(to_numpy(sd[f'{prefix}.qkv.weight']), 3, axis=0)
    d = q_w.shape[0]
    zeros = np.zeros((d,), np.float32)
    q_b = to_numpy(sd[f'{prefix}.q_bias']) if f'{prefix}.q_bias' in sd else zeros
    v_b = to_numpy(sd[f'{prefix}.v_bias']) if f'{prefix}.v_bias' in sd else zeros
    out = {}
    for name, w, b in (('query', q_w, q_b), ('key', k_w, zeros), ('value', v_w, v_b)):
        out[name] = attention_in({'w.weight': w, 'w.bias': b}, 'w', heads)
    out['out'] = attention_out(sd, f'{prefix}.proj', heads)
    return out


def _convert(sd: registry.StateDict, num_heads: int, decoder_heads: int) -> dict:
    sd.ignore(*_IGNORED)
    for k in [k for k in sd if re.fullmatch(_POS_EMBED, k)]:  # The fixed sin-cos table, rebuilt by the model.
        check_fixed_table(sd, k)
    enc = 'transformer_encoder.' if any(k.startswith('transformer_encoder.') for k in sd) else 'encoder.'
    params: dict = {}
    if any(k.startswith(enc) for k in sd):  # Present parts convert whole (a missing key inside is an error).
        params['embedding'] = conv(sd, f'{enc}patch_embed.proj')
        tr = {}
        depth = len({k.split('.')[2] for k in sd if k.startswith(f'{enc}blocks.')})
        for i in range(depth):
            b = f'{enc}blocks.{i}'
            tr[f'encoderblock_{i}'] = {
                'LayerNorm_0': norm(sd, f'{b}.norm1'),
                'MultiHeadDotProductAttention_1': _attn(sd, f'{b}.attn', num_heads),
                'LayerNorm_2': norm(sd, f'{b}.norm2'),
                'MlpBlock_3': {'Dense_0': linear(sd, f'{b}.mlp.fc1'), 'Dense_1': linear(sd, f'{b}.mlp.fc2')},
            }
        tr['encoder_norm'] = norm(sd, f'{enc}norm')
        params['Transformer'] = tr
    if any(k.startswith('qem.') for k in sd):
        qem = {}
        for i, j in ((0, 0), (1, 3), (2, 6)):
            qem[f'noise_fc_{i}'] = linear(sd, f'qem.noise_mlp.{j}')
        for i, j in ((0, 1), (1, 4)):
            qem[f'noise_ln_{i}'] = norm(sd, f'qem.noise_mlp.{j}')
        n_blocks = len({k.split('.')[2] for k in sd if k.startswith('qem.res_blocks.')})
        for i in range(n_blocks):
            b = f'qem.res_blocks.{i}'
            block = {'norm1': norm(sd, f'{b}.norm1'), 'norm2': norm(sd, f'{b}.norm2'), 'conv1': conv(sd, f'{b}.conv1')}
            if f'{b}.conv2.conv_offset_mask.weight' in sd:
                block['conv2'] = {'kernel': conv(sd, f'{b}.conv2', bias=False)['kernel'],
                                  'conv_offset_mask': conv(sd, f'{b}.conv2.conv_offset_mask')}
            else:
                block['conv2'] = conv(sd, f'{b}.conv2', bias=False)
            qem[f'block_{i}'] = block
        qem['norm'] = norm(sd, 'qem.norm')
        qem['embed'] = linear(sd, 'qem.embed')
        params['qem'] = qem
    n_dec = len({k.split('.')[1] for k in sd if k.startswith('transformer_decoder.')})
    for i in range(n_dec):
        b = f'transformer_decoder.{i}'
        params[f'decoder_{i}'] = {
            'norm1': norm(sd, f'{b}.norm1'), 'norm2': norm(sd, f'{b}.norm2'), 'norm3': norm(sd, f'{b}.norm3'),
            'attn': _attn(sd, f'{b}.attn', decoder_heads),
            'cross_attn': _attn(sd, f'{b}.cross_attn', decoder_heads, cross=True),
            'mlp': {'Dense_0': linear(sd, f'{b}.mlp.fc1'), 'Dense_1': linear(sd, f'{b}.mlp.fc2')},
        }
    if any(k.startswith('psm.') for k in sd):
        psm = {'kernel': np.transpose(to_numpy(sd['psm.proj.weight']), (0, 2, 3, 1))}
        if 'psm.bias' in sd:
            psm['bias'] = np.transpose(to_numpy(sd['psm.bias'])[0], (1, 2, 0))
        params['psm'] = psm
    if not params:
        raise registry.ConversionError('Not a QueryOTR / MAE state dict: no transformer_encoder.*, encoder.*, qem.* '
                                       'or psm.* keys.')
    return params


@registry.official('queryotr', source='Kaiseem/QueryOTR', models=('QueryOTR',))
def convert(sd: registry.StateDict, model: QueryOTR) -> dict:
    """The QueryOTR generator (`{'gen': ...}`): ViT encoder, QEM, decoder, PSM."""
    if not isinstance(model, QueryOTR):
        raise registry.ConversionError(f'official:queryotr converts into a QueryOTR, not {type(model).__name__}.')
    return {'params': _convert(sd, model.num_heads, model.decoder_heads)}


def params_from_state_dict(state_dict: dict, *, num_heads: int = 12, decoder_heads: int = 12) -> dict:
    """QueryOTR params of the parts present in an official state dict (a generator or an MAE-pytorch encoder).

    Returns a nested dict with this module's param names (`embedding`, `Transformer`, `qem`, `decoder_{i}`, `psm`),
    e.g. for `checkpoint.save_npz` and `config.init_from` (an encoder-only file then needs
    `dont_load=('qem/.*', 'decoder_.*', 'psm/.*')`). Unknown keys are an error.
    """
    sd = registry.StateDict(registry.unwrap(state_dict))
    params = _convert(sd, num_heads, decoder_heads)
    unread = sd.unread()
    if unread:
        more = ' ...' if len(unread) > 10 else ''
        raise registry.ConversionError(f'Unconverted QueryOTR weights: {unread[:10]}{more}.')
    return params
