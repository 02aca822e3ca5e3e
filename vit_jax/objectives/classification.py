"""Supervised classification: softmax (or sigmoid) cross-entropy with label smoothing and soft labels."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from vit_jax import objectives
from vit_jax.objectives.base import Objective, TrainState


def soft_targets(batch: dict, num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
    """Target distributions: `batch['label_dist']` when the pipeline mixes labels (mixup/CutMix), else one-hot."""
    if 'label_dist' in batch:
        t = batch['label_dist'].astype(jnp.float32)
    else:
        t = jax.nn.one_hot(batch['label'], num_classes)
    if label_smoothing:
        t = t * (1.0 - label_smoothing) + label_smoothing / num_classes
    return t


def cross_entropy(logits: jax.Array, targets: jax.Array, kind: str = 'softmax') -> jax.Array:
    """Per-example loss: 'softmax' cross-entropy, or 'sigmoid' (summed over classes, as AugReg/big_vision).

    Taken in float32 whatever the compute dtype (bfloat16 logits lose the small probabilities).
    """
    logits = logits.astype(jnp.float32)
    if kind == 'softmax':
        return optax.softmax_cross_entropy(logits, targets)
    if kind == 'sigmoid':
        return optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1)
    raise ValueError(f"objective.loss must be 'softmax' or 'sigmoid', got {kind!r}.")


@objectives.register('classification')
class Classification(Objective):
    """Image (or video) classification. Config: objective.label_smoothing, objective.loss ('softmax'|'sigmoid')."""

    def loss(self, params: Any, model_state: Any, batch: dict, rng: jax.Array, train: bool = True):
        (logits, _), model_state = self.apply_model(params, model_state, batch['image'], train=train, rng=rng)
        cfg = self.config.objective
        targets = soft_targets(batch, logits.shape[-1], float(cfg.get('label_smoothing', 0.0)))
        per_example = cross_entropy(logits, targets, cfg.get('loss', 'softmax'))
        loss = per_example.mean()
        hard = jnp.argmax(targets, -1)
        metrics = {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == hard)}
        return loss, (metrics, model_state)

    def predict(self, state: TrainState, batch: dict) -> dict:
        (logits, _), _ = self.apply_model(self.eval_params(state), state.model_state, batch['image'], train=False,
                                          rng=None)
        return {'logits': logits}
