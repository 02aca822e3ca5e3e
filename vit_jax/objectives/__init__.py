"""Training objectives (tasks): each declares its loss, metrics and predictions, and where it needs them a batch hook,
frozen networks and several trainable groups; the one updater in `objectives.base` trains them all.

    @objectives.register('classification')
    class Classification(Objective): ...

`config.objective.type` picks one; the trainer calls `setup`, `init_state`, `train_step` and `predict` only.
"""

from __future__ import annotations

from typing import Any

from vit_jax import registry

# Modules imported on first lookup; add new objective modules here.
_MODULES = ('classification', 'segmentation', 'depth', 'mim', 'milan', 'adversarial', 'outpainting', 'vqgan',
            'distillation')
OBJECTIVES = registry.Registry('objective', modules=tuple(f'vit_jax.objectives.{m}' for m in _MODULES))
register = OBJECTIVES.register  # Class decorator registering an objective under a name.
get = OBJECTIVES.get  # The objective class registered under a name.


def build(config: Any, model: Any) -> Any:
    """Instantiates `config.objective.type` for `model`."""
    return get(config.objective.type)(config, model)
