"""Compact Transformers (Hassani et al., 2021): ViT-Lite, CVT and CCT.

"Escaping the Big Data Paradigm with Compact Transformers". One module, three families that differ only in how tokens
are made and pooled (the official `TransformerClassifier` is shared by all three):

* ViT-Lite: a patch conv (kernel = stride = patch, with bias), a zero-initialised class token, pooling by that token.
* CVT: the same patch conv, no class token, SeqPool (a learned softmax over the tokens).
* CCT: a convolutional tokenizer (C x [conv k x k, no bias -> ReLU -> max-pool 3/2/1]; widths 3 -> 64 -> ... -> D)
  and SeqPool.

Names `L/PxC`: L encoder layers, kernel or patch size P, C tokenizer convs. The encoder layer is the official code's
non-standard one (`layers.Encoder1DBlock` with `norm_style='cct'`): `x += Attn(LN(x)); x = LN(x); x += MLP(x)` with
no q/k/v bias, exact GELU, LayerNorm eps 1e-5, attention dropout 0.1 and a 0 -> 0.1 stochastic-depth ramp.

Position embeddings: 'learnable' (a parameter, N(0, 0.2)), 'sine' (the fixed Transformer table; a constant here, so
unlike the official frozen `Parameter` it is not counted and not stored in checkpoints), or 'none'.

Initialisation follows the official code: Linear layers N(0, 0.02) with zero bias (the head included), tokenizer convs
Kaiming-normal (fan-in, gain sqrt 2), the ViT-Lite/CVT patch-conv bias PyTorch's default U(+-1/sqrt(fan_in)).
(timm's `trunc_normal_(std)` truncates at +-2 absolute, i.e. at 10 to 100 sigma here: a plain normal.)

Parameter names: `tokenizer/conv_{i}` (CCT) or `embedding` (ViT-Lite/CVT), `cls`,
`Transformer/posembed_input/pos_embedding`, `Transformer/encoderblock_{i}`, `Transformer/encoder_norm`,
`attention_pool` (SeqPool), `head`. `convert.from_official('cct', state_dict, model)` converts an official
checkpoint (`vit_jax/porting/cct.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import layers, register
from vit_jax.models.vit import to_2tuple

Array = jax.Array


class ConvTokenizer(nn.Module):
    """The CCT tokenizer: `num_layers` x [Conv(k, stride, pad, no bias) -> ReLU -> MaxPool(3, 2, 1)], as NHWD."""

    features: int  # Output width D.
    kernel_size: int = 3  # Conv kernel k.
    stride: int | None = None  # Conv stride; default max(1, k // 2 - 1) (1 for k=3, 2 for k=7).
    padding: int | None = None  # Conv padding; default max(1, k // 2).
    num_layers: int = 1  # Number of convs C.
    hidden_channels: int = 64  # Width of the intermediate convs (`in_planes` of the official code).
    max_pool: bool = True  # Max-pool after every conv.
    pool_kernel: int = 3  # Max-pool window.
    pool_stride: int = 2  # Max-pool stride.
    pool_padding: int = 1  # Max-pool padding (pads with -inf, as PyTorch).
    activation: str = 'relu'  # Activation after every conv.
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = self.kernel_size
        s = self.stride if self.stride is not None else max(1, k // 2 - 1)
        p = self.padding if self.padding is not None else max(1, k // 2)
        widths = [self.hidden_channels] * (self.num_layers - 1) + [self.features]
        for i, c in enumerate(widths):
            x = nn.Conv(c, (k, k), strides=(s, s), padding=((p, p), (p, p)), use_bias=False,
                        kernel_init=layers.kaiming_normal, dtype=self.dtype, name=f'conv_{i}')(x)
            x = layers.get_activation(self.activation)(x)
            if self.max_pool:
                q = self.pool_padding
                x = nn.max_pool(x, (self.pool_kernel,) * 2, strides=(self.pool_stride,) * 2, padding=((q, q), (q, q)))
        return x


class SeqPool(nn.Module):
    """Sequence pooling: softmax over tokens of a Dense(D -> 1), then the weighted sum of the tokens."""

    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        logits = nn.Dense(1, kernel_init=layers.timm_normal, dtype=self.dtype, name='attention_pool')(x)  # [B, N, 1]
        w = jax.nn.softmax(logits.astype(jnp.float32), axis=1).astype(x.dtype)
        return jnp.einsum('bn,bnd->bd', w[..., 0], x), w[..., 0]


class CompactTransformer(nn.Module):
    """ViT-Lite / CVT / CCT; returns `(logits, out)`.

    `out` holds 'stem' (tokens after the tokenizer), 'encoder/block_NN', 'encoded' (after the final norm),
    'tokens_2d' (the token grid), 'pool_weights' (SeqPool's weights over tokens, [B, N]), 'pre_logits', 'logits'.
    """

    num_classes: int | None = 10  # Head width; None or 0 drops the head (features in `pre_logits`).
    image_size: int | Sequence[int] = 32  # Input resolution (fixes the learnable position-embedding length).
    hidden_size: int = 256  # Token width D.
    num_layers: int = 7  # Encoder depth L.
    num_heads: int = 4  # Attention heads.
    mlp_ratio: float = 2.0  # MLP width = int(D * mlp_ratio).
    tokenizer: str = 'conv'  # 'conv' (CCT convolutional tokenizer) or 'patch' (ViT-Lite / CVT patch conv).
    kernel_size: int = 3  # CCT conv kernel, or the ViT-Lite / CVT patch size.
    conv_layers: int = 1  # CCT: number of tokenizer convs C.
    conv_stride: int | None = None  # CCT: conv stride (default max(1, k // 2 - 1)).
    conv_padding: int | None = None  # CCT: conv padding (default max(1, k // 2)).
    conv_channels: int = 64  # CCT: width of intermediate tokenizer convs.
    max_pool: bool = True  # CCT: max-pool 3/2/1 after every tokenizer conv.
    seq_pool: bool = True  # SeqPool (CCT, CVT); False: class token (ViT-Lite).
    posemb: str = 'learnable'  # 'learnable' (N(0, 0.2)), 'sine' (fixed table) or 'none'.
    posemb_std: float = 0.2  # Std of the learnable position embedding (ten times ViT's).
    dropout_rate: float = 0.0  # Dropout after the position embedding and inside blocks.
    attention_dropout_rate: float = 0.1  # Dropout on attention probabilities.
    drop_path_rate: float = 0.1  # Stochastic depth of the last block (linear ramp from 0).
    norm: str = 'layernorm'  # Token normaliser ('layernorm', 'dtn', ...).
    norm_eps: float = 1e-5  # Normaliser epsilon (PyTorch default).
    norm_style: str = 'cct'  # Encoder layer: 'cct' (official) or 'pre' (standard pre-LN, for ablations).
    activation: str = 'gelu_exact'  # MLP activation (PyTorch F.gelu, exact).
    qkv_bias: bool = False  # Bias on q/k/v (the official code has none).
    scan: bool = False  # Scan over encoder layers.
    remat_policy: str | None = None  # Rematerialisation policy of each block (jax.checkpoint_policies name).
    dtype: Any = jnp.float32  # Compute dtype (parameters stay float32).
    attention_impl: str = 'auto'  # Attention kernel: 'auto', 'xla', 'cudnn' or 'cpu' (layers.resolve_attention_impl).

    @property
    def grid_size(self) -> tuple[int, int]:
        """The token grid (h, w) at `image_size`."""
        h, w = to_2tuple(self.image_size)
        if self.tokenizer == 'patch':
            return h // self.kernel_size, w // self.kernel_size
        k = self.kernel_size
        s = self.conv_stride if self.conv_stride is not None else max(1, k // 2 - 1)
        p = self.conv_padding if self.conv_padding is not None else max(1, k // 2)
        for _ in range(self.conv_layers):
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            if self.max_pool:
                h, w = (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1
        return h, w

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        name = type(self).__name__
        if self.tokenizer == 'patch':
            layers.check_images(images, name=name, multiple_of=(self.kernel_size,) * 2)
        else:
            layers.check_images(images, name=name)
        if self.posemb == 'learnable' and tuple(images.shape[1:3]) != to_2tuple(self.image_size):
            raise ValueError(
                f'This model was built for image_size={to_2tuple(self.image_size)} but got images of '
                f'{tuple(images.shape[1:3])}. Build it with get_model(..., image_size={tuple(images.shape[1:3])}); '
                'checkpoint.load_pretrained resamples a learnable position embedding to the new grid.')
        out = {}
        x = images.astype(self.dtype)
        d = self.hidden_size
        if self.tokenizer == 'conv':
            x = ConvTokenizer(d, self.kernel_size, self.conv_stride, self.conv_padding, self.conv_layers,
                              self.conv_channels, self.max_pool, dtype=self.dtype, name='tokenizer')(x)
        elif self.tokenizer == 'patch':
            p = self.kernel_size
            x = nn.Conv(d, (p, p), strides=(p, p), padding='VALID', kernel_init=layers.kaiming_normal,
                        bias_init=layers.torch_bias_init(3 * p * p), dtype=self.dtype, name='embedding')(x)
        else:
            raise ValueError(f"tokenizer must be 'conv' or 'patch', got {self.tokenizer!r}.")
        b, h, w, _ = x.shape
        x = x.reshape(b, h * w, d)
        out['stem'] = x

        num_prefix = 0
        if not self.seq_pool:
            cls = self.param('cls', nn.initializers.zeros, (1, 1, d))
            x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), [b, 1, 1]), x], axis=1)
            num_prefix = 1

        kinds = {'learnable': 'learn', 'sine': 'sincos1d', 'none': 'none'}
        if self.posemb not in kinds:
            raise ValueError(f"posemb must be 'learnable', 'sine' or 'none', got {self.posemb!r}.")
        embed = layers.position_embedding(kinds[self.posemb], init=nn.initializers.normal(self.posemb_std),
                                          dropout_rate=self.dropout_rate, train=train)
        x, enc_out = layers.Encoder(
            num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=int(d * self.mlp_ratio),
            dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
            drop_path_rate=self.drop_path_rate, norm=self.norm, norm_eps=self.norm_eps, norm_style=self.norm_style,
            activation=self.activation, qkv_bias=self.qkv_bias, scan=self.scan, remat_policy=self.remat_policy,
            kernel_init=layers.timm_normal, bias_init=nn.initializers.zeros, dtype=self.dtype,
            attention_impl=self.attention_impl, name='Transformer')(x, train, hooks={0: embed})
        out.update({f'encoder/{k}': v for k, v in enc_out.items()})
        out['encoded'] = x
        out['tokens_2d'] = x[:, num_prefix:].reshape(b, h, w, d)

        if self.seq_pool:
            x, out['pool_weights'] = SeqPool(dtype=self.dtype, name='seqpool')(x)
        else:
            x = x[:, 0]
        return layers.classifier_head(x, self.num_classes, out, dtype=self.dtype, kernel_init=layers.timm_normal)


# ----------------------------------------------------------------------------------------------------------------
# Registered variants (official `src/cct.py`, `src/vit.py`, `src/cvt.py` and the paper's tables).
# ----------------------------------------------------------------------------------------------------------------
# L: (heads, mlp ratio, D), as the official cct_2 ... cct_14 / vit_2 ... / cvt_2 ... constructors.
CCT_SIZES = {
    2: (2, 1, 128),
    4: (2, 1, 128),
    6: (4, 2, 256),
    7: (4, 2, 256),
    8: (4, 2, 256),
    14: (6, 3, 384),
}


def _size(layers_: int) -> dict:
    heads, ratio, dim = CCT_SIZES[layers_]
    return dict(num_layers=layers_, num_heads=heads, mlp_ratio=float(ratio), hidden_size=dim)


def _register_cct(layers_: int, k: int, convs: int, size: int, classes: int, official: str,
                  extra: Sequence[tuple[str, dict]] = ()) -> None:
    kw = dict(tokenizer='conv', kernel_size=k, conv_layers=convs, seq_pool=True, image_size=size,
              num_classes=classes, **_size(layers_))
    register(f'CCT-{layers_}/{k}x{convs}', CompactTransformer, aliases=(official,), paper='cct', **kw)
    for name, over in extra:
        register(name, CompactTransformer, paper='cct', **{**kw, **over})


_SINE = {'posemb': 'sine'}
_register_cct(2, 3, 2, 32, 10, 'cct_2_3x2_32', [('cct_2_3x2_32_sine', _SINE)])
_register_cct(4, 3, 2, 32, 10, 'cct_4_3x2_32', [('cct_4_3x2_32_sine', _SINE)])
_register_cct(6, 3, 1, 32, 10, 'cct_6_3x1_32', [('cct_6_3x1_32_sine', _SINE)])
_register_cct(6, 3, 2, 32, 10, 'cct_6_3x2_32', [('cct_6_3x2_32_sine', _SINE)])
_register_cct(7, 3, 1, 32, 10, 'cct_7_3x1_32', [
    ('cct_7_3x1_32_sine', _SINE), ('cct_7_3x1_32_c100', {'num_classes': 100}),
    ('cct_7_3x1_32_sine_c100', {'num_classes': 100, **_SINE})])
_register_cct(7, 3, 2, 32, 10, 'cct_7_3x2_32', [('cct_7_3x2_32_sine', _SINE)])
# The Flowers-102 model (from scratch at 224; the released checkpoint is the sine one).
_register_cct(7, 7, 2, 224, 102, 'cct_7_7x2_224', [('cct_7_7x2_224_sine', _SINE)])
_register_cct(14, 7, 2, 224, 1000, 'cct_14_7x2_224', [
    ('cct_14_7x2_384', {'image_size': 384}), ('cct_14_7x2_384_fl', {'image_size': 384, 'num_classes': 102})])


def _register_patch(family: str, layers_: int, patch: int, official: str | None, *, sine: bool = True) -> None:
    kw = dict(tokenizer='patch', kernel_size=patch, seq_pool=family == 'CVT', image_size=32, num_classes=10,
              **_size(layers_))
    register(f'{family}-{layers_}/{patch}', CompactTransformer, aliases=(official,) if official else (),
             paper='cct', **kw)
    if official and sine:
        # Note: the official cvt_*_sine constructors drop `positional_embedding` (a repo bug: they build learnable
        # embeddings); here '_sine' means what it says.
        register(f'{official}_sine', CompactTransformer, paper='cct', **{**kw, **_SINE})


for _l in (2, 4, 6, 7):
    _register_patch('ViT-Lite', _l, 4, f'vit_{_l}_4_32')
for _l in (2, 4, 6, 7):
    _register_patch('CVT', _l, 4, f'cvt_{_l}_4_32')
_register_patch('CVT', 8, 4, None)  # `cvt_8` exists in the official code without a registered 32 px variant.
# The patch-size ablation of the paper's CIFAR table (ViT-Lite-7/8, ViT-Lite-7/16, CVT-7/8).
_register_patch('ViT-Lite', 7, 8, None)
_register_patch('ViT-Lite', 7, 16, None)
_register_patch('CVT', 7, 8, None)
