"""Layout helpers shared by the converters: PyTorch layouts -> Flax layouts.

Linear (out, in) -> Dense (in, out); Conv (O, I, *K) -> (*K, I, O); LayerNorm/GroupNorm weight/bias -> scale/bias;
BatchNorm running statistics -> `batch_stats`; and the per-head DenseGeneral kernels of attention.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from vit_jax.porting.registry import to_numpy  # noqa: F401  (re-exported)


def linear(sd: dict, prefix: str, bias: bool = True) -> dict:
    """torch Linear `prefix.weight` (out, in) -> flax Dense {'kernel': (in, out), 'bias'}."""
    p = {'kernel': to_numpy(sd[f'{prefix}.weight']).T}
    if bias and f'{prefix}.bias' in sd:
        p['bias'] = to_numpy(sd[f'{prefix}.bias'])
    return p


def conv(sd: dict, prefix: str, bias: bool = True) -> dict:
    """torch Conv2d/3d weight (O, I, *K) -> flax Conv {'kernel': (*K, I, O), 'bias'}."""
    w = to_numpy(sd[f'{prefix}.weight'])
    p = {'kernel': np.transpose(w, tuple(range(2, w.ndim)) + (1, 0))}
    if bias and f'{prefix}.bias' in sd:
        p['bias'] = to_numpy(sd[f'{prefix}.bias'])
    return p


def norm(sd: dict, prefix: str) -> dict:
    """torch LayerNorm/GroupNorm weight/bias -> flax {'scale', 'bias'}."""
    return {'scale': to_numpy(sd[f'{prefix}.weight']), 'bias': to_numpy(sd[f'{prefix}.bias'])}


def batchnorm(sd: dict, prefix: str) -> tuple[dict, dict]:
    """torch BatchNorm -> (flax params {'scale', 'bias'}, batch_stats {'mean', 'var'})."""
    return (norm(sd, prefix), {'mean': to_numpy(sd[f'{prefix}.running_mean']),
                               'var': to_numpy(sd[f'{prefix}.running_var'])})


def attention_in(sd: dict, prefix: str, num_heads: int, bias: bool = True) -> dict:
    """torch Linear (H*hd, D) -> flax DenseGeneral {'kernel': (D, H, hd), 'bias': (H, hd)}."""
    w = to_numpy(sd[f'{prefix}.weight'])
    out, d = w.shape
    p = {'kernel': w.T.reshape(d, num_heads, out // num_heads)}
    if bias and f'{prefix}.bias' in sd:
        p['bias'] = to_numpy(sd[f'{prefix}.bias']).reshape(num_heads, out // num_heads)
    return p


def attention_out(sd: dict, prefix: str, num_heads: int, bias: bool = True) -> dict:
    """torch Linear (D, H*hd) -> flax DenseGeneral over (heads, head_dim) {'kernel': (H, hd, D), 'bias': (D,)}."""
    w = to_numpy(sd[f'{prefix}.weight'])
    d, inner = w.shape
    p = {'kernel': w.T.reshape(num_heads, inner // num_heads, d)}
    if bias and f'{prefix}.bias' in sd:
        p['bias'] = to_numpy(sd[f'{prefix}.bias'])
    return p


def hf_activation(name: str) -> str:
    """Maps a HuggingFace `hidden_act` to a vit_jax activation name."""
    table = {'gelu': 'gelu_exact', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh',
             'quick_gelu': 'quick_gelu', 'relu': 'relu', 'silu': 'silu', 'swish': 'silu'}
    if name not in table:
        raise ValueError(f'Unsupported HuggingFace activation {name!r}.')
    return table[name]


def sinusoid_table(n: int, d: int) -> np.ndarray:
    """The fixed position table of the Transformer (`get_sinusoid_encoding_table` / `sinusoidal_embedding` in the
    official CCT, T2T-ViT, QueryOTR and MAE-pytorch code): angle pos / 10000^(2 (j // 2) / d), sin on even and cos
    on odd channels; shape (1, n, d)."""
    angle = np.arange(n)[:, None] / np.power(10000.0, 2 * (np.arange(d) // 2) / d)[None]
    return np.where(np.arange(d) % 2 == 0, np.sin(angle), np.cos(angle))[None].astype(np.float32)


def check_fixed_table(sd: dict, key: str) -> None:
    """Reads `key`, a stored copy of the fixed sin-cos table that the vit_jax model rebuilds, and raises if it holds
    anything else (a learned table would otherwise be dropped without a word)."""
    from vit_jax.porting.registry import ConversionError

    t = to_numpy(sd[key])
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or not np.allclose(t, sinusoid_table(t.shape[1], t.shape[2]), atol=1e-4):
        raise ConversionError(f'{key!r} is not the fixed sin-cos table (a learned position embedding?); the model as '
                              'built rebuilds that table and has no parameter for it: build it with a learnable '
                              'position embedding if the checkpoint has one.')


def split_qkv(w: Any, b: Any, num_heads: int) -> dict:
    """A fused torch q/k/v projection (weight rows [q; k; v], (3D', D); bias (3D',) or None) -> the `query`, `key`,
    `value` DenseGeneral params of `layers.MultiHeadAttention`."""
    d = w.shape[0] // 3
    out = {}
    for i, name in enumerate(('query', 'key', 'value')):
        part = {'x.weight': w[i * d:(i + 1) * d]}
        if b is not None:
            part['x.bias'] = b[i * d:(i + 1) * d]
        out[name] = attention_in(part, 'x', num_heads)
    return out


def fused_attention(sd: dict, prefix: str, num_heads: int, *, qkv: str = 'qkv', proj: str = 'proj') -> dict:
    """timm-style attention, a fused `{prefix}.{qkv}` Linear (3D', D) (bias optional) and `{prefix}.{proj}` ->
    `layers.MultiHeadAttention` params {query, key, value, out}."""
    out = split_qkv(sd[f'{prefix}.{qkv}.weight'], sd.get(f'{prefix}.{qkv}.bias'), num_heads)
    return {**out, 'out': attention_out(sd, f'{prefix}.{proj}', num_heads)}


def separate_attention(sd: dict, num_heads: int, query: str, key: str, value: str, out: str) -> dict:
    """Attention with one torch Linear per projection (full prefixes of the four) -> `layers.MultiHeadAttention`
    params {query, key, value, out}; a missing bias stays missing."""
    return {'query': attention_in(sd, query, num_heads), 'key': attention_in(sd, key, num_heads),
            'value': attention_in(sd, value, num_heads), 'out': attention_out(sd, out, num_heads)}


def encoder_block(sd: dict, prefix: str, attention: dict, *, norms: tuple[str, str] = ('norm1', 'norm2'),
                  mlp: tuple[str, str] = ('mlp.fc1', 'mlp.fc2')) -> dict:
    """A pre-norm transformer block -> `layers.Encoder1DBlock` params (LayerNorm_0, MultiHeadDotProductAttention_1,
    LayerNorm_2, MlpBlock_3). `attention` is the block's converted attention; `norms` and `mlp` name the two
    LayerNorms and the two MLP Linears relative to `prefix` (the timm names by default; HuggingFace's are
    HF_NORMS and HF_MLP)."""
    return {
        'LayerNorm_0': norm(sd, f'{prefix}.{norms[0]}'),
        'MultiHeadDotProductAttention_1': attention,
        'LayerNorm_2': norm(sd, f'{prefix}.{norms[1]}'),
        'MlpBlock_3': {'Dense_0': linear(sd, f'{prefix}.{mlp[0]}'), 'Dense_1': linear(sd, f'{prefix}.{mlp[1]}')},
    }


def timm_block(sd: dict, prefix: str, num_heads: int) -> dict:
    """timm `Block` (norm1, attn.qkv / attn.proj, norm2, mlp.fc1 / mlp.fc2) -> `layers.Encoder1DBlock` params."""
    return encoder_block(sd, prefix, fused_attention(sd, f'{prefix}.attn', num_heads))


def timm_blocks(sd: dict, prefix: str, num_layers: int, num_heads: int) -> dict:
    """timm-style ViT blocks `{prefix}blocks.{i}.*` -> {'encoderblock_{i}': Encoder1DBlock params}."""
    return {f'encoderblock_{i}': timm_block(sd, f'{prefix}blocks.{i}', num_heads) for i in range(num_layers)}


def timm_vit(sd: dict, prefix: str, num_layers: int, num_heads: int, *, final_norm: bool = True,
             cls_token: bool = True) -> dict:
    """A timm-style ViT (`{prefix}patch_embed.proj`, `cls_token`, `pos_embed`, `blocks`, `norm`) -> the ViT release
    names (`embedding`, `cls`, `Transformer/{posembed_input, encoderblock_i, encoder_norm}`); heads not included."""
    tr = {'posembed_input': {'pos_embedding': to_numpy(sd[f'{prefix}pos_embed'])},
          **timm_blocks(sd, prefix, num_layers, num_heads)}
    if final_norm:
        tr['encoder_norm'] = norm(sd, f'{prefix}norm')
    params = {'embedding': conv(sd, f'{prefix}patch_embed.proj'), 'Transformer': tr}
    if cls_token:
        params['cls'] = to_numpy(sd[f'{prefix}cls_token'])
    return params


def require_loop_layout(model: Any, family: str) -> None:
    """Refuses a model built with `scan=True`: official layouts convert into the per-layer (loop) layout."""
    if getattr(model, 'scan', False):
        from vit_jax.porting.registry import ConversionError

        raise ConversionError(f'official:{family}: convert into a model with scan=False (checkpoint.load_pretrained '
                              'restacks the layers for a scanned model).')


def classifier_head(sd: dict, family: str, num_classes: Optional[int], prefix: str = 'head',
                    name: str = 'head') -> dict:
    """{name: Dense params of the torch Linear `prefix`} when the model has a head (`num_classes`), else {}; a
    checkpoint head that a headless model would drop is refused, naming the fix."""
    if num_classes:
        return {name: linear(sd, prefix)}
    if f'{prefix}.weight' in sd:
        from vit_jax.porting.registry import ConversionError

        raise ConversionError(f'official:{family}: the checkpoint has a classifier head ({prefix}.weight) but the '
                              f'model has none (num_classes={num_classes}); build it with num_classes='
                              f'{prefix}.weight.shape[0].')
    return {}


# HuggingFace's names of a block's LayerNorms and MLP (ViT 4.x, DeiT, CvT, DPT, TimeSformer), for encoder_block.
HF_NORMS = ('layernorm_before', 'layernorm_after')
HF_MLP = ('intermediate.dense', 'output.dense')
