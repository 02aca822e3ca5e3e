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

    def batch_size(self) -> int:
        """The global eval batch: `batch_size` of the entry, else config.eval_batch_size, else config.batch_size."""
        c = self.ctx.config
        return int(self.cfg.get('batch_size', None) or c.get('eval_batch_size', None) or c.batch_size)

    def data_specs(self) -> list[dict]:
        """The datasets this evaluator reads: [{split, dataset, data_config}] (checked before training starts).

        The default is the entry's `split` (default 'test'), `dataset` and `data`; evaluators reading other or more
        splits override this (an empty list skips the dataset check).
        """
        return [dict(split=self.cfg.get('split', None) or 'test', dataset=self.cfg.get('dataset', None),
                     data_config=self.cfg.get('data', None))]

    def check(self) -> None:
        """Raises ValueError naming `config.evals.<name>` when its batch size or data cannot work: called by the
        trainer before step 0, so that a typo does not cost a whole run (builds each dataset, reads no batch)."""
        from vit_jax.config_utils import ConfigError

        bs = self.batch_size()
        n, pc = self.ctx.mesh.size, jax.process_count()
        if bs < 1 or bs % n or bs % pc:
            raise ConfigError(f'config.evals.{self.name}: the eval batch size {bs} does not divide over the {n} '
                             f'devices ({pc} process(es)); set config.eval_batch_size (or evals.{self.name}.'
                             f'batch_size) to a multiple of {n}.')
        for spec in self.data_specs():
            try:
                self.ctx.make_dataset(spec['split'], batch_size=bs, train=False, dataset=spec.get('dataset', None),
                                      data_config=spec.get('data_config', None))
            except Exception as e:
                from vit_jax.data import DatasetNotPreparedError

                if isinstance(e, DatasetNotPreparedError):
                    raise  # Its own message already says how to prepare the dataset (or what to use instead).
                where = f"{spec.get('dataset', None) or self.ctx.config.dataset!r} split {spec['split']!r}"
                raise ConfigError(f'config.evals.{self.name} ({self.cfg.get("type", "")}): cannot read {where}: '
                                 f'{type(e).__name__}: {e}') from e

    def run(self, state: Any) -> dict[str, float]:
        raise NotImplementedError


def to_host(x: Any) -> np.ndarray:
    """A (possibly multi-host sharded) array as a numpy array on this host."""
    from jax.experimental import multihost_utils

    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)
