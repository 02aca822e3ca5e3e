"""Semantic segmentation: per-pixel softmax cross-entropy with an ignore label (Segmenter, DPT).

    config.objective = dict(type='segmentation', ignore_label=255, aux_weight=0.0, label_smoothing=0.0)

Batches hold 'image' [B, H, W, 3] and 'label' [B, H, W] (int class per pixel; `ignore_label` pixels do not count).
The model returns logits [B, H, W, K] at the input resolution (and optionally out['aux_logits'], e.g. DPT's
auxiliary head, weighted by `aux_weight`). The loss is the mean over all valid pixels of the batch (PyTorch's
CrossEntropyLoss(ignore_index=...) reduction); a batch without valid pixels has loss 0.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from vit_jax import objectives
from vit_jax.data import dense as _dense  # noqa: F401  (registers the dense datasets and joint augmentation ops)
from vit_jax.objectives.base import Objective, TrainState


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int = 255,
                        label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Per-pixel cross-entropy and the validity mask.

    Args:
        logits: [..., K] float.
        labels: [...] int; `ignore_label` (and any value outside [0, K)) marks pixels without a target.
        ignore_label: the label of pixels to ignore.
        label_smoothing: mass spread uniformly over the K classes.

    Returns:
        (loss [...] with 0 on ignored pixels, valid [...] float mask).
    """
    k = logits.shape[-1]
    labels = labels.astype(jnp.int32)
    valid = (labels != ignore_label) & (labels >= 0) & (labels < k)
    safe = jnp.where(valid, labels, 0)
    logits = logits.astype(jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(safe, k), label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets)
    else:
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    valid = valid.astype(jnp.float32)
    return loss * valid, valid


def masked_mean_loss(logits: jax.Array, labels: jax.Array, ignore_label: int = 255,
                     label_smoothing: float = 0.0) -> jax.Array:
    """Mean cross-entropy over the valid pixels of the whole batch (0 when there are none)."""
    loss, valid = pixel_cross_entropy(logits, labels, ignore_label, label_smoothing)
    return loss.sum() / jnp.maximum(valid.sum(), 1.0)


@objectives.register('segmentation')
class Segmentation(Objective):
    """Per-pixel classification. Config: objective.ignore_label (255), aux_weight (0), label_smoothing (0)."""

    def loss(self, params: Any, model_state: Any, batch: dict, rng: jax.Array, train: bool = True):
        (logits, out), model_state = self.apply_model(params, model_state, batch['image'], train=train, rng=rng)
        cfg = self.config.objective
        ignore = int(cfg.get('ignore_label', 255))
        smoothing = float(cfg.get('label_smoothing', 0.0) or 0.0)
        labels = batch['label']
        if logits.shape[:3] != labels.shape[:3]:
            raise ValueError(f'Segmentation: logits {logits.shape} and labels {labels.shape} differ in [B, H, W]; the '
                             'model must return per-pixel logits at the input resolution.')
        loss = masked_mean_loss(logits, labels, ignore, smoothing)
        metrics = {'main_loss': loss}
        aux_weight = float(cfg.get('aux_weight', 0.0) or 0.0)
        if aux_weight and 'aux_logits' in out:
            aux = masked_mean_loss(out['aux_logits'], labels, ignore, smoothing)
            metrics['aux_loss'] = aux
            loss = loss + aux_weight * aux
        valid = (labels != ignore).astype(jnp.float32)
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32) * valid
        metrics.update(loss=loss, pixel_accuracy=correct.sum() / jnp.maximum(valid.sum(), 1.0))
        return loss, (metrics, model_state)

    def predict(self, state: TrainState, batch: dict) -> dict:
        (logits, _), _ = self.apply_model(self.eval_params(state), state.model_state, batch['image'], train=False,
                                          rng=None)
        return {'logits': logits}
