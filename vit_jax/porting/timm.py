"""timm ViT state dicts (`timm.models.vision_transformer`) -> vit_jax `VisionTransformer`.

    model, variables = convert.vit_from_timm_state_dict(torch.load(path, weights_only=True))
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from vit_jax import models
from vit_jax.porting.common import attention_in, attention_out, conv, linear, norm, to_numpy
from vit_jax.porting.registry import StateDict

# Attention heads of the standard ViT widths (timm state dicts do not record the head count).
TIMM_HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


def vit_from_timm_state_dict(state_dict: dict, *, num_heads: int | None = None, image_size: Any = None,
                             norm_eps: float = 1e-6, activation: str = 'gelu_exact') -> tuple[Any, dict]:
    """`(VisionTransformer, variables)` from a timm-style ViT state dict (`timm.models.vision_transformer`).

    Keys: `cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`,
    `norm`, optional `head` and old-timm `pre_logits.fc`. Width, depth, MLP width, patch size, class count and qkv
    bias are read from the shapes; `num_heads` defaults to the standard head count of the width
    (`TIMM_HEADS_BY_WIDTH`); `image_size` defaults to the square grid of `pos_embed` (pass (h, w) otherwise).
    timm's ViT uses exact GELU and LayerNorm eps 1e-6. Models without a class token become `classifier='gap'`;
    `pos_embed` without the class token (`no_embed_class`) gets a zero row for it (the same function). Features
    this ViT does not have (register tokens, layer scale, qk-norm, fc_norm, norm_pre) are refused by name.
    """
    sd = StateDict({k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()})
    unsupported = sorted({k.split('.')[0] if not k.startswith('blocks.') else '.'.join(k.split('.')[2:4])
                          for k in sd if re.match(r'(reg_token|fc_norm|norm_pre|attn_pool|blocks\.\d+\.(ls\d|attn\.'
                                                  r'[qk]_norm))', k)})
    if unsupported:
        raise ValueError(f'This timm ViT uses {unsupported}, which vit_jax.models.vit.VisionTransformer does not '
                         'have; it cannot be converted exactly.')
    if 'patch_embed.proj.weight' not in sd:
        raise ValueError('Not a timm ViT state dict: no patch_embed.proj.weight (keys start with '
                         f'{sorted({k.split(".")[0] for k in sd})}).')
    w = sd['patch_embed.proj.weight']
    hidden, _, ph, pw = (int(s) for s in w.shape)
    depth = len({k.split('.')[1] for k in sd if k.startswith('blocks.')})
    if depth == 0:
        raise ValueError('Not a timm ViT state dict: no blocks.{i}.* entries.')
    heads = int(num_heads or TIMM_HEADS_BY_WIDTH.get(hidden, 0))
    if not heads:
        raise ValueError(f'Width {hidden} is not a standard ViT width; pass num_heads.')
    if hidden % heads:
        raise ValueError(f'num_heads={heads} does not divide the width {hidden}.')
    has_cls = 'cls_token' in sd
    pe = to_numpy(sd['pos_embed'])
    n_tokens = pe.shape[1]
    if image_size is None:
        for prefix in ((1, 0) if has_cls else (0,)):
            s = int(round(np.sqrt(n_tokens - prefix)))
            if s * s == n_tokens - prefix:
                image_size = (s * ph, s * pw)
                break
        else:
            raise ValueError(f'pos_embed has {n_tokens} tokens, not a square grid; pass image_size=(h, w).')
    image_size = (int(image_size), int(image_size)) if isinstance(image_size, (int, np.integer)) else tuple(
        int(x) for x in image_size)
    n_grid = (image_size[0] // ph) * (image_size[1] // pw)
    if has_cls and n_tokens == n_grid:  # no_embed_class: the class token gets no position embedding.
        pe = np.concatenate([np.zeros((1, 1, hidden), pe.dtype), pe], axis=1)
    if pe.shape[1] != n_grid + int(has_cls):
        raise ValueError(f'pos_embed has {n_tokens} tokens but image_size={image_size} with patch {(ph, pw)} gives '
                         f'{n_grid} patches' + (' + the class token.' if has_cls else '.'))
    qkv_bias = 'blocks.0.attn.qkv.bias' in sd
    num_classes = int(sd['head.weight'].shape[0]) if 'head.weight' in sd else None
    rep = int(sd['pre_logits.fc.weight'].shape[0]) if 'pre_logits.fc.weight' in sd else None
    model = models.get_model(
        'ViT-B/16', num_classes=num_classes, image_size=image_size, patch_size=(ph, pw), hidden_size=hidden,
        mlp_dim=int(sd['blocks.0.mlp.fc1.weight'].shape[0]), num_heads=heads, num_layers=depth,
        classifier='token' if has_cls else 'gap', representation_size=rep, norm_eps=norm_eps,
        activation=activation, qkv_bias=qkv_bias)
    tr = {'posembed_input': {'pos_embedding': pe}}
    for i in range(depth):
        b = f'blocks.{i}'
        qkv_w = to_numpy(sd[f'{b}.attn.qkv.weight'])
        qkv_b = to_numpy(sd[f'{b}.attn.qkv.bias']) if qkv_bias else None
        split = {}
        for j, name in enumerate(('query', 'key', 'value')):
            part = {f'{name}.weight': qkv_w[j * hidden:(j + 1) * hidden]}
            if qkv_b is not None:
                part[f'{name}.bias'] = qkv_b[j * hidden:(j + 1) * hidden]
            split[name] = attention_in(part, name, heads)
        tr[f'encoderblock_{i}'] = {
            'LayerNorm_0': norm(sd, f'{b}.norm1'),
            'MultiHeadDotProductAttention_1': {**split, 'out': attention_out(sd, f'{b}.attn.proj', heads)},
            'LayerNorm_2': norm(sd, f'{b}.norm2'),
            'MlpBlock_3': {'Dense_0': linear(sd, f'{b}.mlp.fc1'), 'Dense_1': linear(sd, f'{b}.mlp.fc2')},
        }
    tr['encoder_norm'] = norm(sd, 'norm')
    params = {'embedding': conv(sd, 'patch_embed.proj'), 'Transformer': tr}
    if has_cls:
        params['cls'] = to_numpy(sd['cls_token'])
    if rep:
        params['pre_logits'] = linear(sd, 'pre_logits.fc')
    if num_classes:
        params['head'] = linear(sd, 'head')
    unread = sd.unread()
    if unread:
        raise ValueError(f'Unconverted timm ViT weights (a variant this converter does not know): {unread}.')
    return model, {'params': params}
