"""Evaluator interface and the context the trainer hands to every evaluator."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np

from vit_jax import sharding


@dataclasses.dataclass
class Context:
    """What an evaluator may use: the run's config, model, objective, mesh and a dataset factory."""

    config: Any
    model: Any
    objective: Any
    mesh: Any
    image_size: tuple[int, int]
    # make_dataset(split, *, batch_size, train=False, dataset=None, data_config=None) -> vit_jax.data dataset.
    make_dataset: Callable[..., Any]
    # The run's folder: evaluators that write files (plots, curves) put them under it. None outside a run.
    workdir: Optional[str] = None


class Evaluator:
    """Base evaluator: `run(state) -> {figure: float}`; `every` (steps) says how often the trainer calls it."""

    def __init__(self, name: str, cfg: Any, ctx: Context):
        self.name = name
        self.cfg = cfg
        self.ctx = ctx
        self.every = int(cfg.get('every', ctx.config.get('eval_every', 0)) or 0)

    def batches(self, split: str | None = None, **kw) -> Iterator[dict]:
        """Global (sharded) batches of the evaluator's split, with the padding 'mask'."""
        cfg = self.cfg
        bs = int(cfg.get('batch_size', self.ctx.config.get('eval_batch_size', None) or self.ctx.config.batch_size))
        ds = self.ctx.make_dataset(split or cfg.get('split', 'test'), batch_size=bs, train=False,
                                   dataset=cfg.get('dataset', None), data_config=cfg.get('data', None), **kw)
        for b in ds:
            yield sharding.to_global(b, self.ctx.mesh)

    def run(self, state: Any) -> dict[str, float]:
        raise NotImplementedError


def to_host(x: Any) -> np.ndarray:
    """A (possibly multi-host sharded) array as a numpy array on this host."""
    from jax.experimental import multihost_utils

    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)
