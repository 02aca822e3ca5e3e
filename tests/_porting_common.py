"""Shared by the official-layout porting tests: random official state dicts, and renaming one through a regex table."""

import re

import numpy as np


class RandomStateDict(dict):
    """A PyTorch-style state dict of random float32 tensors, filled in module by module under official names.

    Each method adds one torch module's tensors at `prefix` (`{prefix}.weight`, `{prefix}.bias` ...), drawn in that
    order from one seeded generator: N(0, scale^2), LayerNorm / BatchNorm weights around 1, positive variances.
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        self.rs = np.random.RandomState(seed)

    def r(self, *shape: int, scale: float = 0.3) -> np.ndarray:
        return (self.rs.randn(*shape) * scale).astype(np.float32)

    def add(self, name: str, shape: tuple[int, ...], scale: float = 0.3) -> None:
        """One tensor (a parameter or buffer that is not a whole module)."""
        self[name] = self.r(*shape, scale=scale)

    def ln(self, prefix: str, d: int) -> None:
        """LayerNorm (also an affine InstanceNorm / GroupNorm, and the affine part of a BatchNorm)."""
        self[f'{prefix}.weight'], self[f'{prefix}.bias'] = 1 + self.r(d, scale=0.1), self.r(d, scale=0.1)

    def bn(self, prefix: str, d: int) -> None:
        """BatchNorm2d with running statistics."""
        self.ln(prefix, d)
        self[f'{prefix}.running_mean'] = self.r(d, scale=0.1)
        self[f'{prefix}.running_var'] = (1 + self.rs.rand(d)).astype(np.float32)
        self[f'{prefix}.num_batches_tracked'] = np.array(3, np.int64)

    def linear(self, prefix: str, d_out: int, d_in: int, bias: bool = True) -> None:
        self[f'{prefix}.weight'] = self.r(d_out, d_in)
        if bias:
            self[f'{prefix}.bias'] = self.r(d_out)

    def conv(self, prefix: str, d_out: int, d_in: int, k: int, bias: bool = True, scale: float = 0.2) -> None:
        """Conv2d with a k x k kernel."""
        self[f'{prefix}.weight'] = self.r(d_out, d_in, k, k, scale=scale)
        if bias:
            self[f'{prefix}.bias'] = self.r(d_out, scale=0.1)

    def attention(self, prefix: str, d: int, qkv_bias: bool = True) -> None:
        """timm Attention: a fused `qkv` Linear (3d, d) and `proj`."""
        self.linear(f'{prefix}.qkv', 3 * d, d, bias=qkv_bias)
        self.linear(f'{prefix}.proj', d, d)

    def mlp(self, prefix: str, d: int, d_ff: int) -> None:
        """timm Mlp: `fc1` (d -> d_ff), `fc2`."""
        self.linear(f'{prefix}.fc1', d_ff, d)
        self.linear(f'{prefix}.fc2', d, d_ff)

    def vit_block(self, prefix: str, d: int, d_ff: int, qkv_bias: bool = True) -> None:
        """timm Block: norm1, attn, norm2, mlp."""
        self.ln(f'{prefix}.norm1', d)
        self.attention(f'{prefix}.attn', d, qkv_bias)
        self.ln(f'{prefix}.norm2', d)
        self.mlp(f'{prefix}.mlp', d, d_ff)


def timm_block_renames(block: str, layer: str, *, qkv, proj: str, mlp=('intermediate.dense', 'output.dense'),
                       norms=('layernorm_before', 'layernorm_after')) -> tuple:
    """`rename` rows from timm Blocks to HuggingFace layers: `block` is a regex of a block's prefix (its number the
    group 1, ending in '\\.'), `layer` HuggingFace's (with '\\1', ending in '.'); norm1 / norm2 -> `norms`,
    attn.qkv -> `qkv` (one name, or three to split the fused tensor), attn.proj -> `proj`, mlp.fc1 / fc2 -> `mlp`."""
    hf_qkv = f'{layer}{qkv}.' if isinstance(qkv, str) else tuple(f'{layer}{n}.' for n in qkv)
    return ((block + r'norm1\.', f'{layer}{norms[0]}.'), (block + r'norm2\.', f'{layer}{norms[1]}.'),
            (block + r'attn\.qkv\.', hf_qkv), (block + r'attn\.proj\.', f'{layer}{proj}.'),
            (block + r'mlp\.fc1\.', f'{layer}{mlp[0]}.'), (block + r'mlp\.fc2\.', f'{layer}{mlp[1]}.'))


def rename(sd: dict, table) -> dict:
    """Each key renamed by the first (pattern, replacement) of `table` that changes it; a key none matches fails.

    A replacement of None drops the key; a tuple of three names splits a fused q/k/v tensor into thirds along its
    first axis, one name each.
    """
    out = {}
    for k, v in sd.items():
        for pat, rep in table:
            if re.search(pat, k) is None:
                continue
            if isinstance(rep, tuple):
                d = v.shape[0] // len(rep)
                out.update({re.sub(pat, r, k): v[j * d:(j + 1) * d] for j, r in enumerate(rep)})
            elif rep is not None:
                out[re.sub(pat, rep, k)] = v
            break
        else:
            raise AssertionError(f'no HF name for {k}')
    return out
