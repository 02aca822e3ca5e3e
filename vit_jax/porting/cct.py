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
from vit_jax.porting.common import attention_in, attention_out, check_fixed_table, conv, linear, norm, to_numpy


@registry.official('cct', source='SHI-Labs/Compact-Transformers', models=('CCT-', 'CVT-', 'ViT-Lite-', 'cct_',
                                                                           'cvt_', 'vit_'))
def convert(sd: registry.StateDict, model: CompactTransformer) -> dict:
    """CCT, CVT and ViT-Lite (`src/cct.py`, `src/cvt.py`, `src/vit.py`)."""
    if not isinstance(model, CompactTransformer):
        raise registry.ConversionError(f'official:cct converts into a Compact Transformer, not {type(model).__name__}.')
    heads, d = model.num_heads, model.hidden_size
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
        qkv = to_numpy(sd[f'{b}.self_attn.qkv.weight'])
        attn = {n: attention_in({'w.weight': qkv[j * d:(j + 1) * d]}, 'w', heads, bias=False)
                for j, n in enumerate(('query', 'key', 'value'))}
        attn['out'] = attention_out(sd, f'{b}.self_attn.proj', heads)
        t[f'encoderblock_{i}'] = {
            'LayerNorm_0': norm(sd, f'{b}.pre_norm'),
            'MultiHeadDotProductAttention_1': attn,
            'LayerNorm_2': norm(sd, f'{b}.norm1'),
            'MlpBlock_3': {'Dense_0': linear(sd, f'{b}.linear1'), 'Dense_1': linear(sd, f'{b}.linear2')},
        }
    t['encoder_norm'] = norm(sd, f'{c}.norm')
    p['Transformer'] = t
    if model.num_classes:
        p['head'] = linear(sd, f'{c}.fc')
    return {'params': p}
