"""`models.load(spec) -> (model, variables)`: another model named in a config (a teacher, a judge, a frozen tokenizer,
a trained run for inference), with its weights. Kept out of `vit_jax/models/` (pure architecture: no checkpoint code);
`models.load`, `models.as_spec`, `models.ModelSpec` and `models.load_variables` are these.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import checkpoint, models


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which variant, its options, and where its weights come from (see `load`)."""

    name: str
    overrides: dict
    weights: Optional[str] = None  # None: a random init (a stand-in; callers decide whether that is allowed).


def _tuples(v: Any) -> Any:
    """JSON lists (a run's config.json) back to the tuples model fields expect."""
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _as_dict(x: Any) -> dict:
    return dict(x.to_dict()) if hasattr(x, 'to_dict') else dict(x)


def _workdir_model(path: str) -> dict:
    model = checkpoint.workdir_model_config(checkpoint._split_subtree(path)[0])
    if not model or 'name' not in model:
        raise ValueError(f'{path}: no config.json with a model next to the checkpoint; name the model: '
                         "dict(model=dict(name='ViT-B/16', ...), weights=PATH).")
    return model


def as_spec(spec: Any) -> ModelSpec:
    """Normalises any accepted spec form (see `load`) into a `ModelSpec`."""
    if isinstance(spec, ModelSpec):
        return spec
    if isinstance(spec, str):
        if spec in models.MODELS or not os.path.exists(checkpoint._split_subtree(spec)[0]):
            return ModelSpec(models.MODELS.resolve(spec), {})  # An unknown name: a ValueError with close matches.
        spec = {'weights': spec}
    if not isinstance(spec, Mapping) and not hasattr(spec, 'get'):
        raise ValueError(f"A model spec is dict(model=dict(name=..., **options), weights=PATH); got {spec!r}.")
    spec = _as_dict(spec)
    given = [k for k in ('weights', 'checkpoint', 'workdir') if spec.get(k) is not None]
    if len(given) > 1:
        raise ValueError(f'A model spec names its weights once (weights=PATH); got {given} in {spec!r}.')
    weights = str(spec[given[0]]) if given else None
    model = spec.get('model', None)
    if model is None:
        if weights is None:
            raise ValueError(f"A model spec needs a model (model=dict(name='ViT-B/16', ...)) or a run's workdir "
                             f'(weights=DIR, the model from its config.json); got {spec!r}.')
        model = _workdir_model(weights)
    if isinstance(model, str):
        model = {'name': model}
    model = _as_dict(model)
    if 'name' not in model:
        raise ValueError(f"A model spec's model needs a registered name: model=dict(name='ViT-B/16', ...); got "
                         f'{model!r}.')
    overrides = {k: _tuples(v) for k, v in model.items() if k != 'name'}
    overrides.update({k: _tuples(v) for k, v in _as_dict(spec.get('overrides', None) or {}).items()})
    return ModelSpec(str(model['name']), overrides, weights)


def load(spec: Any, *, defaults: Optional[Mapping[str, Any]] = None, seed: int = 0) -> tuple[nn.Module, dict]:
    """(model, variables) of another model described by `spec`, variables as host (numpy) arrays.

    The one spec format (a dict or ConfigDict; other keys are left to the caller, e.g. a teacher's `tokens`):

        dict(model=dict(name='ViT-B/16', num_classes=10, ...),   # a registered name and its options, as a run's
                                                                 # config.model
             weights='workdirs/run1')                            # where the weights come from (optional)

    `weights` is a `.npz` parameter file (non-trainable collections under `model_state/...`), a run's workdir (its
    latest good checkpoint), its `checkpoints/` directory or one step, each optionally with a `:subtree` suffix
    (`checkpoint.load_params`). A checkpoint gives the weights the run evaluates with: the EMA weights when it kept
    them (`workdir:params` picks the raw ones). Without `model` the model is the one in the workdir's config.json.
    Without `weights` the model gets a fixed-seed random init (`seed`): a stand-in, for tests and smoke runs;
    callers that need real weights check `as_spec(spec).weights` first.

    Also accepted (older configs): `model='ViT-B/16'` with `overrides=dict(...)`, `checkpoint=` or `workdir=` for
    `weights=`; a string: a registered name (random init) or a workdir.

    Args:
        spec: as above.
        defaults: model options used when the spec does not set them and the model has them (e.g. the run's
            `image_size` for a frozen network).
        seed: the random init's seed (without weights).

    Returns:
        (the flax module, {'params': ..., other collections such as 'batch_stats'}); position embeddings are
        resampled when the weights' token grid differs from the model's.

    Raises:
        ValueError: an unknown model or option, a spec without a model, weights that do not match the model
            (`checkpoint.CheckpointMismatchError`, naming the keys), or a model whose non-trainable collections
            the weights do not hold.
    """
    s = as_spec(spec)
    overrides = dict(s.overrides)
    if defaults:
        fields = models.model_fields(models.get_entry(s.name).cls)
        overrides.update({k: v for k, v in defaults.items() if k in fields and k not in overrides})
    model = models.get_model(s.name, **overrides)
    if s.weights is None:
        x = jnp.zeros(models.input_shape(model, 1), jnp.float32)
        variables = jax.jit(lambda: model.init(jax.random.PRNGKey(seed), x, train=False))()
        variables = {k: v for k, v in variables.items() if k != 'intermediates'}
        return model, jax.tree_util.tree_map(np.asarray, variables)
    return model, load_variables(model, s.weights)


def load_variables(model: nn.Module, weights: str) -> dict:
    """The variables of `model` from `weights` (a `.npz`, workdir or checkpoint; see `load`), as numpy arrays."""
    shapes = models.init_shapes(model)
    params, model_state = checkpoint.load_for_inference(weights)
    source = checkpoint._split_subtree(weights)[0]
    old_grid = None if os.path.isfile(source) else checkpoint._grid_of_model_config(
        checkpoint.workdir_model_config(source))
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes['params'])
    params = checkpoint.load_pretrained(zeros, params, dont_load=(), old_grid=old_grid,
                                        new_grid=checkpoint.model_grid(model))
    other = [k for k in shapes if k not in ('params', 'intermediates')]
    missing = sorted(set(other) - set(model_state))
    if missing:
        raise ValueError(f'The model needs the collections {missing} (e.g. BatchNorm statistics), which '
                         f"{weights} does not hold: use the run's Orbax checkpoint (its workdir).")
    variables = {'params': params, **{k: model_state[k] for k in other}}
    return jax.tree_util.tree_map(np.asarray, variables)


def load_pretrained(model: nn.Module, init_params: Any, path: Any, *, dont_load: Sequence[str] = (),
                    old_grid: Any = None, new_grid: Any = None) -> dict:
    """`config.init_from`: the weights at `path` (see `checkpoint.load_pretrained`) merged into `model`'s fresh
    `init_params`. A family whose class defines `init_from_checkpoint(init_params, source, *, dont_load)` applies its
    own rule first where it returns parameters (a TimeSformer from an image ViT checkpoint: temporal attentions copied
    from the spatial ones); otherwise, and for every other family, `checkpoint.load_pretrained`."""
    hook = getattr(model, 'init_from_checkpoint', None)
    if hook is not None:
        source = checkpoint.load_params(path) if isinstance(path, str) else path
        params = hook(init_params, source, dont_load=tuple(dont_load))
        if params is not None:
            return params
    return checkpoint.load_pretrained(init_params, path, tuple(dont_load), old_grid=old_grid, new_grid=new_grid)
