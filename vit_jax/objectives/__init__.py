"""Training objectives: each owns its loss, its metrics and (where it needs one) its own train step.

    @objectives.register('classification')
    class Classification(Objective): ...

`config.objective.type` picks one; the trainer calls `init_state`, `train_step` and `predict` only.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

_REGISTRY: dict[str, type] = {}
# Modules imported on first lookup; add new objective modules here.
_MODULES = ('classification', 'segmentation', 'depth', 'mim', 'milan', 'adversarial', 'outpainting', 'vqgan',
            'distillation')


def register(name: str):
    """Class decorator registering an objective under `name`."""

    def wrap(cls):
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load() -> None:
    for m in _MODULES:
        try:
            importlib.import_module(f'vit_jax.objectives.{m}')
        except ModuleNotFoundError as e:
            if e.name != f'vit_jax.objectives.{m}':
                raise


def get(name: str) -> type:
    """The objective class registered as `name`."""
    if name not in _REGISTRY:
        _load()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        raise ValueError(f'Unknown objective {name!r}' + (f' (did you mean {", ".join(close)}?)' if close else '')
                         + f'; registered: {", ".join(sorted(_REGISTRY))}.')
    return _REGISTRY[name]


def build(config: Any, model: Any) -> Any:
    """Instantiates `config.objective.type` for `model`."""
    return get(config.objective.type)(config, model)
