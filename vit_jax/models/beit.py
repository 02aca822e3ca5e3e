"""BEiT-style Vision Transformer (Bao et al., 2022): the backbone of BEiT and PeCo pretraining.

Differences from the plain ViT (`vit.py`), each an option:
- relative position bias added to the attention logits, one table shared by all layers (`rel_pos_bias='shared'`,
  BEiT pretraining) or one per layer (`'per_layer'`, BEiT fine-tuning), with the three extra entries for the class
  token (cls->token, token->cls, cls->cls); no absolute position embedding by default (`abs_posemb=False`);
- LayerScale on both residual branches (`layer_scale`: 0.1 for base, 1e-5 for large);
- a learned `mask_token` that replaces the embeddings of masked patches *before* any position information is
  added (the class token is never masked): `model.apply(v, images, mask=bool[B, N])`;
- a masked-image-modelling head (`vocab_size`: `mim_norm` LayerNorm then the `mim_head` Dense over the visual
  vocabulary, `out['mim_logits']` of shape [B, N, vocab_size]);
- mean-pooling classifier with `fc_norm` (`classifier='gap'`, the BEiT fine-tuning head).

The encoder is the shared `layers.Encoder` (its `attn_bias` hook builds the relative bias), so parameter names
follow the ViT release: `embedding`, `cls`, `mask_token`, `Transformer/encoderblock_{i}/...`,
`Transformer/rel_pos_bias` (shared) or `Transformer/encoderblock_{i}_rel_pos_bias` (per layer); with `scan=True`
`Transformer/encoderblock/block/...` and `Transformer/encoderblock_rel_pos_bias` stacked on a layer axis.
BEiT has no key bias; this block has one, which the converter sets to zero. A bias on the keys adds the same
value to every logit of a query row, so it changes neither the output nor any gradient (its own gradient is
exactly zero), and it stays at zero in training: the model is BEiT's exactly, with 768 inert parameters per layer.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import layers, register
from vit_jax.models.vit import to_2tuple

Array = jax.Array


def relative_position_index(grid: Sequence[int]) -> np.ndarray:
    """The [N+1, N+1] index into a BEiT relative-position table for a (h, w) grid plus a class token.

    Entries 0 .. (2h-1)(2w-1)-1 are patch-to-patch offsets; the last three are cls->token, token->cls, cls->cls.
    """
    h, w = int(grid[0]), int(grid[1])
    num_rel = (2 * h - 1) * (2 * w - 1) + 3
    coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing='ij')).reshape(2, -1)  # [2, N]
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)  # [N, N, 2]
    rel[:, :, 0] += h - 1
    rel[:, :, 1] += w - 1
    rel[:, :, 0] *= 2 * w - 1
    index = np.zeros((h * w + 1, h * w + 1), np.int32)
    index[1:, 1:] = rel.sum(-1)
    index[0, 0:] = num_rel - 3
    index[0:, 0] = num_rel - 2
    index[0, 0] = num_rel - 1
    return index


class RelativePositionBias(nn.Module):
    """BEiT's relative position bias: a learned table [(2h-1)(2w-1)+3, heads] -> bias [1, heads, N+1, N+1]."""

    grid: tuple[int, int]  # Patch grid (h, w).
    num_heads: int  # Attention heads.

    @nn.compact
    def __call__(self) -> Array:
        h, w = self.grid
        num_rel = (2 * h - 1) * (2 * w - 1) + 3
        table = self.param('relative_position_bias_table', nn.initializers.zeros, (num_rel, self.num_heads))
        index = relative_position_index(self.grid)
        n = index.shape[0]
        bias = table[index.reshape(-1)].reshape(n, n, self.num_heads)
        return jnp.transpose(bias, (2, 0, 1))[None]


def _offsets_spread(old: int, new: int) -> np.ndarray:
    """Where BEiT puts one axis's 2*old-1 relative offsets of a table resampled to 2*new-1 offsets.

    The unilm BEiT fine-tuning loaders keep the nearest offsets one apart and stretch the far ones geometrically:
    offsets 0, +-1, +-(1+q), +-(1+q+q^2), ... with the ratio q found by bisection in [1.01, 1.5] so that the
    farthest one lands at about new-1 (where the new table's integer offsets end).
    """
    lo, hi = 1.01, 1.5
    while hi - lo > 1e-6:
        q = (lo + hi) / 2.0
        if (1.0 - q ** (old - 1)) / (1.0 - q) > new - 1:  # 1 + q + ... + q^(old-2): the farthest offset.
            hi = q
        else:
            lo = q
    far = np.cumsum(q ** np.arange(old - 1))  # 1, 1+q, 1+q+q^2, ...
    return np.concatenate([-far[::-1], [0.0], far])


def _spline_along(z: np.ndarray, x: np.ndarray, t: np.ndarray, axis: int) -> np.ndarray:
    """The interpolating spline through values `z` at points `x` along `axis` (cubic, not-a-knot: FITPACK's s=0
    knots), read at `t`, which is clipped to [x[0], x[-1]] as FITPACK clips (the edge values beyond the old
    offsets); lower degree for 2-3 points, constant for one."""
    import scipy.interpolate

    if len(x) == 1:
        return np.repeat(z, len(t), axis=axis)
    return scipy.interpolate.make_interp_spline(x, z, k=min(3, len(x) - 1), axis=axis)(np.clip(t, x[0], x[-1]))


def resample_rel_pos_table(table: np.ndarray, old_grid: Sequence[int], new_grid: Sequence[int]) -> np.ndarray:
    """A BEiT relative-position table [(2h-1)(2w-1)+3, heads] for another patch grid (fine-tuning at another
    resolution), by the unilm BEiT loaders' rule: per head, the bicubic interpolating spline through the old offsets
    placed as `_offsets_spread` says (scipy's `interp2d(kind='cubic')` there; the same tensor-product spline here,
    one axis after the other), read at the new integer offsets; the three class-token rows are kept.

    The loaders handle square grids; here each axis is spread on its own, which is their rule when h == w.
    """
    table = np.asarray(table, np.float32)
    (oh, ow), (nh, nw) = tuple(old_grid), tuple(new_grid)
    if table.ndim != 2 or table.shape[0] != (2 * oh - 1) * (2 * ow - 1) + 3:
        raise ValueError(f'A relative-position table of shape {table.shape} is not one of a {oh}x{ow} grid '
                         f'([{(2 * oh - 1) * (2 * ow - 1) + 3}, heads]).')
    if (oh, ow) == (nh, nw):
        return table
    sub = table[:-3].reshape(2 * oh - 1, 2 * ow - 1, -1).astype(np.float64)
    sub = _spline_along(sub, _offsets_spread(oh, nh), np.arange(1 - nh, nh, dtype=np.float64), axis=0)
    sub = _spline_along(sub, _offsets_spread(ow, nw), np.arange(1 - nw, nw, dtype=np.float64), axis=1)
    return np.concatenate([sub.reshape((2 * nh - 1) * (2 * nw - 1), -1).astype(np.float32), table[-3:]], axis=0)


class BEiT(nn.Module):
    """BEiT backbone (masked-image-modelling head optional); returns `(logits, out)`.

    `__call__(images, *, train=False, mask=None)`: `mask` is a boolean [B, N] (True = masked patch) in row-major
    grid order; masked patch embeddings are replaced by `mask_token`.
    """

    num_classes: Optional[int] = 1000  # Classification head width; None/0: no head.
    image_size: int | Sequence[int] = 224  # Input resolution.
    patch_size: int | Sequence[int] = 16  # Patch size.
    hidden_size: int = 768  # Token width D.
    mlp_dim: int = 3072  # MLP hidden width.
    num_heads: int = 12  # Attention heads.
    num_layers: int = 12  # Depth.
    rel_pos_bias: str = 'shared'  # 'shared' (one table, BEiT pretraining), 'per_layer' (fine-tuning) or 'none'.
    abs_posemb: bool = False  # Learned absolute position embedding (BEiT default: off).
    layer_scale: Optional[float] = 0.1  # LayerScale init (0.1 base, 1e-5 large); None disables.
    use_mask_token: bool = True  # Create `mask_token` (needed to accept `mask`).
    vocab_size: Optional[int] = None  # Masked-image-modelling head over this many visual tokens; None: no head.
    # Classifier kernel init: 0 zeros; > 0 N(0, std^2) (BEiT fine-tuning: trunc_normal(0.02) x init_scale 0.001).
    head_init_std: float = 0.0
    classifier: str = 'token'  # 'token' (cls + encoder_norm) or 'gap' (mean of patches + fc_norm, BEiT fine-tuning).
    final_norm: Optional[bool] = None  # `encoder_norm` after the blocks; None: not for 'gap' (BEiT), else yes.
    dropout_rate: float = 0.0  # Dropout after the embeddings and inside blocks.
    attention_dropout_rate: float = 0.0  # Attention-probability dropout.
    drop_path_rate: float = 0.1  # Stochastic depth at the last block (linear ramp from 0).
    norm_eps: float = 1e-6  # LayerNorm epsilon (BEiT 1e-6; HuggingFace configs 1e-12).
    activation: str = 'gelu_exact'  # MLP activation (PyTorch nn.GELU).
    scan: bool = False  # Scan over encoder layers (layers.Encoder).
    remat_policy: Optional[str] = None  # Rematerialise each block with this jax.checkpoint_policies name.
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel: 'auto', 'xla', 'cudnn' or 'cpu' (layers.resolve_attention_impl).

    grid_size = property(lambda self: layers.patch_grid(self.image_size, self.patch_size))  # The patch grid (h, w).

    @property
    def num_patches(self) -> int:
        """Patches per image."""
        h, w = self.grid_size
        return h * w

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False, mask: Optional[Array] = None
                 ) -> tuple[Array, dict[str, Array]]:
        layers.check_images(images, name='BEiT', multiple_of=to_2tuple(self.patch_size))
        if tuple(images.shape[1:3]) != to_2tuple(self.image_size):
            raise ValueError(f'This BEiT was built for image_size={to_2tuple(self.image_size)} but got images of '
                             f'{tuple(images.shape[1:3])}; build it with image_size={tuple(images.shape[1:3])} '
                             '(checkpoint.load_pretrained resamples the relative-position tables).')
        out = {}
        x = layers.patch_embed(images.astype(self.dtype), self.hidden_size, to_2tuple(self.patch_size),
                               dtype=self.dtype)
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        out['stem'] = x
        if mask is not None:
            if not self.use_mask_token:
                raise ValueError('This BEiT has use_mask_token=False, so it cannot take a mask.')
            if mask.shape != (b, h * w):
                raise ValueError(f'mask must be a boolean [B, N] = {(b, h * w)} array, got shape {mask.shape}.')
        if self.use_mask_token:
            mask_token = self.param('mask_token', layers.trunc_normal_1std, (1, 1, d))
            if mask is not None:  # Before any position information (absolute or relative).
                w_m = mask[..., None].astype(x.dtype)
                x = x * (1.0 - w_m) + mask_token.astype(x.dtype) * w_m
        cls = self.param('cls', layers.trunc_normal_1std, (1, 1, d))
        x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), [b, 1, 1]), x], axis=1)
        if self.rel_pos_bias not in ('shared', 'per_layer', 'none'):
            raise ValueError(f"rel_pos_bias must be 'shared', 'per_layer' or 'none', got {self.rel_pos_bias!r}.")
        embed = layers.position_embedding('learn' if self.abs_posemb else 'none', init=layers.trunc_normal_1std,
                                          dropout_rate=self.dropout_rate, train=train)
        x, enc_out = layers.Encoder(
            num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
            drop_path_rate=self.drop_path_rate, norm_eps=self.norm_eps, activation=self.activation,
            layer_scale=self.layer_scale, kernel_init=layers.trunc_normal_1std, bias_init=nn.initializers.zeros,
            final_norm=(self.classifier != 'gap') if self.final_norm is None else self.final_norm,
            attn_bias=(None if self.rel_pos_bias == 'none'
                       else functools.partial(RelativePositionBias, (h, w), self.num_heads)),
            attn_bias_name='rel_pos_bias', attn_bias_per_layer=self.rel_pos_bias == 'per_layer', scan=self.scan,
            remat_policy=self.remat_policy, dtype=self.dtype, attention_impl=self.attention_impl,
            name='Transformer')(x, train, hooks={0: embed})
        out.update({f'encoder/{k}': v for k, v in enc_out.items()})
        out['encoded'] = x
        out['tokens_2d'] = x[:, 1:].reshape(b, h, w, d)
        if self.vocab_size:
            y = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='mim_norm')(x[:, 1:])
            out['mim_logits'] = nn.Dense(self.vocab_size, dtype=self.dtype, kernel_init=layers.trunc_normal_1std,
                                         name='mim_head')(y).astype(jnp.float32)
        if self.classifier == 'token':
            pooled = x[:, 0]
        elif self.classifier == 'gap':
            pooled = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name='fc_norm')(jnp.mean(x[:, 1:], 1))
        else:
            raise ValueError(f"classifier must be 'token' or 'gap', got {self.classifier!r}.")
        return layers.classifier_head(pooled, self.num_classes, out, dtype=self.dtype,
                                      kernel_init=layers.head_kernel_init(self.head_init_std))


def _rescale_block(blk: Any, s: Any) -> dict:
    blk = dict(blk)
    att, mlp = dict(blk['MultiHeadDotProductAttention_1']), dict(blk['MlpBlock_3'])
    s = np.asarray(s, np.float32)
    scale = lambda k: k * s.reshape(s.shape + (1,) * (k.ndim - s.ndim))  # noqa: E731
    att['out'] = dict(att['out'], kernel=scale(att['out']['kernel']))
    mlp['Dense_1'] = dict(mlp['Dense_1'], kernel=scale(mlp['Dense_1']['kernel']))
    blk['MultiHeadDotProductAttention_1'], blk['MlpBlock_3'] = att, mlp
    return blk


def rescale_init(params: Any, num_layers: Optional[int] = None) -> Any:
    """BEiT's init "fix": divides each block's attention-output and MLP-output kernels by sqrt(2 * layer_id).

    Apply once to freshly initialised parameters (the MIM objective does, `objective.rescale_init=True`); looped or
    scanned (`scan=True`) layers alike.
    """
    params = jax.tree_util.tree_map(lambda v: v, params)  # Shallow copy of the containers.
    tr = dict(params['Transformer'])
    if 'encoderblock' in tr:  # Scanned: every kernel has the layer axis first.
        n = jax.tree_util.tree_leaves(tr['encoderblock'])[0].shape[0]
        ids = np.arange(n)
        s = np.where(ids < (n if num_layers is None else num_layers), 1.0 / np.sqrt(2.0 * (ids + 1)), 1.0)
        tr['encoderblock'] = dict(tr['encoderblock'], block=_rescale_block(tr['encoderblock']['block'], s))
    i = 0
    while f'encoderblock_{i}' in tr and (num_layers is None or i < num_layers):
        tr[f'encoderblock_{i}'] = _rescale_block(tr[f'encoderblock_{i}'], 1.0 / np.sqrt(2.0 * (i + 1)))
        i += 1
    return {**params, 'Transformer': tr}


def shared_to_per_layer(params: Any) -> Any:
    """Copies a shared relative-position table into one table per layer (BEiT fine-tuning's `--rel_pos_bias`;
    `checkpoint.load_pretrained` does this when a per-layer model loads a shared-table checkpoint)."""
    tr = dict(params['Transformer'])
    if 'rel_pos_bias' not in tr:
        raise ValueError('These parameters have no shared relative-position table (Transformer/rel_pos_bias).')
    shared = tr.pop('rel_pos_bias')
    if 'encoderblock' in tr:  # Scanned layers: the tables stacked on a layer axis.
        n = jax.tree_util.tree_leaves(tr['encoderblock'])[0].shape[0]
        tr['encoderblock_rel_pos_bias'] = jax.tree_util.tree_map(lambda a: jnp.stack([a] * n), shared)
    i = 0
    while f'encoderblock_{i}' in tr:
        tr[f'encoderblock_{i}_rel_pos_bias'] = jax.tree_util.tree_map(lambda a: a, shared)
        i += 1
    return {**params, 'Transformer': tr}


# ----------------------------------------------------------------------------------------------------------------
# Registered variants (BEiT paper: base/large at patch 16; layer-scale 0.1 for base, 1e-5 for large).
# ----------------------------------------------------------------------------------------------------------------
_SIZES = {'S': (384, 1536, 6, 12, 0.1), 'B': (768, 3072, 12, 12, 0.1), 'L': (1024, 4096, 16, 24, 1e-5)}
for _s, (_d, _m, _h, _l, _ls) in _SIZES.items():
    register(f'BEiT-{_s}/16', BEiT, aliases=(f'BEiT-{_s}_16',), paper='beit', hidden_size=_d, mlp_dim=_m,
             num_heads=_h, num_layers=_l, layer_scale=_ls, patch_size=16)
register('BEiT-testing', BEiT, paper='test', hidden_size=32, mlp_dim=64, num_heads=2, num_layers=2, patch_size=4,
         image_size=16, num_classes=10)
