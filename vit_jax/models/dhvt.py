"""DHVT (Lu et al., NeurIPS 2022): "Bridging the Gap Between Vision Transformers and Convolutional Neural Networks
on Small Datasets".

A plain (non-hierarchical) ViT with three changes, following the official `vision_transformer.py`:

* SOPE, sequential overlapping patch embedding: a per-channel affine on the RGB input, 3x3 stride-2 convs (no bias)
  each followed by BatchNorm (SyncBatchNorm in the official code) with exact GELU between them (patch 16: 4 convs
  3 -> C/8 -> C/4 -> C/2 -> C; patch 4: 3 -> C/2 -> C; patch 2: one conv 3 -> C, followed by GELU), then a
  per-channel affine on the output. There is no position embedding anywhere.
* HI-MHSA, head-interacted attention: each block averages every token (class token included) per head channel group,
  projects each group vector d -> C (`ht_proj`), normalises each d-chunk (`ht_norm`, a LayerNorm(d) with eps 1e-5),
  applies GELU and adds a learned head-token embedding; the h head tokens join the sequence for one standard MHSA and
  their outputs' mean is added to the class token output, after which they are dropped.
* DAFF, dynamic aggregation feed-forward: on the patch grid, 1x1 conv -> BN -> GELU, depthwise 3x3 -> BN -> GELU with a
  residual, 1x1 conv -> BN; the class token skips the convs and is rescaled channel-wise by a squeeze-excitation of
  the pooled patch output (Linear C -> C/4, GELU, Linear C/4 -> C, no sigmoid).

BatchNorm keeps its running statistics in `batch_stats` (PyTorch semantics: momentum 0.1, eps 1e-5, unbiased running
variance) and uses batch statistics when `train=True`. Across devices: under `jit` with a batch-sharded input (the
trainer) every BatchNorm sees the global batch, which is what the official SyncBatchNorm of SOPE does; the official
DAFF uses per-GPU `BatchNorm2d`, which `daff_bn_groups=<number of devices>` reproduces (statistics per group of
consecutive examples, computed locally on each device). `bn_axis_name` adds a cross-replica mean for pmap /
shard_map users.

Initialisation as the official code: Linear layers (head included) N(0, 0.02) with zero bias, class token and
head-token embedding N(0, 0.02), convs PyTorch's default (U(+-1/sqrt(fan_in)) for weights and biases).
`convert.from_official('dhvt', state_dict, model)` converts an official checkpoint (`vit_jax/porting/dhvt.py`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import layers, register

Array = jax.Array

_GELU = layers.get_activation('gelu_exact')


def _conv(features: int, kernel: int, *, stride: int = 1, groups: int = 1, bias: bool = True, in_features: int,
          dtype: Any, name: str) -> nn.Conv:
    """A PyTorch-initialised Conv2d with symmetric padding (k - 1) / 2."""
    p = (kernel - 1) // 2
    fan_in = in_features // groups * kernel * kernel
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((p, p), (p, p)),
                   feature_group_count=groups, use_bias=bias, kernel_init=layers.torch_kernel_init,
                   bias_init=layers.torch_bias_init(fan_in), dtype=dtype, name=name)


class BatchNorm(nn.Module):
    """BatchNorm over the last axis with PyTorch semantics and optional per-group ("per-device") statistics.

    Parameters `scale`, `bias`; `batch_stats` `mean`, `var` (as flax.linen.BatchNorm, so checkpoints interchange).
    In training, statistics are taken over every axis but the last, separately for each of `num_groups` equal
    slices of the batch (1: the whole batch); the running statistics move by `1 - momentum` towards the groups'
    average mean and average unbiased variance (PyTorch's running variance is unbiased).
    """

    num_groups: int = 1  # Independent statistics per slice of the batch (per-device BatchNorm2d emulation).
    momentum: float = 0.9  # Running-average decay (PyTorch momentum 0.1).
    epsilon: float = 1e-5  # Added to the variance.
    axis_name: str | None = None  # Average the statistics over this mapped axis (pmap / shard_map SyncBatchNorm).
    dtype: Any = jnp.float32  # Output dtype.

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        c = x.shape[-1]
        scale = self.param('scale', nn.initializers.ones, (c,))
        bias = self.param('bias', nn.initializers.zeros, (c,))
        ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
        x32 = x.astype(jnp.float32)
        if not train:
            y = (x32 - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.epsilon)
        else:
            g = self.num_groups
            if x.shape[0] % g:
                raise ValueError(f'BatchNorm: batch {x.shape[0]} is not divisible by num_groups={g}.')
            xg = x32.reshape((g, x.shape[0] // g) + x.shape[1:])
            axes = tuple(range(1, xg.ndim - 1))
            n = int(np.prod([xg.shape[a] for a in axes]))
            mean = jnp.mean(xg, axis=axes, keepdims=True)
            if self.axis_name is None:
                var = jnp.mean(jnp.square(xg - mean), axis=axes, keepdims=True)
            else:
                mean2 = jnp.mean(jnp.square(xg), axis=axes, keepdims=True)
                mean, mean2 = jax.lax.pmean((mean, mean2), self.axis_name)
                n = n * jax.lax.psum(1, self.axis_name)
                var = jnp.maximum(mean2 - jnp.square(mean), 0.0)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * jnp.mean(mean.reshape(g, c), axis=0)
                unbiased = jnp.mean(var.reshape(g, c), axis=0) * (n / jnp.maximum(n - 1, 1))
                ra_var.value = m * ra_var.value + (1 - m) * unbiased
            y = ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        y = y * scale + bias
        return y.astype(self.dtype)


class Affine(nn.Module):
    """Per-channel `x * alpha + beta` (alpha 1, beta 0 at init)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        alpha = self.param('alpha', nn.initializers.ones, (c,))
        beta = self.param('beta', nn.initializers.zeros, (c,))
        return x * alpha.astype(x.dtype) + beta.astype(x.dtype)


class SOPE(nn.Module):
    """Sequential overlapping patch embedding; returns NHWC features at 1/patch_size resolution."""

    features: int  # Embedding width C.
    patch_size: int = 16  # 16 (4 convs), 4 (2 convs) or 2 (1 conv).
    bn_momentum: float = 0.9  # BatchNorm decay.
    bn_axis_name: str | None = None  # SyncBatchNorm axis for pmap / shard_map.
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        c = self.features
        widths = {16: [c // 8, c // 4, c // 2, c], 4: [c // 2, c], 2: [c]}.get(self.patch_size)
        if widths is None:
            raise ValueError(f'DHVT SOPE supports patch_size 2, 4 or 16, got {self.patch_size}.')
        x = Affine(name='pre_affine')(x)
        cin = x.shape[-1]
        for i, w in enumerate(widths):
            x = _conv(w, 3, stride=2, bias=False, in_features=cin, dtype=self.dtype, name=f'conv_{i}')(x)
            x = BatchNorm(momentum=self.bn_momentum, axis_name=self.bn_axis_name, dtype=self.dtype,
                          name=f'bn_{i}')(x, train)
            if i < len(widths) - 1 or self.patch_size == 2:  # The one-conv embedding ends with GELU; others do not.
                x = _GELU(x)
            cin = w
        return Affine(name='post_affine')(x)


class HIAttention(nn.Module):
    """Head-interacted multi-head self-attention on [B, 1 + P, C] (class token first)."""

    num_heads: int  # Heads h (= number of head tokens).
    qkv_bias: bool = True  # Bias on q/k/v.
    attention_dropout_rate: float = 0.0  # Dropout on attention probabilities.
    dropout_rate: float = 0.0  # Dropout on the output (proj_drop).
    head_norm_eps: float = 1e-5  # Epsilon of `ht_norm`.
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel (layers.resolve_attention_impl).

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        b, n, c = x.shape
        h = self.num_heads
        d = c // h
        ht = jnp.mean(x.reshape(b, n, h, d), axis=1)  # [B, h, d]: mean over all tokens per channel group.
        ht = nn.Dense(c, kernel_init=layers.timm_normal, dtype=self.dtype, name='ht_proj')(ht)  # [B, h, C]
        ht = nn.LayerNorm(epsilon=self.head_norm_eps, dtype=self.dtype, name='ht_norm')(ht.reshape(b, h, h, d))
        ht = _GELU(ht).reshape(b, h, c)
        ht = ht + self.param('head_pos_embed', layers.timm_normal, (1, h, c)).astype(ht.dtype)
        z = jnp.concatenate([x, ht], axis=1)
        z = layers.MultiHeadAttention(num_heads=h, qkv_bias=self.qkv_bias, kernel_init=layers.timm_normal,
                                      attention_dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
                                      attention_impl=self.attention_impl,
                                      name='MultiHeadDotProductAttention_0')(z, deterministic=not train)
        cls = z[:, :1] + jnp.mean(z[:, n:], axis=1, keepdims=True)
        z = jnp.concatenate([cls, z[:, 1:n]], axis=1)
        return nn.Dropout(self.dropout_rate)(z, deterministic=not train)


class DAFF(nn.Module):
    """Dynamic aggregation feed-forward on [B, 1 + s*s, C] (class token first)."""

    hidden_dim: int  # Width H of the 1x1 / depthwise convs.
    bn_momentum: float = 0.9  # BatchNorm decay.
    bn_groups: int = 1  # Per-group BatchNorm statistics (per-device BatchNorm2d emulation).
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array, grid: tuple[int, int], train: bool = False) -> Array:
        b, n, c = x.shape
        hd = self.hidden_dim
        bn = functools.partial(BatchNorm, num_groups=self.bn_groups, momentum=self.bn_momentum, dtype=self.dtype)
        cls, t = x[:, :1], x[:, 1:].reshape(b, *grid, c)
        t = _GELU(bn(name='bn1')(_conv(hd, 1, in_features=c, dtype=self.dtype, name='conv1')(t), train))
        t = t + _GELU(bn(name='bn2')(_conv(hd, 3, groups=hd, in_features=hd, dtype=self.dtype, name='conv2')(t), train))
        t = bn(name='bn3')(_conv(c, 1, in_features=hd, dtype=self.dtype, name='conv3')(t), train)
        w = jnp.mean(t, axis=(1, 2))
        w = nn.Dense(c // 4, kernel_init=layers.timm_normal, dtype=self.dtype, name='compress')(w)
        w = nn.Dense(c, kernel_init=layers.timm_normal, dtype=self.dtype, name='excitation')(_GELU(w))
        return jnp.concatenate([cls * w[:, None], t.reshape(b, n - 1, c)], axis=1)


class DHVTBlock(nn.Module):
    """x + DropPath(HI-MHSA(LN(x))); x + DropPath(DAFF(LN(x)))."""

    num_heads: int  # Attention heads.
    mlp_dim: int  # DAFF hidden width.
    grid: tuple[int, int]  # Patch grid (h, w) of the tokens after the class token.
    qkv_bias: bool = True  # Bias on q/k/v.
    dropout_rate: float = 0.0  # Attention output dropout.
    attention_dropout_rate: float = 0.0  # Attention-probability dropout.
    drop_path_rate: float = 0.0  # Stochastic depth.
    norm_eps: float = 1e-6  # LayerNorm epsilon.
    bn_momentum: float = 0.9  # BatchNorm decay.
    bn_groups: int = 1  # DAFF per-group BatchNorm statistics.
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel (layers.resolve_attention_impl).

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        y = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='LayerNorm_0')(x)
        y = HIAttention(self.num_heads, self.qkv_bias, self.attention_dropout_rate, self.dropout_rate,
                        dtype=self.dtype, attention_impl=self.attention_impl, name='attn')(y, train)
        x = x + layers.DropPath(self.drop_path_rate)(y, not train)
        y = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='LayerNorm_2')(x)
        y = DAFF(self.mlp_dim, self.bn_momentum, self.bn_groups, dtype=self.dtype, name='daff')(y, self.grid, train)
        return x + layers.DropPath(self.drop_path_rate)(y, not train)


class DHVT(nn.Module):
    """DHVT classifier; returns `(logits, out)` with 'stem', 'encoder/block_NN', 'encoded', 'tokens_2d',
    'pre_logits', 'logits'. Use `mutable=['batch_stats']` when `train=True`."""

    num_classes: int | None = 100  # Head width; None or 0 drops the head.
    image_size: int | Sequence[int] = 32  # Input resolution (the model itself accepts any multiple of patch_size).
    patch_size: int = 4  # SOPE: 2, 4 (CIFAR) or 16 (ImageNet / DomainNet).
    hidden_size: int = 192  # Token width C.
    num_heads: int = 4  # Attention heads (CIFAR 4 / 8; ImageNet 3 / 6).
    num_layers: int = 12  # Depth.
    mlp_ratio: float = 4.0  # DAFF width = int(C * mlp_ratio).
    qkv_bias: bool = True  # Bias on q/k/v.
    dropout_rate: float = 0.0  # Attention output dropout.
    attention_dropout_rate: float = 0.0  # Attention-probability dropout.
    drop_path_rate: float = 0.1  # Stochastic depth of the last block (linear ramp from 0).
    norm_eps: float = 1e-6  # LayerNorm epsilon of blocks and the final norm.
    bn_momentum: float = 0.9  # BatchNorm running-average decay (PyTorch momentum 0.1).
    bn_axis_name: str | None = None  # SOPE SyncBatchNorm axis for pmap / shard_map (under jit stats are global).
    daff_bn_groups: int = 1  # DAFF BatchNorm statistics per this many batch slices (= devices: per-GPU BN).
    scan: bool = False  # Scan over encoder layers (parameters and BatchNorm statistics stacked per layer).
    remat_policy: str | None = None  # Rematerialise each block with this jax.checkpoint_policies name.
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel: 'auto', 'xla', 'cudnn' or 'cpu' (layers.resolve_attention_impl).

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        layers.check_images(images, name='DHVT', multiple_of=(self.patch_size,) * 2)
        out = {}
        c = self.hidden_size
        x = SOPE(c, self.patch_size, self.bn_momentum, self.bn_axis_name, dtype=self.dtype, name='sope')(
            images.astype(self.dtype), train)
        b, gh, gw, _ = x.shape
        x = x.reshape(b, gh * gw, c)
        out['stem'] = x
        cls = self.param('cls', layers.timm_normal, (1, 1, c))
        x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), [b, 1, 1]), x], axis=1)
        x, blocks = layers.Encoder(
            num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=int(c * self.mlp_ratio),
            qkv_bias=self.qkv_bias, dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
            drop_path_rate=tuple(np.linspace(0.0, self.drop_path_rate, self.num_layers)), norm_eps=self.norm_eps,
            block_cls=DHVTBlock, block_kwargs=dict(grid=(gh, gw), bn_momentum=self.bn_momentum,
                                                   bn_groups=self.daff_bn_groups),
            scan=self.scan, remat_policy=self.remat_policy, dtype=self.dtype, attention_impl=self.attention_impl,
            name='Transformer')(x, train)
        out.update({f'encoder/{k}': v for k, v in blocks.items()})
        out['encoded'] = x
        out['tokens_2d'] = x[:, 1:].reshape(b, gh, gw, c)
        return layers.classifier_head(x[:, 0], self.num_classes, out, dtype=self.dtype, kernel_init=layers.timm_normal)


# ----------------------------------------------------------------------------------------------------------------
# Registered variants (official registry names as aliases).
# ----------------------------------------------------------------------------------------------------------------
_T, _S = dict(hidden_size=192), dict(hidden_size=384)
for _p in (4, 2):
    register(f'DHVT-T-CIFAR/{_p}', DHVT, aliases=(f'dhvt_tiny_cifar_patch{_p}',), paper='dhvt', patch_size=_p,
             num_heads=4, image_size=32, num_classes=100, **_T)
    register(f'DHVT-S-CIFAR/{_p}', DHVT, aliases=(f'dhvt_small_cifar_patch{_p}',), paper='dhvt', patch_size=_p,
             num_heads=8, image_size=32, num_classes=100, **_S)
register('DHVT-T', DHVT, aliases=('dhvt_tiny_imagenet_patch16', 'DHVT-T/16'), paper='dhvt', patch_size=16,
         num_heads=3, image_size=224, num_classes=1000, **_T)
register('DHVT-S', DHVT, aliases=('dhvt_small_imagenet_patch16', 'DHVT-S/16'), paper='dhvt', patch_size=16,
         num_heads=6, image_size=224, num_classes=1000, **_S)
# DomainNet variants: 224 px, patch 16, the CIFAR head counts for T; `num_classes` is the dataset's (345 DomainNet).
# (DomainNet has 345 classes; set num_classes for a subset.)
register('DHVT-T-Domain/16', DHVT, aliases=('dhvt_tiny_domain_patch16',), paper='dhvt', patch_size=16, num_heads=4,
         image_size=224, num_classes=345, **_T)
register('DHVT-S-Domain/16', DHVT, aliases=('dhvt_small_domain_patch16',), paper='dhvt', patch_size=16,
         num_heads=6, image_size=224, num_classes=345, **_S)
