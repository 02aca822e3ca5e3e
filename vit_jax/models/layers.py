"""Shared building blocks for every architecture in vit_jax.

Parameter names follow the original ViT release (pre-linen numbering inside an encoder block:
`LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3/Dense_{0,1}`), so released `.npz`
files load without renaming.

Every option is a dataclass field threaded down explicitly. Families that differ from plain ViT (CCT's norm
placement, CvT's attention scale, T2T's qkv bias, ...) set the matching field instead of writing a new block.

Intermediates: attention modules `sow` their attention weights into the `intermediates` collection when the
caller makes it mutable (`model.apply(..., mutable=['intermediates'])`); this costs nothing otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import registry

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]


# ----------------------------------------------------------------------------------------------------------------
# Activations and norms.
# ----------------------------------------------------------------------------------------------------------------
def quick_gelu(x: Array) -> Array:
    """QuickGELU (CvT, CLIP): x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    'gelu': functools.partial(jax.nn.gelu, approximate=True),  # The ViT release (flax nn.gelu default).
    'gelu_tanh': functools.partial(jax.nn.gelu, approximate=True),
    'gelu_exact': functools.partial(jax.nn.gelu, approximate=False),  # PyTorch nn.GELU().
    'quick_gelu': quick_gelu,
    'relu': jax.nn.relu,
    'silu': jax.nn.silu,
    'tanh': jnp.tanh,
}


def get_activation(name: str | Callable[[Array], Array]) -> Callable[[Array], Array]:
    """Returns an activation by name ('gelu' is the tanh approximation of the ViT release)."""
    if callable(name):
        return name
    if name not in ACTIVATIONS:
        raise ValueError(f'Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.')
    return ACTIVATIONS[name]


# Token normalisers usable wherever a block asks for `norm`. DTN's module registers 'dtn', 'dtn_var', 'dtn_pool'.
NORMS: registry.Registry[Callable[..., nn.Module]] = registry.Registry('norm', modules=('vit_jax.models.dtn',))


def register_norm(name: str):
    """Decorator: registers a norm factory `f(eps=..., dtype=..., name=..., **kw) -> nn.Module`.

    Blocks pass `num_heads` (the attention heads of the block) in `kw`; a factory that has no use for it must accept
    and ignore it (as 'layernorm' does).
    """
    return NORMS.register(name)


@register_norm('layernorm')
def _layernorm(eps: float = 1e-6, dtype: Dtype = jnp.float32, name: Optional[str] = None, **_) -> nn.Module:
    return nn.LayerNorm(epsilon=eps, dtype=dtype, name=name)


def make_norm(norm: str, *, eps: float, dtype: Dtype, name: Optional[str], **kw) -> nn.Module:
    """Builds a token normaliser by registered name ('layernorm', 'dtn', ...)."""
    return NORMS.get(norm)(eps=eps, dtype=dtype, name=name, **kw)


# ----------------------------------------------------------------------------------------------------------------
# Regularisers.
# ----------------------------------------------------------------------------------------------------------------
def drop_path(x: Array, rate: float | Array, rng: Array) -> Array:
    """Stochastic depth: zeroes whole examples of a residual branch, rescales the survivors."""
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(rng, keep, shape)
    return jnp.where(mask, x / jnp.maximum(keep, 1e-12).astype(x.dtype), jnp.zeros_like(x))


class DropPath(nn.Module):
    """Stochastic depth module; `rate` may be a traced scalar (a per-layer rate under `nn.scan`)."""

    rate: float | Array = 0.0  # Probability of dropping the branch for an example.

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or (isinstance(self.rate, (int, float)) and self.rate == 0.0):
            return x
        return drop_path(x, self.rate, self.make_rng('dropout'))


# ----------------------------------------------------------------------------------------------------------------
# Named initialisers: the families refer to these instead of writing their own.
# ----------------------------------------------------------------------------------------------------------------
# timm's `trunc_normal_(std=.02)` truncates at +-2 *absolute*, i.e. at 100 sigma: in effect N(0, 0.02) (CCT, DHVT, DTN).
timm_normal = nn.initializers.normal(0.02)
# N(0, 0.02) truncated at +-2 std (CvT, T2T-ViT, CrossViT, Segmenter: `trunc_normal_` on their scale).
trunc_normal = nn.initializers.truncated_normal(0.02)
# BEiT's `trunc_normal_(std=.02, a=-std, b=std)`: truncated at +-1 std.
trunc_normal_1std = nn.initializers.truncated_normal(0.02, lower=-1.0, upper=1.0)
# PyTorch's default nn.Linear / nn.Conv2d weight: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
# torch.nn.init.kaiming_normal_ (fan in, gain sqrt(2)).
kaiming_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def torch_bias_init(fan_in: int) -> Initializer:
    """PyTorch's default nn.Linear / nn.Conv2d bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def flat_xavier_uniform(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
    """xavier_uniform of a conv kernel seen as a Linear on the flattened patch (MAE's patch embedding)."""
    fan_in, fan_out = int(np.prod(shape[:-1])), shape[-1]
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


# ----------------------------------------------------------------------------------------------------------------
# MLP and attention.
# ----------------------------------------------------------------------------------------------------------------
class MlpBlock(nn.Module):
    """Transformer MLP: Dense -> activation -> Dropout -> Dense -> Dropout (names Dense_0, Dense_1)."""

    mlp_dim: int  # Hidden width.
    out_dim: Optional[int] = None  # Output width; defaults to the input width.
    dropout_rate: float = 0.0  # Dropout after the activation and after the second dense.
    activation: str = 'gelu'  # See ACTIVATIONS ('gelu' = tanh approximation, as the ViT release).
    dtype: Dtype = jnp.float32  # Compute dtype.
    kernel_init: Initializer = nn.initializers.xavier_uniform()  # Dense kernels.
    bias_init: Initializer = nn.initializers.normal(stddev=1e-6)  # Dense biases (the release uses N(0, 1e-6)).

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        out_dim = self.out_dim or x.shape[-1]
        dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=self.kernel_init, bias_init=self.bias_init)
        x = dense(self.mlp_dim, name='Dense_0')(x)
        x = get_activation(self.activation)(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        x = dense(out_dim, name='Dense_1')(x)
        return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


# Attention kernels: 'auto' picks per platform; 'xla' is jax.nn.dot_product_attention's XLA path, 'cudnn' its cuDNN
# fused (flash) kernel, 'cpu' the deferred-normalisation einsum path tuned for XLA:CPU.
ATTENTION_IMPLS = ('auto', 'xla', 'cudnn', 'cpu')


def resolve_attention_impl(impl: str, *, dtype: Any, head_dim: int) -> str:
    """The kernel `impl` stands for here: 'auto' -> cuDNN fused attention on GPUs when dtype and head size allow it
    (bfloat16/float16, head_dim a multiple of 8 up to 128), XLA's on TPUs (and other GPU cases), 'cpu' on CPUs.
    'cudnn' off a GPU, or with a dtype/head size cuDNN cannot run, is a ValueError that says so."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f'attention_impl={impl!r} is not one of {ATTENTION_IMPLS}.')
    platform = jax.default_backend()
    cudnn_ok = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128
    if impl == 'cudnn':
        if platform != 'gpu':
            raise ValueError(f"attention_impl='cudnn' needs an NVIDIA GPU; this process runs on {platform!r}. "
                             "Use attention_impl='auto' (or 'xla').")
        if not cudnn_ok:
            raise ValueError(f"attention_impl='cudnn' needs bfloat16/float16 compute and head_dim a multiple of 8 "
                             f"up to 128; got dtype {jnp.dtype(dtype).name}, head_dim {head_dim}. Set "
                             "--config.model.dtype=bfloat16 or attention_impl='auto'.")
        return 'cudnn'
    if impl != 'auto':
        return impl
    if platform == 'gpu' and cudnn_ok:
        return 'cudnn'
    return 'cpu' if platform == 'cpu' else 'xla'


def dot_product_attention(q: Array, k: Array, v: Array, *, scale: float, bias: Optional[Array] = None,
                          dropout_rate: float = 0.0, deterministic: bool = True,
                          dropout_rng: Optional[Array] = None, return_weights: bool = False,
                          implementation: str = 'auto') -> tuple[Array, Optional[Array]]:
    """Scaled dot-product attention on [B, T, heads, head_dim] inputs.

    `implementation` (see `ATTENTION_IMPLS`, `resolve_attention_impl`) picks the kernel of the plain case (no
    attention dropout in training, no returned weights): 'xla' / 'cudnn' call `jax.nn.dot_product_attention`; 'cpu'
    defers the softmax normalisation: out = (exp(s - max s) @ v) / sum(exp(s - max s)), the same function as
    softmax(s) @ v. On XLA:CPU this is 13% (forward) to 17% (train step) faster for ViT-B/16 than
    `jax.nn.dot_product_attention`, whose materialised, normalised probabilities leave a standalone softmax reduction
    that XLA:CPU runs slowly (see benchmarks/README.md). With attention dropout or returned weights (attention maps)
    the normalised weights are materialised whatever the implementation: fused kernels return no probabilities.

    Returns:
      (output [B, Tq, heads, head_dim], weights [B, heads, Tq, Tk] or None).
    """
    need_dropout = dropout_rate > 0.0 and not deterministic
    impl = resolve_attention_impl(implementation, dtype=q.dtype, head_dim=q.shape[-1])
    if not need_dropout and not return_weights and impl in ('xla', 'cudnn'):
        out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype),
                                           bias=None if bias is None else bias.astype(q.dtype), scale=scale,
                                           implementation=impl)
        return out.astype(q.dtype), None
    if not need_dropout and not return_weights:
        logits = jnp.einsum('bqhd,bkhd->bhqk', q * jnp.asarray(scale, q.dtype), k)
        if bias is not None:
            logits = logits + bias
        logits = logits.astype(jnp.float32)
        # Subtracting the (constant-gradient) row max keeps exp in range; softmax is shift invariant.
        e = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
        out = jnp.einsum('bhqk,bkhd->bqhd', e.astype(q.dtype), v.astype(q.dtype))
        denom = jnp.transpose(jnp.sum(e, axis=-1), (0, 2, 1))[..., None]  # [B, Tq, heads, 1]
        return (out / denom.astype(out.dtype)).astype(q.dtype), None
    logits = jnp.einsum('bqhd,bkhd->bhqk', q * jnp.asarray(scale, q.dtype), k)
    if bias is not None:
        logits = logits + bias
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    probs = weights
    if need_dropout:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0).astype(q.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', probs, v)
    return out, weights


class MultiHeadAttention(nn.Module):
    """Multi-head attention with the ViT release layout (query/key/value/out DenseGeneral kernels).

    Kernels: query/key/value (D_in, heads, head_dim), out (heads, head_dim, D_out). Hooks for families that differ:
    `scale` (CvT: 1/sqrt(stage dim)), `qkv_bias` (CCT/T2T: off), `kv_input` (cross-attention), `qkv_transform` (a
    module applied to the input before the key/value projections, e.g. CvT's convolutional projection), and `bias`
    (additive attention bias, e.g. relative position bias).
    """

    num_heads: int  # Number of heads.
    qkv_features: Optional[int] = None  # Total width of q/k/v (defaults to the input width).
    out_features: Optional[int] = None  # Output width (defaults to the input width).
    qkv_bias: bool = True  # Bias on the q/k/v projections.
    out_bias: bool = True  # Bias on the output projection.
    scale: Optional[float] = None  # Query scale; default 1/sqrt(head_dim).
    attention_dropout_rate: float = 0.0  # Dropout on the attention probabilities.
    dtype: Dtype = jnp.float32  # Compute dtype.
    kernel_init: Initializer = nn.initializers.xavier_uniform()  # Projection kernels.
    attention_impl: str = 'auto'  # Attention kernel: 'auto', 'xla', 'cudnn', 'cpu' (see resolve_attention_impl).
    # Factory of a module `(x_q, x_kv, deterministic=) -> (q_in, k_in, v_in)` applied before the q/k/v projections
    # (CvT's convolutional projection); built under the name 'qkv_transform'. None: q_in = x_q, k_in = v_in = x_kv.
    qkv_transform: Optional[Callable[..., nn.Module]] = None

    @nn.compact
    def __call__(self, x_q: Array, x_kv: Optional[Array] = None, *, bias: Optional[Array] = None,
                 deterministic: bool = True) -> Array:
        x_kv = x_q if x_kv is None else x_kv
        out_features = self.out_features or x_q.shape[-1]
        features = self.qkv_features or x_q.shape[-1]
        if features % self.num_heads:
            raise ValueError(f'qkv width {features} is not divisible by num_heads={self.num_heads}.')
        head_dim = features // self.num_heads
        proj = functools.partial(nn.DenseGeneral, features=(self.num_heads, head_dim), dtype=self.dtype,
                                 kernel_init=self.kernel_init, use_bias=self.qkv_bias)
        x_k = x_v = x_kv
        if self.qkv_transform is not None:
            x_q, x_k, x_v = self.qkv_transform(name='qkv_transform')(x_q, x_kv, deterministic=deterministic)
        if x_k is x_q and x_v is x_q:
            q, k, v = self._fused_qkv(x_q, head_dim)
        else:
            q = proj(name='query')(x_q)
            k = proj(name='key')(x_k)
            v = proj(name='value')(x_v)
        scale = self.scale if self.scale is not None else head_dim**-0.5
        want_weights = self.is_mutable_collection('intermediates')
        rng = None
        if self.attention_dropout_rate > 0.0 and not deterministic:
            rng = self.make_rng('dropout')
        out, weights = dot_product_attention(q, k, v, scale=scale, bias=bias,
                                             dropout_rate=self.attention_dropout_rate, deterministic=deterministic,
                                             dropout_rng=rng, return_weights=want_weights,
                                             implementation=self.attention_impl)
        if weights is not None:
            self.sow('intermediates', 'attention_weights', weights)
        return nn.DenseGeneral(features=out_features, axis=(-2, -1), dtype=self.dtype,
                               kernel_init=self.kernel_init, use_bias=self.out_bias, name='out')(out)

    def _fused_qkv(self, x: Array, head_dim: int) -> tuple[Array, Array, Array]:
        """Self-attention's q, k, v as ONE matmul on the concatenated query/key/value kernels.

        The parameters are those of three `nn.DenseGeneral`s (same names, shapes and initialisation). One matmul is
        one larger GEMM, and its backward has a single input-gradient dot: with three projections the input gradient
        is dot + dot + dot, which jaxlib 0.10.2's oneDNN dot fusion (`vit_jax.xla_flags` 'onednn') cannot compile.
        """
        ws = [_ProjectionParams(features=(self.num_heads, head_dim), kernel_init=self.kernel_init,
                                use_bias=self.qkv_bias, name=n)(x.shape[-1]) for n in ('query', 'key', 'value')]
        kernel = jnp.concatenate([w for w, _ in ws], axis=1).astype(self.dtype)  # [D, 3 * heads, head_dim]
        y = jnp.einsum('...d,dhk->...hk', x.astype(self.dtype), kernel)
        if self.qkv_bias:
            y = y + jnp.concatenate([b for _, b in ws], axis=0).astype(self.dtype)
        return tuple(jnp.split(y, 3, axis=-2))


class _ProjectionParams(nn.Module):
    """The `kernel` [D, *features] and `bias` [*features] of an `nn.DenseGeneral` (same initialisation: the kernel
    initialiser sees the flat [D, prod(features)] shape), returned instead of applied."""

    features: tuple[int, ...]  # Output feature dims.
    kernel_init: Initializer  # Applied to the flat [D, prod(features)] kernel, as nn.DenseGeneral does.
    use_bias: bool = True  # Whether a (zero-initialised) bias exists.

    @nn.compact
    def __call__(self, in_features: int) -> tuple[Array, Optional[Array]]:
        flat = int(np.prod(self.features))

        def kernel_init(rng, shape, dtype=jnp.float32):
            return jnp.reshape(self.kernel_init(rng, (in_features, flat), dtype), shape)

        kernel = self.param('kernel', kernel_init, (in_features, *self.features))
        bias = self.param('bias', nn.initializers.zeros, self.features) if self.use_bias else None
        return kernel, bias


# ----------------------------------------------------------------------------------------------------------------
# Encoder.
# ----------------------------------------------------------------------------------------------------------------
class Encoder1DBlock(nn.Module):
    """Transformer encoder block (names as the ViT release).

    norm_style:
      'pre': x + Attn(LN(x)); x + MLP(LN(x))          (ViT, most families)
      'cct': x + Attn(LN(x)); x = LN(x); x + MLP(x)   (the official Compact Transformers encoder layer, where the
             residual stream itself is normalised before the MLP).
    """

    num_heads: int  # Attention heads.
    mlp_dim: int  # MLP hidden width.
    dropout_rate: float = 0.0  # Dropout after attention and inside the MLP.
    attention_dropout_rate: float = 0.0  # Dropout on attention probabilities.
    drop_path_rate: float | Array = 0.0  # Stochastic depth of both residual branches.
    norm: str = 'layernorm'  # Token normaliser (see NORMS).
    norm_eps: float = 1e-6  # Normaliser epsilon (ViT 1e-6; PyTorch ports 1e-5).
    norm_style: str = 'pre'  # 'pre' or 'cct'; see the class docstring.
    activation: str = 'gelu'  # MLP activation.
    qkv_bias: bool = True  # Bias on q/k/v.
    attention_scale: Optional[float] = None  # Query scale; default 1/sqrt(head_dim).
    layer_scale: Optional[float] = None  # LayerScale init (CaiT/BEiT); None disables.
    dtype: Dtype = jnp.float32  # Compute dtype.
    kernel_init: Optional[Initializer] = None  # Attention and MLP kernels; None keeps xavier_uniform (the release).
    bias_init: Optional[Initializer] = None  # MLP biases; None keeps N(0, 1e-6) (the release).
    qkv_transform: Optional[Callable[..., nn.Module]] = None  # See MultiHeadAttention (CvT conv projection).
    attention_impl: str = 'auto'  # Attention kernel (see resolve_attention_impl).

    @nn.compact
    def __call__(self, x: Array, train: bool = False, attn_bias: Optional[Array] = None) -> Array:
        deterministic = not train
        # Per-head norms (DTN) read `num_heads`; LayerNorm ignores it.
        norm = functools.partial(make_norm, self.norm, eps=self.norm_eps, dtype=self.dtype, num_heads=self.num_heads)
        k_init = {} if self.kernel_init is None else {'kernel_init': self.kernel_init}
        b_init = {} if self.bias_init is None else {'bias_init': self.bias_init}
        y = norm(name='LayerNorm_0')(x)
        y = MultiHeadAttention(num_heads=self.num_heads, qkv_bias=self.qkv_bias, scale=self.attention_scale,
                               attention_dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
                               qkv_transform=self.qkv_transform, attention_impl=self.attention_impl, **k_init,
                               name='MultiHeadDotProductAttention_1')(y, bias=attn_bias, deterministic=deterministic)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        if self.layer_scale is not None:
            y = y * self.param('gamma_1', nn.initializers.constant(self.layer_scale), (x.shape[-1],)).astype(y.dtype)
        x = x + DropPath(self.drop_path_rate)(y, deterministic)
        if self.norm_style == 'cct':
            x = norm(name='LayerNorm_2')(x)
            y = x
        elif self.norm_style == 'pre':
            y = norm(name='LayerNorm_2')(x)
        else:
            raise ValueError(f"norm_style must be 'pre' or 'cct', got {self.norm_style!r}.")
        y = MlpBlock(mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate, activation=self.activation,
                     dtype=self.dtype, **k_init, **b_init, name='MlpBlock_3')(y, deterministic=deterministic)
        if self.layer_scale is not None:
            y = y * self.param('gamma_2', nn.initializers.constant(self.layer_scale), (x.shape[-1],)).astype(y.dtype)
        return x + DropPath(self.drop_path_rate)(y, deterministic)


def _remat_policy(name: str):
    if name in ('none', 'full', 'nothing_saveable'):
        return jax.checkpoint_policies.nothing_saveable
    policy = getattr(jax.checkpoint_policies, name, None)
    if policy is None:
        raise ValueError(f'Unknown remat policy {name!r}; use a jax.checkpoint_policies name.')
    return policy


def remat(block_cls: type, policy: Optional[str], *, prevent_cse: bool = True) -> type:
    """`block_cls` rematerialised with the jax.checkpoint_policies name `policy` (None: `block_cls` unchanged).

    The block is called as `block(x, train, ...)`: `train` (argument 2, counting the module) stays static.
    """
    if policy is None:
        return block_cls
    return nn.remat(block_cls, prevent_cse=prevent_cse, static_argnums=(2,), policy=_remat_policy(policy))


def drop_path_rates(rate: float | Sequence[float], num_layers: int) -> np.ndarray:
    """Per-layer stochastic-depth rates: a number ramps linearly from 0 at the first layer to `rate` at the last
    (the DeiT/CCT convention; a single layer gets `rate`); a sequence gives every layer's rate as it is."""
    if isinstance(rate, (int, float)):
        return np.linspace(0.0, rate, num_layers) if num_layers > 1 else np.full((num_layers,), float(rate))
    rates = np.asarray(rate, np.float64)
    if rates.shape != (num_layers,):
        raise ValueError(f'drop_path_rate gives {rates.shape} rates for {num_layers} layers.')
    return rates


# A hook of the Encoder: `hook(encoder, tokens) -> tokens`, run inside the encoder's scope (modules it builds and
# `encoder.param(...)` land under the encoder's name, e.g. `Transformer/posembed_input`).
EncoderHook = Callable[['Encoder', Array], Array]
POSEMB_KINDS = ('learn', 'sincos2d', 'sincos2d_mae', 'sincos1d', 'none')


def _sincos_with_prefix(kind: str, grid: Sequence[int], dim: int, num_prefix: int) -> np.ndarray:
    """The fixed 2-D table ('sincos2d': big_vision's, 'sincos2d_mae': MAE's) on `grid`, zeros for `num_prefix`
    leading tokens: [1, num_prefix + h*w, dim]."""
    pe = posemb_sincos_2d(*grid, dim, convention='mae' if kind == 'sincos2d_mae' else 'big_vision')
    return np.concatenate([np.zeros((1, num_prefix, dim), np.float32), pe], axis=1)


def head_kernel_init(std: float) -> Initializer:
    """A classifier kernel's init: zeros for std 0 (the ViT release), else N(0, std^2) (timm's
    `trunc_normal_(std)`, truncated at +-2 absolute: in effect untruncated)."""
    return nn.initializers.normal(std) if std > 0 else nn.initializers.zeros


def posemb_initializer(kind: str, grid: Sequence[int], num_prefix: int = 0) -> Initializer:
    """Init of a learned [1, num_prefix + h*w, D] position embedding: 'normal' (N(0, 0.02), the ViT release) or
    a fixed table's values ('sincos2d_mae' / 'sincos2d' of `posemb_sincos_2d` on `grid`, zeros for the prefix
    tokens), as MAE / MILAN fine-tuning starts its learned embedding from the pretraining's fixed table."""
    if kind == 'normal':
        return nn.initializers.normal(stddev=0.02)
    if kind not in ('sincos2d', 'sincos2d_mae'):
        raise ValueError(f"posemb_init must be 'normal', 'sincos2d' or 'sincos2d_mae', got {kind!r}.")

    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        del key
        pe = _sincos_with_prefix(kind, grid, shape[-1], num_prefix)
        if pe.shape != tuple(shape):
            raise ValueError(f'A {kind} table for grid {tuple(grid)} + {num_prefix} prefix tokens has shape '
                             f'{pe.shape}, not the embedding\'s {tuple(shape)}.')
        return jnp.asarray(pe, dtype)

    return init


def position_embedding(kind: str, *, init: Initializer = nn.initializers.normal(stddev=0.02),
                       grid: Optional[Sequence[int]] = None, stored_grid: Optional[Sequence[int]] = None,
                       num_prefix: int = 0, dropout_rate: float = 0.0, train: bool = False) -> EncoderHook:
    """The usual first Encoder hook: adds a position embedding, then dropout (`hooks={0: position_embedding(...)}`).

    kind: 'learn' (`posembed_input/pos_embedding` from `init`; with `stored_grid` it is stored for that grid and
    resized to `grid` on the fly, `num_prefix` leading tokens kept), 'sincos2d' / 'sincos2d_mae' (the fixed 2-D
    table of `posemb_sincos_2d` on `grid`, big_vision's or MAE's convention, zeros for the `num_prefix` tokens),
    'sincos1d' (the Transformer's 1-D table over every token) or 'none'.
    """
    if kind not in POSEMB_KINDS:
        raise ValueError(f'Unknown position embedding {kind!r}; use one of {POSEMB_KINDS}.')

    def hook(enc: 'Encoder', x: Array) -> Array:
        del enc  # Modules built here land in the encoder's scope all the same.
        if kind == 'learn':
            x = AddPositionEmbs(posemb_init=init, stored_grid=stored_grid, grid=grid, num_prefix_tokens=num_prefix,
                                name='posembed_input')(x)
        elif kind in ('sincos2d', 'sincos2d_mae'):
            x = x + jnp.asarray(_sincos_with_prefix(kind, grid, x.shape[-1], num_prefix), x.dtype)
        elif kind == 'sincos1d':
            x = x + jnp.asarray(posemb_sincos_1d(x.shape[1], x.shape[2]), x.dtype)
        return nn.Dropout(dropout_rate)(x, deterministic=not train)

    return hook


def _dtype(x: Any) -> Any:
    """The dtype of the tokens (the first array when a block carries several, e.g. the branches of CrossViT)."""
    return jax.tree_util.tree_leaves(x)[0].dtype


class _ScanLayer(nn.Module):
    """The body `nn.scan` repeats: one block (scope `block`) with its layer's stochastic-depth rate and bias."""

    block_cls: type  # Block class.
    kwargs: Mapping[str, Any]  # Its arguments (the same for every layer of the segment).
    remat_policy: Optional[str] = None  # jax.checkpoint_policies name, or None for no remat.

    @nn.compact
    def __call__(self, x: Array, rate: Array, bias: Optional[Array], context: Optional[Array], train: bool):
        args = (x, train) + (() if bias is None else (bias,)) + (() if context is None else (context,))
        x = remat(self.block_cls, self.remat_policy, prevent_cse=False)(drop_path_rate=rate, name='block',
                                                                         **self.kwargs)(*args)
        return x, x


class _ScanBias(nn.Module):
    """The body of a scanned per-layer attention bias: the factory's module, in this scope (no extra level)."""

    factory: Callable[..., nn.Module]  # factory() -> module; module() -> bias.

    @nn.compact
    def __call__(self, carry: Array, _: Array):
        module = self.factory()
        nn.share_scope(self, module)
        return carry, module()


class Encoder(nn.Module):
    """The transformer encoder every family uses: hooks, `num_layers` blocks, final norm, in one scope.

    Families name it `Transformer`, so its parameters are the ViT release's:
    `Transformer/{posembed_input, ...what hooks build}`, `Transformer/encoderblock_{i}/...` (block i), the
    per-layer attention bias `Transformer/encoderblock_{i}_{attn_bias_name}` or a shared one
    `Transformer/{attn_bias_name}`, and `Transformer/encoder_norm`. Returns `(tokens, out)` with
    `out['block_XX']` each block's output.

    Hooks and per-layer arguments:
      - `block_cls` (default `Encoder1DBlock`) is built per layer as `block_cls(**kw)` and called as
        `(x, train)`, then the attention bias when there is one, then the `context` when it is given
        (`(x, train, bias)`, `(x, train, context)`, `(x, train, bias, context)`). `kw` = the fields below that the class
        declares (for a class other than Encoder1DBlock only those that are not None), then `block_kwargs`, then
        `layer_kwargs(i)`, and `drop_path_rate` (layer i's rate: a number ramps linearly from 0, a sequence gives
        each layer's).
      - `attn_bias`: a factory `f(name=...)` of a module whose `()` is an additive attention bias
        [1 or B, heads, T, T] (BEiT's relative position bias); one module shared by every block or, with
        `attn_bias_per_layer`, one per block.
      - `__call__(x, train, hooks={i: hook})`: `hook(encoder, x) -> x` runs before block i (0: embeddings, e.g.
        `position_embedding(...)`; i = num_layers: after the last block, before the final norm), inside this scope.
      - `__call__(x, train, context=c)`: an input every block reads and none updates (a decoder's memory: the
        encoder tokens QueryOTR's decoder cross-attends to, the prompts of MILAN's decoder).
      - A model that must keep the block names at its own top level (`decoder_{i}`, not `scope/decoder_{i}`) builds
        the Encoder and calls `nn.share_scope(self, encoder)` before calling it.

    `scan=True` runs the layers under `nn.scan` (one compiled block; `remat_policy` applies either way). Layers are
    scanned in segments of consecutive layers with equal `layer_kwargs` and no hook in between; a segment holds its
    layers' parameters stacked on a leading axis: `encoderblock/block/...` for the whole depth (the layout of the
    release's scanned models and big_vision), else `encoderblock_{first}-{last}/block/...`, and a per-layer bias
    `encoderblock[_{first}-{last}]_{attn_bias_name}/...`. `unscan_params` / `scan_params_like` convert the
    layouts (`checkpoint.load_pretrained` does it for you). `block_name` replaces 'encoderblock' (a family whose
    released names differ; add it with `register_layer_names` so that checkpoints convert).

    A new family writes its stem (tokens `x`, `out = {'stem': x}`), then e.g.

        x, enc_out = layers.Encoder(
            num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim, block_cls=MyBlock,
            block_kwargs={'grid': (h, w)}, drop_path_rate=self.drop_path_rate, scan=self.scan,
            remat_policy=self.remat_policy, dtype=self.dtype, name='Transformer',
        )(x, train, hooks={0: layers.position_embedding('learn', dropout_rate=self.dropout_rate, train=train)})
        out.update({f'encoder/{k}': v for k, v in enc_out.items()})
        return layers.classifier_head(x[:, 0], self.num_classes, out, dtype=self.dtype)
    """

    num_layers: int  # Depth.
    num_heads: int  # Attention heads.
    mlp_dim: int  # MLP hidden width.
    dropout_rate: float = 0.0  # Dropout inside blocks.
    attention_dropout_rate: float = 0.0  # Attention-probability dropout.
    drop_path_rate: float | Sequence[float] = 0.0  # Stochastic depth: last layer (ramp from 0) or per layer.
    norm: str = 'layernorm'  # Token normaliser of the blocks and of `encoder_norm`.
    norm_eps: float = 1e-6  # Normaliser epsilon.
    norm_style: str = 'pre'  # 'pre' or 'cct' (Encoder1DBlock).
    final_norm: bool = True  # Apply `encoder_norm` at the end.
    activation: str = 'gelu'  # MLP activation.
    qkv_bias: bool = True  # q/k/v bias.
    attention_scale: Optional[float] = None  # Query scale; default 1/sqrt(head_dim).
    layer_scale: Optional[float] = None  # LayerScale init; None disables.
    scan: bool = False  # Scan over layers (see the class docstring).
    remat_policy: Optional[str] = None  # Rematerialise each block with this jax.checkpoint_policies name.
    dtype: Dtype = jnp.float32  # Compute dtype.
    kernel_init: Optional[Initializer] = None  # Attention and MLP kernels; None keeps xavier_uniform (the release).
    bias_init: Optional[Initializer] = None  # MLP biases; None keeps N(0, 1e-6) (the release).
    attention_impl: str = 'auto'  # Attention kernel (see resolve_attention_impl).
    block_cls: Optional[type] = None  # Block class; None: Encoder1DBlock.
    block_kwargs: Optional[Mapping[str, Any]] = None  # More arguments of every block (e.g. a token grid).
    layer_kwargs: Optional[Callable[[int], Mapping[str, Any]]] = None  # i -> static arguments of block i only.
    attn_bias: Optional[Callable[..., nn.Module]] = None  # Factory of the attention-bias module (see above).
    attn_bias_name: str = 'rel_pos_bias'  # Its scope name (shared) or suffix (per layer).
    attn_bias_per_layer: bool = False  # One bias module per block instead of one shared.
    block_name: str = 'encoderblock'  # Scope of block i: `{block_name}_{i}` (see register_layer_names).

    def block_args(self, i: int) -> dict[str, Any]:
        """The arguments of block i (all but `drop_path_rate` and `name`)."""
        cls = self.block_cls or Encoder1DBlock
        std = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
                   attention_dropout_rate=self.attention_dropout_rate, norm=self.norm, norm_eps=self.norm_eps,
                   norm_style=self.norm_style, activation=self.activation, qkv_bias=self.qkv_bias,
                   attention_scale=self.attention_scale, layer_scale=self.layer_scale, dtype=self.dtype,
                   kernel_init=self.kernel_init, bias_init=self.bias_init, attention_impl=self.attention_impl)
        declared = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in std.items() if k in declared and (v is not None or cls is Encoder1DBlock)}
        kw.update(self.block_kwargs or {})
        if self.layer_kwargs is not None:
            kw.update(self.layer_kwargs(i))
        return kw

    def segments(self, hook_layers: Sequence[int] = ()) -> list[tuple[int, int]]:
        """The [start, stop) layer ranges scanned as one (equal `layer_kwargs`, no hook inside)."""
        starts = [0] + [i for i in range(1, self.num_layers) if i in hook_layers or (
            self.layer_kwargs is not None and dict(self.layer_kwargs(i)) != dict(self.layer_kwargs(i - 1)))]
        return list(zip(starts, starts[1:] + [self.num_layers]))

    @nn.compact
    def __call__(self, x: Array, train: bool = False, *, hooks: Optional[Mapping[int, EncoderHook]] = None,
                 context: Optional[Array] = None) -> tuple[Array, dict[str, Array]]:
        hooks = dict(hooks or {})
        if any(not 0 <= i <= self.num_layers for i in hooks):
            raise ValueError(f'Encoder hooks go before layers 0..{self.num_layers}, got {sorted(hooks)}.')
        block_cls = self.block_cls or Encoder1DBlock
        rates = drop_path_rates(self.drop_path_rate, self.num_layers)
        shared = None
        if self.attn_bias is not None and not self.attn_bias_per_layer:
            shared = self.attn_bias(name=self.attn_bias_name)()
        out = {}
        if not self.scan:
            for i in range(self.num_layers):
                if i in hooks:
                    x = hooks[i](self, x)
                bias = shared
                if self.attn_bias is not None and self.attn_bias_per_layer:
                    bias = self.attn_bias(name=f'{self.block_name}_{i}_{self.attn_bias_name}')()
                args = (x, train) + (() if bias is None else (bias.astype(_dtype(x)),))
                args += () if context is None else (context,)
                x = remat(block_cls, self.remat_policy)(
                    drop_path_rate=float(rates[i]), name=f'{self.block_name}_{i}', **self.block_args(i))(*args)
                out[f'block_{i:02d}'] = x
        else:
            for a, b in self.segments(sorted(hooks)):
                if a in hooks:
                    x = hooks[a](self, x)
                name = self.block_name + ('' if (a, b) == (0, self.num_layers) else f'_{a}-{b - 1}')
                bias, bias_axis = shared, nn.broadcast
                if self.attn_bias is not None and self.attn_bias_per_layer:
                    scanned_bias = nn.scan(_ScanBias, variable_axes={'params': 0}, split_rngs={'params': True},
                                           length=b - a)
                    _, bias = scanned_bias(self.attn_bias, name=f'{name}_{self.attn_bias_name}')(
                        jnp.zeros(()), jnp.arange(b - a))
                    bias_axis = 0
                if bias is not None:
                    bias = bias.astype(_dtype(x))
                scanned = nn.scan(_ScanLayer, variable_axes={'params': 0, 'intermediates': 0, 'batch_stats': 0},
                                  split_rngs={'params': True, 'dropout': True},
                                  in_axes=(0, bias_axis, nn.broadcast, nn.broadcast), length=b - a)
                x, per_layer = scanned(block_cls, self.block_args(a), self.remat_policy, name=name)(
                    x, jnp.asarray(rates[a:b], jnp.float32), bias, context, train)
                for j in range(b - a):
                    out[f'block_{a + j:02d}'] = jax.tree_util.tree_map(lambda v, j=j: v[j], per_layer)
        if self.num_layers in hooks:
            x = hooks[self.num_layers](self, x)
        if self.final_norm:
            x = make_norm(self.norm, eps=self.norm_eps, dtype=self.dtype, name='encoder_norm',
                          num_heads=self.num_heads)(x)
        return x, out


# Parameter layouts of the Encoder on '/'-joined names, for each registered block name N (default 'encoderblock'):
# per layer `N_{i}/...` and its attention bias `N_{i}_{bias}/...`; scanned `N[_{a}-{b}]/block/...` and
# `N[_{a}-{b}]_{bias}/...` with the layers stacked on a leading axis.
_BLOCK_NAMES = ['encoderblock']  # Regexes of the Encoders' `block_name`s.
_BIAS_NAMES = ['rel_pos_bias']  # Their per-layer `attn_bias_name`s.


def register_layer_names(*, block_name: Optional[str] = None, bias_name: Optional[str] = None) -> None:
    """Makes `unscan_params` / `scan_params_like` (so `checkpoint.load_pretrained`) recognise an Encoder
    `block_name` (a regex, e.g. r'stage_\\d+_block') or per-layer `attn_bias_name` other than the defaults."""
    if block_name is not None and block_name not in _BLOCK_NAMES:
        _BLOCK_NAMES.append(block_name)
    if bias_name is not None and bias_name not in _BIAS_NAMES:
        _BIAS_NAMES.append(bias_name)


@functools.lru_cache(maxsize=None)
def _layout_res(names: tuple[str, ...], biases: tuple[str, ...]) -> tuple[re.Pattern, re.Pattern]:
    n = '|'.join(f'(?:{b})' for b in names)
    s = '|'.join(re.escape(b) for b in biases)
    # Groups: scanned (sep, name, first, last, bias); per layer (sep, name, index, bias).
    return (re.compile(rf'(^|/)({n})(?:_(\d+)-(\d+))?(?:/block/|_({s})/)'),
            re.compile(rf'(^|/)({n})_(\d+)(?:_({s}))?/'))


def _scan_key(key: str) -> Optional[re.Match]:
    return _layout_res(tuple(_BLOCK_NAMES), tuple(_BIAS_NAMES))[0].search(key)


def _loop_key_match(key: str) -> Optional[re.Match]:
    return _layout_res(tuple(_BLOCK_NAMES), tuple(_BIAS_NAMES))[1].search(key)


def is_scanned_key(key: str) -> bool:
    """Whether a '/'-joined parameter name belongs to a scanned Encoder segment."""
    return _scan_key(key) is not None


def encoder_layer(key: str) -> Optional[tuple[int, bool]]:
    """(index of the Encoder layer a '/'-joined parameter name belongs to, whether it is stacked), or None.

    A per-layer name `encoderblock_{i}[_{bias}]/...` gives (i, False); a scanned one gives (its first layer, True):
    the layers are then first + arange(leading axis). For layer-wise learning-rate decay and per-layer analyses.
    """
    m = _scan_key(key)
    if m is not None:
        return int(m.group(3) or 0), True
    m = _loop_key_match(key)
    return None if m is None else (int(m.group(3)), False)


def _loop_key(prefix: str, i: int, suffix: Optional[str], rest: str) -> str:
    return f'{prefix}_{i}' + (f'_{suffix}' if suffix else '') + f'/{rest}'


def unscan_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """'/'-flat parameters (or other collections) with scanned Encoder segments, in the per-layer layout."""
    out = {}
    for k, v in flat.items():
        m = _scan_key(k)
        if m is None:
            out[k] = v
            continue
        start, n = int(m.group(3) or 0), v.shape[0]
        if m.group(3) is not None and int(m.group(4)) - start + 1 != n:
            raise ValueError(f'{k} stacks {n} layers, not layers {start}..{m.group(4)}.')
        for j in range(n):
            out[_loop_key(k[:m.start()] + m.group(1) + m.group(2), start + j, m.group(5), k[m.end():])] = v[j]
    return out


def scan_params_like(flat: Mapping[str, Any], like: Mapping[str, Any]) -> dict[str, Any]:
    """'/'-flat parameters (either layout) in the layout of `like` (a model's flat parameters or their shapes): the
    per-layer entries of every scanned key of `like` are stacked; everything else is kept as it is."""
    groups: dict[tuple, dict[int, Any]] = {}
    out = {}
    for k, v in unscan_params(flat).items():
        m = _loop_key_match(k)
        if m is None:
            out[k] = v
        else:
            key = (k[:m.start()] + m.group(1) + m.group(2), m.group(4), k[m.end():])
            groups.setdefault(key, {})[int(m.group(3))] = v
    used = set()
    for k, init in like.items():
        m = _scan_key(k)
        key = None if m is None else (k[:m.start()] + m.group(1) + m.group(2), m.group(5), k[m.end():])
        if key not in groups:
            continue
        start, n, have = int(m.group(3) or 0), init.shape[0], groups[key]
        wanted = list(range(start, start + n))
        if (m.group(3) is None and sorted(have) != wanted) or any(i not in have for i in wanted):
            raise ValueError(f'Cannot stack {k}: the checkpoint has blocks {sorted(have)}, not {start}..'
                             f'{start + n - 1}.')
        out[k] = np.stack([np.asarray(have[i]) for i in wanted])
        used.update((key, i) for i in wanted)
    for key, have in groups.items():
        for i, v in have.items():
            if (key, i) not in used:
                out[_loop_key(key[0], i, key[1], key[2])] = v
    return out


def unscan_shapes(like: Mapping[str, Any]) -> dict[str, Any]:
    """'/'-flat arrays or ShapeDtypeStructs in the per-layer layout, as zero-stride placeholders with their shapes
    (nothing is copied or allocated)."""
    return unscan_params({k: np.broadcast_to(np.zeros((), np.int8), np.shape(v)) for k, v in like.items()})


def shared_bias_to_per_layer_like(flat: Mapping[str, Any], like: Mapping[str, Any]) -> dict[str, Any]:
    """'/'-flat parameters with a shared attention-bias module `{scope}/{bias}/...` (e.g. BEiT pretraining's
    `Transformer/rel_pos_bias/...`) copied into every layer's `{scope}/{block}_{i}_{bias}/...` where `like` (a
    model's flat parameters, or their shapes, in either layout) has per-layer biases and no shared one: the rule of
    BEiT's fine-tuning loaders. Everything else, and a `flat` the rule does not apply to, is returned as it is."""
    flat = unscan_params(flat)
    loop_like = unscan_shapes(like)
    out, shared_used = dict(flat), set()
    for k in loop_like:
        m = _loop_key_match(k)
        if m is None or m.group(4) is None or k in flat:
            continue
        shared = k[:m.start()] + m.group(1) + m.group(4) + '/' + k[m.end():]
        if shared in flat and shared not in loop_like:
            out[k] = flat[shared]
            shared_used.add(shared)
    for k in shared_used:
        del out[k]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Position embeddings.
# ----------------------------------------------------------------------------------------------------------------
class AddPositionEmbs(nn.Module):
    """Adds a learned position embedding `pos_embedding` of shape (1, T, D) (release init N(0, 0.02)).

    With `stored_grid` and `grid`, the stored embedding has the (prefix + h*w) tokens of `stored_grid` and is
    resized on the fly to the input's `grid` (2-D bilinear, align_corners=False, as timm / DPT / Segmenter do for
    inputs of another size); the `num_prefix_tokens` leading tokens (class token) keep their embedding.
    """

    posemb_init: Initializer = nn.initializers.normal(stddev=0.02)  # Initializer.
    stored_grid: Optional[Sequence[int]] = None  # (h, w) grid of the stored embedding; None: shaped like the input.
    grid: Optional[Sequence[int]] = None  # (h, w) token grid of the input (used with stored_grid).
    num_prefix_tokens: int = 0  # Leading non-grid tokens (class token), not resized.

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.ndim != 3:
            raise ValueError(f'AddPositionEmbs expects [B, T, D] tokens, got shape {x.shape}.')
        if self.stored_grid is None:
            pe = self.param('pos_embedding', self.posemb_init, (1, x.shape[1], x.shape[2]))
            return x + pe.astype(x.dtype)
        sh, sw = self.stored_grid
        gh, gw = self.grid if self.grid is not None else self.stored_grid
        p = self.num_prefix_tokens
        if x.shape[1] != p + gh * gw:
            raise ValueError(f'AddPositionEmbs: {x.shape[1]} tokens do not match the grid {(gh, gw)} plus {p} prefix '
                             'token(s).')
        pe = self.param('pos_embedding', self.posemb_init, (1, p + sh * sw, x.shape[2]))
        if (gh, gw) != (sh, sw):
            grid = resize_bilinear(pe[:, p:].reshape(1, sh, sw, -1), (gh, gw), align_corners=False)
            pe = jnp.concatenate([pe[:, :p], grid.reshape(1, gh * gw, -1)], axis=1)
        return x + pe.astype(x.dtype)


def _interp_axis(x: Any, axis: int, size: int, align_corners: bool, xp: Any) -> Any:
    n = x.shape[axis]
    if n == size:
        return x
    dst = np.arange(size, dtype=np.float64)
    if align_corners:
        src = dst * ((n - 1) / (size - 1)) if size > 1 else np.zeros_like(dst)
    else:
        src = np.maximum((dst + 0.5) * (n / size) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    frac = (src - lo).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = size
    frac = xp.asarray(frac.reshape(shape), dtype=x.dtype)
    a = xp.take(x, xp.asarray(lo), axis=axis)
    b = xp.take(x, xp.asarray(hi), axis=axis)
    return a + (b - a) * frac


def resize_bilinear(x: Any, size: Sequence[int], align_corners: bool = False, *, axes: Sequence[int] = (1, 2)) -> Any:
    """Bilinear resize of the two spatial `axes` (NHWC by default) with PyTorch `F.interpolate` semantics.

    `align_corners=False` is PyTorch's default (half-pixel centres, no antialiasing, also when downsampling);
    `align_corners=True` maps the corner pixels onto each other (src = dst * (in - 1) / (out - 1)), which
    `jax.image.resize` cannot express (DPT's fusion blocks and heads use it). Works on numpy arrays too (then it
    stays in numpy, with no compilation), which host-side inference loops use.
    """
    xp = np if isinstance(x, np.ndarray) else jnp
    for axis, s in zip(axes, size):
        x = _interp_axis(x, axis, int(s), align_corners, xp)
    return x


def posemb_sincos_1d(length: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
    """The Transformer sinusoid table (sin on even, cos on odd channels) of shape (1, length, dim); T2T/CCT style."""
    pos = np.arange(length)[:, None]
    i = np.arange(dim)[None, :]
    angle = pos / np.power(temperature, 2 * (i // 2) / dim)
    table = np.where(i % 2 == 0, np.sin(angle), np.cos(angle))
    return table[None].astype(np.float32)


SINCOS_2D_CONVENTIONS = ('big_vision', 'mae')


def posemb_sincos_2d(h: int, w: int, dim: int, temperature: float = 10_000.0, *,
                     convention: str = 'big_vision') -> np.ndarray:
    """2-D sin-cos position embedding of shape (1, h*w, dim): channels [sin(x), cos(x), sin(y), cos(y)].

    x is the column (w) index, y the row (h) index, each quarter of D/4 channels; the rows are in raster order. The
    two conventions in the literature differ only in the frequencies omega_k = 1 / temperature**(k / denom),
    k = 0 .. D/4-1:

    - 'big_vision' (google-research/big_vision `posemb_sincos_2d`, MoCo v3): denom = D/4 - 1, so the lowest
      frequency is exactly 1/temperature (denom 1 when D = 4, where big_vision would divide by zero).
    - 'mae' (facebookresearch/mae `util/pos_embed.py`, used by MILAN): denom = D/4. Its first half (named `emb_h`
      there) is computed from the `meshgrid(grid_w, grid_h)[0]` plane, i.e. the column index, so the channel order
      is the same as big_vision's.

    Neither includes a class-token row: the callers prepend zeros (MAE's `cls_token=True` row is zeros too).
    """
    if convention not in SINCOS_2D_CONVENTIONS:
        raise ValueError(f'Unknown sincos convention {convention!r}; use one of {SINCOS_2D_CONVENTIONS}.')
    if dim % 4:
        raise ValueError(f'2-D sincos position embedding needs dim divisible by 4, got {dim}.')
    y, x = np.mgrid[:h, :w]
    denom = dim // 4 if convention == 'mae' else max(dim // 4 - 1, 1)
    omega = 1.0 / temperature ** (np.arange(dim // 4) / denom)
    y = y.reshape(-1)[:, None] * omega[None]
    x = x.reshape(-1)[:, None] * omega[None]
    pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return pe[None].astype(np.float32)


def resample_grid(grid: np.ndarray | Array, new_hw: Sequence[int]) -> np.ndarray:
    """Resamples a [h, w, D] grid of embeddings to `new_hw` like the ViT release (scipy zoom, order 1)."""
    import scipy.ndimage

    grid = np.asarray(grid, np.float32)
    h, w = grid.shape[:2]
    if (h, w) == tuple(new_hw):
        return grid
    zoom = (new_hw[0] / h, new_hw[1] / w, 1)
    out = scipy.ndimage.zoom(grid, zoom, order=1)
    if out.shape[:2] != tuple(new_hw):  # scipy rounds the output size; never happens for integer grids.
        raise ValueError(f'Resampling {grid.shape} to {new_hw} gave {out.shape}.')
    return out


def resample_posemb(posemb: np.ndarray | Array, new_len: int, *, num_prefix_tokens: int = 1,
                    old_hw: Optional[Sequence[int]] = None, new_hw: Optional[Sequence[int]] = None) -> np.ndarray:
    """Resamples a (1, prefix + h*w, D) position embedding to (1, new_len, D).

    The prefix tokens (class token, distillation token ...) keep their embedding; the grid is resampled with
    `resample_grid`. Grids default to square; pass `old_hw` / `new_hw` for non-square grids.
    """
    posemb = np.asarray(posemb)
    if posemb.shape[1] == new_len and (old_hw is None or new_hw is None or tuple(old_hw) == tuple(new_hw)):
        return posemb
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
    n_old, n_new = grid.shape[0], new_len - num_prefix_tokens
    old_hw = tuple(old_hw) if old_hw is not None else _square(n_old, 'old')
    new_hw = tuple(new_hw) if new_hw is not None else _square(n_new, 'new')
    if old_hw[0] * old_hw[1] != n_old or new_hw[0] * new_hw[1] != n_new:
        raise ValueError(f'Grid sizes {old_hw} -> {new_hw} do not match token counts {n_old} -> {n_new}.')
    grid = resample_grid(grid.reshape(old_hw[0], old_hw[1], -1), new_hw).reshape(1, n_new, -1)
    return np.concatenate([prefix, grid], axis=1).astype(posemb.dtype)


def _square(n: int, what: str) -> tuple[int, int]:
    s = int(round(np.sqrt(n)))
    if s * s != n:
        raise ValueError(f'The {what} position-embedding grid has {n} tokens, which is not square; pass old_hw/new_hw.')
    return s, s


# ----------------------------------------------------------------------------------------------------------------
# Patch embeddings (stems).
# ----------------------------------------------------------------------------------------------------------------
def to_2tuple(x: int | Sequence[int]) -> tuple[int, int]:
    """An int or a pair as an (h, w) pair."""
    if isinstance(x, int):
        return (x, x)
    x = tuple(int(v) for v in x)
    if len(x) != 2:
        raise ValueError(f'Expected an int or an (h, w) pair, got {x}.')
    return x


def patch_grid(image_size: int | Sequence[int], patch_size: int | Sequence[int]) -> tuple[int, int]:
    """The (h, w) token grid of images of `image_size` cut into `patch_size` patches (ints or pairs)."""
    (h, w), (ph, pw) = to_2tuple(image_size), to_2tuple(patch_size)
    return h // ph, w // pw


def patch_embed(x: Array, features: int, patch_size: Sequence[int] = (16, 16), dtype: Dtype = jnp.float32,
                name: str = 'embedding') -> Array:
    """Linear patch embedding: a conv with kernel = stride = patch (the release's `embedding`), returned as NHWD.

    Call it inside a parent's `@nn.compact` method so the conv lands in the parent's scope under `name`.
    """
    ph, pw = patch_size
    if x.shape[1] % ph or x.shape[2] % pw:
        raise ValueError(f'Image size {tuple(x.shape[1:3])} is not divisible by the patch size {(ph, pw)}.')
    return nn.Conv(features, (ph, pw), strides=(ph, pw), padding='VALID', dtype=dtype, name=name)(x)


class ConvStem(nn.Module):
    """The ViT_C convolutional stem ("Early Convolutions Help Transformers See Better", pycls `ViTStemConv`).

    3x3 convs (no bias) each followed by BatchNorm and ReLU, then a 1x1 conv with bias to the embedding width.
    """

    features: int  # Output width D.
    channels: Sequence[int] = (48, 96, 192, 384)  # Widths of the 3x3 convs.
    strides: Sequence[int] = (2, 2, 2, 2)  # Strides of the 3x3 convs (product 16).
    bn_momentum: float = 0.9  # Flax BatchNorm momentum (PyTorch 0.1).
    bn_eps: float = 1e-5  # BatchNorm epsilon.
    dtype: Dtype = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        for i, (c, s) in enumerate(zip(self.channels, self.strides)):
            x = nn.Conv(c, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                        kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'), name=f'conv_{i}')(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_eps,
                             dtype=self.dtype, name=f'bn_{i}')(x)
            x = nn.relu(x)
        return nn.Conv(self.features, (1, 1), dtype=self.dtype,
                       kernel_init=nn.initializers.variance_scaling(1.0, 'fan_out', 'normal'), name='embedding')(x)


class MAPHead(nn.Module):
    """Multihead attention pooling (big_vision): a learned probe attends over the tokens."""

    num_heads: int  # Attention heads.
    mlp_dim: Optional[int] = None  # MLP width (default 4 * D).
    norm_eps: float = 1e-6  # LayerNorm epsilon.
    dtype: Dtype = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, _, d = x.shape
        probe = self.param('probe', nn.initializers.xavier_uniform(), (1, 1, d))
        probe = jnp.tile(probe, [b, 1, 1]).astype(x.dtype)
        x = MultiHeadAttention(num_heads=self.num_heads, dtype=self.dtype, name='MultiHeadDotProductAttention_0')(
            probe, x)
        y = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='LayerNorm_0')(x)
        x = x + MlpBlock(mlp_dim=self.mlp_dim or 4 * d, dtype=self.dtype, name='MlpBlock_0')(y)
        return x[:, 0]


def classifier_head(x: Array, num_classes: Optional[int], out: dict[str, Array], *, dtype: Dtype = jnp.float32,
                    kernel_init: Initializer = nn.initializers.zeros, bias_init: Initializer = nn.initializers.zeros,
                    name: str = 'head') -> tuple[Array, dict[str, Array]]:
    """The shared classifier head on pooled features `x`: `out['pre_logits'] = x`, then the Dense `name` (zero
    kernel by default, as the ViT release) when `num_classes` (None or 0: the features are the output),
    `out['logits']`. Returns `(float32 logits, out)`. Call it inside the model's `@nn.compact` method."""
    out['pre_logits'] = x
    if num_classes:
        x = nn.Dense(num_classes, dtype=dtype, kernel_init=kernel_init, bias_init=bias_init, name=name)(x)
    out['logits'] = x
    return x.astype(jnp.float32), out


def check_images(x: Array, *, channels: int = 3, ndim: int = 4, what: str = 'images',
                 multiple_of: Optional[Sequence[int]] = None, name: str = 'model') -> None:
    """Raises a clear ValueError when an image batch does not fit a model (checked at trace time)."""
    layout = 'NHWC' if ndim == 4 else 'NTHWC'
    if x.ndim != ndim:
        raise ValueError(f'{name} expects {what} as a float {layout} array of rank {ndim}, got shape {tuple(x.shape)}.'
                         + (' Add a batch axis (x[None]).' if x.ndim == ndim - 1 else ''))
    if x.shape[-1] != channels:
        hint = ' It looks like NCHW; transpose to NHWC.' if x.shape[1] == channels else ''
        raise ValueError(f'{name} expects {channels} channels in the last axis ({layout}), got shape '
                         f'{tuple(x.shape)}.{hint}')
    if multiple_of is not None:
        hw = x.shape[-3:-1]
        if any(s % m for s, m in zip(hw, multiple_of)):
            raise ValueError(f'{name}: image size {tuple(hw)} is not a multiple of {tuple(multiple_of)} '
                             f'(the patch grid). Resize or pad the images, or build the model with that image_size.')
