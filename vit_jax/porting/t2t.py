"""Official T2T-ViT checkpoints (yitu-opensource/T2T-ViT) -> vit_jax.

    model = models.get_model('T2T-ViT-14', attention_scale='embed_dim')   # as the released checkpoints were trained
    variables = convert.from_official('t2t', torch.load(path, weights_only=True), model)

Official names: `tokens_to_token.attention{1,2}` (Token_performer: `kqv`, `proj`, `norm1`, `norm2`, `mlp.{0,2}`, the
fixed random features `w`; Token_transformer: `norm1`, `attn.{qkv,proj}`, `norm2`, `mlp.{fc1,fc2}`),
`tokens_to_token.project`, `cls_token`, `pos_embed` (the fixed sinusoid table: rebuilt here, not loaded),
`blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`, `head`. The Performer features `w` go to
the 'constants' collection. A training checkpoint that holds both `state_dict` and `state_dict_ema` (timm's train
script; the official `load_for_transfer_learning(..., use_ema=True)` reads the EMA one) unwraps to `state_dict`:
pass `torch.load(path)['state_dict_ema']`, or `--key=state_dict_ema` on the command line, for the EMA weights.
"""

from __future__ import annotations

from typing import Any

from vit_jax.models.t2t import T2TViT
from vit_jax.porting import registry
from vit_jax.porting.common import (
    check_fixed_table,
    classifier_head,
    linear,
    norm,
    require_loop_layout,
    timm_block,
    to_numpy,
)


@registry.official('t2t', source='yitu-opensource/T2T-ViT', models=('T2T-ViT', 't2t_vit'))
def convert(sd: registry.StateDict, model: T2TViT) -> dict:
    """T2T-ViT (performer or transformer T2T module); the Performer `w` into 'constants'."""
    if not isinstance(model, T2TViT):
        raise registry.ConversionError(f'official:t2t converts into a T2TViT, not {type(model).__name__}.')
    require_loop_layout(model, 't2t')
    if 'pos_embed' in sd:  # The sinusoid table (requires_grad=False), rebuilt for the input's token count.
        check_fixed_table(sd, 'pos_embed')
    params: dict[str, Any] = {}
    consts: dict[str, Any] = {}
    t2t: dict[str, Any] = {}
    for i in (1, 2):
        p = f'tokens_to_token.attention{i}'
        layer = {'norm1': norm(sd, f'{p}.norm1'), 'norm2': norm(sd, f'{p}.norm2')}
        if model.tokens_type == 'performer':
            layer['kqv'] = linear(sd, f'{p}.kqv')
            layer['proj'] = linear(sd, f'{p}.proj')
            layer['mlp'] = {'Dense_0': linear(sd, f'{p}.mlp.0'), 'Dense_1': linear(sd, f'{p}.mlp.2')}
            consts[f'attention{i}'] = {'w': to_numpy(sd[f'{p}.w'])}
        else:
            layer['qkv'] = linear(sd, f'{p}.attn.qkv', bias=False)
            layer['proj'] = linear(sd, f'{p}.attn.proj')
            layer['mlp'] = {'Dense_0': linear(sd, f'{p}.mlp.fc1'), 'Dense_1': linear(sd, f'{p}.mlp.fc2')}
        t2t[f'attention{i}'] = layer
    t2t['project'] = linear(sd, 'tokens_to_token.project')
    params['tokens_to_token'] = t2t
    params['cls'] = to_numpy(sd['cls_token'])
    enc = {f'encoderblock_{i}': timm_block(sd, f'blocks.{i}', model.num_heads) for i in range(model.num_layers)}
    enc['encoder_norm'] = norm(sd, 'norm')
    params['Transformer'] = enc
    params.update(classifier_head(sd, 't2t', model.num_classes))
    variables = {'params': params}
    if consts:
        variables['constants'] = {'tokens_to_token': consts}
    return variables
