"""Monocular depth: the scale-and-shift-invariant loss with gradient matching (MiDaS / DPT).

    config.objective = dict(type='depth', loss='ssi_mse', alpha=0.5, scales=4, target_space='disparity',
                            min_depth=1e-3, max_depth=None)

Batches hold 'image' [B, H, W, 3] and 'depth' [B, H, W] (metric or relative depth; values <= min_depth, above
max_depth or non-finite are invalid). The model predicts relative inverse depth [B, H, W] (DPT's depth head; its
out['inverse_depth'] is used when present). Targets are compared in `target_space`: 'disparity' (1 / depth, as
MiDaS / DPT) or 'depth'.

Losses (per image, then reduced over the batch as MiDaS: sum of per-image sums / sum of valid pixels):
- 'ssi_mse' (MiDaS's released `ScaleAndShiftInvariantLoss`): the prediction is aligned to the target by per-image
  least squares (scale s, shift t), data term sum(M (s d + t - d*)^2) / (2 sum M), plus `alpha` x the
  multi-scale gradient-matching term on the residual of the aligned prediction (`scales` levels, step 2^k).
- 'ssi_trim' (the MiDaS paper's L_ssitrim): both maps normalised per image by median and mean absolute deviation,
  absolute residuals with the largest `trim` fraction (20%) dropped, divided by 2M; plus `alpha` x gradient
  matching on the normalised residual.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from vit_jax import objectives
from vit_jax.data import dense as _dense  # noqa: F401  (registers the dense datasets and joint augmentation ops)
from vit_jax.objectives.base import Objective, TrainState


def valid_depth_mask(depth: jax.Array, min_depth: float = 1e-3, max_depth: Optional[float] = None) -> jax.Array:
    """Float mask of pixels with a usable target (finite, > min_depth, <= max_depth)."""
    m = jnp.isfinite(depth) & (depth > min_depth)
    if max_depth is not None:
        m = m & (depth <= max_depth)
    return m.astype(jnp.float32)


def compute_scale_and_shift(prediction: jax.Array, target: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-image least-squares (s, t) minimising sum(mask (s pred + t - target)^2); (0, 0) when singular.

    Args:
        prediction, target, mask: [B, H, W].

    Returns:
        (scale [B], shift [B]).
    """
    axes = (1, 2)
    a00 = jnp.sum(mask * prediction * prediction, axes)
    a01 = jnp.sum(mask * prediction, axes)
    a11 = jnp.sum(mask, axes)
    b0 = jnp.sum(mask * prediction * target, axes)
    b1 = jnp.sum(mask * target, axes)
    det = a00 * a11 - a01 * a01
    ok = det != 0
    safe = jnp.where(ok, det, 1.0)
    scale = jnp.where(ok, (a11 * b0 - a01 * b1) / safe, 0.0)
    shift = jnp.where(ok, (-a01 * b0 + a00 * b1) / safe, 0.0)
    return scale, shift


def _batch_reduce(image_loss: jax.Array, divisor: jax.Array) -> jax.Array:
    total = jnp.sum(divisor)
    return jnp.where(total > 0, jnp.sum(image_loss) / jnp.maximum(total, 1e-12), 0.0)


def gradient_matching_loss(prediction: jax.Array, target: jax.Array, mask: jax.Array, scales: int = 4
                           ) -> jax.Array:
    """MiDaS multi-scale gradient matching: sum over levels k (step 2^k) of sum |grad(M (pred - target))| / sum M."""
    total = 0.0
    for k in range(scales):
        step = 2**k
        p, t, m = prediction[:, ::step, ::step], target[:, ::step, ::step], mask[:, ::step, ::step]
        diff = m * (p - t)
        gx = jnp.abs(diff[:, :, 1:] - diff[:, :, :-1]) * (m[:, :, 1:] * m[:, :, :-1])
        gy = jnp.abs(diff[:, 1:, :] - diff[:, :-1, :]) * (m[:, 1:, :] * m[:, :-1, :])
        image_loss = jnp.sum(gx, (1, 2)) + jnp.sum(gy, (1, 2))
        total = total + _batch_reduce(image_loss, jnp.sum(m, (1, 2)))
    return total


def ssi_mse_loss(prediction: jax.Array, target: jax.Array, mask: jax.Array, alpha: float = 0.5, scales: int = 4
                 ) -> tuple[jax.Array, jax.Array]:
    """MiDaS's released scale-and-shift-invariant loss; returns (loss, aligned prediction)."""
    scale, shift = compute_scale_and_shift(prediction, target, mask)
    aligned = scale[:, None, None] * prediction + shift[:, None, None]
    res = aligned - target
    loss = _batch_reduce(jnp.sum(mask * res * res, (1, 2)), 2 * jnp.sum(mask, (1, 2)))
    if alpha > 0:
        loss = loss + alpha * gradient_matching_loss(aligned, target, mask, scales)
    return loss, aligned


def _masked_median(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-image lower median of the valid values ([B, N] -> [B]); 0 for an image without valid values."""
    n = jnp.sum(mask > 0, axis=1)
    s = jnp.sort(jnp.where(mask > 0, x, jnp.inf), axis=1)
    idx = jnp.maximum((n - 1) // 2, 0)
    med = jnp.take_along_axis(s, idx[:, None], axis=1)[:, 0]
    return jnp.where(n > 0, med, 0.0)


def normalize_median_mad(x: jax.Array, mask: jax.Array) -> jax.Array:
    """(x - median) / mean|x - median| per image over the valid pixels (the MiDaS paper's alignment)."""
    b = x.shape[0]
    flat, m = x.reshape(b, -1), mask.reshape(b, -1)
    med = _masked_median(flat, m)
    mad = jnp.sum(m * jnp.abs(flat - med[:, None]), 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
    return (x - med[:, None, None]) / jnp.maximum(mad, 1e-8)[:, None, None]


def ssi_trim_loss(prediction: jax.Array, target: jax.Array, mask: jax.Array, alpha: float = 0.5, scales: int = 4,
                  trim: float = 0.2) -> tuple[jax.Array, jax.Array]:
    """The MiDaS paper's trimmed scale-and-shift-invariant MAE (+ gradient matching); returns (loss, normalised)."""
    p = normalize_median_mad(prediction, mask)
    t = normalize_median_mad(target, mask)
    b = p.shape[0]
    res = (jnp.abs(p - t) * mask).reshape(b, -1)
    m = mask.reshape(b, -1)
    n = jnp.sum(m, 1)
    keep = jnp.floor((1.0 - trim) * n)
    ranked = jnp.sort(jnp.where(m > 0, res, jnp.inf), axis=1)
    kept = jnp.arange(ranked.shape[1])[None] < keep[:, None]
    image_loss = jnp.sum(jnp.where(kept, ranked, 0.0), 1)
    loss = _batch_reduce(image_loss, 2 * n)
    if alpha > 0:
        loss = loss + alpha * gradient_matching_loss(p, t, mask, scales)
    return loss, p


def depth_targets(depth: jax.Array, space: str, min_depth: float = 1e-3, max_depth: Optional[float] = None
                  ) -> tuple[jax.Array, jax.Array]:
    """(target in `space` ('disparity' or 'depth'), valid mask) from a depth map."""
    mask = valid_depth_mask(depth, min_depth, max_depth)
    safe = jnp.where(mask > 0, depth, 1.0)
    if space == 'disparity':
        return mask / safe, mask
    if space == 'depth':
        return safe * mask, mask
    raise ValueError(f"objective.target_space must be 'disparity' or 'depth', got {space!r}.")


@objectives.register('depth')
class Depth(Objective):
    """Relative depth with the MiDaS loss. Config: loss ('ssi_mse' | 'ssi_trim'), alpha, scales, trim, target_space,
    min_depth, max_depth."""

    def _prediction(self, logits: jax.Array, out: dict) -> jax.Array:
        pred = out.get('inverse_depth', logits) if isinstance(out, dict) else logits
        if pred.ndim == 4 and pred.shape[-1] == 1:
            pred = pred[..., 0]
        return pred.astype(jnp.float32)

    def loss(self, params: Any, model_state: Any, batch: dict, rng: jax.Array, train: bool = True):
        (logits, out), model_state = self.apply_model(params, model_state, batch['image'], train=train, rng=rng)
        cfg = self.config.objective
        pred = self._prediction(logits, out)
        max_depth = cfg.get('max_depth', None)
        target, mask = depth_targets(batch['depth'].astype(jnp.float32), cfg.get('target_space', 'disparity'),
                                     float(cfg.get('min_depth', 1e-3)), None if max_depth is None else float(max_depth))
        if pred.shape != target.shape:
            raise ValueError(f'Depth: prediction {pred.shape} and target {target.shape} differ; the model must return '
                             'a per-pixel map [B, H, W] at the input resolution.')
        kind = cfg.get('loss', 'ssi_mse')
        alpha, scales = float(cfg.get('alpha', 0.5)), int(cfg.get('scales', 4))
        if kind == 'ssi_mse':
            loss, aligned = ssi_mse_loss(pred, target, mask, alpha, scales)
            err = jnp.abs(aligned - target)
        elif kind == 'ssi_trim':
            loss, _ = ssi_trim_loss(pred, target, mask, alpha, scales, float(cfg.get('trim', 0.2)))
            scale, shift = compute_scale_and_shift(pred, target, mask)
            err = jnp.abs(scale[:, None, None] * pred + shift[:, None, None] - target)
        else:
            raise ValueError(f"objective.loss must be 'ssi_mse' or 'ssi_trim', got {kind!r}.")
        rel = jnp.sum(mask * err / jnp.where(mask > 0, jnp.abs(target), 1.0)) / jnp.maximum(jnp.sum(mask), 1.0)
        return loss, ({'loss': loss, 'aligned_rel_error': rel}, model_state)

    def predict(self, state: TrainState, batch: dict) -> dict:
        (logits, out), _ = self.apply_model(self.eval_params(state), state.model_state, batch['image'], train=False,
                                            rng=None)
        return {'prediction': self._prediction(logits, out), 'output': logits}
