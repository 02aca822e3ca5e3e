"""Segmenter: Transformer for Semantic Segmentation (Strudel et al., ICCV 2021).

A ViT encoder (conv patch embedding, class token, PyTorch LayerNorm eps 1e-5, exact GELU) whose patch tokens go to
either a linear decoder or the mask transformer: K learned class embeddings appended *after* the patch tokens, two
pre-norm blocks, then cosine similarities between projected patch and class embeddings, LayerNorm over the classes,
bilinear upsampling to the (padded) input and unpadding. Images whose size is not a multiple of the patch are
zero-padded on the bottom/right and the prediction is cropped back, so logits are always at the input resolution.

The encoder is `vit.VisionTransformer` sharing this module's scope, so its parameters keep the ViT release names
(`embedding`, `cls`, `Transformer/...`, `head`) and a ViT checkpoint loads with
`checkpoint.load_pretrained(params, path, dont_load=('decoder/.*', 'head/.*'))`; the position embedding is resized on
the fly for other input sizes (bilinear, align_corners=False, as the official code). `head` is the encoder's unused
1000-way classifier, kept by default (`backbone_classes=1000`) so that the counts match the official module (the
numbers of the paper's README); set it to 0 to drop it.

The DeiT-backbone variants of the paper ('Seg-B\u2020/16', 'Seg-B\u2020-Mask/16'; ASCII 'Seg-B-dist/16',
'Seg-B-dist-Mask/16') set `distilled=True`: the encoder is DeiT-B distilled (official `distilled: true`, backbone
`deit_base_distilled_patch16_384`): a distillation token `dist_token` after the class token, a position embedding
for both (N + 2 rows) and the encoder's unused second classifier `head_dist`. As the official `Segmenter.forward`,
both tokens are dropped before either decoder (`x[:, 1 + distilled:]`). Their inputs are normalised with ImageNet's
mean and std (official `normalization: deit`), the ViT ones with 0.5 / 0.5; the data config decides.

Inference helpers (library functions, used by the segmentation evaluator): `window_anchors`,
`sliding_window_logits` (windows at 0, stride, 2*stride, ... plus a final window flush with the border; logits
summed and divided by the per-pixel window count) and `inference` (multi-scale + flip: softmax maps averaged).
They work on jax arrays (jit-able, static shapes) and on numpy arrays (host loops over images of any size).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import layers, register
from vit_jax.models.vit import VIT_SIZES, VisionTransformer, to_2tuple

Array = jax.Array


class MaskTransformer(nn.Module):
    """The mask-transformer decoder (names as the official `MaskTransformer`)."""

    num_classes: int  # K.
    num_layers: int = 2  # Decoder blocks.
    num_heads: int = 12  # Heads (the paper: D / 64).
    mlp_dim: int = 3072  # MLP width (4 D).
    dropout_rate: float = 0.1  # Dropout in the blocks (attention probabilities, projections, MLP).
    drop_path_rate: float = 0.0  # Stochastic depth of the decoder blocks.
    norm_eps: float = 1e-5  # PyTorch LayerNorm default.
    scan: bool = False  # Scan over the decoder blocks (layers.Encoder).
    remat_policy: Optional[str] = None  # Rematerialise each decoder block (jax.checkpoint_policies name).
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel (layers.resolve_attention_impl).

    @nn.compact
    def __call__(self, x: Array, grid: tuple[int, int], train: bool = False) -> Array:
        b, n, d = x.shape
        k = self.num_classes
        x = nn.Dense(d, dtype=self.dtype, kernel_init=layers.trunc_normal, name='proj_dec')(x)
        cls_emb = self.param('cls_emb', layers.trunc_normal, (1, k, d))
        x = jnp.concatenate([x, jnp.tile(cls_emb.astype(x.dtype), [b, 1, 1])], axis=1)  # Classes after patches.
        x, _ = layers.Encoder(
            num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.dropout_rate, drop_path_rate=self.drop_path_rate, norm_eps=self.norm_eps,
            final_norm=False, activation='gelu_exact', dtype=self.dtype, kernel_init=layers.trunc_normal,
            bias_init=nn.initializers.zeros, scan=self.scan, remat_policy=self.remat_policy,
            attention_impl=self.attention_impl, name='blocks')(x, train=train)
        x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='decoder_norm')(x)
        patches, classes = x[:, :n], x[:, n:]
        scale_init = nn.initializers.normal(d**-0.5)  # scale * randn, untouched by the Linear init.
        patches = patches @ self.param('proj_patch', scale_init, (d, d)).astype(x.dtype)
        classes = classes @ self.param('proj_classes', scale_init, (d, d)).astype(x.dtype)
        patches = patches / jnp.linalg.norm(patches, axis=-1, keepdims=True)
        classes = classes / jnp.linalg.norm(classes, axis=-1, keepdims=True)
        masks = jnp.einsum('bnd,bkd->bnk', patches, classes)  # Cosine similarities.
        masks = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='mask_norm')(masks)  # Over the K classes.
        return masks.reshape(b, grid[0], grid[1], k)


class Segmenter(nn.Module):
    """Segmenter; returns per-pixel logits [B, H, W, num_classes] at the input resolution and `out`."""

    num_classes: int = 150  # Segmentation classes K (ADE20K: 150).
    image_size: int | Sequence[int] = 512  # Training crop; fixes the stored position-embedding grid.
    patch_size: int = 16  # Patch size P.
    hidden_size: int = 768  # Encoder width D (also the mask transformer's width).
    mlp_dim: int = 3072  # Encoder MLP width.
    num_heads: int = 12  # Encoder heads.
    num_layers: int = 12  # Encoder depth.
    decoder: str = 'mask_transformer'  # 'mask_transformer' or 'linear'.
    decoder_layers: int = 2  # Mask-transformer blocks.
    decoder_heads: Optional[int] = None  # Mask-transformer heads; None: D // 64.
    decoder_mlp_dim: Optional[int] = None  # Mask-transformer MLP width; None: 4 D.
    decoder_dropout: float = 0.1  # Mask-transformer dropout.
    decoder_drop_path: float = 0.0  # Mask-transformer stochastic depth.
    dropout_rate: float = 0.0  # Encoder dropout (the training recipe: 0; the official module default 0.1).
    drop_path_rate: float = 0.1  # Encoder stochastic depth at the last block (linear ramp).
    norm_eps: float = 1e-5  # LayerNorm epsilon (PyTorch default, used although timm weights were trained with 1e-6).
    activation: str = 'gelu_exact'  # Encoder MLP activation (PyTorch nn.GELU).
    backbone_classes: int = 1000  # The encoder's unused classifier (official module, counts); 0 drops it.
    distilled: bool = False  # DeiT-distilled encoder (Seg-B\u2020): 'dist_token' after the class token, 'head_dist'.
    scan: bool = False  # Scan over encoder layers (and the mask transformer's).
    remat_policy: Optional[str] = None  # Rematerialisation of encoder (and mask-transformer) blocks.
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel of encoder and decoder: 'auto', 'xla', 'cudnn' or 'cpu'.

    # The stored position embedding's token grid (checkpoint.load_pretrained resamples a checkpoint's to it).
    grid_size = property(lambda self: layers.patch_grid(self.image_size, self.patch_size))

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        layers.check_images(images, name='Segmenter')
        b, h, w, _ = images.shape
        p = self.patch_size
        pad_h, pad_w = -h % p, -w % p
        x = jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0))) if pad_h or pad_w else images
        grid = ((h + pad_h) // p, (w + pad_w) // p)

        encoder = VisionTransformer(
            num_classes=self.backbone_classes, image_size=self.image_size, patch_size=p, hidden_size=self.hidden_size,
            mlp_dim=self.mlp_dim, num_heads=self.num_heads, num_layers=self.num_layers, classifier='token',
            dropout_rate=self.dropout_rate, attention_dropout_rate=self.dropout_rate,
            drop_path_rate=self.drop_path_rate, norm_eps=self.norm_eps, activation=self.activation, scan=self.scan,
            remat_policy=self.remat_policy, dtype=self.dtype, dynamic_img_size=True, distill_token=self.distilled,
            attention_impl=self.attention_impl)
        nn.share_scope(self, encoder)  # ViT release names at the top level (checkpoints load as they are).
        _, out = encoder(x, train=train)
        tokens = out['encoded'][:, 1 + int(self.distilled):]  # After the final LayerNorm, class (+ dist) token removed.

        if self.decoder == 'linear':
            masks = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=layers.trunc_normal,
                             name='decoder')(tokens)
            masks = masks.reshape(b, grid[0], grid[1], self.num_classes)
        elif self.decoder == 'mask_transformer':
            masks = MaskTransformer(
                num_classes=self.num_classes, num_layers=self.decoder_layers,
                num_heads=self.decoder_heads or max(self.hidden_size // 64, 1),
                mlp_dim=self.decoder_mlp_dim or 4 * self.hidden_size, dropout_rate=self.decoder_dropout,
                drop_path_rate=self.decoder_drop_path, norm_eps=self.norm_eps, scan=self.scan,
                remat_policy=self.remat_policy, dtype=self.dtype,
                attention_impl=self.attention_impl, name='decoder')(tokens, grid, train=train)
        else:
            raise ValueError(f"Segmenter decoder must be 'linear' or 'mask_transformer', got {self.decoder!r}.")
        out['decoder/masks'] = masks
        logits = layers.resize_bilinear(masks.astype(jnp.float32), (h + pad_h, w + pad_w), align_corners=False)
        logits = logits[:, :h, :w]  # Unpad.
        out['logits'] = logits
        return logits, out


# ----------------------------------------------------------------------------------------------------------------
# Inference: sliding windows, multi-scale and flip.
# ----------------------------------------------------------------------------------------------------------------
def window_anchors(size: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis: 0, stride, 2*stride, ... below size - window, plus a final flush window."""
    if stride <= 0:
        raise ValueError(f'The window stride must be positive, got {stride}.')
    if size <= window:
        return [0]
    return [a for a in range(0, size, stride) if a < size - window] + [size - window]


def _windows_size(h: int, w: int, window: tuple[int, int]) -> tuple[int, int]:
    """The official rule: images smaller than the window are upsampled (aspect kept) so that they cover it."""
    wh, ww = window
    if h >= wh and w >= ww:
        return h, w
    scale = max(wh / h, ww / w)
    return max(wh, int(h * scale)), max(ww, int(w * scale))


def sliding_window_logits(apply_fn: Callable[[Any], Any], images: Any, window: int | Sequence[int],
                          stride: int | Sequence[int], *, window_batch: int = 0) -> Any:
    """Per-pixel logits of `images` [B, H, W, C] from windows of size `window` (Segmenter's `inference`).

    Windows start at 0, stride, 2*stride, ... and a last one is flush with the bottom/right border; each pixel's
    logits are the sum over the windows covering it divided by their number. An image smaller than the window is
    first upsampled (bilinear, aspect kept) to cover it, and the merged logits are resized back.

    Args:
        apply_fn: windows [N, wh, ww, C] -> logits [N, wh, ww, K] (e.g. a jitted model forward).
        images: [B, H, W, C] jax or numpy array (numpy stays on the host: no compilation per image size).
        window: window size (int or (h, w)); usually the model's training crop.
        stride: window stride (int or (h, w)).
        window_batch: windows per `apply_fn` call (the last call is padded to this size, so shapes never change);
            0: all windows in one call.

    Returns:
        Logits [B, H, W, K] (float32).
    """
    xp = np if isinstance(images, np.ndarray) else jnp
    wh, ww = to_2tuple(window)
    sh, sw = to_2tuple(stride)
    b, h, w, c = images.shape
    big_h, big_w = _windows_size(h, w, (wh, ww))
    x = layers.resize_bilinear(images, (big_h, big_w)) if (big_h, big_w) != (h, w) else images
    anchors = [(i, j) for i in window_anchors(big_h, wh, sh) for j in window_anchors(big_w, ww, sw)]
    crops = xp.stack([x[:, i:i + wh, j:j + ww] for i, j in anchors], axis=1).reshape(b * len(anchors), wh, ww, c)
    n = crops.shape[0]
    chunk = window_batch if window_batch and window_batch > 0 else n
    outs = []
    for s in range(0, n, chunk):
        part = crops[s:s + chunk]
        m = part.shape[0]
        if m < chunk:
            part = xp.concatenate([part, xp.zeros((chunk - m, *part.shape[1:]), part.dtype)], axis=0)
        outs.append(xp.asarray(apply_fn(part))[:m])
    logits = xp.concatenate(outs, axis=0).astype(xp.float32)
    k = logits.shape[-1]
    logits = logits.reshape(b, len(anchors), wh, ww, k)
    count = np.zeros((big_h, big_w), np.float32)
    for i, j in anchors:
        count[i:i + wh, j:j + ww] += 1
    if xp is np:
        total = np.zeros((b, big_h, big_w, k), np.float32)
        for a, (i, j) in enumerate(anchors):
            total[:, i:i + wh, j:j + ww] += logits[:, a]
    else:
        total = sum(jnp.pad(logits[:, a], ((0, 0), (i, big_h - i - wh), (j, big_w - j - ww), (0, 0)))
                    for a, (i, j) in enumerate(anchors))
    merged = total / xp.asarray(count)[None, :, :, None]
    if (big_h, big_w) != (h, w):
        merged = layers.resize_bilinear(merged, (h, w))
    return merged


def inference(apply_fn: Callable[[Any], Any], images: Any, *, window: int | Sequence[int],
              stride: int | Sequence[int], scales: Sequence[float] = (1.0,), flip: bool = False,
              window_batch: int = 0) -> Any:
    """Multi-scale (+ flip) sliding-window inference: class probabilities [B, H, W, K] averaged over the views.

    For each scale (and its mirror image when `flip`): resize the images by the scale (bilinear), sliding-window
    logits, bilinear resize back to the input size, unflip, softmax; the softmax maps are averaged (the paper's
    multi-scale evaluation uses scales (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) with flip).
    """
    xp = np if isinstance(images, np.ndarray) else jnp
    _, h, w, _ = images.shape
    views = [(s, f) for s in scales for f in ((False, True) if flip else (False,))]
    total = 0.0
    for s, f in views:
        size = (max(int(h * s + 0.5), 1), max(int(w * s + 0.5), 1))
        x = layers.resize_bilinear(images, size) if size != (h, w) else images
        if f:
            x = x[:, :, ::-1]
        logits = sliding_window_logits(apply_fn, x, window, stride, window_batch=window_batch)
        if size != (h, w):
            logits = layers.resize_bilinear(logits, (h, w))
        if f:
            logits = logits[:, :, ::-1]
        total = total + _softmax(logits, xp)
    return total / len(views)


def _softmax(x: Any, xp: Any) -> Any:
    x = x - x.max(axis=-1, keepdims=True)
    e = xp.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------------------------------
# Registered variants: Seg-{T,S,B,L}[-Mask]/{8,16} (ADE20K defaults: 150 classes, 512 px).
# ----------------------------------------------------------------------------------------------------------------
for _size in ('Ti', 'S', 'B', 'L'):
    _hidden, _mlp, _heads, _depth = VIT_SIZES[_size]
    _short = 'T' if _size == 'Ti' else _size
    for _patch in (8, 16):
        for _mask in (False, True):
            _name = f'Seg-{_short}{"-Mask" if _mask else ""}/{_patch}'
            register(_name, Segmenter, aliases=(_name.replace('/', '_'),), paper='segmenter', hidden_size=_hidden,
                     mlp_dim=_mlp, num_heads=_heads, num_layers=_depth, patch_size=_patch,
                     decoder='mask_transformer' if _mask else 'linear')

# The paper's DeiT-B-distilled backbones (README "Segmenter models with DeiT backbone": Seg-B\u2020/16 87M,
# Seg-B\u2020-Mask/16 106M).
for _mask in (False, True):
    _suffix = '-Mask' if _mask else ''
    register(f'Seg-B\u2020{_suffix}/16', Segmenter, paper='segmenter', distilled=True,
             aliases=(f'Seg-B\u2020{_suffix}_16', f'Seg-B-dist{_suffix}/16', f'Seg-B-dist{_suffix}_16'),
             hidden_size=VIT_SIZES['B'][0], mlp_dim=VIT_SIZES['B'][1], num_heads=VIT_SIZES['B'][2],
             num_layers=VIT_SIZES['B'][3], patch_size=16, decoder='mask_transformer' if _mask else 'linear')

# A tiny Segmenter for tests and the built-in dense dataset.
register('Seg-testing', Segmenter, paper='test', num_classes=11, image_size=32, patch_size=4, hidden_size=64,
         mlp_dim=128, num_heads=2, num_layers=2, decoder_heads=2, backbone_classes=0, drop_path_rate=0.0)
