"""DPT: Vision Transformers for Dense Prediction (Ranftl, Bochkovskiy, Koltun, ICCV 2021).

A ViT (or the R50 hybrid) backbone; four taps (raw outputs of chosen blocks, before the final LayerNorm, or for
DPT-Hybrid the first two ResNet stages) are *reassembled* into image-like maps at 1/4, 1/8, 1/16 and 1/32 of the
input (readout of the class token: ignore / add / project, 1x1 conv, transposed conv or strided conv), projected to
256 channels (`layer{i}_rn`) and merged coarse-to-fine by fusion blocks (residual conv units, bilinear x2 upsampling
with align_corners=True, 1x1 conv). Heads: relative inverse depth (ReLU: non-negative) or semantic segmentation
(BatchNorm in every residual conv unit and in the head). Outputs are at the input resolution: depth [B, H, W] or
logits [B, H, W, K].

The backbone is `vit.VisionTransformer` sharing this module's scope, so its parameters keep the ViT release names
(`embedding`, `cls`, `Transformer/...`, `conv_root`/`block{i}` for the hybrid, `head`) and ViT / R50+ViT checkpoints
load with `checkpoint.load_pretrained(params, path, dont_load=('neck/.*', 'depth_head/.*', 'seg_head/.*',
'aux_head/.*', 'head/.*'))`. The position embedding is resized on the fly to the input grid (bilinear,
align_corners=False), as the official code does. By default the module holds the same parameters as the official
nn.Module: timm's unused 1000-way classifier (`backbone_classes=1000`) and refinenet4's unused residual unit
(`keep_unused=True`), so counts match the paper (DPT-Hybrid 123.1M, DPT-Large 344.1M).

`convert.from_transformers` accepts HuggingFace `DPTForDepthEstimation` and `DPTForSemanticSegmentation` (ViT and
hybrid backbones).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import layers, register
from vit_jax.models.vit import VIT_SIZES, VisionTransformer

Array = jax.Array
# Convs and Linears of the decoder keep PyTorch's default weight init (`layers.torch_kernel_init`, as the official
# DPT); biases start at zero here (PyTorch draws them from the same range).


class Reassemble(nn.Module):
    """Tokens [B, 1 + N, D] -> feature map [B, h * factor, w * factor, features] (official `act_postprocess`)."""

    features: int  # Output channels f_i.
    factor: float  # Resampling: 4 / 2 (transposed conv), 1 (identity), 0.5 (3x3 conv, stride 2).
    readout: str = 'project'  # Class-token readout: 'ignore', 'add' or 'project'.
    num_prefix_tokens: int = 1  # Tokens before the patch grid.
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, tokens: Array, grid: tuple[int, int]) -> Array:
        p = self.num_prefix_tokens
        readout, x = tokens[:, 0], tokens[:, p:]
        b, n, d = x.shape
        if self.readout == 'project':
            r = jnp.broadcast_to(readout[:, None], x.shape)
            x = nn.Dense(d, dtype=self.dtype, kernel_init=layers.torch_kernel_init, name='readout_project')(
                jnp.concatenate([x, r], axis=-1))
            x = jax.nn.gelu(x, approximate=False)
        elif self.readout == 'add':
            x = x + readout[:, None]
        elif self.readout != 'ignore':
            raise ValueError(f"DPT readout must be 'ignore', 'add' or 'project', got {self.readout!r}.")
        x = x.reshape(b, grid[0], grid[1], d)
        x = nn.Conv(self.features, (1, 1), dtype=self.dtype, kernel_init=layers.torch_kernel_init, name='projection')(x)
        if self.factor > 1:
            k = int(self.factor)
            x = nn.ConvTranspose(self.features, (k, k), strides=(k, k), padding='VALID', dtype=self.dtype,
                                 kernel_init=layers.torch_kernel_init, name='resize')(x)
        elif self.factor < 1:
            s = int(round(1 / self.factor))
            x = nn.Conv(self.features, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)), dtype=self.dtype,
                        kernel_init=layers.torch_kernel_init, name='resize')(x)
        return x


class ResidualConvUnit(nn.Module):
    """Pre-activation residual unit: x + Conv3(ReLU(Conv3(ReLU(x)))), with BatchNorm after each conv if `use_bn`."""

    features: int  # Channels.
    use_bn: bool = False  # BatchNorm after each conv (then the convs have no bias).
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        y = x
        for i in (1, 2):
            y = nn.relu(y)
            y = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=not self.use_bn, dtype=self.dtype,
                        kernel_init=layers.torch_kernel_init, name=f'conv{i}')(y)
            if self.use_bn:
                y = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                                 name=f'bn{i}')(y)
        return x + y


class FusionBlock(nn.Module):
    """Fusion(a, b): y = a + RCU1(b); y = RCU2(y); bilinear x2 (align_corners=True); 1x1 conv."""

    features: int  # Channels.
    use_bn: bool = False  # BatchNorm in the residual units.
    keep_unused: bool = True  # Create RCU1 even without a skip input (the official / HF modules own it).
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array, skip: Optional[Array] = None, train: bool = False) -> Array:
        rcu = lambda name: ResidualConvUnit(self.features, self.use_bn, dtype=self.dtype, name=name)  # noqa: E731
        if skip is not None:
            if skip.shape[1:3] != x.shape[1:3]:  # Odd grids (HuggingFace resizes the skip; the official code fails).
                skip = layers.resize_bilinear(skip, x.shape[1:3], align_corners=False)
            x = x + rcu('resConfUnit1')(skip, train)
        elif self.keep_unused and self.is_initializing():
            rcu('resConfUnit1')(x, train)  # Parameters only: unused in the forward pass.
        x = rcu('resConfUnit2')(x, train)
        x = layers.resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]), align_corners=True)
        return nn.Conv(self.features, (1, 1), dtype=self.dtype, kernel_init=layers.torch_kernel_init,
                       name='out_conv')(x)


class Neck(nn.Module):
    """Reassemble + `layer{i}_rn` 3x3 projections + fusion (`refinenet4` ... `refinenet1`); returns path_1 .. path_4."""

    features: Sequence[int]  # Reassembled channels per tap (for feature-map taps: their channel count).
    reassemble_factors: Sequence[float]  # Resampling factor per tap (ignored for feature-map taps).
    fusion_features: int = 256  # Fusion width.
    readout: str = 'project'  # Class-token readout.
    use_bn: bool = False  # BatchNorm in the fusion blocks.
    keep_unused: bool = True  # refinenet4's unused residual unit.
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, taps: Sequence[Array], grid: tuple[int, int], train: bool = False) -> list[Array]:
        maps = []
        for i, t in enumerate(taps):
            if t.ndim == 3:  # Tokens: reassemble.
                t = Reassemble(self.features[i], self.reassemble_factors[i], self.readout, dtype=self.dtype,
                               name=f'reassemble{i + 1}')(t, grid)
            maps.append(nn.Conv(self.fusion_features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                                dtype=self.dtype, kernel_init=layers.torch_kernel_init, name=f'layer{i + 1}_rn')(t))
        fuse = lambda i: FusionBlock(self.fusion_features, self.use_bn, self.keep_unused, dtype=self.dtype,  # noqa
                                     name=f'refinenet{i}')
        n = len(maps)
        paths = [None] * n
        paths[n - 1] = fuse(n)(maps[n - 1], train=train)
        for i in range(n - 2, -1, -1):
            paths[i] = fuse(i + 1)(paths[i + 1], maps[i], train=train)
        return paths


class DPT(nn.Module):
    """DPT; returns (depth [B, H, W] or logits [B, H, W, num_classes], out) at the input resolution."""

    num_classes: int = 150  # Segmentation classes (head='segmentation'); the depth head has one output.
    image_size: int | Sequence[int] = 384  # Training size; fixes the stored position-embedding grid.
    head: str = 'depth'  # 'depth' (relative inverse depth) or 'segmentation'.
    patch_size: int = 16  # Patch size of the ViT (1 for the hybrid, on the ResNet's stride-16 map).
    hidden_size: int = 768  # ViT width D.
    mlp_dim: int = 3072  # ViT MLP width.
    num_heads: int = 12  # ViT heads.
    num_layers: int = 12  # ViT depth.
    stem: str = 'patch'  # 'patch' or 'resnet' (DPT-Hybrid).
    resnet_layers: Sequence[int] = (3, 4, 9)  # ResNet units per stage (stem='resnet').
    resnet_width: float = 1.0  # ResNet width factor (stem='resnet').
    resnet_variant: str = 'timm'  # ResNet epsilons: 'timm' (the DPT-Hybrid backbone) or 'release'.
    # Taps, shallow to deep: a ViT block index (0-indexed, raw block output) or an `out` key of a feature map used
    # as it is (DPT-Hybrid: 'resnet/block1', 'resnet/block2').
    hooks: Sequence[int | str] = (2, 5, 8, 11)
    readout: str = 'project'  # Class-token readout: 'ignore', 'add' or 'project' (a separate Linear per tap).
    features: Sequence[int] = (96, 192, 384, 768)  # Reassembled channels per tap.
    # Per-tap resampling of the token grid; None: to 1/4, 1/8, 1/16, 1/32 of the input, i.e. stride/4, stride/8,
    # stride/16, stride/32 ((4, 2, 1, 0.5) for 16-px patches; factors below 1/2 use a 3x3 conv with that stride).
    reassemble_factors: Optional[Sequence[float]] = None
    fusion_features: int = 256  # Fusion width.
    fusion_bn: Optional[bool] = None  # BatchNorm in the fusion blocks; None: on for segmentation only.
    non_negative: bool = True  # Final ReLU of the depth head.
    depth_scale: Optional[float] = None  # Metric models: depth = 1 / max(scale * pred + shift, 1e-8); None: off.
    depth_shift: float = 0.0  # See depth_scale (NYU 0.1378, KITTI 0.00579).
    head_dropout: float = 0.1  # Dropout of the segmentation head.
    aux_head: bool = False  # Segmentation: auxiliary head on path_1 (HuggingFace / mmseg training), in out.
    backbone_classes: int = 1000  # timm's unused classifier (official module, counts); 0 drops it.
    keep_unused: bool = True  # refinenet4's unused residual unit (official and HuggingFace modules own it).
    norm_eps: float = 1e-6  # Backbone LayerNorm epsilon (timm).
    activation: str = 'gelu_exact'  # Backbone MLP activation (PyTorch nn.GELU).
    dropout_rate: float = 0.0  # Backbone dropout.
    attention_dropout_rate: float = 0.0  # Backbone attention dropout.
    drop_path_rate: float = 0.0  # Backbone stochastic depth.
    scan: bool = False  # Scan over ViT layers.
    remat_policy: Optional[str] = None  # Rematerialisation of ViT blocks.
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Backbone attention kernel: 'auto', 'xla', 'cudnn' or 'cpu' (layers).

    @property
    def grid_size(self) -> tuple[int, int]:
        """The stored position embedding's token grid (checkpoint.load_pretrained resamples a checkpoint's to it)."""
        return VisionTransformer(image_size=self.image_size, patch_size=self.patch_size, stem=self.stem,
                                 resnet_layers=self.resnet_layers, parent=None).grid_size

    def _backbone(self) -> VisionTransformer:
        return VisionTransformer(
            num_classes=self.backbone_classes, image_size=self.image_size, patch_size=self.patch_size,
            hidden_size=self.hidden_size, mlp_dim=self.mlp_dim, num_heads=self.num_heads, num_layers=self.num_layers,
            stem=self.stem, resnet_layers=self.resnet_layers, resnet_width=self.resnet_width,
            resnet_variant=self.resnet_variant, classifier='token', dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate, drop_path_rate=self.drop_path_rate,
            norm_eps=self.norm_eps, activation=self.activation, scan=self.scan, remat_policy=self.remat_policy,
            dtype=self.dtype, dynamic_img_size=True, attention_impl=self.attention_impl)

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        backbone = self._backbone()
        stride = backbone.total_stride
        layers.check_images(images, name='DPT', multiple_of=(stride, stride))
        factors = self.reassemble_factors
        if factors is None:
            factors = tuple(stride / (4 * 2**i) for i in range(len(self.hooks)))
        if len(self.hooks) != len(self.features) or len(self.hooks) != len(factors):
            raise ValueError(f'DPT needs one entry of features and reassemble_factors per hook; got '
                             f'hooks={self.hooks}, features={self.features}, reassemble_factors={factors}.')
        b, h, w, _ = images.shape
        grid = (h // stride, w // stride)
        nn.share_scope(self, backbone)  # ViT release names at the top level (checkpoints load as they are).
        _, out = backbone(images, train=train)
        taps = []
        for hook in self.hooks:
            key = hook if isinstance(hook, str) else f'encoder/block_{int(hook):02d}'
            if key not in out:
                raise ValueError(f'DPT hook {hook!r}: the backbone has no output {key!r} (it has: {sorted(out)}).')
            taps.append(out[key])
        use_bn = self.fusion_bn if self.fusion_bn is not None else self.head == 'segmentation'
        paths = Neck(self.features, factors, self.fusion_features, self.readout, use_bn,
                     self.keep_unused, dtype=self.dtype, name='neck')(taps, grid, train=train)
        for i, p in enumerate(paths):
            out[f'neck/path_{i + 1}'] = p
        x = paths[0]  # 1/2 resolution.
        if self.head == 'depth':
            y = _DepthHead(self.fusion_features, self.non_negative, dtype=self.dtype, name='depth_head')(x)
            y = y[..., 0].astype(jnp.float32)
            if y.shape[1:3] != (h, w):
                y = layers.resize_bilinear(y[..., None], (h, w))[..., 0]
            out['inverse_depth'] = y
            if self.depth_scale is not None:
                y = 1.0 / jnp.maximum(self.depth_scale * y + self.depth_shift, 1e-8)
            out['depth'] = y
            return y, out
        if self.head == 'segmentation':
            logits = _SegHead(self.num_classes, self.fusion_features, self.head_dropout, upsample=True,
                              dtype=self.dtype, name='seg_head')(x, train=train).astype(jnp.float32)
            if logits.shape[1:3] != (h, w):
                logits = layers.resize_bilinear(logits, (h, w))
            if self.aux_head:
                aux = _SegHead(self.num_classes, self.fusion_features, 0.1, upsample=False, dtype=self.dtype,
                               name='aux_head')(x, train=train).astype(jnp.float32)
                out['aux_logits_raw'] = aux
                out['aux_logits'] = layers.resize_bilinear(aux, (h, w))
            out['logits'] = logits
            return logits, out
        raise ValueError(f"DPT head must be 'depth' or 'segmentation', got {self.head!r}.")


class _DepthHead(nn.Module):
    """Conv3x3 (F -> F/2), bilinear x2 (align_corners=True), Conv3x3 (-> 32), ReLU, Conv1x1 (-> 1), ReLU."""

    features: int  # Fusion width F.
    non_negative: bool = True  # Final ReLU.
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = lambda f, k, name: nn.Conv(f, (k, k), padding=((k // 2, k // 2),) * 2, dtype=self.dtype,  # noqa
                                          kernel_init=layers.torch_kernel_init, name=name)
        x = conv(self.features // 2, 3, 'conv1')(x)
        x = layers.resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]), align_corners=True)
        x = nn.relu(conv(32, 3, 'conv2')(x))
        x = conv(1, 1, 'conv3')(x)
        return nn.relu(x) if self.non_negative else x


class _SegHead(nn.Module):
    """Conv3x3 (no bias), BatchNorm, ReLU, Dropout, Conv1x1 (-> K) [, bilinear x2 (align_corners=True)]."""

    num_classes: int  # K.
    features: int  # Fusion width.
    dropout_rate: float = 0.1  # Dropout before the classifier.
    upsample: bool = True  # Final x2 upsampling (the main head; not the auxiliary one).
    dtype: Any = jnp.float32  # Compute dtype.

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                    kernel_init=layers.torch_kernel_init, name='conv')(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name='bn')(x)
        x = nn.Dropout(self.dropout_rate)(nn.relu(x), deterministic=not train)
        x = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, kernel_init=layers.torch_kernel_init,
                    name='classifier')(x)
        if self.upsample:
            x = layers.resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]), align_corners=True)
        return x


# ----------------------------------------------------------------------------------------------------------------
# Registered variants (defaults: depth head, 384 px; pass head='segmentation', num_classes=150 for ADE20K).
# ----------------------------------------------------------------------------------------------------------------
def _vit(size: str) -> dict:
    hidden, mlp, heads, depth = VIT_SIZES[size]
    return dict(hidden_size=hidden, mlp_dim=mlp, num_heads=heads, num_layers=depth)


register('DPT-Base', DPT, aliases=('DPT-B',), paper='dpt', hooks=(2, 5, 8, 11), features=(96, 192, 384, 768),
         **_vit('B'))
register('DPT-Large', DPT, aliases=('DPT-L',), paper='dpt', hooks=(5, 11, 17, 23), features=(256, 512, 1024, 1024),
         **_vit('L'))
register('DPT-Hybrid', DPT, aliases=('DPT-H',), paper='dpt', stem='resnet', patch_size=1, resnet_layers=(3, 4, 9),
         hooks=('resnet/block1', 'resnet/block2', 8, 11), features=(256, 512, 768, 768), **_vit('B'))
# A tiny DPT for tests and the built-in dense dataset.
register('DPT-testing', DPT, paper='test', image_size=32, patch_size=4, hidden_size=64, mlp_dim=128, num_heads=2,
         num_layers=4, hooks=(0, 1, 2, 3), features=(16, 32, 64, 64), fusion_features=32, backbone_classes=0)
