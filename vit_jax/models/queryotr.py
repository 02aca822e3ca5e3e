"""QueryOTR: image outpainting by queries (Yao, Gao et al., ECCV 2022; official code Kaiseem/QueryOTR).

A hybrid encoder-decoder that extends a known centre (128x128) to the full image (192x192, 2.25x the area):

1. **Encoder**: a ViT-B/16 on the centre. The input is reflect-padded to the encoder's 224x224 so that its 8x8
   patches sit at positions 3..10 of the 14x14 grid of the (MAE-pretrained) fixed 1-D sin-cos position table; only
   those 64 inner patches are encoded (MAE's visible-only path; the outer ring is "masked"). Output: 64 tokens after
   the final LayerNorm. (The patch embedding does not overlap, so the inner tokens see the centre pixels only.)
2. **Query Expansion Module (QEM)**: noise [B, 144, D/8] -> MLP (D/8 -> D/4 -> D/2 -> D, LN + ReLU between) gives
   queries for the 12x12 output grid; the inner 8x8 are overwritten by the encoder tokens; 8 residual blocks
   (InstanceNorm -> LeakyReLU(0.2) -> conv3x3 -> InstanceNorm -> LeakyReLU -> modulated deformable conv3x3 (DCNv2));
   LayerNorm; the inner positions are overwritten again by the encoder tokens; Linear D -> D.
3. **Decoder**: 4 blocks of x += SelfAttn(LN x); x += CrossAttn(LN x, encoder tokens); x += MLP(LN x) over the 80
   outer queries plus a fixed 1-D sin-cos table of length 144 taken at the outer indices.
4. **Patch Smoothing Module (PSM)**: every outer token predicts an overlapping 32x32 patch (its 16x16 cell plus 8 px
   on each side) plus a learned per-kernel-position bias; overlapping pixels are averaged over the outer patches
   that cover them (= the official ConvTranspose(k=32, s=16, p=8) divided by the coverage count); the centre is then
   replaced by the input.

Value spaces. The encoder sees `(images - pixel_mean) / pixel_std` (ImageNet statistics on images in [0, 1] by
default, as the paper). The PSM predicts pixels normalised by one scalar mean/std (`output_mean`, `output_std`: the
paper's per-dataset `--patch_mean/--patch_std`, Scenery's by default); the model maps them back to the input's
space, so the returned image is in the same space as the input and its centre equals the input exactly. The
objective (`vit_jax.objectives.outpainting`) computes the losses in the normalised space, as the official code.

    model = models.get_model('QueryOTR')
    full, out = model.apply(variables, centre)     # [B, 128, 128, 3] -> [B, 192, 192, 3], centre copied
    # out: 'encoder' [B, 64, D], 'encoder/block_XX', 'queries' [B, 144, D], 'decoder/block_XX' [B, 80, D],
    #      'prediction' (the PSM output before the centre copy), 'outer_mask' [1, 192, 192, 1] (1 on the outer ring)

The QEM noise is drawn from the 'noise' rng when given, else from 'dropout' (training), else from the fixed
`noise_seed` (deterministic evaluation). The deformable convolution (`deform_conv2d`) is a vectorised JAX
restatement of torchvision's `deform_conv2d` (bilinear sampling with zero padding at learned offsets, modulated by a
sigmoid mask); `deform=False` replaces it by a plain 3x3 convolution (an ablation, not the paper).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import layers, register

layers.register_layer_names(block_name='decoder')  # The decoder's blocks `decoder_{i}` (loop <-> scan layouts).

Array = jax.Array

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCENERY_MEAN = 0.5044838  # The official default --patch_mean (Scenery).
SCENERY_STD = 0.1355051  # The official default --patch_std (Scenery).


# ----------------------------------------------------------------------------------------------------------------
# Deformable convolution (DCNv2).
# ----------------------------------------------------------------------------------------------------------------
def bilinear_sample(x: Array, py: Array, px: Array) -> Array:
    """Bilinear samples of `x` [B, H, W, C] at real coordinates `py`, `px` [B, *S] (pixel units); zero outside.

    Corners outside the image contribute zero (torchvision's deform_conv2d sampling). Returns [B, *S, C].
    """
    b, h, w, c = x.shape
    y0 = jnp.floor(py)
    x0 = jnp.floor(px)
    ly, lx = py - y0, px - x0
    y0 = y0.astype(jnp.int32)
    x0 = x0.astype(jnp.int32)
    flat = x.reshape(b, h * w, c)
    sample_shape = py.shape[1:]
    out = jnp.zeros((b, *sample_shape, c), x.dtype)
    for dy, wy in ((0, 1.0 - ly), (1, ly)):
        for dx, wx in ((0, 1.0 - lx), (1, lx)):
            yy, xx = y0 + dy, x0 + dx
            valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            idx = (jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1)).reshape(b, -1)
            v = jnp.take_along_axis(flat, idx[..., None], axis=1).reshape(b, *sample_shape, c)
            out = out + v * (wy * wx * valid).astype(x.dtype)[..., None]
    return out


def deform_conv2d(x: Array, offset: Array, mask: Optional[Array], kernel: Array, *, padding: int = 1,
                  bias: Optional[Array] = None) -> Array:
    """Modulated deformable convolution (stride 1, dilation 1, one offset group), as torchvision.ops.deform_conv2d.

    Args:
      x: [B, H, W, Cin] input.
      offset: [B, Ho, Wo, 2K] offsets in torchvision's channel layout: (dy, dx) of kernel point k (row-major over
        the kh x kw kernel) in channels (2k, 2k+1).
      mask: [B, Ho, Wo, K] modulation (DCNv2), or None (DCNv1).
      kernel: [kh, kw, Cin, Cout] (flax Conv layout).
      padding: zero padding on each side (the sampling grid starts at -padding).
      bias: optional [Cout].

    Returns:
      [B, Ho, Wo, Cout] with Ho = H + 2 padding - kh + 1 (likewise Wo).
    """
    b, h, w, c = x.shape
    kh, kw, cin, cout = kernel.shape
    if cin != c:
        raise ValueError(f'deform_conv2d: kernel expects {cin} input channels, the input has {c}.')
    k = kh * kw
    ho, wo = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    if offset.shape != (b, ho, wo, 2 * k):
        raise ValueError(f'deform_conv2d: offset must be {(b, ho, wo, 2 * k)}, got {offset.shape}.')
    ky, kx = np.meshgrid(np.arange(kh), np.arange(kw), indexing='ij')
    base_y = (np.arange(ho)[:, None, None] - padding + ky.reshape(1, 1, k)).astype(np.float32)  # [Ho, 1, K]
    base_x = (np.arange(wo)[None, :, None] - padding + kx.reshape(1, 1, k)).astype(np.float32)  # [1, Wo, K]
    off = offset.reshape(b, ho, wo, k, 2).astype(jnp.float32)
    py = base_y[None] + off[..., 0]
    px = base_x[None] + off[..., 1]
    cols = bilinear_sample(x, py, px)  # [B, Ho, Wo, K, Cin]
    if mask is not None:
        cols = cols * mask[..., None].astype(cols.dtype)
    out = jnp.einsum('bhwkc,kco->bhwo', cols, kernel.reshape(k, cin, cout).astype(cols.dtype))
    if bias is not None:
        out = out + bias.astype(out.dtype)
    return out


class DeformConv(nn.Module):
    """QueryOTR's `DeformConv`: a zero-initialised 3x3 conv predicts offsets and a mask, then DCNv2 (no bias).

    The offset conv output is split into thirds (o1, o2, m); offsets = concat(o1, o2) read in torchvision's
    interleaved (dy, dx) layout, mask = sigmoid(m) (exactly as the official module, so converted weights agree).
    """

    features: int  # Output channels.
    kernel_size: int = 3  # Square kernel.
    use_bias: bool = False  # Bias of the deformable conv (the official one has none).
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = self.kernel_size
        pad = k // 2
        om = nn.Conv(3 * k * k, (k, k), padding=pad, kernel_init=nn.initializers.zeros,
                     bias_init=nn.initializers.zeros, dtype=self.dtype, name='conv_offset_mask')(x)
        o1, o2, m = jnp.split(om, 3, axis=-1)
        offset = jnp.concatenate([o1, o2], axis=-1)
        kernel = self.param('kernel', layers.torch_kernel_init, (k, k, x.shape[-1], self.features))
        bias = self.param('bias', nn.initializers.zeros, (self.features,)) if self.use_bias else None
        return deform_conv2d(x, offset, jax.nn.sigmoid(m), kernel, padding=pad, bias=bias).astype(self.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Query Expansion Module.
# ----------------------------------------------------------------------------------------------------------------
class QEMBlock(nn.Module):
    """IN -> LeakyReLU(0.2) -> conv3x3 -> IN -> LeakyReLU(0.2) -> deformable conv3x3, plus the input."""

    deform: bool = True  # Deformable second conv (paper); False: a plain 3x3 conv (ablation).
    norm_eps: float = 1e-5  # InstanceNorm epsilon (PyTorch default).
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        y = nn.InstanceNorm(epsilon=self.norm_eps, dtype=self.dtype, name='norm1')(x)
        y = nn.leaky_relu(y, 0.2)
        y = nn.Conv(c, (3, 3), padding=1, kernel_init=layers.torch_kernel_init, dtype=self.dtype, name='conv1')(y)
        y = nn.InstanceNorm(epsilon=self.norm_eps, dtype=self.dtype, name='norm2')(y)
        y = nn.leaky_relu(y, 0.2)
        if self.deform:
            y = DeformConv(c, dtype=self.dtype, name='conv2')(y)
        else:
            y = nn.Conv(c, (3, 3), padding=1, use_bias=False, kernel_init=layers.torch_kernel_init, dtype=self.dtype,
                        name='conv2')(y)
        return x + y


class QueryExpansion(nn.Module):
    """Noise MLP -> inner queries from the encoder -> residual (deformable) conv blocks -> LN -> inner -> Linear."""

    out_grid: int  # Side of the output query grid (12).
    in_grid: int  # Side of the encoder token grid (8).
    num_blocks: int = 8  # Residual blocks.
    noise_dim: Optional[int] = None  # Noise width (default D // 8).
    deform: bool = True  # Deformable convs in the blocks.
    norm_eps: float = 1e-5  # LayerNorm / InstanceNorm epsilon (PyTorch defaults).
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, src: Array, noise: Array) -> Array:
        b, n, d = src.shape
        g, s = self.out_grid, self.in_grid
        if n != s * s:
            raise ValueError(f'QEM expects {s * s} encoder tokens, got {n}.')
        p = (g - s) // 2
        dense = lambda f, name: nn.Dense(f, kernel_init=nn.initializers.xavier_uniform(),  # noqa: E731
                                         bias_init=nn.initializers.zeros, dtype=self.dtype, name=name)
        ln = lambda name: nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name=name)  # noqa: E731
        nd = noise.shape[-1]
        q = nn.relu(ln('noise_ln_0')(dense(2 * nd, 'noise_fc_0')(noise)))
        q = nn.relu(ln('noise_ln_1')(dense(4 * nd, 'noise_fc_1')(q)))
        q = dense(d, 'noise_fc_2')(q)
        inner = src.reshape(b, s, s, d).astype(q.dtype)
        x = q.reshape(b, g, g, d).at[:, p:p + s, p:p + s].set(inner)
        for i in range(self.num_blocks):
            x = QEMBlock(deform=self.deform, norm_eps=self.norm_eps, dtype=self.dtype, name=f'block_{i}')(x)
        x = ln('norm')(x)
        x = x.at[:, p:p + s, p:p + s].set(inner)
        return dense(d, 'embed')(x).reshape(b, g * g, d)


# ----------------------------------------------------------------------------------------------------------------
# Decoder.
# ----------------------------------------------------------------------------------------------------------------
class CrossAttnBlock(nn.Module):
    """x += SelfAttn(LN x); x += CrossAttn(LN x, memory); x += MLP(LN x) (official `CorssAttnBlock`).

    A `layers.Encoder` block: called as (x, train, memory), the memory being the Encoder's `context`.
    """

    num_heads: int  # Attention heads.
    mlp_dim: int  # MLP hidden width.
    norm_eps: float = 1e-5  # LayerNorm epsilon (nn.LayerNorm default in the official decoder).
    activation: str = 'gelu_exact'  # MLP activation (PyTorch nn.GELU).
    dropout_rate: float = 0.0  # Dropout inside the MLP and after attention (0 in the paper).
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel (layers.resolve_attention_impl).
    drop_path_rate: float | Array = 0.0  # Stochastic depth of the three residual branches (0 in the paper).

    @nn.compact
    def __call__(self, x: Array, train: bool, memory: Array) -> Array:
        det = not train
        ln = lambda name: nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name=name)  # noqa: E731
        attn = lambda name: layers.MultiHeadAttention(num_heads=self.num_heads, dtype=self.dtype,  # noqa: E731
                                                      attention_impl=self.attention_impl, name=name)
        branch = lambda y: layers.DropPath(self.drop_path_rate)(  # noqa: E731
            nn.Dropout(self.dropout_rate)(y, deterministic=det), det)
        x = x + branch(attn('attn')(ln('norm1')(x), deterministic=det))
        x = x + branch(attn('cross_attn')(ln('norm2')(x), memory, deterministic=det))
        y = layers.MlpBlock(mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate, activation=self.activation,
                            dtype=self.dtype, bias_init=nn.initializers.zeros, name='mlp')(ln('norm3')(x),
                                                                                           deterministic=det)
        return x + layers.DropPath(self.drop_path_rate)(y, det)


# ----------------------------------------------------------------------------------------------------------------
# Patch Smoothing Module.
# ----------------------------------------------------------------------------------------------------------------
def overlap_add(patches: Array | np.ndarray, stride: int) -> Array | np.ndarray:
    """Sums overlapping patches [B, G, G, k, k, C] placed at (i * stride, j * stride) -> [B, L, L, C].

    L = (G - 1) * stride + k; needs k to be a multiple of the stride (each patch spans k / stride cells per side),
    so the sum is k/stride squared shifted adds of whole cell grids (no loop over pixels). Numpy in, numpy out.
    """
    xp = np if isinstance(patches, np.ndarray) else jnp
    b, g, g2, k, _, c = patches.shape
    if k % stride:
        raise ValueError(f'overlap_add: patch size {k} must be a multiple of the stride {stride}.')
    m = k // stride
    p = patches.reshape(b, g, g2, m, stride, m, stride, c)
    cells = 0
    for a in range(m):
        for e in range(m):
            piece = p[:, :, :, a, :, e, :, :]  # [B, G, G, s, s, C]: quadrant (a, e) of every patch.
            cells = cells + xp.pad(piece, ((0, 0), (a, m - 1 - a), (e, m - 1 - e), (0, 0), (0, 0), (0, 0)))
    n = g + m - 1
    return cells.transpose(0, 1, 3, 2, 4, 5).reshape(b, n * stride, (g2 + m - 1) * stride, c)


def psm_coverage(grid: int, outer: np.ndarray, stride: int, overlap: int) -> np.ndarray:
    """Number of outer patches covering each output pixel, [grid * stride, grid * stride] (numpy, static)."""
    k = stride + 2 * overlap
    ones = np.broadcast_to(outer.astype(np.float32)[None, :, :, None, None, None], (1, grid, grid, k, k, 1))
    counts = overlap_add(np.ascontiguousarray(ones), stride)[0, :, :, 0]
    return counts[overlap:overlap + grid * stride, overlap:overlap + grid * stride]


class PatchSmoothing(nn.Module):
    """Each outer token -> a (stride + 2 overlap)^2 patch (+ a learned per-position bias); overlaps are averaged.

    Equal to the official `PatchSmoothingModule` (ConvTranspose2d(D, C, k, stride, padding=overlap, no bias), the
    bias scattered the same way at outer positions, times 1 / coverage) and to its loop version
    `PatchSmoothingModule_v2`. Kernel layout [D, k, k, C] (the official [D, C, k, k] transposed). Pixels no outer
    patch covers (the centre) are 0 here; the model overwrites them with the input.
    """

    patch_size: int = 16  # Cell size = stride.
    overlap: int = 8  # Extra pixels on each side of a cell.
    out_channels: int = 3  # Output channels.
    use_bias: bool = True  # Learned per-kernel-position bias.
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, tokens: Array, outer: np.ndarray) -> Array:
        """tokens [B, G, G, D]; outer: bool [G, G] (static) -> [B, G * patch, G * patch, C]."""
        b, g, _, d = tokens.shape
        s, o, c = self.patch_size, self.overlap, self.out_channels
        k = s + 2 * o
        # PyTorch ConvTranspose2d's default weight: U(+-1/sqrt(fan_in)), fan_in from the weight's dim 1 (C k k).
        kernel = self.param('kernel', layers.torch_bias_init(c * k * k), (d, k, k, c))
        patches = jnp.einsum('bijd,duvc->bijuvc', tokens, kernel.astype(self.dtype))
        if self.use_bias:
            patches = patches + self.param('bias', nn.initializers.zeros, (k, k, c)).astype(self.dtype)
        patches = patches * jnp.asarray(outer, self.dtype)[None, :, :, None, None, None]
        canvas = overlap_add(patches, s)[:, o:o + g * s, o:o + g * s]
        count = psm_coverage(g, outer, s, o)
        weight = np.where(count > 0, 1.0 / np.maximum(count, 1.0), 0.0).astype(np.float32)
        return canvas * jnp.asarray(weight, canvas.dtype)[None, :, :, None]


# ----------------------------------------------------------------------------------------------------------------
# The model.
# ----------------------------------------------------------------------------------------------------------------
class QueryOTR(nn.Module):
    """QueryOTR generator: [B, image_size, image_size, 3] -> ([B, output_size, output_size, 3], out)."""

    num_classes: int = 3  # Output channels (RGB); the model contract's `num_classes`.
    image_size: int = 128  # Side of the known centre (the input).
    output_size: int = 192  # Side of the outpainted image.
    patch_size: int = 16  # Patch size of the encoder and cell size of the output query grid.
    encoder_image_size: int = 224  # The input is reflect-padded to this (its grid fixes the position table).
    hidden_size: int = 768  # Token width D (encoder, QEM, decoder).
    mlp_dim: int = 3072  # Encoder MLP width.
    num_heads: int = 12  # Encoder heads.
    num_layers: int = 12  # Encoder depth.
    decoder_layers: int = 4  # Decoder depth.
    decoder_heads: int = 12  # Decoder heads.
    decoder_mlp_dim: int = 3072  # Decoder MLP width.
    qem_blocks: int = 8  # Residual blocks in the QEM.
    noise_dim: Optional[int] = None  # QEM noise width (default hidden_size // 8).
    deform: bool = True  # Deformable convs in the QEM (False: plain 3x3 convs, an ablation).
    overlap: int = 8  # PSM overlap on each side of a cell.
    psm_bias: bool = True  # PSM per-kernel-position bias.
    pixel_mean: Sequence[float] = IMAGENET_MEAN  # Encoder input normalisation: (x - mean) / std.
    pixel_std: Sequence[float] = IMAGENET_STD  # Encoder input normalisation.
    output_mean: float = SCENERY_MEAN  # The PSM predicts (x - output_mean) / output_std (one scalar per dataset).
    output_std: float = SCENERY_STD  # See output_mean.
    encoder_norm_eps: float = 1e-6  # Encoder LayerNorm epsilon (MAE ViT).
    norm_eps: float = 1e-5  # QEM / decoder norm epsilon (PyTorch defaults).
    activation: str = 'gelu_exact'  # MLP activation (PyTorch nn.GELU).
    dropout_rate: float = 0.0  # Dropout (0 in the paper).
    drop_path_rate: float = 0.0  # Encoder stochastic depth (0 in the paper).
    noise_seed: int = 0  # Seed of the QEM noise when no 'noise'/'dropout' rng is given (deterministic eval).
    scan: bool = False  # Scan over the encoder's and the decoder's layers (layers.Encoder).
    remat_policy: Optional[str] = None  # Rematerialise encoder and decoder blocks (jax.checkpoint_policies name).
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel: 'auto', 'xla', 'cudnn' or 'cpu' (layers.resolve_attention_impl).

    # ---- Static geometry. -------------------------------------------------------------------------------------
    @property
    def in_grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def out_grid(self) -> int:
        return self.output_size // self.patch_size

    def _check_geometry(self) -> None:
        p = self.patch_size
        for what, v in (('image_size', self.image_size), ('output_size', self.output_size),
                        ('encoder_image_size', self.encoder_image_size)):
            if v % p:
                raise ValueError(f'QueryOTR: {what}={v} is not a multiple of patch_size={p}.')
        for what, v in (('output_size', self.output_size), ('encoder_image_size', self.encoder_image_size)):
            if v < self.image_size or (v - self.image_size) % (2 * p):
                raise ValueError(f'QueryOTR: {what}={v} must exceed image_size={self.image_size} by an even number '
                                 f'of patches ({2 * p} px steps).')
        if (self.encoder_image_size - self.image_size) // 2 >= self.image_size:
            raise ValueError('QueryOTR: reflect padding must be smaller than the input.')

    def outer_grid_mask(self) -> np.ndarray:
        """bool [G, G]: True at the outer query positions (the ring around the inner in_grid x in_grid)."""
        g, s = self.out_grid, self.in_grid
        p = (g - s) // 2
        m = np.ones((g, g), bool)
        m[p:p + s, p:p + s] = False
        return m

    def outer_pixel_mask(self) -> np.ndarray:
        """float32 [1, H, W, 1]: 1 on the outer ring (outside the centre image_size square), 0 in the centre."""
        h = self.output_size
        p = (h - self.image_size) // 2
        m = np.ones((1, h, h, 1), np.float32)
        m[:, p:p + self.image_size, p:p + self.image_size] = 0.0
        return m

    # ---- Forward. ---------------------------------------------------------------------------------------------
    def _noise(self, shape: tuple[int, ...]) -> Array:
        if self.has_rng('noise'):
            key = self.make_rng('noise')
        elif self.has_rng('dropout'):
            key = self.make_rng('dropout')
        else:
            key = jax.random.PRNGKey(self.noise_seed)
        return jax.random.normal(key, shape, jnp.float32)

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        layers.check_images(images, name='QueryOTR')
        self._check_geometry()
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f'QueryOTR expects the known centre at {self.image_size}x{self.image_size}, got '
                             f'{tuple(images.shape[1:3])}. Set image_size (and output_size) to match.')
        b = images.shape[0]
        d, p = self.hidden_size, self.patch_size
        s, g = self.in_grid, self.out_grid
        out: dict[str, Array] = {}

        # ---- Encoder: reflect pad to the encoder size, embed, fixed 1-D sin-cos table, keep the inner patches.
        x = (images - jnp.asarray(self.pixel_mean, images.dtype)) / jnp.asarray(self.pixel_std, images.dtype)
        pad = (self.encoder_image_size - self.image_size) // 2
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')
        tokens = layers.patch_embed(x.astype(self.dtype), d, (p, p), dtype=self.dtype, name='embedding')
        eg = self.encoder_image_size // p
        tokens = tokens + jnp.asarray(layers.posemb_sincos_1d(eg * eg, d).reshape(1, eg, eg, d), tokens.dtype)
        e0 = pad // p
        tokens = tokens[:, e0:e0 + s, e0:e0 + s].reshape(b, s * s, d)
        src, enc = layers.Encoder(num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                                  dropout_rate=self.dropout_rate, drop_path_rate=self.drop_path_rate,
                                  norm_eps=self.encoder_norm_eps, activation=self.activation,
                                  scan=self.scan, remat_policy=self.remat_policy, dtype=self.dtype,
                                  attention_impl=self.attention_impl, name='Transformer')(tokens, train)
        out.update({f'encoder/{k}': v for k, v in enc.items()})
        out['encoder'] = src

        # ---- Query Expansion Module.
        nd = self.noise_dim or d // 8
        noise = self._noise((b, g * g, nd)).astype(self.dtype)
        queries = QueryExpansion(out_grid=g, in_grid=s, num_blocks=self.qem_blocks, deform=self.deform,
                                 norm_eps=self.norm_eps, dtype=self.dtype, name='qem')(src, noise)
        out['queries'] = queries

        # ---- Decoder over the outer queries (+ the 1-D sin-cos table of the full grid at the outer indices).
        outer = self.outer_grid_mask()
        outer_idx = np.flatnonzero(outer.reshape(-1))
        pe = layers.posemb_sincos_1d(g * g, d)[:, outer_idx]
        y = queries[:, outer_idx] + jnp.asarray(pe, queries.dtype)
        decoder = layers.Encoder(num_layers=self.decoder_layers, num_heads=self.decoder_heads,
                                 mlp_dim=self.decoder_mlp_dim, dropout_rate=self.dropout_rate, norm_eps=self.norm_eps,
                                 activation=self.activation, final_norm=False, block_cls=CrossAttnBlock,
                                 block_name='decoder', scan=self.scan, remat_policy=self.remat_policy,
                                 dtype=self.dtype, attention_impl=self.attention_impl, name='decoder_stack')
        nn.share_scope(self, decoder)  # The blocks stay `decoder_{i}` (the names the converter writes).
        y, dec = decoder(y, train, context=src)
        out.update({f'decoder/{k}': v for k, v in dec.items()})

        # ---- Patch Smoothing Module, back to the input's value space, centre copied from the input.
        tgt = jnp.zeros((b, g * g, d), y.dtype).at[:, outer_idx].set(y).reshape(b, g, g, d)
        pred = PatchSmoothing(patch_size=p, overlap=self.overlap, out_channels=self.num_classes,
                              use_bias=self.psm_bias, dtype=self.dtype, name='psm')(tgt, outer)
        pred = pred.astype(jnp.float32) * self.output_std + self.output_mean
        out['prediction'] = pred
        c0 = (self.output_size - self.image_size) // 2
        full = pred.at[:, c0:c0 + self.image_size, c0:c0 + self.image_size].set(images.astype(jnp.float32))
        out['outer_mask'] = jnp.asarray(self.outer_pixel_mask())
        return full, out


# ----------------------------------------------------------------------------------------------------------------
# Registered variants.
# ----------------------------------------------------------------------------------------------------------------
# The paper: ViT-B/16 encoder (MAE init), 8 QEM blocks, 4 decoder blocks, 128 -> 192.
register('QueryOTR', QueryOTR, aliases=('QueryOTR-B',), paper='queryotr')
# A tiny variant for tests and the built-in data: 32 -> 48 with 4 px patches (the same 8x8 -> 12x12 grids).
register('QueryOTR-testing', QueryOTR, paper='test', image_size=32, output_size=48, patch_size=4,
         encoder_image_size=56, hidden_size=32, mlp_dim=64, num_heads=2, num_layers=2, decoder_layers=1,
         decoder_heads=2, decoder_mlp_dim=64, qem_blocks=1, overlap=2)

# The networks QueryOTR's training and metrics use (VGG19 perceptual loss, Inception-v3 for FID / IS) register
# with the model registry through this family module.
from vit_jax.models import inception as _inception  # noqa: E402,F401
from vit_jax.models import vgg as _vgg  # noqa: E402,F401
