"""MILAN (Hou et al., 2022): masked image pretraining on language-assisted representations, and its CLIP teacher.

`MILAN` is an MAE-style student: a ViT encoder on the visible patches only (fixed 2-D sin-cos position embedding in
MAE's convention, `layers.posemb_sincos_2d(convention='mae')`, as zejiangh/MILAN; learned class token), then the
*prompting decoder*: the encoder output is embedded to the decoder width, the class token and the visible tokens
(with their positions) become fixed prompts that the decoder blocks never update, and only the mask tokens are
queries; each block's keys/values are the prompts (raw, no LayerNorm) together with the
layer-normalised queries. The decoder predicts a `target_dim` vector for every position (class token, visible and
masked patches), matched to the teacher's features by the objective (`vit_jax.objectives.milan`).

    model = models.get_model('MILAN-B/16')
    pred, out = model.apply(v, images, ids_shuffle=ids)   # pred [B, 1 + N, 512]; the first num_keep of ids visible
    feats, out = model.apply(v, images)                   # no ids: the encoder on all patches (cls features)

The encoder's parameter names are those of `VisionTransformer(posemb='sincos2d_mae', classifier='token')`
(`embedding`, `cls`, `Transformer/encoderblock_{i}`, `Transformer/encoder_norm`), so a MILAN checkpoint fine-tunes
as a plain ViT-B/16 (`init_from.dont_load=('head/.*', 'decoder.*', 'mask_token')`).

`CLIPVisionTransformer` is OpenAI CLIP's image tower (conv patch embedding without bias, class embedding, learned
position embedding, `ln_pre`, pre-LN blocks with QuickGELU, `ln_post`, projection without bias), registered as
'CLIP-ViT-B/16' / 'CLIP-ViT-L/14', with a converter from HuggingFace `CLIPVisionModelWithProjection`. Its
`out['tokens_proj']` (every token through `ln_post` and the projection) are MILAN's targets, and the class-token
row of its last block's head-averaged attention is the importance map of MILAN's semantic-aware masking.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.data import masking
from vit_jax.models import layers, register
from vit_jax.models.vit import to_2tuple

layers.register_layer_names(block_name='decoder_block')  # The prompting decoder's blocks (loop <-> scan layouts).

Array = jax.Array


# ----------------------------------------------------------------------------------------------------------------
# The prompting decoder.
# ----------------------------------------------------------------------------------------------------------------
class PromptDecoderBlock(nn.Module):
    """MILAN's decoder block: queries = LN1(mask tokens); keys/values = [fixed prompts (raw), LN1(mask tokens)].

    X <- X + Attn(LN1(X), [F, LN1(X)]);  X <- X + MLP(LN2(X)).  The prompts F are inputs only, never updated. The
    order of the key/value tokens is irrelevant (no position bias inside attention), so [F, LN1(X)] gives the same
    result as the official code's restored image order. A `layers.Encoder` block: called as (X, train, F).
    """

    num_heads: int  # Attention heads.
    mlp_dim: int  # MLP hidden width.
    norm_eps: float = 1e-6  # LayerNorm epsilon.
    activation: str = 'gelu_exact'  # MLP activation (PyTorch nn.GELU).
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel (layers.resolve_attention_impl).
    drop_path_rate: float | Array = 0.0  # Stochastic depth of both residual branches (0 in MILAN).

    @nn.compact
    def __call__(self, x: Array, train: bool, prompts: Array) -> Array:
        h = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='LayerNorm_0')(x)
        kv = jnp.concatenate([prompts.astype(h.dtype), h], axis=1)
        y = layers.MultiHeadAttention(num_heads=self.num_heads, dtype=self.dtype, attention_impl=self.attention_impl,
                                      name='MultiHeadDotProductAttention_1')(h, kv)
        x = x + layers.DropPath(self.drop_path_rate)(y, not train)
        h = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='LayerNorm_2')(x)
        y = layers.MlpBlock(mlp_dim=self.mlp_dim, activation=self.activation, dtype=self.dtype,
                            bias_init=nn.initializers.zeros, name='MlpBlock_3')(h)
        return x + layers.DropPath(self.drop_path_rate)(y, not train)


class MILAN(nn.Module):
    """MILAN student: MAE encoder on visible patches + prompting decoder predicting teacher features."""

    num_classes: Optional[int] = 0  # Unused in pretraining (the features are `out['pre_logits']`).
    image_size: int | Sequence[int] = 224  # Input resolution.
    patch_size: int | Sequence[int] = 16  # Patch size.
    hidden_size: int = 768  # Encoder width.
    mlp_dim: int = 3072  # Encoder MLP width.
    num_heads: int = 12  # Encoder heads.
    num_layers: int = 12  # Encoder depth.
    decoder_dim: int = 512  # Decoder width.
    decoder_depth: int = 8  # Decoder blocks.
    decoder_heads: int = 16  # Decoder heads.
    decoder_mlp_ratio: int = 4  # Decoder MLP width / decoder width.
    decoder: str = 'prompt'  # 'prompt' (MILAN) or 'mae' (plain MAE decoder: every token updated).
    target_dim: int = 512  # Prediction width (CLIP ViT-B/16's projection: 512).
    mask_ratio: float = 0.75  # Fraction of masked patches (49 of 196 visible).
    norm_eps: float = 1e-6  # LayerNorm epsilon.
    activation: str = 'gelu_exact'  # MLP activation (PyTorch nn.GELU).
    scan: bool = False  # Scan over the encoder's and the decoder's layers (layers.Encoder).
    remat_policy: Optional[str] = None  # Rematerialise every encoder and decoder block (jax.checkpoint_policies).
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel: 'auto', 'xla', 'cudnn' or 'cpu' (layers.resolve_attention_impl).

    grid_size = property(lambda self: layers.patch_grid(self.image_size, self.patch_size))  # Patch grid (h, w).

    @property
    def num_keep(self) -> int:
        """Visible patches per image: int(N * (1 - mask_ratio))."""
        h, w = self.grid_size
        return masking.num_keep_for(h * w, self.mask_ratio)

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False, ids_shuffle: Optional[Array] = None
                 ) -> tuple[Array, dict[str, Array]]:
        layers.check_images(images, name='MILAN', multiple_of=to_2tuple(self.patch_size))
        out = {}
        x = nn.Conv(self.hidden_size, to_2tuple(self.patch_size), strides=to_2tuple(self.patch_size),
                    padding='VALID', dtype=self.dtype, kernel_init=layers.flat_xavier_uniform, name='embedding')(
            images.astype(self.dtype))
        b, h, w, d = x.shape
        n = h * w
        x = x.reshape(b, n, d) + jnp.asarray(layers.posemb_sincos_2d(h, w, d, convention='mae'), x.dtype)
        if ids_shuffle is None and self.is_initializing():
            ids_shuffle = jnp.tile(jnp.arange(n)[None], (b, 1))  # Create the decoder's parameters too.
        keep = self.num_keep if ids_shuffle is not None else n
        if ids_shuffle is not None:
            if ids_shuffle.shape != (b, n):
                raise ValueError(f'ids_shuffle must be a per-example permutation [B, N] = {(b, n)}, got '
                                 f'{ids_shuffle.shape}.')
            mask, ids_restore = masking.mask_from_shuffle(ids_shuffle, keep)
            x = jnp.take_along_axis(x, ids_shuffle[:, :keep, None], axis=1)
            out['mask'] = mask
        cls = self.param('cls', nn.initializers.normal(0.02), (1, 1, d))  # Its position embedding is zero.
        x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (b, 1, 1)), x], axis=1)
        x, enc_out = layers.Encoder(num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                                    norm_eps=self.norm_eps, activation=self.activation,
                                    bias_init=nn.initializers.zeros, scan=self.scan, remat_policy=self.remat_policy,
                                    dtype=self.dtype, attention_impl=self.attention_impl, name='Transformer')(x, train)
        out.update({f'encoder/{k}': v for k, v in enc_out.items()})
        out['encoded'] = x
        out['pre_logits'] = x[:, 0]
        if ids_shuffle is None:
            return x[:, 0].astype(jnp.float32), out

        # Decoder.
        dd = self.decoder_dim
        y = nn.Dense(dd, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(), name='decoder_embed')(x)
        mask_token = self.param('mask_token', nn.initializers.normal(0.02), (1, 1, dd))
        pos = jnp.asarray(layers.posemb_sincos_2d(h, w, dd, convention='mae'), y.dtype)[0]  # [N, dd]; cls slot: 0.
        pos_shuffled = pos[ids_shuffle]  # [B, N, dd] in shuffled order.
        cls_f = y[:, :1]
        vis_f = y[:, 1:] + pos_shuffled[:, :keep]
        queries = jnp.broadcast_to(mask_token.astype(y.dtype), (b, n - keep, dd)) + pos_shuffled[:, keep:]
        mlp = dd * self.decoder_mlp_ratio
        if self.decoder == 'prompt':
            prompts = jnp.concatenate([cls_f, vis_f], axis=1)
            decoder = layers.Encoder(num_layers=self.decoder_depth, num_heads=self.decoder_heads, mlp_dim=mlp,
                                     norm_eps=self.norm_eps, activation=self.activation, final_norm=False,
                                     block_cls=PromptDecoderBlock, block_name='decoder_block', scan=self.scan,
                                     remat_policy=self.remat_policy, dtype=self.dtype,
                                     attention_impl=self.attention_impl, name='prompt_decoder')
            nn.share_scope(self, decoder)  # The blocks stay `decoder_block_{i}` (the release's names).
            queries, _ = decoder(queries, train, context=prompts)
            full = jnp.concatenate([vis_f, queries], axis=1)
            seq = jnp.concatenate([cls_f, jnp.take_along_axis(full, ids_restore[..., None], axis=1)], axis=1)
        elif self.decoder == 'mae':
            full = jnp.concatenate([vis_f, queries], axis=1)
            seq = jnp.concatenate([cls_f, jnp.take_along_axis(full, ids_restore[..., None], axis=1)], axis=1)
            seq, _ = layers.Encoder(num_layers=self.decoder_depth, num_heads=self.decoder_heads, mlp_dim=mlp,
                                    norm_eps=self.norm_eps, activation=self.activation, final_norm=False,
                                    bias_init=nn.initializers.zeros, scan=self.scan, remat_policy=self.remat_policy,
                                    dtype=self.dtype, attention_impl=self.attention_impl, name='decoder_blocks')(
                seq, train)
        else:
            raise ValueError(f"decoder must be 'prompt' or 'mae', got {self.decoder!r}.")
        out['decoder_tokens'] = seq  # [B, 1 + N, decoder_dim] in image order, before decoder_norm.
        seq = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='decoder_norm')(seq)
        pred = nn.Dense(self.target_dim, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
                        name='decoder_pred')(seq)
        out['pred'] = pred.astype(jnp.float32)
        return out['pred'], out


# ----------------------------------------------------------------------------------------------------------------
# CLIP image tower (MILAN's teacher).
# ----------------------------------------------------------------------------------------------------------------
class CLIPVisionTransformer(nn.Module):
    """OpenAI CLIP image encoder; returns (image embedding [B, projection_dim], out).

    out: 'encoded' (last block output, before ln_post: HuggingFace's last_hidden_state), 'pre_logits' (ln_post of
    the class token), 'tokens_proj' (every token through ln_post and the projection: MILAN's targets [B, T, P]).
    """

    num_classes: Optional[int] = 0  # Unused (CLIP has a projection, not a classifier).
    image_size: int | Sequence[int] = 224  # Input resolution.
    patch_size: int | Sequence[int] = 16  # Patch size.
    hidden_size: int = 768  # Width.
    mlp_dim: int = 3072  # MLP width.
    num_heads: int = 12  # Heads.
    num_layers: int = 12  # Depth.
    projection_dim: int = 512  # Output of `proj`.
    norm_eps: float = 1e-5  # LayerNorm epsilon (PyTorch default).
    activation: str = 'quick_gelu'  # QuickGELU, as OpenAI CLIP.
    scan: bool = False  # Scan over the layers (layers.Encoder; `encoderblock` stacked).
    remat_policy: Optional[str] = None  # Rematerialise each block with this jax.checkpoint_policies name.
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel: 'auto', 'xla', 'cudnn' or 'cpu' (layers.resolve_attention_impl).

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        layers.check_images(images, name='CLIPVisionTransformer', multiple_of=to_2tuple(self.patch_size))
        out = {}
        x = nn.Conv(self.hidden_size, to_2tuple(self.patch_size), strides=to_2tuple(self.patch_size),
                    padding='VALID', use_bias=False, dtype=self.dtype, name='embedding')(images.astype(self.dtype))
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        cls = self.param('cls', nn.initializers.normal(d ** -0.5), (1, 1, d))
        x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (b, 1, 1)), x], axis=1)
        x = layers.AddPositionEmbs(posemb_init=nn.initializers.normal(0.01), name='posembed_input')(x)
        x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='ln_pre')(x)
        x, enc_out = layers.Encoder(num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                                    norm_eps=self.norm_eps, activation=self.activation, final_norm=False,
                                    scan=self.scan, remat_policy=self.remat_policy, dtype=self.dtype,
                                    attention_impl=self.attention_impl, name='Transformer')(x, train)
        out.update({f'encoder/{k}': v for k, v in enc_out.items()})
        out['encoded'] = x
        y = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='ln_post')(x)
        tokens = nn.Dense(self.projection_dim, use_bias=False, dtype=self.dtype, name='proj')(y)
        out['pre_logits'] = y[:, 0]
        out['tokens_proj'] = tokens.astype(jnp.float32)
        return tokens[:, 0].astype(jnp.float32), out


def last_block_cls_attention(intermediates: dict, num_layers: Optional[int] = None) -> Optional[Array]:
    """[B, N] class-token row (over the patch keys) of the last block's head-averaged attention, from a model's
    `intermediates` collection (`apply(..., mutable=['intermediates'])`); None when none was recorded."""
    tr = intermediates.get('Transformer', intermediates)
    blocks = sorted((int(k.rsplit('_', 1)[1]), k) for k in tr if k.startswith('encoderblock_'))
    if blocks:
        node = tr[blocks[-1][1]]
        weights = node.get('MultiHeadDotProductAttention_1', {}).get('attention_weights')
        if weights is None:
            return None
        a = weights[0]  # [B, heads, T, T]
    elif 'encoderblock' in tr:  # Scanned layers: stacked on axis 0.
        weights = tr['encoderblock']['block']['MultiHeadDotProductAttention_1']['attention_weights'][0]
        a = weights[-1]
    else:
        return None
    return jnp.mean(a, axis=1)[:, 0, 1:]


# ----------------------------------------------------------------------------------------------------------------
# Registered variants.
# ----------------------------------------------------------------------------------------------------------------
# MILAN ViT-B/16 and ViT-L/16 (encoder = MAE ViT; decoder 512 wide, 8 blocks, 16 heads; CLIP-B/16 targets: 512).
register('MILAN-B/16', MILAN, aliases=('MILAN-B_16',), paper='milan')
register('MILAN-L/16', MILAN, aliases=('MILAN-L_16',), paper='milan', hidden_size=1024, mlp_dim=4096, num_heads=16,
         num_layers=24)
register('MILAN-testing', MILAN, paper='test', image_size=16, patch_size=4, hidden_size=32, mlp_dim=64, num_heads=2,
         num_layers=2, decoder_dim=32, decoder_depth=2, decoder_heads=2, target_dim=16)
register('CLIP-ViT-B/16', CLIPVisionTransformer, aliases=('CLIP-ViT-B_16',), paper='clip')
register('CLIP-ViT-L/14', CLIPVisionTransformer, aliases=('CLIP-ViT-L_14',), paper='clip', patch_size=14,
         hidden_size=1024, mlp_dim=4096, num_heads=16, num_layers=24, projection_dim=768)
register('CLIP-testing', CLIPVisionTransformer, paper='test', image_size=16, patch_size=4, hidden_size=32, mlp_dim=64,
         num_heads=2, num_layers=2, projection_dim=16)
