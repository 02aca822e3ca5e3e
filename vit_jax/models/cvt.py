"""CvT: "Introducing Convolutions to Vision Transformers" (Wu et al., ICCV 2021).

Three stages. Each stage embeds its input with a strided conv (with bias) followed by LayerNorm, then runs
pre-LN transformer blocks whose attention takes its q/k/v inputs from a *convolutional projection*: a depthwise
3x3 conv (no bias) + BatchNorm on the token map, stride 1 for q and stride 2 for k/v (the "squeezed" projection),
before the usual linear q/k/v projections. The attention scale is 1/sqrt(stage width), not 1/sqrt(head_dim).
There is no position embedding anywhere; only the last stage carries a class token, which bypasses the conv
projection. `qkv_method='avg'` is the official `QKV_PROJ_METHOD: avg`: no parameters, the query tokens as they are
and the key/value maps average-pooled like PyTorch's `nn.AvgPool2d(kernel, stride, padding, ceil_mode=True)`
(zero padding counted in the divisor; ceil mode adds a last, partial window, e.g. 56 -> 29 at kernel 3, stride 2,
padding 1, where the depthwise conv gives 28). The MLP uses QuickGELU (x * sigmoid(1.702 x)) in the official
code; HuggingFace's `CvtModel` uses exact GELU, so its converter sets `activation='gelu_exact'`.

Each stage's blocks are a `layers.Encoder` of `Encoder1DBlock`s with the convolutional projection plugged into
`MultiHeadAttention` through its `qkv_transform` hook. BatchNorm statistics live in the `batch_stats` collection
(`use_running_average=not train`).

Parameter layout: `stage_{i}_embedding` (conv), `stage_{i}_embedding_norm`, `stage_{i}_cls` (last stage),
`stage_{i}_block_{j}/...` (an Encoder1DBlock, whose attention holds
`qkv_transform/conv_proj_{q,k,v}/{conv,bn}`), `norm`, `head`. With `scan=True` each stage's blocks are stacked on
a leading axis in `stage_{i}_block/block/...` (`checkpoint.load_pretrained` converts between the two layouts).
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import layers, register

Array = jax.Array
# Scanned stages hold `stage_{i}_block/block/...`; checkpoint.load_pretrained converts them to and from the loop.
layers.register_layer_names(block_name=r'stage_\d+_block')



class DepthwiseConvBN(nn.Module):
    """Depthwise conv (no bias) followed by BatchNorm: one branch of CvT's `dw_bn` projection."""

    kernel_size: int = 3  # Square kernel size.
    stride: int = 1  # Stride (1 for q, 2 for k/v).
    padding: int = 1  # Symmetric padding (PyTorch style).
    bn_momentum: float = 0.9  # Flax BatchNorm momentum (PyTorch momentum 0.1).
    bn_eps: float = 1e-5  # BatchNorm epsilon.
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        d, k, p = x.shape[-1], self.kernel_size, self.padding
        x = nn.Conv(d, (k, k), strides=(self.stride, self.stride), padding=((p, p), (p, p)), feature_group_count=d,
                    use_bias=False, dtype=self.dtype, kernel_init=layers.torch_kernel_init, name='conv')(x)
        return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_eps,
                            dtype=self.dtype, name='bn')(x)


def _torch_pool_geometry(size: int, kernel: int, stride: int, padding: int) -> tuple[int, np.ndarray]:
    """Output length and per-output divisor of PyTorch's AvgPool (ceil_mode=True, count_include_pad=True)."""
    out = -(-(size + 2 * padding - kernel) // stride) + 1  # Ceil.
    if (out - 1) * stride >= size + padding:  # The last window must start inside the input or the left padding.
        out -= 1
    starts = np.arange(out) * stride - padding
    return out, np.minimum(starts + kernel, size + padding) - starts  # Window clipped to input + right padding.


def avg_pool_torch_ceil(x: Array, kernel: int, stride: int, padding: int) -> Array:
    """`nn.AvgPool2d(kernel, stride, padding, ceil_mode=True)` (count_include_pad=True) on an NHWC map."""
    if 2 * padding > kernel:
        raise ValueError(f'AvgPool padding {padding} must be at most half the kernel {kernel} (as PyTorch).')
    (_, h, w, _), k, s = x.shape, kernel, stride
    oh, div_h = _torch_pool_geometry(h, k, s, padding)
    ow, div_w = _torch_pool_geometry(w, k, s, padding)
    pad_h = max((oh - 1) * s + k - padding - h, 0)
    pad_w = max((ow - 1) * s + k - padding - w, 0)
    x = jnp.pad(x, ((0, 0), (padding, pad_h), (padding, pad_w), (0, 0)))
    total = jax.lax.reduce_window(x, jnp.zeros((), x.dtype), jax.lax.add, (1, k, k, 1), (1, s, s, 1), 'VALID')
    return total[:, :oh, :ow] / jnp.asarray(np.outer(div_h, div_w)[None, :, :, None], x.dtype)


class ConvProjection(nn.Module):
    """CvT's convolutional projection, the `qkv_transform` of `layers.MultiHeadAttention`.

    Maps tokens [B, prefix + h*w, D] to the q, k and v inputs: the prefix (class) tokens are split off, the grid
    tokens are reshaped to a map, projected by `DepthwiseConvBN` (method 'dw_bn'), left as they are ('linear'), or,
    for 'avg', left as they are for q and average-pooled for k/v (`avg_pool_torch_ceil`), flattened again and the
    prefix tokens re-attached in front.
    """

    grid: tuple[int, int]  # (h, w) of the token map.
    num_prefix: int = 0  # Leading tokens (class token) that bypass the projection.
    method: str = 'dw_bn'  # 'dw_bn' (depthwise conv + BN), 'avg' (q identity, k/v avg-pooled) or 'linear'.
    kernel_size: int = 3  # Depthwise kernel size.
    stride_q: int = 1  # Stride of the query projection.
    stride_kv: int = 2  # Stride of the key/value projections.
    padding_q: int = 1  # Padding of the query projection.
    padding_kv: int = 1  # Padding of the key/value projections.
    bn_momentum: float = 0.9  # Flax BatchNorm momentum.
    bn_eps: float = 1e-5  # BatchNorm epsilon.
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x_q: Array, x_kv: Array, deterministic: bool = True) -> tuple[Array, Array, Array]:
        del x_kv  # Self-attention: q, k and v all come from x_q.
        if self.method not in ('dw_bn', 'avg', 'linear'):
            raise ValueError(f"CvT qkv projection method must be 'dw_bn', 'avg' or 'linear', got {self.method!r}.")
        h, w = self.grid
        b, t, d = x_q.shape
        if t != self.num_prefix + h * w:
            raise ValueError(f'ConvProjection expected {self.num_prefix} + {h}x{w} tokens, got {t}.')
        prefix, tokens = x_q[:, :self.num_prefix], x_q[:, self.num_prefix:]
        fmap = tokens.reshape(b, h, w, d)

        def project(which: str, stride: int, padding: int) -> Array:
            if self.method == 'linear' or (self.method == 'avg' and which == 'q'):  # Official: q 'linear' for avg.
                y = tokens
            elif self.method == 'avg':
                y = avg_pool_torch_ceil(fmap, self.kernel_size, stride, padding).reshape(b, -1, d)
            else:
                y = DepthwiseConvBN(self.kernel_size, stride, padding, self.bn_momentum, self.bn_eps,
                                    dtype=self.dtype, name=f'conv_proj_{which}')(fmap, train=not deterministic)
                y = y.reshape(b, -1, d)
            return jnp.concatenate([prefix.astype(y.dtype), y], axis=1)

        return (project('q', self.stride_q, self.padding_q), project('k', self.stride_kv, self.padding_kv),
                project('v', self.stride_kv, self.padding_kv))


def _per_stage(value: Any, n: int, what: str) -> tuple:
    """A scalar broadcast to n stages, or a length-n sequence as a tuple."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f'CvT {what} has {len(value)} entries for {n} stages.')
        return tuple(value)
    return (value,) * n


class CvT(nn.Module):
    """Convolutional vision Transformer; returns `(logits, out)`.

    `out` holds 'stem' (stage-0 tokens after the embedding), 'stage_{i}' (the [B, h, w, D_i] map after each stage),
    'stage_{i}/block_{j:02d}' (tokens after each block), 'cls_token' (the last stage's class token, if any),
    'tokens_2d' (the last map), 'pre_logits' and 'logits'.
    """

    num_classes: Optional[int] = 1000  # Head width; None or 0 drops the head.
    image_size: int | Sequence[int] = 224  # Nominal input resolution (no position embedding: any size works).
    embed_dims: Sequence[int] = (64, 192, 384)  # Width D_i of each stage.
    num_heads: Sequence[int] = (1, 3, 6)  # Attention heads per stage.
    depths: Sequence[int] = (1, 2, 10)  # Blocks per stage.
    mlp_ratios: Sequence[float] | float = 4.0  # MLP hidden width / D_i (per stage or one value).
    patch_sizes: Sequence[int] = (7, 3, 3)  # Kernel of each stage's conv token embedding.
    patch_strides: Sequence[int] = (4, 2, 2)  # Stride of each stage's conv token embedding.
    patch_paddings: Sequence[int] = (2, 1, 1)  # Padding of each stage's conv token embedding.
    cls_token: Sequence[bool] = (False, False, True)  # Which stages prepend a class token.
    qkv_method: Sequence[str] | str = 'dw_bn'  # Conv projection per stage: 'dw_bn', 'avg' or 'linear'.
    qkv_kernel: Sequence[int] | int = 3  # Depthwise kernel of the conv projection.
    stride_q: Sequence[int] | int = 1  # Query projection stride.
    stride_kv: Sequence[int] | int = 2  # Key/value projection stride (2 = the squeezed projection).
    padding_q: Sequence[int] | int = 1  # Query projection padding.
    padding_kv: Sequence[int] | int = 1  # Key/value projection padding.
    qkv_bias: Sequence[bool] | bool = True  # Bias of the linear q/k/v projections.
    dropout_rate: float = 0.0  # Dropout after the embedding and inside blocks.
    attention_dropout_rate: float = 0.0  # Dropout on attention probabilities.
    drop_path_rate: Sequence[float] | float = (0.0, 0.0, 0.1)  # Stochastic depth per stage (linear ramp inside).
    activation: str = 'quick_gelu'  # MLP activation ('quick_gelu' official; 'gelu_exact' for HuggingFace).
    norm_eps: float = 1e-5  # LayerNorm epsilon.
    bn_momentum: float = 0.9  # Flax BatchNorm momentum (PyTorch 0.1).
    bn_eps: float = 1e-5  # BatchNorm epsilon.
    scan: bool = False  # Scan over each stage's blocks (`stage_{i}_block` holds them stacked).
    remat_policy: Optional[str] = None  # Rematerialisation policy of each block.
    dtype: Any = jnp.float32  # Compute dtype (parameters stay float32).
    attention_impl: str = 'auto'  # Attention kernel: 'auto', 'xla', 'cudnn' or 'cpu' (layers.resolve_attention_impl).

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        layers.check_images(images, name='CvT')
        n = len(self.embed_dims)
        per = functools.partial(_per_stage, n=n)
        heads, depths = per(self.num_heads, what='num_heads'), per(self.depths, what='depths')
        mlp_ratios, cls_token = per(self.mlp_ratios, what='mlp_ratios'), per(self.cls_token, what='cls_token')
        methods, kernels = per(self.qkv_method, what='qkv_method'), per(self.qkv_kernel, what='qkv_kernel')
        stride_q, stride_kv = per(self.stride_q, what='stride_q'), per(self.stride_kv, what='stride_kv')
        padding_q, padding_kv = per(self.padding_q, what='padding_q'), per(self.padding_kv, what='padding_kv')
        qkv_bias, dpr = per(self.qkv_bias, what='qkv_bias'), per(self.drop_path_rate, what='drop_path_rate')
        patch, stride = per(self.patch_sizes, what='patch_sizes'), per(self.patch_strides, what='patch_strides')
        pad = per(self.patch_paddings, what='patch_paddings')

        out = {}
        x = images.astype(self.dtype)
        cls = None
        for i, d in enumerate(self.embed_dims):
            stage = f'stage_{i}'
            x = nn.Conv(d, (patch[i], patch[i]), strides=(stride[i], stride[i]),
                        padding=((pad[i], pad[i]), (pad[i], pad[i])), dtype=self.dtype,
                        kernel_init=layers.torch_kernel_init, name=f'{stage}_embedding')(x)
            b, h, w, _ = x.shape
            x = x.reshape(b, h * w, d)
            x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name=f'{stage}_embedding_norm')(x)
            if i == 0:
                out['stem'] = x
            num_prefix = int(cls_token[i])
            if cls_token[i]:
                c = self.param(f'{stage}_cls', layers.trunc_normal, (1, 1, d))
                x = jnp.concatenate([jnp.tile(c.astype(x.dtype), [b, 1, 1]), x], axis=1)
            x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
            qkv_transform = functools.partial(
                ConvProjection, grid=(h, w), num_prefix=num_prefix, method=methods[i], kernel_size=kernels[i],
                stride_q=stride_q[i], stride_kv=stride_kv[i], padding_q=padding_q[i], padding_kv=padding_kv[i],
                bn_momentum=self.bn_momentum, bn_eps=self.bn_eps, dtype=self.dtype)
            encoder = layers.Encoder(
                num_layers=depths[i], num_heads=heads[i], mlp_dim=int(d * mlp_ratios[i]),
                dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
                drop_path_rate=dpr[i], norm_eps=self.norm_eps, final_norm=False, activation=self.activation,
                qkv_bias=qkv_bias[i], attention_scale=d**-0.5, scan=self.scan, remat_policy=self.remat_policy,
                dtype=self.dtype, kernel_init=layers.trunc_normal, bias_init=nn.initializers.zeros,
                attention_impl=self.attention_impl, block_kwargs={'qkv_transform': qkv_transform},
                block_name=f'{stage}_block', name=f'{stage}_encoder')
            nn.share_scope(self, encoder)  # Blocks `stage_{i}_block_{j}` at the top level, as the official names.
            x, blocks = encoder(x, train)
            out.update({f'{stage}/{k}': v for k, v in blocks.items()})
            if cls_token[i]:
                cls, x = x[:, :num_prefix], x[:, num_prefix:]
            x = x.reshape(b, h, w, d)
            out[stage] = x

        out['tokens_2d'] = x
        if cls_token[-1]:
            out['cls_token'] = cls[:, 0]
            x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='norm')(cls[:, 0])
        else:
            b, h, w, d = x.shape
            x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='norm')(x.reshape(b, h * w, d))
            x = jnp.mean(x, axis=1)
        return layers.classifier_head(x, self.num_classes, out, dtype=self.dtype, kernel_init=layers.trunc_normal)


# ----------------------------------------------------------------------------------------------------------------
# Registered variants (paper table 2 / the official experiments/imagenet/cvt/*.yaml).
# ----------------------------------------------------------------------------------------------------------------
register('CvT-13', CvT, aliases=('cvt-13', 'CvT_13'), paper='cvt', embed_dims=(64, 192, 384), num_heads=(1, 3, 6),
         depths=(1, 2, 10), drop_path_rate=(0.0, 0.0, 0.1))
register('CvT-21', CvT, aliases=('cvt-21', 'CvT_21'), paper='cvt', embed_dims=(64, 192, 384), num_heads=(1, 3, 6),
         depths=(1, 4, 16), drop_path_rate=(0.0, 0.0, 0.1))
register('CvT-W24', CvT, aliases=('cvt-w24', 'CvT_W24'), paper='cvt', embed_dims=(192, 768, 1024),
         num_heads=(3, 12, 16), depths=(2, 2, 20), drop_path_rate=(0.0, 0.0, 0.3))
