"""Model registry: every variant under its paper's name.

    from vit_jax import models
    models.list_models()
    model = models.get_model('ViT-B/16', num_classes=1000, image_size=384)
    variables = model.init(rng, images, train=False)
    logits, out = model.apply(variables, images, train=False)
    models.count_params('CvT-13')   # via jax.eval_shape: no weights are materialised

A family module registers its variants at import time with `register(name, ModuleClass, **defaults)`; the
module class must accept `num_classes` and `image_size` (video models also `num_frames`) and may define
`input_shape(batch)` (default: (batch, H, W, 3) from `image_size`).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A registered variant: the module class and its default field values."""

    name: str
    cls: type
    defaults: dict
    paper: str = ''


_REGISTRY: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}

# Family modules imported on first use of the registry. Add a new family here.
_FAMILIES = (
    'vit', 'cct', 'dhvt', 'dtn', 'cvt', 't2t', 'crossvit', 'timesformer', 'segmenter', 'dpt', 'beit', 'milan',
    'vqgan', 'queryotr',
)
_loaded = False


def register(name: str, cls: type, *, aliases: tuple[str, ...] = (), paper: str = '', **defaults: Any) -> None:
    """Registers `cls(**defaults)` under `name` (and `aliases`)."""
    if name in _REGISTRY:
        raise ValueError(f'Model {name!r} is registered twice.')
    _REGISTRY[name] = ModelEntry(name, cls, dict(defaults), paper)
    for a in aliases:
        _ALIASES[a] = name


def _load_families() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for fam in _FAMILIES:
        try:
            importlib.import_module(f'vit_jax.models.{fam}')
        except ModuleNotFoundError as e:
            if e.name != f'vit_jax.models.{fam}':
                raise


def list_models(paper: Optional[str] = None) -> list[str]:
    """Names of every registered variant (optionally only those of one paper tag, e.g. 'vit')."""
    _load_families()
    return [n for n, e in _REGISTRY.items() if paper is None or e.paper == paper]


def get_entry(name: str) -> ModelEntry:
    """The registry entry of `name` (or one of its aliases); raises a ValueError listing close matches."""
    _load_families()
    name = _ALIASES.get(name, name)
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY) + list(_ALIASES), n=5, cutoff=0.5)
        hint = f' Did you mean: {", ".join(close)}?' if close else ''
        raise ValueError(f'Unknown model {name!r}.{hint} Registered models: {", ".join(sorted(_REGISTRY))}.')
    return _REGISTRY[name]


def get_model(name: str, **overrides: Any) -> nn.Module:
    """Builds the flax module of a registered variant; `overrides` replace any of its fields."""
    entry = get_entry(name)
    fields = {f.name for f in dataclasses.fields(entry.cls)} - {'parent', 'name'}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        msgs = []
        for k in unknown:
            close = difflib.get_close_matches(k, fields, n=3)
            msgs.append(f'{k!r}' + (f' (did you mean {", ".join(close)}?)' if close else ''))
        raise ValueError(f'{name} ({entry.cls.__name__}) has no option {", ".join(msgs)}. '
                         f'Its options: {", ".join(sorted(fields))}.')
    kw = {**entry.defaults, **overrides}
    if 'dtype' in kw and isinstance(kw['dtype'], str):
        kw['dtype'] = compute_dtype(kw['dtype'])
    return entry.cls(**kw)


def compute_dtype(name: str) -> Any:
    """The mixed-precision policy: `'auto'` is bfloat16 compute on accelerators (GPU, TPU) and float32 on CPUs.

    Parameters stay float32 whatever the compute dtype (flax's `param_dtype` default); the objectives take their
    losses in float32 (logits are cast before the softmax). Any other name is a numpy dtype name ('bfloat16', ...).
    """
    if name == 'auto':
        return jnp.dtype(jnp.bfloat16) if jax.default_backend() in ('gpu', 'tpu') else jnp.dtype(jnp.float32)
    try:
        return jnp.dtype(name)
    except TypeError:
        raise ValueError(f"model.dtype={name!r} is not a dtype; use 'auto', 'float32' or 'bfloat16'.") from None


def input_shape(model: nn.Module, batch: int = 1) -> tuple[int, ...]:
    """Shape of an input batch the model accepts at its configured resolution."""
    if hasattr(model, 'input_shape'):
        return tuple(model.input_shape(batch))
    size = getattr(model, 'image_size', 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (batch, h, w, 3)


def init_shapes(model: nn.Module, batch: int = 1) -> Any:
    """The variables' shapes (jax.ShapeDtypeStruct tree) without materialising any weight."""
    x = jax.ShapeDtypeStruct(input_shape(model, batch), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape, x.dtype), train=False))


def count_params(name_or_model: str | nn.Module, **overrides: Any) -> int:
    """Number of trainable parameters (the `params` collection) of a variant, computed with jax.eval_shape."""
    if isinstance(name_or_model, str):
        if 'num_classes' not in overrides and 'num_classes' in get_entry(name_or_model).defaults:
            pass
        model = get_model(name_or_model, **overrides)
    else:
        model = name_or_model
    shapes = init_shapes(model)
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes.get('params', {})))
