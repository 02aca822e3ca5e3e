"""Evaluators chosen by `type` in `config.evals`:

    config.evals = dict(val=dict(type='classification', split='test', every=500),
                        fewshot=dict(type='fewshot', ...))

Each entry becomes `Evaluator(name, entry, ctx)`; `run(state)` returns named figures, logged as `<name>/<figure>`.
"""

from __future__ import annotations

from typing import Any

from vit_jax import registry

# Modules imported on first lookup; add new evaluator modules here.
_MODULES = ('classification', 'fewshot', 'segmentation', 'depth', 'video', 'robustness', 'outpainting')
EVALUATORS: registry.Registry[type] = registry.Registry('evaluator type',
                                                      modules=(f'vit_jax.evaluators.{m}' for m in _MODULES))


def register(name: str):
    """Class decorator registering an evaluator type."""
    return EVALUATORS.register(name)


def get(name: str) -> type:
    """The evaluator class registered as `name`."""
    return EVALUATORS.get(name)


def build_all(evals_config: Any, ctx: Any) -> dict:
    """Instantiates every entry of `config.evals`."""
    out = {}
    for name, cfg in (evals_config or {}).items():
        if 'type' not in cfg:
            raise ValueError(f"config.evals.{name} has no 'type'; e.g. type='classification'.")
        out[name] = get(cfg['type'])(name, cfg, ctx)
    return out
