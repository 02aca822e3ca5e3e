"""Evaluators chosen by `type` in `config.evals`:

    config.evals = dict(val=dict(type='classification', split='test', every=500),
                        fewshot=dict(type='fewshot', ...))

Each entry becomes `Evaluator(name, entry, ctx)`; `run(state)` returns named figures, logged as `<name>/<figure>`.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

_REGISTRY: dict[str, type] = {}
# Modules imported on first lookup; add new evaluator modules here.
_MODULES = ('classification', 'fewshot', 'segmentation', 'depth', 'video', 'robustness', 'outpainting')


def register(name: str):
    """Class decorator registering an evaluator type."""

    def wrap(cls):
        _REGISTRY[name] = cls
        return cls

    return wrap


def get(name: str) -> type:
    """The evaluator class registered as `name`."""
    if name not in _REGISTRY:
        for m in _MODULES:
            try:
                importlib.import_module(f'vit_jax.evaluators.{m}')
            except ModuleNotFoundError as e:
                if e.name != f'vit_jax.evaluators.{m}':
                    raise
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        raise ValueError(f'Unknown evaluator type {name!r}' + (f' (did you mean {", ".join(close)}?)' if close else '')
                         + f'; registered: {", ".join(sorted(_REGISTRY))}.')
    return _REGISTRY[name]


def build_all(evals_config: Any, ctx: Any) -> dict:
    """Instantiates every entry of `config.evals`."""
    out = {}
    for name, cfg in (evals_config or {}).items():
        if 'type' not in cfg:
            raise ValueError(f"config.evals.{name} has no 'type'; e.g. type='classification'.")
        out[name] = get(cfg['type'])(name, cfg, ctx)
    return out
