"""Pictures of dense predictions: image | prediction | ground truth side by side, as PNG files.

    from vit_jax.tools import dense_vis
    panel = dense_vis.side_by_side([dense_vis.image_to_uint8(image, (-1, 1)),
                                    dense_vis.colorize_labels(pred, num_classes=150),
                                    dense_vis.colorize_labels(label, num_classes=150)])
    dense_vis.save_png('example.png', panel)

The segmentation and depth evaluators call these when their config sets `png_dir`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def palette(num_classes: int, seed: int = 0) -> np.ndarray:
    """[num_classes, 3] uint8 colours: a fixed pseudo-random palette with class 0 dark grey."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 256, size=(max(num_classes, 1), 3)).astype(np.uint8)
    colours[0] = (64, 64, 64)
    return colours


def colorize_labels(labels: np.ndarray, num_classes: int, ignore_label: int = 255) -> np.ndarray:
    """[H, W] class map -> [H, W, 3] uint8 (ignored / out-of-range pixels black)."""
    labels = np.asarray(labels).astype(np.int64)
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_label)
    out = palette(num_classes)[np.where(valid, labels, 0)]
    out[~valid] = 0
    return out


def colorize_depth(depth: np.ndarray, lo: Optional[float] = None, hi: Optional[float] = None) -> np.ndarray:
    """[H, W] depth -> [H, W, 3] uint8 (near = bright yellow, far = dark blue; depth <= 0 black)."""
    depth = np.asarray(depth, np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    if lo is None or hi is None:
        vals = depth[valid]
        lo = float(vals.min()) if vals.size else 0.0
        hi = float(vals.max()) if vals.size else 1.0
    t = np.clip((depth - lo) / max(hi - lo, 1e-8), 0.0, 1.0)  # 0 near, 1 far.
    near = np.array([255, 230, 60], np.float32)
    far = np.array([20, 20, 120], np.float32)
    out = (near * (1 - t[..., None]) + far * t[..., None]).astype(np.uint8)
    out[~valid] = 0
    return out


def image_to_uint8(image: np.ndarray, value_range: Sequence[float] = (-1.0, 1.0)) -> np.ndarray:
    """A model input [H, W, 3] in `value_range` -> uint8 [H, W, 3]."""
    lo, hi = float(value_range[0]), float(value_range[1])
    x = (np.asarray(image, np.float32) - lo) / max(hi - lo, 1e-8)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def side_by_side(panels: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """Concatenates [H, W, 3] uint8 panels horizontally (white gaps; shorter panels padded at the bottom)."""
    h = max(p.shape[0] for p in panels)
    cols = []
    for i, p in enumerate(panels):
        p = np.asarray(p, np.uint8)
        if p.ndim == 2:
            p = np.repeat(p[..., None], 3, -1)
        if p.shape[0] < h:
            p = np.concatenate([p, np.zeros((h - p.shape[0], p.shape[1], 3), np.uint8)], 0)
        cols.append(p)
        if i < len(panels) - 1 and gap:
            cols.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(cols, axis=1)


def save_png(path: str, image: np.ndarray, scale: int = 0) -> None:
    """Writes a uint8 [H, W, 3] array as PNG; small images are enlarged (nearest) to be visible (scale 0: auto)."""
    from PIL import Image

    image = np.asarray(image, np.uint8)
    if scale == 0:
        scale = max(1, 256 // max(image.shape[0], 1))
    if scale > 1:
        image = np.repeat(np.repeat(image, scale, 0), scale, 1)
    Image.fromarray(image).save(path)
