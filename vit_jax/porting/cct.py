"""Official Compact-Transformers checkpoints (SHI-Labs/Compact-Transformers: CCT, CVT, ViT-Lite) -> vit_jax.

    model = models.get_model('CCT-7/3x1', num_classes=10)
    variables = convert.from_official('cct', torch.load(path, weights_only=True), model)

Official names: `tokenizer.conv_layers.{i}.0` (the tokenizer convs; ViT-Lite/CVT: one patch conv with bias),
`classifier.{class_emb | attention_pool}`, `classifier.positional_emb`, `classifier.blocks.{i}.{pre_norm,
self_attn.qkv, self_attn.proj, norm1, linear1, linear2}`, `classifier.norm`, `classifier.fc`. A sine table
(`positional_emb` of the `_sine` models, a frozen Parameter there) is a constant here and is not loaded.
"""

from __future__ import annotations

from typing import Any

from vit_jax.models.cct import CompactTransformer
from vit_jax.porting import registry
from vit_jax.porting.common import check_fixed_table, conv, encoder_block, fused_attention, linear, norm, to_numpy


@registry.official('cct', source='SHI-Labs/Compact-Transformers', models=('CCT-', 'CVT-', 'ViT-Lite-', 'cct_',
                                                                           'cvt_', 'vit_'))
def convert(sd: registry.StateDict, model: CompactTransformer) -> dict:
    """CCT, CVT and ViT-Lite (`src/cct.py`, `src/cvt.py`, `src/vit.py`)."""
    if not isinstance(model, CompactTransformer):
        raise registry.ConversionError(f'official:cct converts into a Compact Transformer, not {type(model).__name__}.')
    heads = model.num_heads
    p: dict[str, Any] = {}
    if model.tokenizer == 'conv':
        p['tokenizer'] = {f'conv_{i}': conv(sd, f'tokenizer.conv_layers.{i}.0', bias=False)
                          for i in range(model.conv_layers)}
    else:
        p['embedding'] = conv(sd, 'tokenizer.conv_layers.0.0')
    c = 'classifier'
    if model.seq_pool:
        p['seqpool'] = {'attention_pool': linear(sd, f'{c}.attention_pool')}
    else:
        p['cls'] = to_numpy(sd[f'{c}.class_emb'])
    t: dict[str, Any] = {}
    if model.posemb == 'learnable':
        t['posembed_input'] = {'pos_embedding': to_numpy(sd[f'{c}.positional_emb'])}
    elif model.posemb == 'sine' and f'{c}.positional_emb' in sd:
        check_fixed_table(sd, f'{c}.positional_emb')  # The frozen sine Parameter: rebuilt here, not a variable.
    for i in range(model.num_layers):
        b = f'{c}.blocks.{i}'
        t[f'encoderblock_{i}'] = encoder_block(sd, b, fused_attention(sd, f'{b}.self_attn', heads),
                                               norms=('pre_norm', 'norm1'), mlp=('linear1', 'linear2'))
    t['encoder_norm'] = norm(sd, f'{c}.norm')
    p['Transformer'] = t
    if model.num_classes:
        p['head'] = linear(sd, f'{c}.fc')
    return {'params': p}
