"""Evaluator interface, the context the trainer hands to every evaluator, and the data an evaluator reads."""

from __future__ import annotations

import dataclasses
import functools
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


def _items(config: Any) -> list[tuple[str, Any]]:
    if config is None:
        return []
    return list((config.to_dict() if hasattr(config, 'to_dict') else dict(config)).items())


def eval_data_config(dataset: str, *configs: Any) -> dict:
    """The effective data config of an evaluation pipeline, as `vit_jax.data.get_dataset` builds it: the pipeline
    defaults, then the built-in dataset's own defaults, then each of `configs` in order (the run's `data`, an
    evaluator's `data` ...), None values skipped."""
    from vit_jax.data import datasets, pipeline

    cfg = dict(pipeline.DEFAULTS)
    try:
        found = datasets.find_builtin(str(dataset or ''))
        cfg.update(found[0].defaults if found else {})
    except ValueError:  # A prefix dataset without its argument: get_dataset says so when it is built.
        pass
    for c in configs:
        cfg.update({k: v for k, v in _items(c) if v is not None})
    return cfg


@dataclasses.dataclass(frozen=True)
class EvalData:
    """What one `config.evals` entry reads of the run config (`Evaluator.data`)."""

    dataset: str  # The entry's `dataset`, else the run's.
    split: str  # The entry's `split`, else 'test'.
    batch_size: int  # Global: the entry's `batch_size`, else config.eval_batch_size, else config.batch_size.
    data_config: Optional[dict]  # The entry's `data` (make_dataset puts it over the run's).
    run_data: dict  # The run's `data`.
    config: dict  # The effective data config (`eval_data_config`): defaults < dataset's < run's < entry's.
    seed: int  # The run's seed.

    @property
    def value_range(self) -> tuple[float, float]:
        """The model input range of the pipeline's `value_range` op (the config's, default (-1, 1))."""
        vr = self.config.get('value_range', None) or (-1.0, 1.0)
        return float(vr[0]), float(vr[1])


def eval_data(entry: Any, config: Any) -> EvalData:
    """The `EvalData` of the evaluator entry `entry` (a `config.evals` item) of the run config `config`."""
    dataset = entry.get('dataset', None) or config.get('dataset', None) or ''
    data = entry.get('data', None)
    data = None if data is None else dict(_items(data))
    run_data = dict(_items(config.get('data', None)))
    bs = entry.get('batch_size', None) or config.get('eval_batch_size', None) or config.get('batch_size', None)
    return EvalData(dataset=str(dataset), split=str(entry.get('split', None) or 'test'), batch_size=int(bs or 0),
                    data_config=data, run_data=run_data, config=eval_data_config(dataset, run_data, data),
                    seed=int(config.get('seed', 0) or 0))


class Evaluator:
    """Base evaluator: `run(state) -> {figure: float}`; `every` (steps) says how often the trainer calls it.

    Evaluators read the run config through `self.data` (dataset, split, batch size, data config, value range) and
    build their data with `self.dataset(...)` (host-local batches) or `self.batches(...)` (global batches).
    """

    def __init__(self, name: str, cfg: Any, ctx: Context):
        self.name = name
        self.cfg = cfg
        self.ctx = ctx
        self.every = int(cfg.get('every', ctx.config.get('eval_every', 0)) or 0)

    @functools.cached_property
    def data(self) -> EvalData:
        """The entry's dataset, split, global batch size and data config, resolved against the run config."""
        return eval_data(self.cfg, self.ctx.config)

    def batch_size(self) -> int:
        """The global eval batch: `batch_size` of the entry, else config.eval_batch_size, else config.batch_size."""
        return self.data.batch_size

    def dataset(self, split: Optional[str] = None, *, dataset: Optional[str] = None,
                data_config: Optional[dict] = None, **kw) -> Any:
        """This process's eval dataset (one padded pass, with 'mask') of `split` (default: the entry's), of
        `dataset` (default: the entry's, else the run's) with `data_config` (default: the entry's `data`) over the
        run's data config, at the eval batch size."""
        d = self.data
        return self.ctx.make_dataset(split or d.split, batch_size=d.batch_size, train=False,
                                     dataset=dataset or d.dataset or None,
                                     data_config=d.data_config if data_config is None else data_config, **kw)

    def batches(self, split: Optional[str] = None, **kw) -> Iterator[dict]:
        """Global (sharded) batches of `self.dataset(split, **kw)`, with the padding 'mask'."""
        for b in self.dataset(split, **kw):
            yield sharding.to_global(b, self.ctx.mesh)

    def data_specs(self) -> list[dict]:
        """The datasets this evaluator reads: [{split, dataset, data_config}] (checked before training starts).

        The default is the entry's `split` (default 'test'), `dataset` and `data`; evaluators reading other or more
        splits override this (an empty list skips the dataset check).
        """
        return [dict(split=self.data.split, dataset=self.cfg.get('dataset', None), data_config=self.data.data_config)]

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
                where = f"{spec.get('dataset', None) or self.data.dataset!r} split {spec['split']!r}"
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
