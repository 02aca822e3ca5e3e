"""Training objectives: each owns its loss, its metrics and (where it needs one) its own train step.

    @objectives.register('classification')
    class Classification(Objective): ...

`config.objective.type` picks one; the trainer calls `init_state`, `train_step` and `predict` only.
"""

from __future__ import annotations

from typing import Any

from vit_jax import registry

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
    registry.import_optional(f'vit_jax.objectives.{m}' for m in _MODULES)


def get(name: str) -> type:
    """The objective class registered as `name`."""
    if name not in _REGISTRY:
        _load()
    if name not in _REGISTRY:
        raise registry.unknown_name('objective', name, _REGISTRY)
    return _REGISTRY[name]


def build(config: Any, model: Any) -> Any:
    """Instantiates `config.objective.type` for `model`."""
    return get(config.objective.type)(config, model)
