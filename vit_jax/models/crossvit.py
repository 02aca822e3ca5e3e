"""CrossViT: "Cross-Attention Multi-Scale Vision Transformer for Image Classification" (Chen, Fan, Panda, ICCV 2021).

Two branches see the image at two granularities: the small-patch branch S (patch 12, on the input resized *inside
the model* to 240 px with PyTorch-compatible bicubic interpolation when fed 224) and the large-patch branch L
(patch 16 at 224). Each branch has its own class token, learned position embedding, final LayerNorm and head; the
prediction is the mean of the two heads' logits.

K multi-scale encoders each run N (S) and M (L) pre-LN ViT blocks (`layers.Encoder1DBlock`: LayerNorm eps 1e-6,
q/k/v bias, exact GELU), then fuse the branches through their class tokens: for branch i (other branch j),
`f_i` = LN -> GELU -> Linear(D_i -> D_j) projects CLS_i, which attends (as the only query, with
`layers.MultiHeadAttention`) over [f_i(CLS_i); patch tokens of j] after a LayerNorm of that whole sequence, in
branch j's width and head count; the result is added to f_i(CLS_i) (no MLP) and `g_i` = LN -> GELU ->
Linear(D_j -> D_i) brings it back as branch i's new class token. With `fusion_depth` L > 1 the fusion is the
official `nn.Sequential` of L such cross-attention blocks: each returns only the class token, so blocks 2..L attend
over that single token (the other branch's patch tokens are not re-attached).

Stochastic depth follows the official schedule (`official_drop_path_rates`): one linear ramp from 0 to
`drop_path_rate` over K * (M + L_code) values, where L_code is the official config's fusion entry (0 for L = 1, as
every released model; L otherwise); encoder k takes the k-th run of max(N, M) + L_code values, its branch blocks
j the j-th of them and every fusion block the last.

The K multi-scale encoders are the layers of a `layers.Encoder` (`scan=True` stacks them in `blocks/block/...`,
`remat_policy` rematerialises each; the loop layout keeps the official `blocks_{k}`).

The dagger variants ('CrossViT-9†', alias 'CrossViT-9-dagger', and the same for 15 and 18)
replace the linear patch embedding by three convolutions (7x7 s4, 3x3 s3 or s2, 3x3) with ReLUs.
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

# Scanned, the K multi-scale encoders are stacked in `blocks/block/...`; checkpoint.load_pretrained converts them.
layers.register_layer_names(block_name='blocks')
# The S branch's input size for the L branch's (official img_size=[240, 224] and [408, 384]).
_OFFICIAL_S_SIZE = {224: 240, 384: 408}


# ----------------------------------------------------------------------------------------------------------------
# PyTorch-compatible bicubic resize.
# ----------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
    """(out, in) matrix of `F.interpolate(mode='bicubic', align_corners=False)` along one axis.

    PyTorch's cubic convolution uses a = -0.75 (`jax.image.resize` uses the Keys a = -0.5 kernel and antialiases
    when downsampling), half-pixel source coordinates without clamping, and clamps the 4 taps at the borders.
    """
    def cc1(x):  # |x| <= 1.
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def cc2(x):  # 1 < |x| < 2.
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    m = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for o in range(out_size):
        src = (o + 0.5) * scale - 0.5
        i0 = int(np.floor(src))
        t = src - i0
        for off, wgt in zip((-1, 0, 1, 2), (cc2(t + 1), cc1(t), cc1(1 - t), cc2(2 - t))):
            m[o, min(max(i0 + off, 0), in_size - 1)] += wgt
    return m.astype(np.float32)


def resize_bicubic(x: Array, size: Sequence[int]) -> Array:
    """Resizes NHWC images to `size` (h, w) exactly like PyTorch's bicubic `F.interpolate` (align_corners=False)."""
    h, w = x.shape[1:3]
    if (h, w) == tuple(size):
        return x
    mh = jnp.asarray(bicubic_matrix(h, int(size[0])), x.dtype)
    mw = jnp.asarray(bicubic_matrix(w, int(size[1])), x.dtype)
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum('oh,bhwc->bowc', mh, x, precision=hp)
    return jnp.einsum('pw,bowc->bopc', mw, x, precision=hp)


# ----------------------------------------------------------------------------------------------------------------
# Blocks.
# ----------------------------------------------------------------------------------------------------------------
class ConvPatchEmbed(nn.Module):
    """The dagger variants' "3 Conv." embedding: channels D/4, D/2, D with ReLUs (no norm)."""

    features: int  # Output width D.
    patch_size: int  # 12 (7x7 s4 p3, 3x3 s3 p0, 3x3 s1 p1) or 16 (7x7 s4 p3, 3x3 s2 p1, 3x3 s2 p1).
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.patch_size == 12:
            specs = ((7, 4, 3), (3, 3, 0), (3, 1, 1))
        elif self.patch_size == 16:
            specs = ((7, 4, 3), (3, 2, 1), (3, 2, 1))
        else:
            raise ValueError(f'The 3-conv patch embedding exists for patch 12 and 16, not {self.patch_size}.')
        widths = (self.features // 4, self.features // 2, self.features)
        for i, ((k, s, p), c) in enumerate(zip(specs, widths)):
            if i:
                x = nn.relu(x)
            x = nn.Conv(c, (k, k), strides=(s, s), padding=((p, p), (p, p)), dtype=self.dtype,
                        kernel_init=layers.torch_kernel_init, name=f'conv_{i}')(x)
        return x


class ProjLNGeluDense(nn.Module):
    """LayerNorm -> GELU -> Linear: the f / g projections between the branch widths."""

    features: int  # Output width.
    norm_eps: float = 1e-6  # LayerNorm epsilon.
    activation: str = 'gelu_exact'  # Activation.
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='norm')(x)
        x = layers.get_activation(self.activation)(x)
        return nn.Dense(self.features, dtype=self.dtype, kernel_init=layers.trunc_normal, name='dense')(x)


class CrossAttentionBlock(nn.Module):
    """Cross-attention of the first (class) token over the whole sequence; no MLP. Returns the new [B, 1, D] token."""

    num_heads: int  # Attention heads.
    drop_path_rate: float = 0.0  # Stochastic depth of the attention branch.
    dropout_rate: float = 0.0  # Dropout after the output projection.
    attention_dropout_rate: float = 0.0  # Dropout on attention probabilities.
    qkv_bias: bool = True  # Bias of wq / wk / wv.
    norm_eps: float = 1e-6  # LayerNorm epsilon.
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel (layers.resolve_attention_impl).

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        y = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='norm1')(x)
        y = layers.MultiHeadAttention(num_heads=self.num_heads, qkv_bias=self.qkv_bias,
                                      attention_dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
                                      kernel_init=layers.trunc_normal, attention_impl=self.attention_impl,
                                      name='attn')(y[:, :1], y, deterministic=not train)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        # The residual is the un-normalised (projected) class token.
        return x[:, :1] + layers.DropPath(self.drop_path_rate)(y, not train)


class MultiScaleBlock(nn.Module):
    """One multi-scale encoder: per-branch ViT blocks, then class-token cross-attention fusion."""

    dims: Sequence[int]  # Width of each branch.
    depths: Sequence[int]  # ViT blocks per branch (N for S, M for L).
    num_heads: Sequence[int]  # Heads per branch.
    mlp_ratios: Sequence[float]  # MLP ratio per branch.
    fusion_depth: int = 1  # Cross-attention layers per fusion (the paper's L; the code's L_code=0 means 1).
    # This encoder's run of the official stochastic-depth ramp (official_drop_path_rates): branch block j takes
    # drop_path_rate + j * drop_path_step, every fusion block the run's last value (fusion_rate_index steps on).
    drop_path_rate: float | Array = 0.0  # The run's first value (traced under scan).
    drop_path_step: float = 0.0  # The ramp's step.
    fusion_rate_index: int = 0  # Index of the fusion blocks' rate in the run (max(N, M) + L_code - 1).
    qkv_bias: bool = True  # q/k/v bias everywhere.
    dropout_rate: float = 0.0  # Dropout inside blocks.
    attention_dropout_rate: float = 0.0  # Attention-probability dropout.
    norm_eps: float = 1e-6  # LayerNorm epsilon.
    activation: str = 'gelu_exact'  # MLP and projection activation.
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel of the blocks and the fusion.

    @nn.compact
    def __call__(self, xs: Sequence[Array], train: bool = False) -> list[Array]:
        nb = len(self.dims)
        outs = []
        for b, x in enumerate(xs):
            for j in range(self.depths[b]):
                x = layers.Encoder1DBlock(
                    num_heads=self.num_heads[b], mlp_dim=int(self.dims[b] * self.mlp_ratios[b]),
                    dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
                    drop_path_rate=self.drop_path_rate + j * self.drop_path_step, norm_eps=self.norm_eps,
                    activation=self.activation, qkv_bias=self.qkv_bias, dtype=self.dtype,
                    kernel_init=layers.trunc_normal, bias_init=nn.initializers.zeros,
                    attention_impl=self.attention_impl, name=f'branch{b}_block_{j}')(x, train)
            outs.append(x)
        fusion_rate = self.drop_path_rate + self.fusion_rate_index * self.drop_path_step
        proj = functools.partial(ProjLNGeluDense, norm_eps=self.norm_eps, activation=self.activation, dtype=self.dtype)
        fused = []
        for i in range(nb):
            j = (i + 1) % nb
            cls = proj(self.dims[j], name=f'proj_{i}')(outs[i][:, :1])
            # The official fusion is nn.Sequential(CrossAttentionBlock x L) on [f_i(CLS_i); patches of j]: every
            # block returns only the class token [B, 1, D_j], which is all the next block sees.
            seq = jnp.concatenate([cls, outs[j][:, 1:]], axis=1)
            for layer in range(self.fusion_depth):
                seq = CrossAttentionBlock(self.num_heads[j], drop_path_rate=fusion_rate,
                                          dropout_rate=self.dropout_rate,
                                          attention_dropout_rate=self.attention_dropout_rate, qkv_bias=self.qkv_bias,
                                          norm_eps=self.norm_eps, dtype=self.dtype,
                                          attention_impl=self.attention_impl,
                                          name=f'fusion_{i}' + (f'_{layer}' if self.fusion_depth > 1 else ''))(
                                              seq, train)
            cls = proj(self.dims[i], name=f'revert_proj_{i}')(seq)
            fused.append(jnp.concatenate([cls, outs[i][:, 1:]], axis=1))
        return fused


def official_drop_path_rates(depths: Sequence[int], fusion_depth: int, num_encoders: int,
                             rate: float) -> tuple[tuple[float, ...], ...]:
    """Each multi-scale encoder's stochastic-depth rates, as IBM/CrossViT's `VisionTransformer.__init__`.

    The official code ramps `linspace(0, rate, sum_k (depth[-2] + depth[-1]))` (M + L_code per encoder) and gives
    encoder k the slice `[ptr, ptr + max(N, M) + L_code)`; a branch's block j takes element j of it, every fusion
    block the last. L_code = 0 for `fusion_depth` 1 (one CrossAttentionBlock, the released models), else
    `fusion_depth`. Returns one tuple (the slice) per encoder.
    """
    if fusion_depth < 1:
        raise ValueError(f'fusion_depth must be >= 1 (cross-attention layers per fusion), got {fusion_depth}.')
    l_code = 0 if fusion_depth == 1 else fusion_depth
    per = max(depths) + l_code
    dpr = np.linspace(0.0, rate, num_encoders * (depths[-1] + l_code))
    slices = tuple(tuple(float(r) for r in dpr[k * per:(k + 1) * per]) for k in range(num_encoders))
    if any(len(s) < max(max(depths), 1) for s in slices):
        if rate:
            raise ValueError(f'depths={tuple(depths)} (a branch deeper than the last) run past the official drop-path '
                             f'ramp of {len(dpr)} values (the official code fails with an IndexError there); use '
                             'drop_path_rate=0 or make the last branch the deepest.')
        slices = tuple((0.0,) * per for _ in range(num_encoders))
    return slices


# ----------------------------------------------------------------------------------------------------------------
# Model.
# ----------------------------------------------------------------------------------------------------------------
class CrossViT(nn.Module):
    """CrossViT classifier; returns `(logits, out)` with logits = mean of the branch heads' logits.

    `out`: 'stem_{b}' (branch b's patch tokens), 'encoder/block_{k:02d}/branch_{b}' (tokens after encoder k),
    'cls_{b}' (branch b's normalised class token), 'pre_logits' (the class tokens concatenated), 'logits_{b}'
    (each head) and 'logits'.
    """

    num_classes: Optional[int] = 1000  # Head width; None or 0 drops the heads.
    image_size: int | Sequence[int] = 224  # Input resolution (the L branch's); fixes the position embeddings.
    branch_sizes: Optional[Sequence[int]] = None  # Per-branch input sizes; None: official (240, 224) / (408, 384).
    patch_sizes: Sequence[int] = (12, 16)  # Patch size per branch (S, L).
    embed_dims: Sequence[int] = (192, 384)  # Width per branch.
    depths: Sequence[int] = (1, 4)  # ViT blocks per branch in each multi-scale encoder (N, M).
    num_encoders: int = 3  # K.
    fusion_depth: int = 1  # Cross-attention layers per fusion (L).
    num_heads: Sequence[int] = (6, 6)  # Heads per branch.
    mlp_ratios: Sequence[float] = (4.0, 4.0)  # MLP ratio per branch.
    multi_conv: bool = False  # The dagger variants' 3-conv patch embedding.
    qkv_bias: bool = True  # q/k/v bias.
    dropout_rate: float = 0.0  # Dropout after the position embedding and inside blocks.
    attention_dropout_rate: float = 0.0  # Attention-probability dropout.
    drop_path_rate: float = 0.1  # Stochastic depth (official ramp, see official_drop_path_rates).
    norm_eps: float = 1e-6  # LayerNorm epsilon.
    activation: str = 'gelu_exact'  # MLP and projection activation.
    scan: bool = False  # Scan over the K multi-scale encoders (`blocks` holds them stacked).
    remat_policy: Optional[str] = None  # Rematerialisation policy of each multi-scale encoder.
    dtype: Any = jnp.float32  # Compute dtype (parameters stay float32).
    attention_impl: str = 'auto'  # Attention kernel: 'auto', 'xla', 'cudnn' or 'cpu' (layers.resolve_attention_impl).

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """Input (h, w) of each branch: (240, 224) at 224 and (408, 384) at 384 as the official code; else as given."""
        h, w = (self.image_size, self.image_size) if isinstance(self.image_size, int) else tuple(self.image_size)
        if self.branch_sizes is not None:
            if len(self.branch_sizes) != len(self.patch_sizes):
                raise ValueError(f'branch_sizes {self.branch_sizes} needs one entry per branch {self.patch_sizes}.')
            return tuple((s, s) if isinstance(s, int) else tuple(s) for s in self.branch_sizes)
        if tuple(self.patch_sizes) == (12, 16) and h == w and h in _OFFICIAL_S_SIZE:
            return ((_OFFICIAL_S_SIZE[h],) * 2, (h, w))
        return tuple((h, w) for _ in self.patch_sizes)

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        layers.check_images(images, name='CrossViT')
        expect = (self.image_size,) * 2 if isinstance(self.image_size, int) else tuple(self.image_size)
        if tuple(images.shape[1:3]) != expect:
            raise ValueError(f'This CrossViT was built for image_size={expect} but got images of '
                             f'{tuple(images.shape[1:3])}. Build it with get_model(..., image_size=...); '
                             'checkpoint.load_pretrained resamples the position embeddings.')
        nb = len(self.patch_sizes)
        out = {}
        xs = []
        for b, (p, d, size) in enumerate(zip(self.patch_sizes, self.embed_dims, self.sizes)):
            x = resize_bicubic(images.astype(self.dtype), size)  # In-model resize (S branch: 224 -> 240).
            if self.multi_conv:
                x = ConvPatchEmbed(d, p, dtype=self.dtype, name=f'patch_embed_{b}')(x)
            else:
                if size[0] % p or size[1] % p:
                    raise ValueError(f'Branch {b} input {size} is not divisible by its patch size {p}.')
                x = nn.Conv(d, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                            kernel_init=layers.torch_kernel_init, name=f'patch_embed_{b}')(x)
            n, h, w, _ = x.shape
            x = x.reshape(n, h * w, d)
            out[f'stem_{b}'] = x
            cls = self.param(f'cls_{b}', layers.trunc_normal, (1, 1, d))
            x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), [n, 1, 1]), x], axis=1)
            x = layers.AddPositionEmbs(posemb_init=layers.trunc_normal, name=f'posembed_{b}')(x)
            xs.append(nn.Dropout(self.dropout_rate)(x, deterministic=not train))

        dpr = official_drop_path_rates(self.depths, self.fusion_depth, self.num_encoders, self.drop_path_rate)
        # The K multi-scale encoders differ only in where their run starts on the ramp: one Encoder layer each.
        step = dpr[0][1] - dpr[0][0] if len(dpr[0]) > 1 else 0.0
        block_kwargs = dict(
            dims=tuple(self.embed_dims), depths=tuple(self.depths), num_heads=tuple(self.num_heads),
            mlp_ratios=tuple(self.mlp_ratios), fusion_depth=self.fusion_depth, qkv_bias=self.qkv_bias,
            dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate, norm_eps=self.norm_eps,
            activation=self.activation, dtype=self.dtype, attention_impl=self.attention_impl, drop_path_step=step,
            fusion_rate_index=len(dpr[0]) - 1)
        encoder = layers.Encoder(
            num_layers=self.num_encoders, num_heads=0, mlp_dim=0, final_norm=False,
            drop_path_rate=[run[0] for run in dpr], scan=self.scan, remat_policy=self.remat_policy,
            block_cls=MultiScaleBlock, block_kwargs=block_kwargs, block_name='blocks', name='encoder')
        nn.share_scope(self, encoder)  # Multi-scale encoders `blocks_{k}` at the top level, as the official names.
        xs, blocks = encoder(xs, train)
        for k in range(self.num_encoders):
            for b in range(nb):
                out[f'encoder/block_{k:02d}/branch_{b}'] = blocks[f'block_{k:02d}'][b]

        cls_tokens, logits = [], []
        for b in range(nb):
            c = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name=f'norm_{b}')(xs[b])[:, 0]
            out[f'cls_{b}'] = c
            cls_tokens.append(c)
            if self.num_classes:
                lg = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=layers.trunc_normal, name=f'head_{b}')(c)
                out[f'logits_{b}'] = lg
                logits.append(lg)
        out['pre_logits'] = jnp.concatenate(cls_tokens, axis=-1)
        x = jnp.mean(jnp.stack(logits), axis=0) if logits else out['pre_logits']
        out['logits'] = x
        return x.astype(jnp.float32), out


# ----------------------------------------------------------------------------------------------------------------
# Registered variants (official models/crossvit.py; paper table 1). K = 3 encoders, N = 1, L = 1.
# ----------------------------------------------------------------------------------------------------------------
# name: (D_S, D_L, heads, M, mlp ratio)
CROSSVIT_VARIANTS = {
    'Ti': (96, 192, 3, 4, 4.0),
    'S': (192, 384, 6, 4, 4.0),
    'B': (384, 768, 12, 4, 4.0),
    '9': (128, 256, 4, 3, 3.0),
    '15': (192, 384, 6, 5, 3.0),
    '18': (224, 448, 7, 6, 3.0),
}
for _name, (_ds, _dl, _h, _m, _r) in CROSSVIT_VARIANTS.items():
    _kw = dict(embed_dims=(_ds, _dl), num_heads=(_h, _h), depths=(1, _m), mlp_ratios=(_r, _r), paper='crossvit')
    register(f'CrossViT-{_name}', CrossViT, aliases=(f'crossvit_{_name.lower()}',), **_kw)
    if _name in ('9', '15', '18'):  # The dagger (3-conv embedding) variants.
        register(f'CrossViT-{_name}\u2020', CrossViT, aliases=(f'CrossViT-{_name}-dagger', f'crossvit_{_name}_dagger'),
                 multi_conv=True, **_kw)
