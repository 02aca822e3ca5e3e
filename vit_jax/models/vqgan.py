"""VQ-VAE / VQGAN tokenizer (Esser et al., 2021), as the perceptual codebook of PeCo (Dong et al., 2023).

The convolutional encoder and decoder of taming-transformers (ResNet blocks with GroupNorm and swish, a
self-attention block at the listed resolutions and in the middle, strided-conv downsampling and nearest-neighbour
upsampling), a 1x1 `quant_conv` to the code dimension, a vector quantiser with straight-through gradients, a 1x1
`post_quant_conv` and the decoder. The downsampling factor is 2 ** (len(ch_mult) - 1): 16 for PeCo, so a 224 image
gives the 14x14 grid of ViT-B/16. `PatchGAN` is the discriminator of the optional adversarial loss.

    model = models.get_model('PeCo-VQGAN-f16')               # K = 8192 codes of dimension 256
    xrec, out = model.apply(v, images)                        # out: codes [B, h, w], z_e, z_q, codebook/commit
    codes = model.apply(v, images, method=model.encode)      # int32 [B, h, w]: the MIM targets
    images = model.apply(v, codes, method=model.decode_codes)

Losses (`out['codebook_loss']` = |sg[z_e] - e|^2, `out['commitment_loss']` = |z_e - sg[e]|^2, both means) are
weighted by the objective (`vit_jax.objectives.vqgan`), which also adds the pixel, perceptual and adversarial
terms, logs codebook usage and perplexity and restarts dead codes.

The top module uses `setup` (it has three entry points); its parts are `@nn.compact` modules.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import layers, register

Array = jax.Array


def _norm(groups: int, name: Optional[str] = None) -> nn.Module:
    return nn.GroupNorm(num_groups=groups, epsilon=1e-6, name=name)


class ResnetBlock(nn.Module):
    """GroupNorm -> swish -> conv3x3 -> GroupNorm -> swish -> dropout -> conv3x3, plus a 1x1 shortcut if needed."""

    features: int  # Output channels.
    groups: int = 32  # GroupNorm groups.
    dropout_rate: float = 0.0  # Dropout before the second conv.
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        h = nn.swish(_norm(self.groups, 'norm1')(x))
        h = nn.Conv(self.features, (3, 3), padding=1, dtype=self.dtype, name='conv1')(h)
        h = nn.swish(_norm(self.groups, 'norm2')(h))
        h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
        h = nn.Conv(self.features, (3, 3), padding=1, dtype=self.dtype, name='conv2')(h)
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), dtype=self.dtype, name='nin_shortcut')(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all positions (taming's AttnBlock), residual."""

    groups: int = 32  # GroupNorm groups.
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel (layers.resolve_attention_impl).

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        y = _norm(self.groups, 'norm')(x).reshape(b, h * w, c)
        y = layers.MultiHeadAttention(num_heads=1, dtype=self.dtype, attention_impl=self.attention_impl,
                                      name='attn')(y)
        return x + y.reshape(b, h, w, c)


class _ConvStack(nn.Module):
    """Options and parts shared by taming's Encoder and Decoder."""

    ch: int = 128  # Base channels.
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)  # Channel multiplier per level (len - 1 down/upsamplings).
    num_res_blocks: int = 2  # ResNet blocks per level (the decoder uses one more).
    attn_resolutions: Sequence[int] = (16,)  # Feature-map sizes (height) with attention blocks.
    groups: int = 32  # GroupNorm groups.
    dropout_rate: float = 0.0  # ResNet-block dropout.
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel of the AttnBlocks.

    def _level_block(self, h: Array, features: int, name: str, train: bool) -> Array:
        """ResNet block `name` (`{level}_block_{j}`), then attention block `{level}_attn_{j}` where the map's height
        is in attn_resolutions."""
        h = ResnetBlock(features, self.groups, self.dropout_rate, self.dtype, name=name)(h, train)
        if h.shape[1] in self.attn_resolutions:
            h = AttnBlock(self.groups, self.dtype, self.attention_impl, name=name.replace('_block_', '_attn_'))(h)
        return h

    def _middle(self, h: Array, train: bool) -> Array:
        """ResNet block, attention, ResNet block at the lowest resolution."""
        c = h.shape[-1]
        h = ResnetBlock(c, self.groups, self.dropout_rate, self.dtype, name='mid_block_1')(h, train)
        h = AttnBlock(self.groups, self.dtype, self.attention_impl, name='mid_attn_1')(h)
        return ResnetBlock(c, self.groups, self.dropout_rate, self.dtype, name='mid_block_2')(h, train)

    def _norm_out(self, h: Array) -> Array:
        return nn.swish(_norm(self.groups, 'norm_out')(h))


class VQEncoder(_ConvStack):
    """taming's Encoder: conv_in, levels of ResNet blocks (+attention) with downsampling, middle, norm, conv_out."""

    z_channels: int = 256  # Output channels.

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        h = nn.Conv(self.ch, (3, 3), padding=1, dtype=self.dtype, name='conv_in')(x)
        for i, mult in enumerate(self.ch_mult):
            for j in range(self.num_res_blocks):
                h = self._level_block(h, self.ch * mult, f'down_{i}_block_{j}', train)
            if i != len(self.ch_mult) - 1:  # Strided conv with taming's asymmetric (0, 1) padding.
                h = jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), padding='VALID', dtype=self.dtype,
                            name=f'down_{i}_downsample')(h)
        h = self._norm_out(self._middle(h, train))
        return nn.Conv(self.z_channels, (3, 3), padding=1, dtype=self.dtype, name='conv_out')(h)


class VQDecoder(_ConvStack):
    """taming's Decoder: conv_in, middle, levels (num_res_blocks + 1 blocks) with nearest upsampling, conv_out."""

    out_channels: int = 3  # Image channels.

    @nn.compact
    def __call__(self, z: Array, train: bool = False) -> tuple[Array, Array]:
        """Returns (image, input of conv_out): the latter is what the adaptive GAN weight differentiates at."""
        h = nn.Conv(self.ch * self.ch_mult[-1], (3, 3), padding=1, dtype=self.dtype, name='conv_in')(z)
        h = self._middle(h, train)
        for i in reversed(range(len(self.ch_mult))):
            for j in range(self.num_res_blocks + 1):
                h = self._level_block(h, self.ch * self.ch_mult[i], f'up_{i}_block_{j}', train)
            if i != 0:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), 'nearest')
                h = nn.Conv(c, (3, 3), padding=1, dtype=self.dtype, name=f'up_{i}_upsample')(h)
        h = self._norm_out(h)
        return nn.Conv(self.out_channels, (3, 3), padding=1, dtype=self.dtype, name='conv_out')(h), h


class VectorQuantizer(nn.Module):
    """Nearest-codeword quantiser (L2) with a straight-through estimator.

    Returns z_q (= z_e + sg[e - z_e], so gradients pass to the encoder), the codes and the two VQ-VAE terms.
    With `l2_normalize` codes and inputs are compared on the unit sphere (cosine similarity, ViT-VQGAN); this
    is an option against codebook collapse, off by default.
    """

    num_codes: int = 8192  # K.
    code_dim: int = 256  # Code dimension.
    l2_normalize: bool = False  # Quantise l2-normalised vectors.

    @nn.compact
    def __call__(self, z: Array) -> tuple[Array, Array, dict[str, Array]]:
        k = self.num_codes
        codebook = self.param('embedding', _uniform_symmetric(1.0 / k), (k, self.code_dim))  # As taming.
        z = z.astype(jnp.float32)
        flat = z.reshape(-1, self.code_dim)
        if self.l2_normalize:
            flat = _l2n(flat)
            codebook = _l2n(codebook)
        d = (jnp.sum(flat ** 2, 1, keepdims=True) - 2.0 * flat @ codebook.T + jnp.sum(codebook ** 2, 1)[None])
        codes = jnp.argmin(d, axis=1)
        e = codebook[codes]
        codebook_loss = jnp.mean((jax.lax.stop_gradient(flat) - e) ** 2)
        commitment_loss = jnp.mean((flat - jax.lax.stop_gradient(e)) ** 2)
        z_q = flat + jax.lax.stop_gradient(e - flat)
        counts = jnp.zeros((k,), jnp.float32).at[codes].add(1.0)
        p = counts / jnp.maximum(counts.sum(), 1.0)
        stats = {
            'codebook_loss': codebook_loss, 'commitment_loss': commitment_loss,
            'perplexity': jnp.exp(-jnp.sum(p * jnp.log(jnp.maximum(p, 1e-10)))),
            'usage': jnp.mean((counts > 0).astype(jnp.float32)),  # Fraction of the codebook used by this batch.
            'code_counts': counts, 'z_e_flat': flat,
        }
        return z_q.reshape(z.shape), codes.reshape(z.shape[:-1]).astype(jnp.int32), stats

    def lookup(self, codes: Array) -> Array:
        """Code vectors of integer codes [..] -> [.., code_dim]."""
        codebook = self.variables['params']['embedding']
        if self.l2_normalize:
            codebook = _l2n(codebook)
        return codebook[codes]


def _uniform_symmetric(limit: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


def _l2n(x: Array) -> Array:
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-12))


class VQGAN(nn.Module):
    """VQ-VAE/VQGAN tokenizer; `__call__` returns (reconstruction, out)."""

    num_classes: Optional[int] = None  # Unused (a tokenizer has no classes); kept for the model contract.
    image_size: int | Sequence[int] = 224  # Input resolution (any multiple of the downsampling factor works).
    ch: int = 128  # Base channels.
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)  # Channel multipliers (5 levels: downsampling 16).
    num_res_blocks: int = 2  # ResNet blocks per level.
    attn_resolutions: Sequence[int] = (14,)  # Feature-map sizes with attention (the 14x14 code grid at 224).
    z_channels: int = 256  # Encoder output channels.
    code_dim: int = 256  # Codebook dimension (not confirmed for PeCo; the taming default).
    num_codes: int = 8192  # Codebook size K.
    l2_normalize_codes: bool = False  # Cosine-similarity quantisation.
    groups: int = 32  # GroupNorm groups (must divide every channel count).
    dropout_rate: float = 0.0  # ResNet-block dropout.
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel: 'auto', 'xla', 'cudnn' or 'cpu' (layers.resolve_attention_impl).

    @property
    def downsampling(self) -> int:
        """Pixels per code along each side."""
        return 2 ** (len(self.ch_mult) - 1)

    def setup(self):
        common = dict(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
                      attn_resolutions=tuple(self.attn_resolutions), groups=self.groups,
                      dropout_rate=self.dropout_rate, dtype=self.dtype, attention_impl=self.attention_impl)
        self.encoder = VQEncoder(z_channels=self.z_channels, **common)
        self.quant_conv = nn.Conv(self.code_dim, (1, 1), dtype=self.dtype)
        self.quantize = VectorQuantizer(self.num_codes, self.code_dim, self.l2_normalize_codes)
        self.post_quant_conv = nn.Conv(self.z_channels, (1, 1), dtype=self.dtype)
        self.decoder = VQDecoder(**common)

    def _check(self, images: Array) -> None:
        layers.check_images(images, name='VQGAN', multiple_of=(self.downsampling,) * 2)

    def __call__(self, images: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        self._check(images)
        z_e = self.quant_conv(self.encoder(images.astype(self.dtype), train))
        z_q, codes, stats = self.quantize(z_e)
        xrec, h_last = self.decoder(self.post_quant_conv(z_q.astype(self.dtype)), train)
        out = {'z_e': z_e, 'z_q': z_q, 'codes': codes, 'decoder_last_input': h_last, **stats}
        return xrec.astype(jnp.float32), out

    def encode(self, images: Array) -> Array:
        """Integer codes [B, H/f, W/f] of images (eval mode: argmin codes, no dropout)."""
        self._check(images)
        z_e = self.quant_conv(self.encoder(images.astype(self.dtype), False))
        return self.quantize(z_e)[1]

    def decode_codes(self, codes: Array) -> Array:
        """Images from integer codes [B, h, w]."""
        z_q = self.quantize.lookup(codes)
        return self.decoder(self.post_quant_conv(z_q.astype(self.dtype)), False)[0].astype(jnp.float32)


class PatchGAN(nn.Module):
    """The PatchGAN discriminator of pix2pix / taming (NLayerDiscriminator): per-patch real/fake logits.

    taming normalises with BatchNorm; here the norm is `norm='group'` (GroupNorm, one group per 32 channels) or
    'none', so the discriminator is a pure function of its input (no running statistics to carry).
    """

    ndf: int = 64  # Channels of the first layer.
    n_layers: int = 3  # Strided layers.
    norm: str = 'group'  # 'group' or 'none'.
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = nn.initializers.normal(0.02)

        def conv(c, stride, name):
            return nn.Conv(c, (4, 4), strides=(stride, stride), padding=1, kernel_init=init, dtype=self.dtype,
                           name=name)

        def norm(h, name):
            if self.norm == 'none':
                return h
            return nn.GroupNorm(num_groups=max(h.shape[-1] // 32, 1), name=name)(h)

        h = nn.leaky_relu(conv(self.ndf, 2, 'conv_0')(x), 0.2)
        mult = 1
        for n in range(1, self.n_layers):
            mult = min(2 ** n, 8)
            h = nn.leaky_relu(norm(conv(self.ndf * mult, 2, f'conv_{n}')(h), f'norm_{n}'), 0.2)
        mult = min(2 ** self.n_layers, 8)
        h = nn.leaky_relu(norm(conv(self.ndf * mult, 1, f'conv_{self.n_layers}')(h), f'norm_{self.n_layers}'), 0.2)
        return conv(1, 1, 'conv_out')(h).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------------------
# Registered variants.
# ----------------------------------------------------------------------------------------------------------------
# PeCo: f16, K = 8192 (code dimension not confirmed in the paper; 256 is the taming default).
register('PeCo-VQGAN-f16', VQGAN, aliases=('VQGAN-f16-8192',), paper='peco')
# taming's ImageNet f16 VQGAN with 1024 codes (for comparison).
register('VQGAN-f16-1024', VQGAN, paper='vqgan', num_codes=1024, attn_resolutions=(16,), image_size=256)
# A tiny tokenizer for tests and the built-in digits: 16x16 images, downsampling 4 (a 4x4 code grid).
register('VQGAN-testing', VQGAN, paper='test', image_size=16, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
         attn_resolutions=(), z_channels=16, code_dim=16, num_codes=64, groups=8)
