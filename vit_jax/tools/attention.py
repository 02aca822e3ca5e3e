"""Attention maps of ViT-family models: attention rollout and per-head last-layer attention, as arrays and PNGs.

    python -m vit_jax.tools.attention --model ViT-B/16 --checkpoint ViT-B_16.npz --image cat.jpg --out attn.png
    python -m vit_jax.tools.attention --checkpoint workdirs/quickstart --image 7.png --out attn.png --mode heads

Library use:

    from vit_jax.tools import attention
    logits, attn = attention.get_attention(model, variables, images)    # attn: per layer [B, heads, T, T]
    joint = attention.attention_rollout(attn)                           # [B, T, T]
    maps = attention.rollout_maps(model, variables, images)             # [B, gh, gw], each summing to 1
    heads = attention.head_maps(model, variables, images)               # [B, heads, gh, gw] (last layer)
    png = attention.overlay(image_uint8, maps[0])                       # heat map over the image, uint8 RGB
    model, variables, preprocess = attention.load_model('ViT-B_16.npz', model='ViT-B/16')   # or a run's workdir

Attention rollout (Abnar & Zuidema, 2020; figure 6 of the ViT paper): per layer, average the heads, add the identity
for the residual connection, re-normalise the rows, and multiply the layers' matrices (the first layer applied
first); the class token's row, restricted to the patch tokens, is the map. Models without a class token ('gap'
classifiers, CCT's sequence pooling) use the mean of all rows instead (the attention each patch receives on
average). Models with extra tokens (DeiT's distillation token) keep them in the product and drop them from the map.

The attention comes from `vit_jax.models.layers.MultiHeadAttention`, which sows its weights into the
'intermediates' collection when the caller makes it mutable (the fused attention path is used otherwise). Models
whose token count changes between stages (CvT) are rolled out over the layers of the last stage.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from typing import Any, Optional, Sequence

import jax
import numpy as np
from flax import traverse_util


# ----------------------------------------------------------------------------------------------------------------
# Collecting the weights.
# ----------------------------------------------------------------------------------------------------------------
def collect_attention(intermediates: Any, path_filter: Optional[str] = None) -> list[tuple[str, np.ndarray]]:
    """Every sowed attention matrix, in call order: [(module path, weights [B, heads, Tq, Tk])].

    A scanned encoder's stacked weights [layers, B, heads, T, T] are split into one entry per layer. When any
    path contains 'encoderblock' (the ViT family's encoder) only those are kept, so that decoders (Segmenter's
    mask transformer, MAP heads) do not enter a rollout of the encoder; `path_filter` (a regex searched in the
    '/'-joined path) selects explicitly instead.
    """
    flat = traverse_util.flatten_dict(dict(intermediates))  # Insertion order = the order modules were called.
    found = []
    for path, value in flat.items():
        if not path or path[-1] != 'attention_weights':
            continue
        name = '/'.join(str(p) for p in path[:-1])
        for call, w in enumerate(value if isinstance(value, tuple) else (value,)):
            w = np.asarray(jax.device_get(w), np.float32)
            suffix = f'#{call}' if isinstance(value, tuple) and len(value) > 1 else ''
            if w.ndim == 5:  # Scanned layers.
                found.extend((f'{name}[{i}]{suffix}', w[i]) for i in range(w.shape[0]))
            elif w.ndim == 4:
                found.append((name + suffix, w))
    if path_filter is not None:
        found = [(n, w) for n, w in found if re.search(path_filter, n)]
    elif any('encoderblock' in n for n, _ in found):
        found = [(n, w) for n, w in found if 'encoderblock' in n]
    if not found:
        raise ValueError('No attention weights were sowed' + (f' under paths matching {path_filter!r}' if path_filter
                         else '') + ': the model must use vit_jax.models.layers.MultiHeadAttention and be applied '
                         "with mutable=['intermediates'] (get_attention does this).")
    return found


_APPLY_CACHE: dict = {}


def _apply_fn(model: Any):
    """A jitted eval-mode apply with the 'intermediates' collection mutable (one per model, kept while alive)."""
    key = id(model)
    hit = _APPLY_CACHE.get(key)
    if hit is None or hit[0] is not model:
        fn = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=['intermediates']))
        hit = _APPLY_CACHE[key] = (model, fn)
        while len(_APPLY_CACHE) > 8:
            _APPLY_CACHE.pop(next(iter(_APPLY_CACHE)))
    return hit[1]


def get_attention(model: Any, variables: dict, images: Any, path_filter: Optional[str] = None
                  ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Runs `model` in eval mode and returns (logits, per-layer attention [B, heads, T, T] as float32 numpy)."""
    variables = {k: v for k, v in dict(variables).items() if k != 'intermediates'}
    (logits, _), state = _apply_fn(model)(variables, images)
    attn = collect_attention(state['intermediates'], path_filter)
    return np.asarray(logits), [w for _, w in attn]


# ----------------------------------------------------------------------------------------------------------------
# Rollout and maps.
# ----------------------------------------------------------------------------------------------------------------
def attention_rollout(attn_list: Sequence[Any], head_fusion: str = 'mean', add_residual: bool = True) -> np.ndarray:
    """Joint attention over layers (Abnar & Zuidema, 2020): [B, T, T] from per-layer [B, heads, T, T] (or [B, T, T]).

    Per layer A <- fuse_heads(A); A <- A + I (residual); A <- A / A.sum(-1); then R = A_L @ ... @ A_2 @ A_1.
    Row i of R is how much each input token contributes to output token i. Only the trailing run of layers with
    the last layer's token count is used (multi-stage models).

    Args:
      attn_list: attention weights per layer, first layer first.
      head_fusion: 'mean' (the paper), 'max' or 'min' over heads.
      add_residual: add the identity for the skip connection (the paper: yes).
    """
    if not len(attn_list):
        raise ValueError('attention_rollout needs at least one layer of attention weights.')
    mats = [np.asarray(a, np.float64) for a in attn_list]
    t = mats[-1].shape[-1]
    if mats[-1].shape[-2] != t:
        raise ValueError(f'The last layer attends from {mats[-1].shape[-2]} queries to {t} keys (pooled keys, as '
                         "CvT's strided key/value projection): rollout needs square attention; use head_maps.")
    start = len(mats)
    while start > 0 and mats[start - 1].shape[-2:] == (t, t):
        start -= 1
    fuse = {'mean': np.mean, 'max': np.max, 'min': np.min}
    if head_fusion not in fuse:
        raise ValueError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}.")
    joint = None
    for a in mats[start:]:
        if a.ndim == 4:
            a = fuse[head_fusion](a, axis=1)
        if add_residual:
            a = a + np.eye(t)
        a = a / a.sum(axis=-1, keepdims=True)
        joint = a if joint is None else a @ joint
    return joint.astype(np.float32)


def grid_and_prefix(num_tokens: int, model: Any = None, image_hw: Optional[Sequence[int]] = None
                    ) -> tuple[tuple[int, int], int]:
    """((gh, gw), number of leading non-patch tokens) of a sequence of `num_tokens` tokens.

    Uses the model's `grid_size` when it accounts for the tokens, else the grid of the image's aspect ratio
    (square when unknown) with 0..8 prefix tokens.
    """
    grid = getattr(model, 'grid_size', None) if model is not None else None
    if grid is not None:
        try:
            gh, gw = (int(v) for v in grid)
            if 0 <= num_tokens - gh * gw <= 8:
                return (gh, gw), num_tokens - gh * gw
        except (TypeError, ValueError):
            pass
    h, w = (image_hw if image_hw is not None else (1, 1))
    for prefix in range(0, 9):
        n = num_tokens - prefix
        if n <= 0:
            break
        gh = int(round(math.sqrt(n * h / w)))
        if gh > 0 and n % gh == 0 and abs(n // gh / gh - w / h) < 1e-6 + 0.5 / gh:
            return (gh, n // gh), prefix
    raise ValueError(f'Cannot lay out {num_tokens} tokens as a patch grid (image {image_hw}); pass grid/prefix.')


def token_map(joint: np.ndarray, grid: Sequence[int], num_prefix: int, query: int = 0) -> np.ndarray:
    """[B, Tq, Tk] (joint) attention -> [B, gh, gw] map over the patch keys, normalised to sum to 1.

    `grid` and `num_prefix` describe the keys. With prefix tokens: row `query` (0: the class token). Without: the
    mean of all rows.
    """
    joint = np.asarray(joint, np.float32)
    if num_prefix > 0:
        if not 0 <= query < num_prefix:
            raise ValueError(f'query={query} is not one of the {num_prefix} prefix tokens.')
        row = joint[:, query, num_prefix:]
    else:
        row = joint.mean(axis=1)
    row = row / np.maximum(row.sum(axis=-1, keepdims=True), 1e-12)
    return row.reshape(row.shape[0], int(grid[0]), int(grid[1]))


def rollout_maps(model: Any, variables: dict, images: Any, *, query: int = 0, head_fusion: str = 'mean',
                 path_filter: Optional[str] = None) -> np.ndarray:
    """Attention-rollout maps [B, gh, gw] (sum 1) of `images` [B, H, W, 3]."""
    _, attn = get_attention(model, variables, images, path_filter)
    joint = attention_rollout(attn, head_fusion=head_fusion)
    grid, prefix = grid_and_prefix(joint.shape[-1], model, np.shape(images)[1:3])
    return token_map(joint, grid, prefix, query)


def head_maps(model: Any, variables: dict, images: Any, *, layer: int = -1, query: int = 0,
              path_filter: Optional[str] = None) -> np.ndarray:
    """Per-head attention maps [B, heads, gh, gw] (each sums to 1) of one layer (default the last)."""
    _, attn = get_attention(model, variables, images, path_filter)
    w = attn[layer]  # [B, heads, Tq, Tk]
    b, h, tq, tk = w.shape
    grid, prefix = grid_and_prefix(tk, model if tq == tk else None, np.shape(images)[1:3])
    maps = token_map(w.reshape(b * h, tq, tk), grid, prefix, query)
    return maps.reshape(b, h, *maps.shape[1:])


# ----------------------------------------------------------------------------------------------------------------
# Pictures.
# ----------------------------------------------------------------------------------------------------------------
def _resize(a: np.ndarray, hw: Sequence[int], resample: str = 'bilinear') -> np.ndarray:
    from PIL import Image

    mode = Image.BILINEAR if resample == 'bilinear' else Image.NEAREST
    if a.ndim == 2:
        return np.asarray(Image.fromarray(a.astype(np.float32), mode='F').resize((hw[1], hw[0]), mode))
    return np.asarray(Image.fromarray(a.astype(np.uint8)).resize((hw[1], hw[0]), mode))


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55, cmap: str = 'jet',
            min_side: int = 224) -> np.ndarray:
    """A heat map [gh, gw] drawn over a uint8 image [H, W, 3] -> uint8 [H', W', 3].

    The map is min-max scaled, upsampled bilinearly and coloured with `cmap`; images smaller than `min_side` are
    first enlarged (nearest) so that the picture is visible.
    """
    from matplotlib import colormaps

    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, -1)
    image = image[..., :3].astype(np.uint8)
    scale = max(1, int(math.ceil(min_side / max(min(image.shape[:2]), 1))))
    if scale > 1:
        image = _resize(image, (image.shape[0] * scale, image.shape[1] * scale), 'nearest')
    heat = np.asarray(heat, np.float32)
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)
    heat = np.clip(_resize(heat, image.shape[:2]), 0.0, 1.0)
    colour = colormaps[cmap](heat)[..., :3] * 255.0
    return np.clip((1 - alpha) * image + alpha * colour, 0, 255).astype(np.uint8)


def image_to_uint8(image: np.ndarray, value_range: Sequence[float] = (-1.0, 1.0)) -> np.ndarray:
    """A model input [H, W, 3] in `value_range` -> uint8."""
    lo, hi = float(value_range[0]), float(value_range[1])
    return np.clip(np.round((np.asarray(image, np.float32) - lo) / max(hi - lo, 1e-8) * 255), 0, 255).astype(np.uint8)


def figure(image: np.ndarray, maps: np.ndarray, titles: Optional[Sequence[str]] = None, cmap: str = 'jet',
           panel: int = 224, ncols: int = 4) -> np.ndarray:
    """A uint8 picture: the image followed by one overlay per map ([gh, gw] or [N, gh, gw]), with titles."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    maps = np.asarray(maps)
    maps = maps[None] if maps.ndim == 2 else maps
    panels = [overlay(image, np.zeros(maps.shape[1:]), alpha=0.0, min_side=panel)]
    panels += [overlay(image, m, cmap=cmap, min_side=panel) for m in maps]
    titles = ['input'] + list(titles if titles is not None else
                              (['rollout'] if len(maps) == 1 else [f'head {i}' for i in range(len(maps))]))
    n = len(panels)
    ncols = min(ncols if n > 2 else n, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(2.4 * ncols, 2.6 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    for i, (p, t) in enumerate(zip(panels, titles)):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(p)
        ax.set_title(t, fontsize=9)
        ax.axis('off')
    fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_png(path: str, image: np.ndarray) -> str:
    """Writes a uint8 RGB array as PNG; returns the path."""
    from PIL import Image

    Image.fromarray(np.asarray(image, np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------------------------
def load_model(checkpoint_path: str, model: Optional[str] = None, config: Optional[str] = None,
               image_size: Optional[int] = None, value_range: Sequence[float] = (-1.0, 1.0),
               overrides: Sequence[tuple[str, str]] = ()):
    """(model, variables, preprocess: uint8 RGB [H, W, 3] -> model input) of a checkpoint.

    With `model` (a registered name) the checkpoint is a `.npz` in the release layout (e.g. a downloaded
    `ViT-B_16.npz`); the number of classes comes from its head and images are resized to `image_size` (default: the
    model's) and scaled to `value_range`. Without it, the model and preprocessing come from `config` (a config file
    `path.py[:arg]` or `config.json`) or from the run workdir's config.json, as `vit_jax.predict` does.
    """
    import ml_collections

    from vit_jax import checkpoint, config_utils, predict

    if model:
        params, _ = checkpoint.load_for_inference(checkpoint_path)
        flat = checkpoint.flatten(params)
        num_classes = next((int(v.shape[-1]) for k, v in flat.items() if k == 'head/kernel'), 0)
        model_cfg = {'name': model, 'num_classes': num_classes}
        if image_size:
            model_cfg['image_size'] = int(image_size)
        cfg = ml_collections.ConfigDict({'model': model_cfg, 'dataset': '',
                                         'data': {'value_range': tuple(value_range), 'eval_pp': 'resize'}})
        for k, v in overrides:
            config_utils.override(cfg, k, v)
    else:
        cfg = predict.load_config(config, checkpoint_path, overrides)
    predictor = predict.Predictor(cfg, checkpoint_path)
    return predictor.model, predictor.variables, predictor.preprocess


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status."""
    from vit_jax import predict

    argv, overrides = predict._split_overrides(list(sys.argv[1:] if argv is None else argv))
    p = argparse.ArgumentParser(prog='python -m vit_jax.tools.attention', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', required=True, help='A .npz parameter file, or a run workdir / checkpoint.')
    p.add_argument('--image', required=True, help='An image file (any size; resized like the eval data).')
    p.add_argument('--out', required=True, help='The PNG to write.')
    p.add_argument('--model', default=None, help='A registered model name (with a .npz); without it the model comes '
                                                 "from --config or the workdir's config.json.")
    p.add_argument('--config', default=None, help="The run's config: path.py[:arg] or config.json.")
    p.add_argument('--image_size', type=int, default=None, help='Model resolution with --model (default: its own).')
    p.add_argument('--value_range', type=float, nargs=2, default=(-1.0, 1.0),
                   help='Model input range with --model (the ViT release: -1 1).')
    p.add_argument('--mode', choices=('rollout', 'heads'), default='rollout',
                   help='rollout: joint attention over all layers; heads: each head of the last layer.')
    p.add_argument('--query', type=int, default=0, help='Which prefix token reads the map (1: distillation token).')
    p.add_argument('--verbose', action='store_true', help='Also print library logging (absl/Orbax/TensorFlow).')
    args = p.parse_args(argv)
    try:
        model, variables, prep = load_model(args.checkpoint, args.model, args.config, args.image_size,
                                            args.value_range, overrides)
        raw = predict.read_image(args.image)
        x = prep(raw)[None]
        if args.mode == 'rollout':
            maps = rollout_maps(model, variables, x, query=args.query)[0]
        else:
            maps = head_maps(model, variables, x, query=args.query)[0]
    except (ValueError, FileNotFoundError, KeyError, predict.NotAnImageError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    save_png(args.out, figure(raw, maps))
    print(f'Wrote {args.out} ({args.mode}, {maps.shape[-2]}x{maps.shape[-1]} patch grid).')
    return 0


if __name__ == '__main__':
    from vit_jax import console

    console.setup(verbose='--verbose' in sys.argv)  # Library logging off (before TensorFlow is imported).
    sys.exit(main())
