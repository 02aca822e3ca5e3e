"""Monocular depth: AbsRel, SqRel, RMSE, RMSE-log, log10 and delta < 1.25^k, averaged over the images of a split.

    config.evals.val = dict(type='depth', split='validation', every=1000, prediction='inverse_depth',
                            align='scale_shift', min_depth=1e-3, max_depth=10.0, crop=None, png_dir=None)

Per image (valid pixels: ground truth in (min_depth, max_depth], inside the optional crop): the prediction is
turned into depth, clipped to [min_depth, max_depth], and the metrics are averaged over the valid pixels; the split
figure is the mean over images that have valid pixels (the Eigen / BTS / DPT protocol), with padding examples
excluded exactly.

`prediction`: 'inverse_depth' (relative inverse depth, DPT's raw head output) or 'depth' (metric depth, e.g. DPT
with depth_scale/depth_shift). `align`: 'scale_shift' (per-image least squares in the prediction's space, as
MiDaS / DPT zero-shot evaluation; inverse depth is then capped at 1 / max_depth before inversion), 'median'
(depth scaled by median(gt) / median(pred)) or 'none' (metric predictions). `crop`: None, 'eigen_nyu'
(rows 45:471, cols 41:601 of 480x640, scaled to the image), 'garg' or 'eigen' (KITTI).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import evaluators
from vit_jax.evaluators.base import Evaluator, to_host
from vit_jax.objectives.depth import _masked_median, compute_scale_and_shift

METRICS = ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'log10', 'delta1', 'delta2', 'delta3')

CROPS = {  # (top, bottom, left, right) as fractions of the image.
    'eigen_nyu': (45 / 480, 471 / 480, 41 / 640, 601 / 640),
    'garg': (0.40810811, 0.99189189, 0.03594771, 0.96405229),
    'eigen': (0.3324324, 0.91351351, 0.0359477, 0.96405229),
}


def crop_mask(shape: tuple[int, int], crop: Optional[str]) -> np.ndarray:
    """[H, W] float mask of an evaluation crop (all ones for None)."""
    h, w = shape
    m = np.zeros((h, w), np.float32)
    if crop is None:
        m[:] = 1.0
        return m
    if crop not in CROPS:
        raise ValueError(f'Unknown depth crop {crop!r}; choose one of {sorted(CROPS)} or None.')
    top, bottom, left, right = CROPS[crop]
    m[int(top * h):int(bottom * h), int(left * w):int(right * w)] = 1.0
    return m


def per_image_metrics(pred: jax.Array, gt: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Per-image depth metrics ([B] each) over `mask` pixels, plus 'valid' (1 when the image has valid pixels).

    `pred` and `gt` are positive depths [B, H, W]; `mask` [B, H, W] float.
    """
    n = jnp.sum(mask, (1, 2))
    nz = jnp.maximum(n, 1.0)
    safe_gt = jnp.where(mask > 0, gt, 1.0)
    safe_pred = jnp.where(mask > 0, pred, 1.0)
    mean = lambda x: jnp.sum(mask * x, (1, 2)) / nz  # noqa: E731
    diff = safe_pred - safe_gt
    ratio = jnp.maximum(safe_pred / safe_gt, safe_gt / safe_pred)
    log_diff = jnp.log(safe_pred) - jnp.log(safe_gt)
    out = {
        'abs_rel': mean(jnp.abs(diff) / safe_gt),
        'sq_rel': mean(diff**2 / safe_gt),
        'rmse': jnp.sqrt(mean(diff**2)),
        'rmse_log': jnp.sqrt(mean(log_diff**2)),
        'log10': mean(jnp.abs(log_diff) / jnp.log(10.0)),
    }
    for k in (1, 2, 3):
        out[f'delta{k}'] = mean((ratio < 1.25**k).astype(jnp.float32))
    out['valid'] = (n > 0).astype(jnp.float32)
    return out


def prediction_to_depth(pred: jax.Array, gt: jax.Array, mask: jax.Array, *, prediction: str = 'inverse_depth',
                        align: str = 'scale_shift', min_depth: float = 1e-3,
                        max_depth: Optional[float] = None) -> jax.Array:
    """Depth [B, H, W] from a model prediction, aligned to the ground truth as configured, clipped to the range."""
    cap = max_depth if max_depth is not None else 1e8
    if prediction == 'inverse_depth':
        if align == 'scale_shift':
            target = jnp.where(mask > 0, 1.0 / jnp.where(mask > 0, gt, 1.0), 0.0)
            s, t = compute_scale_and_shift(pred, target, mask)
            pred = s[:, None, None] * pred + t[:, None, None]
        depth = 1.0 / jnp.maximum(pred, 1.0 / cap)
    elif prediction == 'depth':
        depth = pred
        if align == 'scale_shift':
            s, t = compute_scale_and_shift(pred, gt * mask, mask)
            depth = s[:, None, None] * pred + t[:, None, None]
    else:
        raise ValueError(f"evals prediction must be 'inverse_depth' or 'depth', got {prediction!r}.")
    if align == 'median':
        b = depth.shape[0]
        med_gt = _masked_median(gt.reshape(b, -1), mask.reshape(b, -1))
        med_pred = _masked_median(depth.reshape(b, -1), mask.reshape(b, -1))
        depth = depth * (med_gt / jnp.maximum(med_pred, 1e-8))[:, None, None]
    elif align not in ('scale_shift', 'none'):
        raise ValueError(f"evals align must be 'scale_shift', 'median' or 'none', got {align!r}.")
    return jnp.clip(depth, min_depth, cap)


@evaluators.register('depth')
class Depth(Evaluator):
    """Config: split, batch_size, every, dataset, data, prediction, align, min_depth, max_depth, crop, png_dir,
    png_count."""

    def __init__(self, name: str, cfg: Any, ctx: Any):
        super().__init__(name, cfg, ctx)
        self.prediction = cfg.get('prediction', 'inverse_depth')
        self.align = cfg.get('align', 'scale_shift')
        self.min_depth = float(cfg.get('min_depth', 1e-3))
        md = cfg.get('max_depth', None)
        self.max_depth = None if md is None else float(md)
        self.crop = cfg.get('crop', None)

    @functools.cached_property
    def _step(self):
        objective = self.ctx.objective

        @jax.jit
        def step(state, batch):
            p = objective.predict(state, batch)
            pred = p['prediction'] if self.prediction == 'inverse_depth' else p['output']
            if pred.ndim == 4:
                pred = pred[..., 0]
            gt = batch['depth'].astype(jnp.float32)
            valid = jnp.isfinite(gt) & (gt > self.min_depth)
            if self.max_depth is not None:
                valid = valid & (gt <= self.max_depth)
            mask = valid.astype(jnp.float32) * jnp.asarray(crop_mask(gt.shape[1:3], self.crop))[None]
            mask = mask * batch['mask'].astype(jnp.float32)[:, None, None]
            depth = prediction_to_depth(pred.astype(jnp.float32), gt, mask, prediction=self.prediction,
                                        align=self.align, min_depth=self.min_depth, max_depth=self.max_depth)
            m = per_image_metrics(depth, gt, mask)
            sums = {k: jnp.sum(m[k] * m['valid']) for k in METRICS}
            sums['count'] = jnp.sum(m['valid'])
            return sums, depth

        return step

    def run(self, state: Any) -> dict[str, float]:
        totals = None
        png_left = int(self.cfg.get('png_count', 4)) if self.cfg.get('png_dir', None) else 0
        items = []
        for batch in self.batches():
            sums, depth = self._step(state, batch)
            totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
            if png_left > 0:
                images, gts, masks = (to_host(batch[k]) for k in ('image', 'depth', 'mask'))
                depths = to_host(depth)
                for i in range(len(masks)):
                    if png_left > 0 and masks[i]:
                        items.append((images[i], depths[i], gts[i]))
                        png_left -= 1
        totals = jax.device_get(totals)
        n = max(float(totals['count']), 1.0)
        res = {k: float(totals[k]) / n for k in METRICS}
        res['num_images'] = int(totals['count'])
        if items:
            self._write_pngs(items, int(jax.device_get(getattr(state, 'step', 0))))
        return res

    def _write_pngs(self, items: list, step: int) -> None:
        from vit_jax.tools import dense_vis

        d = self.cfg.png_dir
        os.makedirs(d, exist_ok=True)
        vr = self.data.value_range
        for i, (image, depth, gt) in enumerate(items):
            valid = gt > self.min_depth
            lo = float(gt[valid].min()) if valid.any() else None
            hi = float(gt[valid].max()) if valid.any() else None
            panel = dense_vis.side_by_side([dense_vis.image_to_uint8(image, vr),
                                            dense_vis.colorize_depth(depth, lo, hi),
                                            dense_vis.colorize_depth(np.where(valid, gt, 0.0), lo, hi)])
            dense_vis.save_png(os.path.join(d, f'{self.name}_step{step}_{i}.png'), panel)
