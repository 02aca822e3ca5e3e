"""Video accuracy with multi-view testing (temporal clips x spatial crops, softmax scores averaged).

    config.evals.val = dict(type='video', split='test', temporal_views=1, spatial_crops=3, every=1000)

The TimeSformer protocol is 1 temporal clip x 3 spatial crops (left, centre, right of the frames scaled to the
crop size); SlowFast-style models use 10 x 3. Each video's views come from the `video_multi_view` op (see
`vit_jax.data.video`), batches are [B, V, T, H, W, 3] and `batch_size` counts videos (B*V clips per forward pass).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from vit_jax import evaluators
from vit_jax.data import video as video_data
from vit_jax.evaluators.base import Evaluator


@evaluators.register('video')
class VideoAccuracy(Evaluator):
    """Config: split, batch_size (videos), every, temporal_views (1), spatial_crops (3), average ('softmax' or
    'logits'), dataset, data (data-config overrides, e.g. test_short_side).

    Figures: 'accuracy' and 'top5' of the averaged scores, 'accuracy_1view' (the centre crop of the first clip
    alone), 'loss' (NLL of the averaged softmax), 'num_examples', 'views'.
    """

    @property
    def views(self) -> tuple[int, int]:
        """(temporal clips, spatial crops) per video."""
        return int(self.cfg.get('temporal_views', 1)), int(self.cfg.get('spatial_crops', 3))

    def data_specs(self) -> list[dict]:
        return [dict(split=self.data.split, dataset=self.cfg.get('dataset', None), data_config=self.data_config())]

    def data_config(self) -> dict:
        """The data config of the evaluation pipeline: multi-view test op and the model's clip length."""
        tv, sc = self.views
        d = dict(self.data.data_config or {})
        d.setdefault('eval_pp', f'video_multi_view({tv}, {sc})')
        if 'num_frames' not in d and 'num_frames' not in self.data.run_data and hasattr(self.ctx.model, 'num_frames'):
            d['num_frames'] = int(self.ctx.model.num_frames)
        return d

    @functools.cached_property
    def _step(self):
        objective = self.ctx.objective
        average = self.cfg.get('average', 'softmax')
        centre = self.views[1] // 2

        @jax.jit
        def step(state, batch):
            clips = batch['image']
            if clips.ndim == 5:  # Single-view pipelines ([B, T, H, W, C]) work too.
                clips = clips[:, None]
            b, v = clips.shape[:2]
            logits = objective.predict(state, {'image': clips.reshape(b * v, *clips.shape[2:])})['logits']
            logits = logits.reshape(b, v, -1)
            scores = video_data.average_views(logits, average)
            mask = batch['mask'].astype(jnp.float32)
            labels = batch['label']
            top5 = jax.lax.top_k(scores, min(5, scores.shape[-1]))[1]
            probs = scores if average == 'softmax' else jax.nn.softmax(scores, -1)
            nll = -jnp.log(jnp.maximum(jnp.take_along_axis(probs, labels[:, None], -1)[:, 0], 1e-12))
            one = jnp.argmax(logits[:, min(centre, v - 1)], -1)
            return {'correct': jnp.sum((jnp.argmax(scores, -1) == labels) * mask),
                    'correct5': jnp.sum(jnp.any(top5 == labels[:, None], -1) * mask),
                    'correct_1view': jnp.sum((one == labels) * mask),
                    'loss': jnp.sum(nll * mask), 'count': jnp.sum(mask)}

        return step

    def run(self, state: Any) -> dict[str, float]:
        totals = None
        for batch in self.batches(data_config=self.data_config()):
            m = self._step(state, batch)
            totals = m if totals is None else jax.tree_util.tree_map(jnp.add, totals, m)
        totals = jax.device_get(totals)
        n = max(float(totals['count']), 1.0)
        tv, sc = self.views
        return {'accuracy': float(totals['correct']) / n, 'top5': float(totals['correct5']) / n,
                'accuracy_1view': float(totals['correct_1view']) / n, 'loss': float(totals['loss']) / n,
                'num_examples': int(totals['count']), 'views': tv * sc}

