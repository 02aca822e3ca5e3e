"""Dynamic Token Normalization (Shao et al., ICLR 2022) and the paper's ConViT-style ViTs.

DTN normalises every token with a per-head mix of two statistics:

* intra-token (LayerNorm) statistics: the mean and variance over the channels of the token;
* position-aware inter-token statistics: for head (channel group) g, a softmax over source tokens of a learned
  function of the relative position (dx, dy, dx^2 + dy^2) weights the first and second moments of the other tokens,
  per channel.

Two sigmoid gates per head (one for the mean, one for the variance; both 0.5 at init) mix them. Before everything the
official code divides each token's channel group by its RMS ("for stability"); the LayerNorm variance uses Bessel's
correction (torch `.var`). The relative-position projection starts from ConViT's local initialisation (head g a
Gaussian kernel centred at a fixed offset); note that the official `vit_norm_mix.py` re-initialises every Linear
(this one included) after building the norms, so its models train from a random projection: `local_init=False`
reproduces that.

The norm is registered as 'dtn' (and 'dtn_var': only the variance is mixed; 'dtn_pool': grids larger than 14x14 are
average-pooled to 14x14 for the inter-token statistics), so any model built from the shared encoder takes it:
`models.get_model('ViT-S/16', norm='dtn')`. Blocks pass their `num_heads`. Tokens in front of the patch grid (a
class token) get the intra-token statistics only; the grid is inferred as the largest square that fits.

Parameter names: `scale` and `bias` (as LayerNorm, so LayerNorm weights load), `mean_norm_weight` and
`var_norm_weight` (the gates' logits, as the official code), `pos_proj` (Dense 3 -> heads).

The ConViT-style network of the paper (`vit_norm_mix.py`): DTN in both norms of blocks 0-9 on patch tokens only, the
class token concatenated before block 10, LayerNorm (eps 1e-5) in blocks 10-11, no q/k/v bias, exact GELU, a learned
position embedding for the patches only. Registered as 'DTN-ViT-T*' (192, 4 heads), 'DTN-ViT-S' (384, 6),
'DTN-ViT-S*' (432, 9), 'DTN-ViT-B' (768, 12), 'DTN-ViT-B*' (768, 16); `norm='layernorm'` gives the LN baselines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import layers, register
from vit_jax.models.vit import to_2tuple

Array = jax.Array


def relative_positions(h: int, w: int) -> np.ndarray:
    """[T, T, 3] features (dx, dy, dx^2 + dy^2) of target minus source, for row-major tokens of an h x w grid.

    Entry [i, j] is for source token i and target token j (the official `get_rel_indices` layout).
    """
    rows, cols = np.divmod(np.arange(h * w), w)
    dx = cols[None, :] - cols[:, None]
    dy = rows[None, :] - rows[:, None]
    return np.stack([dx, dy, dx**2 + dy**2], axis=-1).astype(np.float32)


def local_init_kernel(num_heads: int, locality_strength: float = 1.0, stddev: float = 0.02) -> layers.Initializer:
    """ConViT's local initialisation of the (3, heads) relative-position projection.

    With k = floor(sqrt(heads)), head h1 + k * h2 (h1, h2 < k) gets weight -1 on dx^2 + dy^2, 2 (h1 - c) on dy and
    2 (h2 - c) on dx (c = (k - 1) / 2): a Gaussian kernel centred at offset (dy, dx) = (h1 - c, h2 - c). Other heads
    keep the N(0, stddev) draw. Everything is then scaled by `locality_strength`.
    """

    def init(key, shape, dtype=jnp.float32):
        if tuple(shape) != (3, num_heads):
            raise ValueError(f'local_init_kernel expects shape (3, {num_heads}), got {shape}.')
        local = np.zeros(shape, np.float32)
        mask = np.zeros(shape, bool)
        k = int(num_heads**0.5)
        c = (k - 1) / 2
        for h1 in range(k):
            for h2 in range(k):
                g = h1 + k * h2
                local[:, g] = (2 * (h2 - c), 2 * (h1 - c), -1.0)
                mask[:, g] = True
        w = jnp.where(mask, local, jax.random.normal(key, shape, jnp.float32) * stddev)
        return (w * locality_strength).astype(dtype)

    return init


def _infer_layout(t: int, grid: Sequence[int] | None, num_prefix: int | None) -> tuple[int, tuple[int, int]]:
    if grid is not None:
        gh, gw = to_2tuple(grid)
        prefix = t - gh * gw if num_prefix is None else num_prefix
        if prefix < 0 or prefix + gh * gw != t:
            raise ValueError(f'DTN: {t} tokens do not fit grid {(gh, gw)} with {prefix} prefix tokens.')
        return prefix, (gh, gw)
    if num_prefix is not None:
        side = int(round(np.sqrt(t - num_prefix)))
        if side * side != t - num_prefix:
            raise ValueError(f'DTN: {t - num_prefix} grid tokens are not a square grid; set DTN.grid.')
        return num_prefix, (side, side)
    side = int(np.sqrt(t))
    prefix = t - side * side
    if prefix > 8:  # Not "a square grid plus a few class/register tokens".
        raise ValueError(f'DTN cannot infer the token grid from {t} tokens (not a square plus at most 8 prefix '
                         'tokens); set the grid and num_prefix_tokens of the DTN module.')
    return prefix, (side, side)


class DTN(nn.Module):
    """Dynamic Token Normalization over [B, T, C] tokens (patch tokens row-major, optional prefix tokens first)."""

    num_heads: int = 1  # Channel groups h (the attention heads of the block).
    eps: float = 1e-5  # Epsilon of the RMS pre-scaling and of the standardisation.
    grid: Sequence[int] | None = None  # Patch grid (h, w); None infers a square grid from the token count.
    num_prefix_tokens: int | None = None  # Tokens before the grid (class token); None infers T - grid size.
    only_var: bool = False  # 'dtn_var': the mean is the intra-token mean; only the variance is mixed.
    unbiased_var: bool = True  # Intra-token variance with Bessel's correction (torch `.var`, the official code).
    pool_grid: int | None = None  # 'dtn_pool': average-pool grids with side > pool_grid down to pool_grid.
    local_init: bool = True  # ConViT local initialisation of `pos_proj` (see the module docstring).
    locality_strength: float = 1.0  # Scale of the local initialisation.
    dtype: Any = jnp.float32  # Compute dtype (statistics in float32).

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.ndim != 3:
            raise ValueError(f'DTN expects [B, T, C] tokens, got shape {x.shape}.')
        b, t, c = x.shape
        h = self.num_heads
        if c % h:
            raise ValueError(f'DTN: width {c} is not divisible by num_heads={h}.')
        prefix, (gh, gw) = _infer_layout(t, self.grid, self.num_prefix_tokens)
        scale = self.param('scale', nn.initializers.ones, (c,))
        bias = self.param('bias', nn.initializers.zeros, (c,))
        mean_gate = None if self.only_var else self.param('mean_norm_weight', nn.initializers.zeros, (h,))
        var_gate = self.param('var_norm_weight', nn.initializers.zeros, (h,))
        kinit = (local_init_kernel(h, self.locality_strength) if self.local_init
                 else nn.initializers.normal(0.02))
        pos_proj = nn.Dense(h, kernel_init=kinit, name='pos_proj')

        x32 = x.astype(jnp.float32).reshape(b, t, h, c // h)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)  # RMS pre-scaling.
        xf = x32.reshape(b, t, c)
        mean_ln = jnp.mean(xf, axis=-1)  # [B, T]
        var_ln = jnp.var(xf, axis=-1, ddof=1 if self.unbiased_var else 0)

        # Position-aware inter-token statistics on the patch grid (optionally average-pooled).
        g = x32[:, prefix:].reshape(b, gh, gw, h, c // h)
        f = 1
        if self.pool_grid is not None and gh > self.pool_grid:
            f = gh // self.pool_grid
            if gh % f or gw % f:
                raise ValueError(f'DTN pool_grid={self.pool_grid}: grid {(gh, gw)} is not a multiple of {f}.')
            g = g.reshape(b, gh // f, f, gw // f, f, h, c // h).mean(axis=(2, 4))
        ph, pw = g.shape[1], g.shape[2]
        g = g.reshape(b, ph * pw, h, c // h)
        logits = pos_proj(jnp.asarray(relative_positions(ph, pw)))  # [Tsrc, Ttgt, h]
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=0)  # Over the source tokens.
        mean_in = jnp.einsum('ijg,bigk->bjgk', probs, g)
        var_in = jnp.einsum('ijg,bigk->bjgk', probs, jnp.square(g)) - jnp.square(mean_in)
        if f > 1:  # Each pooled cell's statistics back to its f x f tokens.
            def up(s):
                s = s.reshape(b, ph, 1, pw, 1, h, c // h)
                return jnp.broadcast_to(s, (b, ph, f, pw, f, h, c // h)).reshape(b, gh * gw, h, c // h)

            mean_in, var_in = up(mean_in), up(var_in)

        lam_v = jax.nn.sigmoid(var_gate)[:, None]  # [h, 1]
        var = lam_v * var_ln[:, prefix:, None, None] + (1 - lam_v) * var_in
        if self.only_var:
            mean = jnp.broadcast_to(mean_ln[:, prefix:, None, None], var.shape)
        else:
            lam_m = jax.nn.sigmoid(mean_gate)[:, None]
            mean = lam_m * mean_ln[:, prefix:, None, None] + (1 - lam_m) * mean_in
        mean = jnp.concatenate([jnp.broadcast_to(mean_ln[:, :prefix, None], (b, prefix, c)),
                                mean.reshape(b, gh * gw, c)], axis=1)
        var = jnp.concatenate([jnp.broadcast_to(var_ln[:, :prefix, None], (b, prefix, c)),
                               var.reshape(b, gh * gw, c)], axis=1)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale + bias).astype(self.dtype)


@layers.register_norm('dtn')
def _dtn(eps: float = 1e-5, dtype: Any = jnp.float32, name: str | None = None, num_heads: int = 1,
         **kw) -> nn.Module:
    return DTN(num_heads=num_heads, eps=eps, dtype=dtype, name=name)


@layers.register_norm('dtn_var')
def _dtn_var(eps: float = 1e-5, dtype: Any = jnp.float32, name: str | None = None, num_heads: int = 1,
             **kw) -> nn.Module:
    return DTN(num_heads=num_heads, eps=eps, only_var=True, dtype=dtype, name=name)


@layers.register_norm('dtn_pool')
def _dtn_pool(eps: float = 1e-5, dtype: Any = jnp.float32, name: str | None = None, num_heads: int = 1,
              **kw) -> nn.Module:
    return DTN(num_heads=num_heads, eps=eps, pool_grid=14, dtype=dtype, name=name)


# ----------------------------------------------------------------------------------------------------------------
# The paper's ConViT-style ViT (official `models/vit_norm_mix.py`).
# ----------------------------------------------------------------------------------------------------------------


class DTNViT(nn.Module):
    """ViT with DTN in the first `local_up_to_layer` blocks (patch tokens only) and a late class token.

    `out` holds 'stem', 'encoder/block_NN', 'encoded', 'tokens_2d', 'pre_logits', 'logits'.
    """

    num_classes: int | None = 1000  # Head width; None or 0 drops the head.
    image_size: int | Sequence[int] = 224  # Input resolution.
    patch_size: int = 16  # Patch size of the conv embedding.
    hidden_size: int = 384  # Token width.
    num_heads: int = 6  # Attention heads (= DTN groups).
    num_layers: int = 12  # Depth.
    mlp_ratio: float = 4.0  # MLP width = int(D * mlp_ratio).
    local_up_to_layer: int = 10  # Blocks [0, local_up_to_layer) use `norm` on patch tokens; the class token joins here.
    norm: str = 'dtn'  # Norm of the early blocks ('dtn', 'dtn_var', 'layernorm', ...).
    norm_eps: float = 1e-5  # Epsilon of every norm (PyTorch default).
    posemb: bool = True  # Learned position embedding of the patch tokens (none for the class token).
    qkv_bias: bool = False  # Bias on q/k/v.
    activation: str = 'gelu_exact'  # MLP activation (nn.GELU).
    dropout_rate: float = 0.0  # Dropout after the position embedding and inside blocks.
    attention_dropout_rate: float = 0.0  # Dropout on attention probabilities.
    drop_path_rate: float = 0.1  # Stochastic depth of the last block (linear ramp from 0).
    scan: bool = False  # Scan over encoder layers (two segments: the DTN blocks and the LayerNorm blocks).
    remat_policy: str | None = None  # Rematerialise each block with this jax.checkpoint_policies name.
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel: 'auto', 'xla', 'cudnn' or 'cpu' (layers.resolve_attention_impl).

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        layers.check_images(images, name='DTNViT', multiple_of=(self.patch_size,) * 2)
        if tuple(images.shape[1:3]) != to_2tuple(self.image_size):
            raise ValueError(f'This model was built for image_size={to_2tuple(self.image_size)} but got images of '
                             f'{tuple(images.shape[1:3])}; build it with get_model(..., image_size=...).')
        out = {}
        p, d, k = self.patch_size, self.hidden_size, self.local_up_to_layer
        # The official PatchEmbed conv keeps PyTorch's default init: U(+-1/sqrt(fan_in)) for weight and bias.
        x = nn.Conv(d, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype, kernel_init=layers.torch_kernel_init,
                    bias_init=layers.torch_bias_init(3 * p * p), name='embedding')(images.astype(self.dtype))
        b, gh, gw, _ = x.shape
        x = x.reshape(b, gh * gw, d)
        out['stem'] = x
        cls = self.param('cls', layers.timm_normal, (1, 1, d))
        embed = layers.position_embedding('learn' if self.posemb else 'none', init=layers.timm_normal,
                                          dropout_rate=self.dropout_rate, train=train)
        add_cls = lambda x: jnp.concatenate([jnp.tile(cls.astype(x.dtype), [x.shape[0], 1, 1]), x], axis=1)  # noqa
        hooks = {0: embed}
        if k < self.num_layers:  # The class token joins before block k (after the embedding when k = 0).
            hooks[k] = (lambda enc, x: add_cls(embed(enc, x))) if k == 0 else (lambda enc, x: add_cls(x))
        x, enc = layers.Encoder(
            num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=int(self.hidden_size * self.mlp_ratio),
            dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
            drop_path_rate=tuple(np.linspace(0.0, self.drop_path_rate, self.num_layers)), norm_eps=self.norm_eps,
            layer_kwargs=lambda i: {'norm': self.norm} if i < k else {}, activation=self.activation,
            qkv_bias=self.qkv_bias, kernel_init=layers.timm_normal, bias_init=nn.initializers.zeros, scan=self.scan,
            remat_policy=self.remat_policy, dtype=self.dtype, attention_impl=self.attention_impl,
            name='Transformer')(x, train, hooks=hooks)
        out.update({f'encoder/{name}': v for name, v in enc.items()})
        out['encoded'] = x
        has_cls = k < self.num_layers
        out['tokens_2d'] = x[:, int(has_cls):].reshape(b, gh, gw, d)
        x = x[:, 0] if has_cls else jnp.mean(x, axis=1)
        return layers.classifier_head(x, self.num_classes, out, dtype=self.dtype, kernel_init=layers.timm_normal)


# (D, heads), official names; depth 12, MLP ratio 4.
DTN_VITS = {
    'DTN-ViT-T*': (192, 4, 'vit_norm_ti_star'),
    'DTN-ViT-S': (384, 6, 'vit_norm_s'),
    'DTN-ViT-S*': (432, 9, 'vit_norm_s_star'),
    'DTN-ViT-B': (768, 12, 'vit_norm_b'),
    'DTN-ViT-B*': (768, 16, 'vit_norm_b_star'),
}
for _name, (_d, _h, _official) in DTN_VITS.items():
    register(_name, DTNViT, aliases=(_official,), paper='dtn', hidden_size=_d, num_heads=_h)
