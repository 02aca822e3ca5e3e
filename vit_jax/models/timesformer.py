"""TimeSformer: "Is Space-Time Attention All You Need for Video Understanding?" (Bertasius et al., ICML 2021).

A ViT-B/16 applied to clips of frames (input NTHWC) with the five self-attention schemes of the paper's table 1:

  =====================  =========  =================================================================  ==========
  attention_type         paper      one block                                                          params*
  =====================  =========  =================================================================  ==========
  'space_only'           S          frames processed independently; tokens averaged over frames at    85.9M
                                    the end (before the final LayerNorm)
  'joint_space_time'     ST         one attention over all 1 + N*T tokens                             85.9M
  'divided_space_time'   T+S        temporal attention (+ temporal_fc), then spatial attention         121.4M
  'sparse_local_global'  L+G        local attention in T x H/2 x W/2 windows (+ local_fc), then       121.4M
                                    global attention over the clip with stride 2 in t, h and w
  'axial'                T+W+H      time, then width (+ fc each), then height attention                156.8M
  =====================  =========  =================================================================  ==========
  * 8 x 224 x 224 input, with a 174-way (SSv2) head, as in the paper's table 1.

Token layout of the official code (`facebookresearch/TimeSformer`, `timesformer/models/vit.py`): per-frame patch
embedding, a class token and the spatial position embedding added per frame, then (except for space-only) a single
class token and the zero-initialised time embedding; patch tokens are ordered with the **spatial index outer and
time inner** (token 1 + n*T + t with n = h*W + w). Blocks keep that (B, 1 + N*T, D) sequence between them, so the
intermediates `out['encoder/block_XX']` line up with the official code and HuggingFace's hidden states.

Factorised blocks (T+S, L+G, T+W+H): every attention but the last acts on the patch tokens only and its residual
passes through its own Linear (`<stage>_fc`, zero-initialised in every block but the first, as `temporal_fc` in
the official code). The last attention reuses the image ViT's `LayerNorm_0` / `MultiHeadDotProductAttention_1`
(so an image checkpoint loads into it directly); the class token is replicated into each of its groups (each frame
for T+S) and the group outputs are averaged. The official code has only S, ST and T+S; L+G and T+W+H follow the
paper's text and figure 1 with this same class-token rule (our reading: the paper gives no code for them).

Parameter names extend the ViT release (`embedding`, `cls`, `Transformer/posembed_input/pos_embedding`,
`Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3}`,
`Transformer/encoder_norm`, `head`) with `Transformer/time_embedding` and per block `{temporal,local,width}_norm`,
`..._attention`, `..._fc`. `init_from_image_vit` builds TimeSformer parameters from an image ViT checkpoint (the
paper's ImageNet initialisation); `convert.from_transformers` accepts HuggingFace `TimesformerModel` and
`TimesformerForVideoClassification`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import layers, register
from vit_jax.models.vit import to_2tuple

Array = jax.Array

ATTENTION_TYPES = ('space_only', 'joint_space_time', 'divided_space_time', 'sparse_local_global', 'axial')
# The attentions of one factorised block, in order; the last one is the image ViT's attention.
_STAGES = {
    'divided_space_time': ('temporal', 'spatial'),
    'sparse_local_global': ('local', 'global'),
    'axial': ('temporal', 'width', 'height'),
}
# Paper abbreviations (table 1) -> attention_type.
PAPER_NAMES = {'S': 'space_only', 'ST': 'joint_space_time', 'T+S': 'divided_space_time',
               'L+G': 'sparse_local_global', 'T+W+H': 'axial'}


# ----------------------------------------------------------------------------------------------------------------
# Token grouping of the factorised attentions.
# ----------------------------------------------------------------------------------------------------------------
def _stage_layout(stage: str, t: int, gh: int, gw: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """How one attention groups the patch grid (gh, gw, t): (split shape, permutation, number of group axes).

    The grid is reshaped to `shape`, transposed by `perm`; the first `n_group` axes after the transpose index the
    attention groups (merged with the batch), the others the tokens that attend to each other.
    """
    if stage == 'temporal':  # Each spatial location attends over time.
        return (gh, gw, t), (0, 1, 2), 2
    if stage == 'spatial':  # Each frame attends over space.
        return (gh, gw, t), (2, 0, 1), 1
    if stage == 'width':  # Each (frame, row) attends along the width.
        return (gh, gw, t), (2, 0, 1), 2
    if stage == 'height':  # Each (frame, column) attends along the height.
        return (gh, gw, t), (2, 1, 0), 2
    if stage == 'local':  # Windows of all frames x H/2 x W/2.
        _require_even(stage, gh=gh, gw=gw)
        return (2, gh // 2, 2, gw // 2, t), (0, 2, 1, 3, 4), 2
    if stage == 'global':  # Sparse global attention: stride 2 in t, h and w (tokens of equal parity attend).
        _require_even(stage, gh=gh, gw=gw, t=t)
        return (gh // 2, 2, gw // 2, 2, t // 2, 2), (1, 3, 5, 0, 2, 4), 3
    raise ValueError(f'Unknown attention stage {stage!r}.')


def _require_even(stage: str, **sizes: int) -> None:
    odd = {k: v for k, v in sizes.items() if v % 2}
    if odd:
        names = {'gh': 'patch-grid height', 'gw': 'patch-grid width', 't': 'number of frames'}
        raise ValueError(f"sparse_local_global attention ('{stage}' stage) needs an even "
                         + ', '.join(f'{names[k]} (got {v})' for k, v in odd.items())
                         + '. Change num_frames / image_size.')


def to_groups(p: Array, stage: str) -> tuple[Array, int]:
    """(B, gh, gw, T, D) patch grid -> (B * groups, tokens, D) for one attention stage; also returns groups."""
    b, gh, gw, t, d = p.shape
    shape, perm, n_group = _stage_layout(stage, t, gh, gw)
    full_perm = (0, *[i + 1 for i in perm], len(shape) + 1)
    y = p.reshape(b, *shape, d).transpose(full_perm)
    groups = math.prod(y.shape[1:1 + n_group])
    return y.reshape(b * groups, -1, d), groups


def from_groups(y: Array, stage: str, grid_shape: Sequence[int]) -> Array:
    """Inverse of `to_groups`: (B * groups, tokens, D) -> (B, gh, gw, T, D)."""
    b, gh, gw, t, d = grid_shape
    shape, perm, _ = _stage_layout(stage, t, gh, gw)
    full_perm = (0, *[i + 1 for i in perm], len(shape) + 1)
    transposed_shape = (b, *[shape[i] for i in perm], d)
    return y.reshape(transposed_shape).transpose(np.argsort(full_perm)).reshape(b, gh, gw, t, d)


# ----------------------------------------------------------------------------------------------------------------
# Blocks.
# ----------------------------------------------------------------------------------------------------------------
class FactorisedBlock(nn.Module):
    """A TimeSformer block with factorised attention (T+S, L+G or T+W+H) over (B, 1 + N*T, D) tokens.

    `stages[:-1]` act on the patch tokens, each as `p + <stage>_fc(DropPath(Attn(LN(p))))`; the last stage uses
    the image ViT's `LayerNorm_0` / `MultiHeadDotProductAttention_1`, sees the class token replicated into each of
    its groups and averages the class-token outputs; then the ViT MLP (`LayerNorm_2`, `MlpBlock_3`).
    """

    stages: Sequence[str]  # Attention stages in order, e.g. ('temporal', 'spatial').
    grid: tuple[int, int, int]  # (frames, grid height, grid width) of the tokens.
    num_heads: int  # Attention heads.
    mlp_dim: int  # MLP hidden width.
    dropout_rate: float = 0.0  # Dropout after each attention and inside the MLP.
    attention_dropout_rate: float = 0.0  # Dropout on attention probabilities.
    drop_path_rate: float = 0.0  # Stochastic depth of every residual branch.
    norm: str = 'layernorm'  # Token normaliser.
    norm_eps: float = 1e-6  # Normaliser epsilon.
    activation: str = 'gelu_exact'  # MLP activation.
    qkv_bias: bool = True  # Bias on q/k/v.
    zero_init_fc: bool = True  # Zero-initialise the `<stage>_fc` layers (the official code: all blocks but 0).
    dtype: Any = jnp.float32  # Compute dtype.
    attention_impl: str = 'auto'  # Attention kernel (layers.resolve_attention_impl).

    def _attention(self, x: Array, prefix: str, train: bool) -> Array:
        first = prefix == ''
        y = layers.make_norm(self.norm, eps=self.norm_eps, dtype=self.dtype,
                             name='LayerNorm_0' if first else f'{prefix}_norm')(x)
        y = layers.MultiHeadAttention(
            num_heads=self.num_heads, qkv_bias=self.qkv_bias, attention_dropout_rate=self.attention_dropout_rate,
            dtype=self.dtype, attention_impl=self.attention_impl,
            name='MultiHeadDotProductAttention_1' if first else f'{prefix}_attention')(
                y, deterministic=not train)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        return layers.DropPath(self.drop_path_rate)(y, not train)

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        t, gh, gw = self.grid
        b, n, d = x.shape
        if n != 1 + gh * gw * t:
            raise ValueError(f'FactorisedBlock expects 1 + {gh}*{gw}*{t} tokens, got {n}.')
        cls, patches = x[:, :1], x[:, 1:]
        grid_shape = (b, gh, gw, t, d)
        p = patches.reshape(grid_shape)
        for stage in self.stages[:-1]:
            y, _ = to_groups(p, stage)
            y = from_groups(self._attention(y, stage, train), stage, grid_shape)
            fc_init = nn.initializers.zeros if self.zero_init_fc else nn.initializers.xavier_uniform()
            y = nn.Dense(d, dtype=self.dtype, kernel_init=fc_init, bias_init=nn.initializers.zeros,
                         name=f'{stage}_fc')(y)
            p = p + y
        # Last stage: the image ViT attention, with the class token replicated into every group.
        last = self.stages[-1]
        y, groups = to_groups(p, last)
        y = jnp.concatenate([jnp.repeat(cls, groups, axis=0), y], axis=1)
        y = self._attention(y, '', train)
        cls_res = y[:, 0].reshape(b, groups, d).mean(axis=1, keepdims=True)
        p_res = from_groups(y[:, 1:], last, grid_shape).reshape(b, gh * gw * t, d)
        x = jnp.concatenate([cls, p.reshape(b, gh * gw * t, d)], axis=1) + jnp.concatenate([cls_res, p_res], axis=1)
        # MLP.
        y = layers.make_norm(self.norm, eps=self.norm_eps, dtype=self.dtype, name='LayerNorm_2')(x)
        y = layers.MlpBlock(mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate, activation=self.activation,
                            dtype=self.dtype, name='MlpBlock_3')(y, deterministic=not train)
        return x + layers.DropPath(self.drop_path_rate)(y, not train)


def _legacy_nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source indices of PyTorch's `F.interpolate(mode='nearest')`: floor(dst * in / out)."""
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)


def resize_posemb_nearest(posemb: Array, old_hw: Sequence[int], new_hw: Sequence[int]) -> Array:
    """(1, 1 + h*w, D) -> (1, 1 + h'*w', D) by 2-D legacy-nearest resizing of the grid (the official runtime rule)."""
    if tuple(old_hw) == tuple(new_hw):
        return posemb
    d = posemb.shape[-1]
    grid = posemb[0, 1:].reshape(*old_hw, d)
    grid = grid[_legacy_nearest_index(old_hw[0], new_hw[0])][:, _legacy_nearest_index(old_hw[1], new_hw[1])]
    return jnp.concatenate([posemb[:, :1], grid.reshape(1, -1, d)], axis=1)


def resize_time_embedding(time_emb: Array, new_t: int) -> Array:
    """(1, T, D) -> (1, T', D) by legacy-nearest resizing (the official code's rule when T differs)."""
    if time_emb.shape[1] == new_t:
        return time_emb
    return time_emb[:, _legacy_nearest_index(time_emb.shape[1], new_t)]


class _Param(nn.Module):
    """Holds one parameter (so that it lands under this module's name)."""

    param_name: str
    shape: tuple[int, ...]
    init: Any

    @nn.compact
    def __call__(self) -> Array:
        return self.param(self.param_name, self.init, self.shape)


class TimeSformer(nn.Module):
    """TimeSformer video classifier on NTHWC clips; returns `(logits, out)` with named intermediates.

    `out`: 'stem' (B, T, h, w, D) patch embeddings, 'encoder/block_XX' the token sequence after each block
    ((B, 1 + h*w*T, D), spatial index outer and time inner; space-only: (B*T, 1 + h*w, D)), 'encoded' after the
    final norm, 'tokens_3d' (B, T', h, w, D) encoded patch tokens (T' = 1 for space-only, which averages frames),
    'pre_logits' the class token, 'logits'.
    """

    num_classes: int | None = 400  # Head width; None or 0 drops the head.
    image_size: int | Sequence[int] = 224  # Frame resolution (fixes the position-embedding grid).
    num_frames: int = 8  # Frames per clip (fixes the time embedding).
    attention_type: str = 'divided_space_time'  # One of ATTENTION_TYPES (see the module docstring).
    patch_size: int | Sequence[int] = 16  # Patch size of the per-frame embedding.
    hidden_size: int = 768  # Token width D.
    mlp_dim: int = 3072  # MLP hidden width.
    num_heads: int = 12  # Attention heads.
    num_layers: int = 12  # Depth.
    dropout_rate: float = 0.0  # Dropout after the embeddings, after attention and in the MLP (official: 0).
    attention_dropout_rate: float = 0.0  # Dropout on attention probabilities (official: 0).
    drop_path_rate: float = 0.1  # Stochastic depth at the last block, linear from 0 (official: 0.1).
    norm: str = 'layernorm'  # Token normaliser.
    norm_eps: float = 1e-6  # LayerNorm epsilon (timm ViT: 1e-6).
    activation: str = 'gelu_exact'  # MLP activation (PyTorch nn.GELU, the official code).
    qkv_bias: bool = True  # Bias on q/k/v projections.
    interpolate_embeddings: bool = True  # Nearest-resize pos/time embeddings for other input sizes (official).
    time_embedding_init: float = 0.0  # Std of the time embedding's normal init; 0: zeros (the official init).
    scan: bool = False  # Scan over encoder layers (factorised blocks: layer 0, then layers 1.. as one scan).
    remat_policy: str | None = None  # Rematerialise each block with this jax.checkpoint_policies name.
    dtype: Any = jnp.float32  # Compute dtype (parameters stay float32).
    attention_impl: str = 'auto'  # Attention kernel: 'auto', 'xla', 'cudnn' or 'cpu' (layers.resolve_attention_impl).

    grid_size = property(lambda self: layers.patch_grid(self.image_size, self.patch_size))  # Per-frame (h, w).

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        """Shape of a clip batch this model accepts at its configured size: (batch, T, H, W, 3)."""
        return (batch, self.num_frames, *to_2tuple(self.image_size), 3)

    def init_from_checkpoint(self, init_params: Any, source: Any, *, dont_load: Sequence[str] = ()) -> Any:
        """`config.init_from` (`models.load_pretrained`) from an image ViT checkpoint, the paper's ImageNet init:
        `init_from_image_vit` with the official loader's position-embedding rule (1-D nearest over the token
        sequence, e.g. TimeSformer-HR at 448 from a 224 ViT). None for a video checkpoint (the generic loader then
        merges it)."""
        if not is_image_to_video(init_params, source):
            return None
        return init_from_image_vit(init_params, source, dont_load=tuple(dont_load), posemb_resize='nearest_1d')

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        layers.check_images(images, ndim=5, what='video clips', multiple_of=to_2tuple(self.patch_size),
                            name=type(self).__name__)
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(f'attention_type must be one of {ATTENTION_TYPES} (paper names {PAPER_NAMES}), '
                             f'got {self.attention_type!r}.')
        out = {}
        b, t = images.shape[:2]
        x = images.astype(self.dtype).reshape(b * t, *images.shape[2:])
        x = layers.patch_embed(x, self.hidden_size, to_2tuple(self.patch_size), dtype=self.dtype)
        _, gh, gw, d = x.shape
        out['stem'] = x.reshape(b, t, gh, gw, d)
        x = x.reshape(b * t, gh * gw, d)
        cls = self.param('cls', nn.initializers.normal(0.02), (1, 1, d))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b * t, 1, d)), x], axis=1)
        if ((gh, gw) != self.grid_size or t != self.num_frames) and not self.interpolate_embeddings:
            raise ValueError(f'The model was built for {self.num_frames} frames of grid {self.grid_size} but got {t} '
                             f'frames of grid {(gh, gw)}; build it with matching num_frames / image_size.')

        def embed(enc: layers.Encoder, x: Array) -> Array:
            """(B*T, 1 + N, D) per-frame tokens -> + position (and time) embeddings, the blocks' token layout."""
            pe = _Param('pos_embedding', (1, 1 + self.grid_size[0] * self.grid_size[1], d),
                        nn.initializers.normal(0.02), name='posembed_input')()
            x = x + resize_posemb_nearest(pe, self.grid_size, (gh, gw)).astype(x.dtype)
            x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
            if self.attention_type == 'space_only':
                return x
            # One class token; patches to (B, N*T, D) with time fastest, plus the time embedding.
            p = x[:, 1:].reshape(b, t, gh * gw, d).transpose(0, 2, 1, 3)  # (B, N, T, D)
            te_init = (nn.initializers.normal(self.time_embedding_init) if self.time_embedding_init
                       else nn.initializers.zeros)
            te = enc.param('time_embedding', te_init, (1, self.num_frames, d))
            p = p + resize_time_embedding(te, t)[:, None].astype(x.dtype)
            p = nn.Dropout(self.dropout_rate)(p, deterministic=not train)
            # The class token (+ its position embedding) is the same in every frame.
            return jnp.concatenate([x[:b, :1], p.reshape(b, gh * gw * t, d)], axis=1)

        hooks = {0: embed}
        if self.attention_type == 'space_only':  # Average every token over frames, before the final norm.
            hooks[self.num_layers] = lambda enc, x: x.reshape(b, t, *x.shape[1:]).mean(axis=1)
        factorised = self.attention_type in _STAGES
        x, enc_out = layers.Encoder(
            num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
            drop_path_rate=self.drop_path_rate, norm=self.norm, norm_eps=self.norm_eps, activation=self.activation,
            qkv_bias=self.qkv_bias, block_cls=FactorisedBlock if factorised else None,
            block_kwargs=dict(stages=_STAGES[self.attention_type], grid=(t, gh, gw)) if factorised else None,
            layer_kwargs=(lambda i: {'zero_init_fc': i > 0}) if factorised else None,  # The official init.
            scan=self.scan, remat_policy=self.remat_policy, dtype=self.dtype, attention_impl=self.attention_impl,
            name='Transformer')(x, train, hooks=hooks)
        out.update({f'encoder/{k}': v for k, v in enc_out.items()})
        out['encoded'] = x
        if self.attention_type == 'space_only':
            out['tokens_3d'] = x[:, 1:].reshape(b, 1, gh, gw, d)
        else:
            out['tokens_3d'] = x[:, 1:].reshape(b, gh, gw, t, d).transpose(0, 3, 1, 2, 4)
        # The official head init (trunc-normal 0.02). Not zero: with a zero head and the zero time embedding the
        # model starts exactly time-reversal symmetric, and the gradient that would break the symmetry (e.g. to
        # tell left from right motion) vanishes with the difference of the classes' head rows.
        return layers.classifier_head(x[:, 0], self.num_classes, out, dtype=self.dtype,
                                      kernel_init=nn.initializers.normal(0.02))


# ----------------------------------------------------------------------------------------------------------------
# Registered variants (ViT-B/16 backbone; table 1 of the paper and section 4.3).
# ----------------------------------------------------------------------------------------------------------------
_PAPER = 'timesformer'
register('TimeSformer', TimeSformer, paper=_PAPER, num_frames=8, image_size=224)  # 8 x 32 sampling, 224.
register('TimeSformer-HR', TimeSformer, paper=_PAPER, num_frames=16, image_size=448)  # 16 x 16, 448.
register('TimeSformer-L', TimeSformer, paper=_PAPER, num_frames=96, image_size=224)  # 96 x 4, 224.
for _abbrev, _type in PAPER_NAMES.items():
    # Table 1's schemes at 8 x 224: 'TimeSformer/divided_space_time' == 'TimeSformer' (alias 'TimeSformer-T+S').
    register(f'TimeSformer/{_type}', TimeSformer, aliases=(f'TimeSformer-{_abbrev}',), paper=_PAPER,
             attention_type=_type, num_frames=8, image_size=224)
# A tiny TimeSformer for tests and the quickstart (8 frames of 32x32, 4x4 patches of 8 pixels).
register('TimeSformer-testing', TimeSformer, paper='test', num_frames=8, image_size=32, patch_size=8,
         hidden_size=64, mlp_dim=128, num_heads=2, num_layers=2, drop_path_rate=0.0)


# ----------------------------------------------------------------------------------------------------------------
# Initialisation from an image ViT checkpoint (the paper's ImageNet-pretrained initialisation).
# ----------------------------------------------------------------------------------------------------------------
_FIRST_STAGE_PREFIXES = ('temporal', 'local', 'width')


def _tree(params: Mapping[str, Any]) -> dict:
    """Nested dict of numpy arrays from a nested or '/'-flat parameter mapping."""
    params = flax.core.unfreeze(params) if isinstance(params, flax.core.FrozenDict) else params
    if params and all(isinstance(k, str) and not isinstance(v, Mapping) for k, v in params.items()) and any(
            '/' in k for k in params):
        params = flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in params.items()})
    return jax.tree_util.tree_map(np.asarray, dict(params))


def _unscan(transformer: dict) -> dict:
    """A scanned encoder (`encoderblock...` with a leading layer axis) as `encoderblock_{i}` entries."""
    transformer = dict(transformer)
    if 'encoderblock' in transformer and 'block' not in transformer['encoderblock']:  # big_vision: no `block`.
        transformer['encoderblock'] = {'block': transformer['encoderblock']}
    flat = flax.traverse_util.flatten_dict(transformer, sep='/')
    return flax.traverse_util.unflatten_dict(layers.unscan_params(flat), sep='/')


def init_from_image_vit(video_params: Mapping[str, Any], image_params: Mapping[str, Any], *,
                        dont_load: Sequence[str] = ('head/.*',), posemb_resize: str = 'bilinear',
                        num_prefix_tokens: int = 1) -> dict:
    """TimeSformer parameters initialised from an image ViT (or another TimeSformer) checkpoint.

    As the official `load_pretrained`: every shared weight is copied (patch embedding, class token, blocks' norms,
    attention and MLP, final norm); each block's extra attentions (`temporal_*`, `local_*`, `width_*`) and their
    norms are copied from the block's spatial `MultiHeadDotProductAttention_1` / `LayerNorm_0`; `<stage>_fc` and the
    time embedding keep their initial values (zeros) unless the source has them. The spatial position embedding is
    resampled when the grids differ, the time embedding (from a video source) when the frame counts differ.

    Args:
      video_params: the TimeSformer's initial `params` (nested, e.g. `variables['params']`); fixes every shape.
      image_params: the source `params`: nested or '/'-flat (`checkpoint.load_npz`), release names, scanned or not.
      dont_load: regexes of '/'-joined video parameter names (matched at the start, as `checkpoint.load_pretrained`)
        that keep their initial values (default: the head); per-layer names `encoderblock_{i}` also for `scan=True`.
      posemb_resize: 'bilinear' (`layers.resample_posemb`, the ViT release's rule) or 'nearest_1d' (the official
        TimeSformer loader: 1-D nearest over the flattened token sequence).
      num_prefix_tokens: class-like tokens at the start of the source position embedding (1 for ViT/DeiT's cls;
        2 for DeiT-distilled, whose distillation token is dropped).

    Returns:
      A nested dict of numpy arrays with exactly the structure and shapes of `video_params`.
    """
    video = _tree(video_params)
    src = _tree(image_params)
    src_tr = _unscan(dict(src.get('Transformer', {})))
    if not src_tr:
        raise ValueError('init_from_image_vit: the source has no `Transformer` parameters; expected a ViT checkpoint '
                         'with the release names (embedding, cls, Transformer/encoderblock_i/...).')

    like = flax.traverse_util.flatten_dict(video, sep='/')
    flat_video = layers.unscan_params(like)  # A scanned model is filled per layer, then restacked.
    patterns = [re.compile(p) for p in dont_load]
    new = {}
    for name, init in flat_video.items():
        if any(p.match(name) for p in patterns):
            new[name] = init
            continue
        value = _source_value(name, init, src, src_tr, posemb_resize, num_prefix_tokens)
        if value is None:
            new[name] = init
            continue
        value = np.asarray(value, init.dtype)
        if value.shape != init.shape:
            raise ValueError(f'init_from_image_vit: {name} has shape {value.shape} in the checkpoint but '
                             f'{init.shape} in the model (different width, patch size or head?). Add it to '
                             f'dont_load to keep its initial value.')
        new[name] = value
    return flax.traverse_util.unflatten_dict(layers.scan_params_like(new, like), sep='/')


def is_image_to_video(video_params: Mapping[str, Any], source_params: Mapping[str, Any]) -> bool:
    """Whether `source_params` is an image checkpoint for the TimeSformer `video_params` (which then need
    `init_from_image_vit`): the model has a time embedding or factorised attentions that the source lacks."""
    video = flax.traverse_util.flatten_dict(_tree(video_params), sep='/')
    src = flax.traverse_util.flatten_dict(_tree(source_params), sep='/')
    extra = [k for k in video if k not in src and (k.startswith('Transformer/time_embedding')
                                                   or re.search(r'/(temporal|local|width)_(norm|attention)/', k))]
    return bool(extra) and any(k.startswith('Transformer/') for k in src)


def _source_value(name: str, init: np.ndarray, src: dict, src_tr: dict, posemb_resize: str,
                  num_prefix_tokens: int) -> np.ndarray | None:
    """The checkpoint value for one '/'-joined TimeSformer parameter name (None: keep the initial value)."""
    parts = name.split('/')

    def get(tree, path):
        for p in path:
            if not isinstance(tree, Mapping) or p not in tree:
                return None
            tree = tree[p]
        return tree

    if parts[0] != 'Transformer':
        return get(src, parts)  # embedding/*, cls, head/*.
    rest = parts[1:]
    if rest == ['posembed_input', 'pos_embedding']:
        pe = get(src_tr, rest)
        return None if pe is None else _resample_posemb(np.asarray(pe), init.shape[1], posemb_resize,
                                                        num_prefix_tokens)
    if rest == ['time_embedding']:
        te = get(src_tr, rest)
        return None if te is None else np.asarray(resize_time_embedding(np.asarray(te), init.shape[1]))
    if rest[0].startswith('encoderblock_'):
        value = get(src_tr, rest)
        if value is not None:
            return value
        module = rest[1]
        for prefix in _FIRST_STAGE_PREFIXES:
            if module == f'{prefix}_norm':
                return get(src_tr, [rest[0], 'LayerNorm_0', *rest[2:]])
            if module == f'{prefix}_attention':
                return get(src_tr, [rest[0], 'MultiHeadDotProductAttention_1', *rest[2:]])
        return None  # <stage>_fc: keep the (zero) initialisation.
    return get(src_tr, rest)  # encoder_norm.


def _resample_posemb(pe: np.ndarray, new_len: int, how: str, num_prefix_tokens: int) -> np.ndarray:
    if num_prefix_tokens > 1:  # Keep only the class token's embedding.
        pe = np.concatenate([pe[:, :1], pe[:, num_prefix_tokens:]], axis=1)
    if pe.shape[1] == new_len:
        return pe
    if how == 'bilinear':
        return layers.resample_posemb(pe, new_len, num_prefix_tokens=1)
    if how == 'nearest_1d':
        idx = _legacy_nearest_index(pe.shape[1] - 1, new_len - 1)
        return np.concatenate([pe[:, :1], pe[:, 1:][:, idx]], axis=1)
    raise ValueError(f"posemb_resize must be 'bilinear' or 'nearest_1d', got {how!r}.")
