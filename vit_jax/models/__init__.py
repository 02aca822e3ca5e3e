"""Model registry: every variant under its paper's name, and `load` for another model named in a config.

    from vit_jax import models
    models.list_models()
    model = models.get_model('ViT-B/16', num_classes=1000, image_size=384)
    variables = model.init(rng, images, train=False)
    logits, out = model.apply(variables, images, train=False)
    models.count_params('CvT-13')   # via jax.eval_shape: no weights are materialised
    model, variables = models.load(dict(model=dict(name='ViT-B/16', num_classes=10), weights='workdirs/run1'))

A family module registers its variants at import time with `register(name, ModuleClass, **defaults)`; the
module class must accept `num_classes` and `image_size` (video models also `num_frames`) and may define
`input_shape(batch)` (default: (batch, H, W, 3) from `image_size`) and `init_from_checkpoint(init_params, source,
*, dont_load)` (its own rule for starting from another family's weights, see `load_pretrained`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import registry


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A registered variant: the module class and its default field values."""

    name: str
    cls: type
    defaults: dict
    paper: str = ''


# Family modules imported on first use of the registry. Add a new family here.
_FAMILIES = (
    'vit', 'cct', 'dhvt', 'dtn', 'cvt', 't2t', 'crossvit', 'timesformer', 'segmenter', 'dpt', 'beit', 'milan',
    'vqgan', 'queryotr',
)
MODELS: registry.Registry[ModelEntry] = registry.Registry('model', modules=(f'vit_jax.models.{f}' for f in _FAMILIES))


def register(name: str, cls: type, *, aliases: tuple[str, ...] = (), paper: str = '', **defaults: Any) -> None:
    """Registers `cls(**defaults)` under `name` (and `aliases`)."""
    MODELS.add(name, ModelEntry(name, cls, dict(defaults), paper), aliases=aliases)


def list_models(paper: Optional[str] = None) -> list[str]:
    """Names of every registered variant (optionally only those of one paper tag, e.g. 'vit')."""
    return [n for n, e in MODELS.items() if paper is None or e.paper == paper]


def get_entry(name: str) -> ModelEntry:
    """The registry entry of `name` (or one of its aliases); raises a ValueError listing close matches."""
    return MODELS.get(name)


def get_model(name: str, **overrides: Any) -> nn.Module:
    """Builds the flax module of a registered variant; `overrides` replace any of its fields."""
    entry = get_entry(name)
    fields = model_fields(entry.cls)
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


def model_fields(cls: type) -> set[str]:
    """The options (dataclass fields) of a model class."""
    return {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}


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
    model = get_model(name_or_model, **overrides) if isinstance(name_or_model, str) else name_or_model
    shapes = init_shapes(model)
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes.get('params', {})))




# ---------------------------------------------------------------------------------------------------------------
# Another model named in a config, with its weights: `vit_jax.model_loader` (models/ holds no checkpoint code).
# ---------------------------------------------------------------------------------------------------------------
def load(spec: Any, *, defaults: Optional[dict] = None, seed: int = 0) -> tuple[nn.Module, dict]:
    """(model, variables) of another model named in a config: a teacher, a judge, a frozen tokenizer, a trained run.

        models.load(dict(model=dict(name='ViT-B/16', num_classes=10), weights='workdirs/run1'))   # the one format
        models.load(dict(model=dict(name='ViT-testing')))     # no weights: a fixed-seed random init (a stand-in)

    `weights`: a `.npz`, a run's workdir (its latest good checkpoint, EMA weights when kept), a step, optionally
    `:subtree`. `defaults`: model options used when the spec does not set them (e.g. the run's image_size). The full
    description, the older spec forms still accepted and the errors: `vit_jax.model_loader.load`.
    """
    from vit_jax import model_loader

    return model_loader.load(spec, defaults=defaults, seed=seed)


def __getattr__(name: str) -> Any:
    """`models.as_spec`, `models.ModelSpec`, `models.load_variables`, `models.load_pretrained`: from
    `vit_jax.model_loader`, imported lazily (the model files import no checkpoint code)."""
    if name in ('as_spec', 'ModelSpec', 'load_variables', 'load_pretrained'):
        from vit_jax import model_loader

        return getattr(model_loader, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
