"""Vision Transformer (Dosovitskiy et al., 2021), its ResNet hybrids, and ViT_P / ViT_C (Xiao et al., 2021).

One module, three stems: `stem='patch'` (linear patch embedding), `stem='resnet'` (BiT ResNet then a 1x1 patch
embedding on its feature map) and `stem='conv'` (the ViT_C stack of 3x3 convs with BatchNorm). Parameter names are
the release's: `embedding`, `cls`, `Transformer/posembed_input/pos_embedding`, `Transformer/encoderblock_{i}`,
`Transformer/encoder_norm`, `pre_logits`, `head`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import layers, register
from vit_jax.models.layers import to_2tuple
from vit_jax.models.resnet import resnet_stem

Array = jax.Array


class VisionTransformer(nn.Module):
    """ViT for classification; returns `(logits, out)` where `out` holds named intermediates."""

    num_classes: Optional[int] = 1000  # Head width; None or 0 drops the head (features in `pre_logits`).
    image_size: int | Sequence[int] = 224  # Input resolution (fixes the position-embedding grid).
    patch_size: int | Sequence[int] = 16  # Patch size of the embedding (1 for hybrids on the ResNet map).
    hidden_size: int = 768  # Token width D.
    mlp_dim: int = 3072  # MLP hidden width.
    num_heads: int = 12  # Attention heads.
    num_layers: int = 12  # Encoder depth.
    stem: str = 'patch'  # 'patch', 'resnet' (BiT hybrid) or 'conv' (ViT_C).
    resnet_layers: Sequence[int] = (3, 4, 9)  # Units per ResNet stage (stem='resnet').
    resnet_width: float = 1.0  # ResNet width factor (stem='resnet').
    conv_channels: Sequence[int] = (48, 96, 192, 384)  # ViT_C 3x3 conv widths (stem='conv').
    conv_strides: Sequence[int] = (2, 2, 2, 2)  # ViT_C 3x3 conv strides (stem='conv').
    classifier: str = 'token'  # 'token', 'gap', 'map', 'unpooled' or 'token_unpooled'.
    # A class token with classifier='gap' (MAE / MILAN fine-tuning: it goes through the blocks, the mean is over the
    # patch tokens only). None: a class token exactly when the classifier reads it ('token', 'token_unpooled').
    class_token: Optional[bool] = None
    # MAE's `global_pool` head: no final encoder norm, a LayerNorm `fc_norm` on the pooled features ('gap' only).
    fc_norm: bool = False
    posemb: str = 'learn'  # 'learn', 'sincos2d' (big_vision's table), 'sincos2d_mae' (MAE/MILAN's) or 'none'.
    # Init of a learned position embedding: 'normal' (N(0, 0.02), the release) or a fixed table's values, zeros for
    # the class token ('sincos2d_mae': what MAE / MILAN fine-tuning starts from, 'sincos2d').
    posemb_init: str = 'normal'
    representation_size: Optional[int] = None  # Width of the tanh `pre_logits` layer (pre-training head).
    dropout_rate: float = 0.0  # Dropout after the position embedding and inside blocks.
    attention_dropout_rate: float = 0.0  # Dropout on attention probabilities.
    drop_path_rate: float = 0.0  # Stochastic depth at the last block (linear ramp).
    norm: str = 'layernorm'  # Token normaliser ('layernorm', 'dtn', ...).
    norm_eps: float = 1e-6  # Normaliser epsilon (release 1e-6; pycls 1e-5).
    activation: str = 'gelu'  # MLP activation ('gelu' = tanh approx, release; 'gelu_exact' for PyTorch ports).
    qkv_bias: bool = True  # Bias on q/k/v projections.
    head_bias_init: float = 0.0  # Initial head bias.
    # Head kernel init: 0 zeros (the ViT release); > 0 N(0, std^2) (timm's `trunc_normal_(std)`, truncated at +-2
    # absolute: in effect untruncated), e.g. 0.01 for MAE / MILAN linear probing.
    head_init_std: float = 0.0
    # 'batchnorm': MAE / MILAN linear probing's BatchNorm without scale and offset (eps 1e-6) on the pooled features
    # before the head (`head_norm`, statistics in `batch_stats`; over the global batch, not per device).
    head_norm: Optional[str] = None
    scan: bool = False  # Scan over encoder layers.
    remat_policy: Optional[str] = None  # Rematerialisation policy of each block (jax.checkpoint_policies name).
    dtype: Any = jnp.float32  # Compute dtype (parameters stay float32).
    attention_impl: str = 'auto'  # Attention kernel: 'auto', 'xla', 'cudnn' or 'cpu' (layers.resolve_attention_impl).
    # Accept inputs of any size divisible by the stride: the learned position embedding (stored for image_size) is
    # resized on the fly to the input grid (bilinear, align_corners=False, as timm / DPT / Segmenter).
    dynamic_img_size: bool = False
    resnet_variant: str = 'release'  # ResNet-stem epsilons: 'release' or 'timm' (HF / timm hybrids, DPT-Hybrid).
    # DeiT's distillation token (param 'dist_token', after the class token) with its own head 'head_dist'; logits
    # are the mean of both heads, out['logits_cls'] / out['logits_dist'] each (classifier='token' only).
    distill_token: bool = False

    @property
    def grid_size(self) -> tuple[int, int]:
        """The token grid (h, w) at `image_size`."""
        h, w = to_2tuple(self.image_size)
        if self.stem == 'patch':
            ph, pw = to_2tuple(self.patch_size)
            return h // ph, w // pw
        stride = self.total_stride
        return h // stride, w // stride

    @property
    def total_stride(self) -> int:
        """Pixels per token along each side."""
        ph, _ = to_2tuple(self.patch_size)
        if self.stem == 'resnet':
            return 4 * 2 ** max(len(self.resnet_layers) - 1, 0) * ph
        if self.stem == 'conv':
            s = 1
            for v in self.conv_strides:
                s *= v
            return s
        return ph

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        layers.check_images(images, name=f'{type(self).__name__}', multiple_of=(self.total_stride,) * 2)
        if (tuple(images.shape[1:3]) != to_2tuple(self.image_size) and self.posemb == 'learn'
                and not self.dynamic_img_size):
            raise ValueError(
                f'This model was built for image_size={to_2tuple(self.image_size)} but got images of '
                f'{tuple(images.shape[1:3])}. Build it with get_model(..., image_size={tuple(images.shape[1:3])}); '
                'checkpoint.load_pretrained resamples the position embeddings of a checkpoint to the new grid.')
        out = {}
        x = images.astype(self.dtype)
        if self.stem == 'resnet':
            stages = {}
            x = resnet_stem(x, self.resnet_layers, self.resnet_width, dtype=self.dtype, variant=self.resnet_variant,
                            stages=stages)
            out.update({f'resnet/{k}': v for k, v in stages.items()})
            x = layers.patch_embed(x, self.hidden_size, to_2tuple(self.patch_size), dtype=self.dtype)
        elif self.stem == 'conv':
            x = layers.ConvStem(self.hidden_size, self.conv_channels, self.conv_strides, dtype=self.dtype,
                                name='stem')(x, train=train)
        elif self.stem == 'patch':
            x = layers.patch_embed(x, self.hidden_size, to_2tuple(self.patch_size), dtype=self.dtype)
        else:
            raise ValueError(f"stem must be 'patch', 'resnet' or 'conv', got {self.stem!r}.")
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        out['stem'] = x

        use_cls = self.classifier in ('token', 'token_unpooled')
        if self.class_token is not None:
            if not self.class_token and use_cls:
                raise ValueError(f"classifier={self.classifier!r} reads the class token: class_token=False "
                                 "does not go with it.")
            if self.class_token and self.classifier != 'gap' and not use_cls:
                raise ValueError(f"class_token=True goes with classifier='gap' or 'token', not {self.classifier!r}.")
            use_cls = self.class_token
        if self.fc_norm and self.classifier != 'gap':
            raise ValueError(f"fc_norm=True is the norm of the pooled tokens: it needs classifier='gap', got "
                             f'{self.classifier!r}.')
        if use_cls:
            cls = self.param('cls', nn.initializers.zeros, (1, 1, d))
            x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), [b, 1, 1]), x], axis=1)
        num_prefix = int(use_cls)
        if self.distill_token:
            if self.classifier != 'token' or self.representation_size is not None:
                raise ValueError("distill_token=True needs classifier='token' and no representation_size.")
            dist = self.param('dist_token', nn.initializers.normal(stddev=0.02), (1, 1, d))
            x = jnp.concatenate([x[:, :1], jnp.tile(dist.astype(x.dtype), [b, 1, 1]), x[:, 1:]], axis=1)
            num_prefix = 2

        if self.posemb not in ('learn', 'sincos2d', 'sincos2d_mae', 'none'):
            raise ValueError(f"posemb must be 'learn', 'sincos2d', 'sincos2d_mae' or 'none', got {self.posemb!r}.")
        embed = layers.position_embedding(
            self.posemb, grid=(h, w), num_prefix=num_prefix, dropout_rate=self.dropout_rate, train=train,
            stored_grid=self.grid_size if self.dynamic_img_size else None,
            init=layers.posemb_initializer(self.posemb_init, self.grid_size, num_prefix))
        x, enc_out = layers.Encoder(
            num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate, drop_path_rate=self.drop_path_rate, norm=self.norm,
            norm_eps=self.norm_eps, activation=self.activation, qkv_bias=self.qkv_bias, scan=self.scan,
            remat_policy=self.remat_policy, dtype=self.dtype, attention_impl=self.attention_impl,
            final_norm=not self.fc_norm, name='Transformer')(x, train, hooks={0: embed})
        out.update({f'encoder/{k}': v for k, v in enc_out.items()})
        out['encoded'] = x
        out['tokens_2d'] = x[:, num_prefix:].reshape(b, h, w, d)
        x_dist = x[:, 1] if self.distill_token else None

        if self.classifier == 'token':
            x = x[:, 0]
        elif self.classifier == 'gap':
            x = jnp.mean(x[:, num_prefix:], axis=1)
            if self.fc_norm:
                x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='fc_norm')(x)
        elif self.classifier == 'map':
            x = layers.MAPHead(num_heads=self.num_heads, mlp_dim=self.mlp_dim, norm_eps=self.norm_eps,
                               dtype=self.dtype, name='MAPHead_0')(x)
        elif self.classifier not in ('unpooled', 'token_unpooled'):
            raise ValueError(f"classifier must be 'token', 'gap', 'map', 'unpooled' or 'token_unpooled', "
                             f'got {self.classifier!r}.')

        if self.representation_size is not None:
            x = jnp.tanh(nn.Dense(self.representation_size, dtype=self.dtype, name='pre_logits')(x))
        pooled = x
        if self.head_norm == 'batchnorm':
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-6, use_scale=False,
                             use_bias=False, dtype=self.dtype, name='head_norm')(x)
        elif self.head_norm is not None:
            raise ValueError(f"head_norm must be None or 'batchnorm', got {self.head_norm!r}.")
        head_bias = nn.initializers.constant(self.head_bias_init)
        logits, out = layers.classifier_head(x, self.num_classes, out, dtype=self.dtype, bias_init=head_bias,
                                             kernel_init=layers.head_kernel_init(self.head_init_std))
        out['pre_logits'] = pooled  # The features, before the head's own norm.
        if self.distill_token and self.num_classes:
            _, dist = layers.classifier_head(x_dist, self.num_classes, {}, dtype=self.dtype, bias_init=head_bias,
                                             name='head_dist')
            out['logits_cls'], out['logits_dist'] = out['logits'], dist['logits']
            out['logits'] = (out['logits'] + dist['logits']) / 2
            logits = out['logits'].astype(jnp.float32)
        elif self.distill_token:
            out['pre_logits_dist'] = x_dist
        return logits, out


# ----------------------------------------------------------------------------------------------------------------
# Registered variants.
# ----------------------------------------------------------------------------------------------------------------
# (hidden, mlp, heads, layers) per size, as in the ViT release / DeiT / AugReg.
VIT_SIZES = {
    'Ti': (192, 768, 3, 12),
    'S': (384, 1536, 6, 12),
    'B': (768, 3072, 12, 12),
    'L': (1024, 4096, 16, 24),
    'H': (1280, 5120, 16, 32),
}


def _vit_kwargs(size: str, patch: int) -> dict:
    hidden, mlp, heads, depth = VIT_SIZES[size]
    return dict(hidden_size=hidden, mlp_dim=mlp, num_heads=heads, num_layers=depth, patch_size=patch)


for _size in VIT_SIZES:
    for _patch in (8, 14, 16, 32):
        register(f'ViT-{_size}/{_patch}', VisionTransformer, aliases=(f'ViT-{_size}_{_patch}',),
                 paper='vit', **_vit_kwargs(_size, _patch))

# ResNet hybrids of the release: R50 with stages (3, 4, 9) (stage 4's units moved into stage 3), R26 (2, 2, 2, 2).
register('R50+ViT-B/16', VisionTransformer, aliases=('R50+ViT-B_16',), paper='vit', stem='resnet',
         resnet_layers=(3, 4, 9), **_vit_kwargs('B', 1))
register('R26+ViT-S/32', VisionTransformer, aliases=('R26+ViT-S_32',), paper='vit', stem='resnet',
         resnet_layers=(2, 2, 2, 2), **_vit_kwargs('S', 1))
register('R26+ViT-B/32', VisionTransformer, aliases=('R26+ViT-B_32',), paper='vit', stem='resnet',
         resnet_layers=(2, 2, 2, 2), **_vit_kwargs('B', 1))
register('R50+ViT-L/32', VisionTransformer, aliases=('R50+ViT-L_32',), paper='vit', stem='resnet',
         resnet_layers=(3, 4, 6, 3), **_vit_kwargs('L', 1))
register('R+ViT-Ti/16', VisionTransformer, aliases=('R+ViT-Ti_16',), paper='vit', stem='resnet',
         resnet_layers=(), **_vit_kwargs('Ti', 8))

# "Early Convolutions Help Transformers See Better", table 1: ViT_P (patchify stem) and ViT_C (conv stem, one
# block fewer). pycls uses LayerNorm eps 1e-5 and exact GELU.
_EARLY_CONV = {
    # name: (D, mlp ratio, heads, blocks of ViT_P, conv channels, conv strides)
    '1GF': (192, 3, 3, 12, (24, 48, 96, 192), (2, 2, 2, 2)),
    '4GF': (384, 3, 6, 12, (48, 96, 192, 384), (2, 2, 2, 2)),
    '18GF': (768, 4, 12, 12, (64, 128, 128, 256, 256, 512), (2, 2, 1, 2, 1, 2)),
    '36GF': (1024, 4, 16, 14, (64, 128, 128, 256, 256, 512), (2, 2, 1, 2, 1, 2)),
}
for _name, (_d, _r, _h, _l, _ch, _st) in _EARLY_CONV.items():
    _common = dict(hidden_size=_d, mlp_dim=_d * _r, num_heads=_h, norm_eps=1e-5, activation='gelu_exact',
                   paper='early_conv')
    register(f'ViTP-{_name}', VisionTransformer, patch_size=16, num_layers=_l, **_common)
    register(f'ViTC-{_name}', VisionTransformer, stem='conv', num_layers=_l - 1, conv_channels=_ch,
             conv_strides=_st, **_common)

# DeiT with its distillation token (Touvron et al., 2021: DeiT-Ti/S/B with the alembic), the ViT sizes with exact
# GELU. Counts (1000 classes): 5,910,800 / 22,436,432 / 87,338,192 (paper: 6M / 22M / 87M).
for _size in ('Ti', 'S', 'B'):
    register(f'DeiT-{_size}/16-distilled', VisionTransformer, aliases=(f'DeiT-{_size}_16-distilled',), paper='deit',
             distill_token=True, activation='gelu_exact', **_vit_kwargs(_size, 16))

# A tiny ViT for tests and the quickstart.
register('ViT-testing', VisionTransformer, paper='test', hidden_size=32, mlp_dim=64, num_heads=2, num_layers=2,
         patch_size=4, image_size=32)
