"""Official CrossViT checkpoints (IBM/CrossViT; timm's `crossvit_*_240` use the same names) -> vit_jax.

    model = models.get_model('CrossViT-S')
    variables = convert.from_official('crossvit', torch.load(path, weights_only=True), model)

Official names: `patch_embed.{b}.proj` (the dagger models: `proj.{0,2,4}`), `cls_token.{b}`, `pos_embed.{b}`,
`blocks.{k}.blocks.{b}.{j}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `blocks.{k}.projs.{b}.{0: LN,
2: Linear}`, `blocks.{k}.fusion.{b}[.{layer}].{norm1, attn.{wq, wk, wv, proj}}`, `blocks.{k}.revert_projs.{b}`,
`norm.{b}`, `head.{b}`.
"""

from __future__ import annotations

from typing import Any

from vit_jax.models.crossvit import CrossViT
from vit_jax.porting import registry
from vit_jax.porting.common import conv, linear, norm, require_loop_layout, separate_attention, timm_block, to_numpy


@registry.official('crossvit', source='IBM/CrossViT', models=('CrossViT-', 'crossvit_'))
def convert(sd: registry.StateDict, model: CrossViT) -> dict:
    """CrossViT (both branches, the multi-scale blocks with their cross-attention fusion, both heads)."""
    if not isinstance(model, CrossViT):
        raise registry.ConversionError(f'official:crossvit converts into a CrossViT, not {type(model).__name__}.')
    require_loop_layout(model, 'crossvit')
    nb = len(model.patch_sizes)
    params: dict[str, Any] = {}
    for b in range(nb):
        if model.multi_conv:
            params[f'patch_embed_{b}'] = {f'conv_{i}': conv(sd, f'patch_embed.{b}.proj.{2 * i}') for i in range(3)}
        else:
            params[f'patch_embed_{b}'] = conv(sd, f'patch_embed.{b}.proj')
        params[f'cls_{b}'] = to_numpy(sd[f'cls_token.{b}'])
        params[f'posembed_{b}'] = {'pos_embedding': to_numpy(sd[f'pos_embed.{b}'])}
        params[f'norm_{b}'] = norm(sd, f'norm.{b}')
        if model.num_classes:
            params[f'head_{b}'] = linear(sd, f'head.{b}')

    def proj(prefix):
        return {'norm': norm(sd, f'{prefix}.0'), 'dense': linear(sd, f'{prefix}.2')}

    for k in range(model.num_encoders):
        p = f'blocks.{k}'
        blk: dict[str, Any] = {}
        for b in range(nb):
            for j in range(model.depths[b]):
                blk[f'branch{b}_block_{j}'] = timm_block(sd, f'{p}.blocks.{b}.{j}', model.num_heads[b])
            blk[f'proj_{b}'] = proj(f'{p}.projs.{b}')
            blk[f'revert_proj_{b}'] = proj(f'{p}.revert_projs.{b}')
            heads_j = model.num_heads[(b + 1) % nb]
            # The code's L_code = 0 stores one CrossAttentionBlock directly (fusion_depth 1); L_code >= 1 an
            # nn.Sequential of L_code blocks `fusion.{b}.{layer}` (fusion_depth L_code).
            bare = f'{p}.fusion.{b}.norm1.weight' in sd
            if bare and model.fusion_depth != 1:
                raise registry.ConversionError(
                    f'official:crossvit: {p}.fusion.{b} is a single cross-attention block (official depth[-1] = 0) '
                    f'but the model has fusion_depth={model.fusion_depth}; build it with fusion_depth=1.')
            for layer in range(model.fusion_depth):
                f = f'{p}.fusion.{b}' if bare else f'{p}.fusion.{b}.{layer}'
                name = f'fusion_{b}' + (f'_{layer}' if model.fusion_depth > 1 else '')
                blk[name] = {'norm1': norm(sd, f'{f}.norm1'), 'attn': separate_attention(
                    sd, heads_j, f'{f}.attn.wq', f'{f}.attn.wk', f'{f}.attn.wv', f'{f}.attn.proj')}
        params[f'blocks_{k}'] = blk
    return {'params': params}
