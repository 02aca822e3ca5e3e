"""T2T-ViT: "Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet" (Yuan et al., ICCV 2021).

The Tokens-to-Token module turns the image into 1/16-resolution tokens by alternating *soft splits* (overlapping
unfolds: 7x7 stride 4, then 3x3 stride 2 twice) with *re-structurisation* layers that map each unfolded token
(147 or 576 values) to 64 channels:

* `TokenPerformer` (T2T-ViT-7 ... -24): single-head Performer attention with 32 positive random features
  phi(u) = exp(w u - |u|^2 / 2) / sqrt(m), where w (m x 64, orthonormal rows times sqrt(m)) is a frozen buffer in
  the 'constants' collection (saved with checkpoints and the train state, never trained or counted as params;
  drawn from a fixed seed by default, `performer_seed`, so a run initialised from another run's params alone
  rebuilds the same features; official checkpoints bring their own w through `convert.from_official('t2t', ...)`);
  key/query/value come from one `kqv` dense in that order and there is no temperature on q and k.
* `TokenTransformer` (T2T-ViT_t-*): single-head softmax attention with no q/k/v bias and scale 1/sqrt(input dim)
  (147 or 576: the official code takes head_dim from the input width).

Both use the projected values `v` as the residual (the width changes), then a 64-wide MLP. The backbone is a
plain pre-LN ViT encoder (`layers.Encoder`: no q/k/v bias, LayerNorm eps 1e-5, exact GELU) on the class token plus
the tokens with a fixed sinusoid position table (a constant rebuilt for the token count, not a variable).

Released checkpoints were trained with a backbone attention scale of embed_dim^-0.5 (`attention_scale='embed_dim'`);
the class default, and training from scratch, use head_dim^-0.5.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import layers, register

Array = jax.Array



def soft_split(x: Array, kernel: int, stride: int, padding: int) -> Array:
    """`torch.nn.Unfold` on an NHWC map: returns [B, h', w', C * kernel * kernel] with the (C, kh, kw) order.

    One `lax.conv_general_dilated_patches` call (an identity-kernel convolution), no loop over positions; the
    feature order is channel-major, exactly like PyTorch's `Unfold`.
    """
    return jax.lax.conv_general_dilated_patches(
        x, filter_shape=(kernel, kernel), window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)), dimension_numbers=('NHWC', 'OIHW', 'NHWC'),
        precision=jax.lax.Precision.HIGHEST)


def performer_w_init(rng: Array, m: int, dim: int) -> Array:
    """Random features of the official Token_performer: orthogonal (m, dim) rows scaled by sqrt(m)."""
    return nn.initializers.orthogonal(scale=math.sqrt(m))(rng, (m, dim), jnp.float32)


class TokenPerformer(nn.Module):
    """The Performer T2T layer (official `Token_performer`, one head)."""

    dim: int = 64  # Output token width (in_dim of the official code).
    kernel_ratio: float = 0.5  # Random features m = dim * kernel_ratio.
    dropout_rate: float = 0.1  # Dropout after `proj` and after the MLP (hard-coded 0.1 in the official code).
    norm_eps: float = 1e-5  # LayerNorm epsilon.
    activation: str = 'gelu_exact'  # MLP activation.
    seed: Optional[int] = 0  # Seed of the random features w; None: drawn from the 'params' rng.
    dtype: Any = jnp.float32  # Compute dtype (the random-feature map runs in float32).

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        emb, m = self.dim, int(self.dim * self.kernel_ratio)
        dense = lambda f, name: nn.Dense(f, dtype=self.dtype, kernel_init=layers.trunc_normal, name=name)  # noqa: E731
        x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='norm1')(x)
        k, q, v = jnp.split(dense(3 * emb, 'kqv')(x), 3, axis=-1)  # The official order is k, q, v.
        # A fixed seed makes every run (and a fine-tuning run that loads only `params`) draw the same features.
        rng = (lambda: jax.random.PRNGKey(self.seed)) if self.seed is not None else (lambda: self.make_rng('params'))
        w = self.variable('constants', 'w', lambda: performer_w_init(rng(), m, emb)).value

        def prm_exp(u):  # Positive random features exp(w u - |u|^2 / 2) / sqrt(m), in float32.
            u = u.astype(jnp.float32)
            wtx = jnp.einsum('bti,mi->btm', u, w, precision=jax.lax.Precision.HIGHEST)
            return jnp.exp(wtx - 0.5 * jnp.sum(u * u, axis=-1, keepdims=True)) / math.sqrt(m)

        kp, qp = prm_exp(k), prm_exp(q)
        denom = jnp.einsum('btm,bm->bt', qp, kp.sum(axis=1))[..., None]
        kptv = jnp.einsum('bin,bim->bnm', v.astype(jnp.float32), kp)
        y = jnp.einsum('btm,bnm->btn', qp, kptv) / (denom + 1e-8)
        y = dense(emb, 'proj')(y.astype(self.dtype))
        y = v + nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        z = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='norm2')(y)
        z = layers.MlpBlock(mlp_dim=emb, activation=self.activation, dtype=self.dtype, kernel_init=layers.trunc_normal,
                            bias_init=nn.initializers.zeros, name='mlp')(z, deterministic=not train)
        return y + nn.Dropout(self.dropout_rate)(z, deterministic=not train)


class TokenTransformer(nn.Module):
    """The Transformer T2T layer (official `Token_transformer`, one head, mlp_ratio 1)."""

    dim: int = 64  # Output token width.
    mlp_ratio: float = 1.0  # MLP hidden width / dim.
    dropout_rate: float = 0.0  # Dropout after `proj` and in the MLP (0 in the official T2T module).
    attention_dropout_rate: float = 0.0  # Dropout on attention probabilities.
    norm_eps: float = 1e-5  # LayerNorm epsilon.
    activation: str = 'gelu_exact'  # MLP activation.
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel (layers.resolve_attention_impl).

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        dim_in = x.shape[-1]
        x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='norm1')(x)
        qkv = nn.Dense(3 * self.dim, use_bias=False, dtype=self.dtype, kernel_init=layers.trunc_normal, name='qkv')(x)
        q, k, v = jnp.split(qkv[:, :, None, :], 3, axis=-1)  # [B, T, 1 head, dim] each, the official q, k, v order.
        rng = self.make_rng('dropout') if self.attention_dropout_rate > 0 and train else None
        # Scale 1/sqrt(input width): the official code derives head_dim from the input width (147 or 576).
        y, _ = layers.dot_product_attention(q, k, v, scale=dim_in**-0.5, dropout_rate=self.attention_dropout_rate,
                                            deterministic=not train, dropout_rng=rng,
                                            implementation=self.attention_impl)
        y = nn.Dense(self.dim, dtype=self.dtype, kernel_init=layers.trunc_normal, name='proj')(y[:, :, 0])
        y = v[:, :, 0] + nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        z = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='norm2')(y)
        z = layers.MlpBlock(mlp_dim=int(self.dim * self.mlp_ratio), dropout_rate=self.dropout_rate,
                            activation=self.activation, dtype=self.dtype, kernel_init=layers.trunc_normal,
                            bias_init=nn.initializers.zeros, name='mlp')(z, deterministic=not train)
        return y + z


class T2TModule(nn.Module):
    """Soft split -> T2T layer -> soft split -> T2T layer -> soft split -> `project` to the backbone width."""

    embed_dim: int  # Backbone width D.
    tokens_type: str = 'performer'  # 'performer' or 'transformer'.
    token_dim: int = 64  # Width of the T2T layers.
    kernels: Sequence[int] = (7, 3, 3)  # Soft-split kernels.
    strides: Sequence[int] = (4, 2, 2)  # Soft-split strides.
    paddings: Sequence[int] = (2, 1, 1)  # Soft-split paddings.
    performer_dropout_rate: float = 0.1  # Dropout inside the Performer layers.
    performer_seed: Optional[int] = 0  # Seed of layer i's random features is performer_seed + i (None: params rng).
    norm_eps: float = 1e-5  # LayerNorm epsilon.
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel of the 'transformer' T2T layers.

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[Array, tuple[int, int], dict[str, Array]]:
        out = {}
        n = len(self.kernels)
        for i in range(n):
            x = soft_split(x, self.kernels[i], self.strides[i], self.paddings[i])
            b, h, w, c = x.shape
            x = x.reshape(b, h * w, c)
            out[f'split_{i}'] = x
            if i == n - 1:
                break
            if self.tokens_type == 'performer':
                seed = None if self.performer_seed is None else self.performer_seed + i
                layer = TokenPerformer(self.token_dim, dropout_rate=self.performer_dropout_rate,
                                       norm_eps=self.norm_eps, seed=seed, dtype=self.dtype, name=f'attention{i + 1}')
            elif self.tokens_type == 'transformer':
                layer = TokenTransformer(self.token_dim, norm_eps=self.norm_eps, dtype=self.dtype,
                                         attention_impl=self.attention_impl, name=f'attention{i + 1}')
            else:
                raise ValueError(f"tokens_type must be 'performer' or 'transformer', got {self.tokens_type!r}.")
            x = layer(x, train).reshape(b, h, w, self.token_dim)
            out[f'attention{i + 1}'] = x
        x = nn.Dense(self.embed_dim, dtype=self.dtype, kernel_init=layers.trunc_normal, name='project')(x)
        return x, (h, w), out


class T2TViT(nn.Module):
    """T2T-ViT classifier; returns `(logits, out)`.

    `out`: 't2t/split_{i}', 't2t/attention{i}' (T2T module intermediates), 'stem' (tokens after `project`),
    'encoder/block_{i:02d}', 'encoded', 'tokens_2d' ([B, h, w, D] after the final norm), 'pre_logits', 'logits'.
    """

    num_classes: Optional[int] = 1000  # Head width; None or 0 drops the head.
    image_size: int | Sequence[int] = 224  # Nominal input resolution (the sinusoid table follows the input).
    tokens_type: str = 'performer'  # T2T layers: 'performer' (T2T-ViT-*) or 'transformer' (T2T-ViT_t-*).
    token_dim: int = 64  # Width of the T2T layers.
    hidden_size: int = 384  # Backbone width D.
    num_layers: int = 14  # Backbone depth.
    num_heads: int = 6  # Backbone heads.
    mlp_ratio: float = 3.0  # Backbone MLP hidden width / D.
    qkv_bias: bool = False  # Backbone q/k/v bias (off in the official code).
    attention_scale: str = 'head_dim'  # 'head_dim' (class default) or 'embed_dim' (the released checkpoints).
    dropout_rate: float = 0.0  # Dropout after the position embedding and inside blocks.
    attention_dropout_rate: float = 0.0  # Dropout on attention probabilities.
    drop_path_rate: float = 0.1  # Stochastic depth at the last block (linear ramp).
    performer_dropout_rate: float = 0.1  # Dropout inside the Performer T2T layers (hard-coded in the official code).
    # Seed of the frozen Performer random features (fixed by default, so that runs initialised from a checkpoint's
    # params alone rebuild the same features); None draws them from the init rng like the official code.
    performer_seed: Optional[int] = 0
    norm_eps: float = 1e-5  # LayerNorm epsilon.
    activation: str = 'gelu_exact'  # Backbone MLP activation.
    scan: bool = False  # Scan over backbone layers.
    remat_policy: Optional[str] = None  # Rematerialisation policy of each backbone block.
    dtype: Any = jnp.float32  # Compute dtype (parameters stay float32).
    attention_impl: str = 'auto'  # Attention kernel: 'auto', 'xla', 'cudnn' or 'cpu' (layers.resolve_attention_impl).

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        layers.check_images(images, name='T2T-ViT')
        if self.attention_scale not in ('head_dim', 'embed_dim'):
            raise ValueError(f"attention_scale must be 'head_dim' or 'embed_dim', got {self.attention_scale!r}.")
        x, (h, w), t2t_out = T2TModule(self.hidden_size, self.tokens_type, self.token_dim,
                                       performer_dropout_rate=self.performer_dropout_rate,
                                       performer_seed=self.performer_seed, norm_eps=self.norm_eps,
                                       dtype=self.dtype, attention_impl=self.attention_impl,
                                       name='tokens_to_token')(images.astype(self.dtype), train)
        out = {f't2t/{k}': v for k, v in t2t_out.items()}
        out['stem'] = x
        b, d = x.shape[0], self.hidden_size
        cls = self.param('cls', layers.trunc_normal, (1, 1, d))
        x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), [b, 1, 1]), x], axis=1)
        x = x + jnp.asarray(layers.posemb_sincos_1d(x.shape[1], d), x.dtype)  # Frozen sinusoid table.
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        x, enc_out = layers.Encoder(
            num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=int(d * self.mlp_ratio),
            dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
            drop_path_rate=self.drop_path_rate, norm_eps=self.norm_eps, activation=self.activation,
            qkv_bias=self.qkv_bias, attention_scale=d**-0.5 if self.attention_scale == 'embed_dim' else None,
            scan=self.scan, remat_policy=self.remat_policy, dtype=self.dtype, kernel_init=layers.trunc_normal,
            bias_init=nn.initializers.zeros, attention_impl=self.attention_impl, name='Transformer')(x, train=train)
        out.update({f'encoder/{k}': v for k, v in enc_out.items()})
        out['encoded'] = x
        out['tokens_2d'] = x[:, 1:].reshape(b, h, w, d)
        return layers.classifier_head(x[:, 0], self.num_classes, out, dtype=self.dtype,
                                      kernel_init=layers.trunc_normal)


# ----------------------------------------------------------------------------------------------------------------
# Registered variants (official models/t2t_vit.py; paper table 1).
# ----------------------------------------------------------------------------------------------------------------
# name: (T2T layer, depth, D, heads, mlp ratio). T2T-ViT-7 has depth 7 in the code and README (paper table 1: 8).
T2T_VARIANTS = {
    'T2T-ViT-7': ('performer', 7, 256, 4, 2.0),
    'T2T-ViT-10': ('performer', 10, 256, 4, 2.0),
    'T2T-ViT-12': ('performer', 12, 256, 4, 2.0),
    'T2T-ViT-14': ('performer', 14, 384, 6, 3.0),
    'T2T-ViT-19': ('performer', 19, 448, 7, 3.0),
    'T2T-ViT-24': ('performer', 24, 512, 8, 3.0),
    'T2T-ViT_t-14': ('transformer', 14, 384, 6, 3.0),
    'T2T-ViT_t-19': ('transformer', 19, 448, 7, 3.0),
    'T2T-ViT_t-24': ('transformer', 24, 512, 8, 3.0),
}
for _name, (_tt, _depth, _d, _heads, _r) in T2T_VARIANTS.items():
    register(_name, T2TViT, aliases=(_name.lower().replace('-', '_'),), paper='t2t', tokens_type=_tt,
             num_layers=_depth, hidden_size=_d, num_heads=_heads, mlp_ratio=_r)

# The paper's CNN-to-ViT ablations of T2T-ViT-14 that the official code registers (`t2t_vit_14_resnext`,
# `t2t_vit_14_wide`; Performer T2T module): 'T2T-ViT-ResNeXt' (table 6, 21.5M: T2T-ViT-14 with 32 heads of width
# 12) and the shallow-wide 'T2T-ViT-d768-4' (table 7, 25.0M; table 6 calls it 'T2T-ViT-Wide'). The README lists no
# checkpoints for them, so the official factories' pretrained-only scales (384^-0.5 and 512^-0.5) are not modelled.
# name: (aliases, depth, D, heads, mlp ratio).
T2T_ABLATIONS = {
    'T2T-ViT-ResNeXt': (('T2T-ViT-14-ResNeXt', 't2t_vit_14_resnext'), 14, 384, 32, 3.0),
    'T2T-ViT-d768-4': (('T2T-ViT-Wide', 'T2T-ViT-14-Wide', 't2t_vit_14_wide'), 4, 768, 12, 3.0),
}
for _name, (_aliases, _depth, _d, _heads, _r) in T2T_ABLATIONS.items():
    register(_name, T2TViT, aliases=_aliases, paper='t2t', tokens_type='performer', num_layers=_depth, hidden_size=_d,
             num_heads=_heads, mlp_ratio=_r)
