"""Layout helpers shared by the converters: PyTorch layouts -> Flax layouts.

Linear (out, in) -> Dense (in, out); Conv (O, I, *K) -> (*K, I, O); LayerNorm/GroupNorm weight/bias -> scale/bias;
BatchNorm running statistics -> `batch_stats`; and the per-head DenseGeneral kernels of attention.
"""

from __future__ import annotations

from typing import Any

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
