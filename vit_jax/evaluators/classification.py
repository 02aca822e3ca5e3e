"""Top-1 / top-5 accuracy and loss over a whole split (padding masked out, so the counts are exact)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from vit_jax import evaluators
from vit_jax.evaluators.base import Evaluator


@evaluators.register('classification')
class Classification(Evaluator):
    """Config: split, batch_size, every, dataset (defaults to the training dataset)."""

    @functools.cached_property
    def _step(self):
        objective = self.ctx.objective

        @jax.jit
        def step(state, batch):
            logits = objective.predict(state, batch)['logits']
            mask = batch['mask'].astype(jnp.float32)
            labels = batch['label']
            top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return {'correct': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
                    'correct5': jnp.sum(jnp.any(top5 == labels[:, None], -1) * mask),
                    'loss': jnp.sum(loss * mask), 'count': jnp.sum(mask)}

        return step

    def run(self, state: Any) -> dict[str, float]:
        totals = None
        for batch in self.batches():
            m = self._step(state, batch)
            totals = m if totals is None else jax.tree_util.tree_map(jnp.add, totals, m)
        totals = jax.device_get(totals)
        n = max(float(totals['count']), 1.0)
        return {'accuracy': float(totals['correct']) / n, 'top5': float(totals['correct5']) / n,
                'loss': float(totals['loss']) / n, 'num_examples': int(totals['count'])}
