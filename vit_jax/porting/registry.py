"""The registry of official checkpoint layouts and the checks every conversion gets.

A family module in `vit_jax/porting/` registers its converter:

    @registry.official('cct', source='SHI-Labs/Compact-Transformers', models=('CCT-', 'CVT-', 'ViT-Lite-'))
    def convert(sd: StateDict, model: nn.Module) -> dict:   # -> variables {'params': ..., 'batch_stats': ...}
        ...

`sd` is the official state dict (numpy arrays, wrappers and `module.` prefixes removed) that records the keys a
converter reads. `from_official` then refuses any official key left unread (a converter may `sd.ignore(...)` keys
that carry no weights, e.g. `relative_position_index` buffers or BatchNorm's `num_batches_tracked`), and compares the
returned variables with the model's own (`jax.eval_shape` of `model.init`): a missing or extra variable and every
shape mismatch is an error naming the key.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from vit_jax import registry as _registry

# Porting modules imported on first use of the registry (each registers its families). Add new modules here.
_MODULES = (
    'hf', 'timm', 'cct', 'dhvt', 't2t', 'crossvit', 'cvt', 'segmenter', 'dpt', 'timesformer', 'dtn', 'milan',
    'vit_c', 'beit', 'queryotr', 'inception', 'vgg', 'export',
)


class ConversionError(ValueError):
    """An official checkpoint that does not match the model it is converted into (names the keys)."""


class StateDict(dict):
    """An official state dict (numpy arrays) that records which keys were read."""

    def __init__(self, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        self.read: set = set()

    def __getitem__(self, k: str) -> Any:
        self.read.add(k)
        return super().__getitem__(k)

    def get(self, k: str, default: Any = None) -> Any:
        if k in self:
            return self[k]
        return default

    def ignore(self, *patterns: str) -> None:
        """Marks keys matching any regex in `patterns` (full match) as consumed: buffers that hold no weights."""
        rx = [re.compile(p) for p in patterns]
        self.read.update(k for k in self if any(r.fullmatch(k) for r in rx))

    def prefixed(self, prefix: str) -> list[str]:
        """Keys starting with `prefix` (not marked read)."""
        return [k for k in self if k.startswith(prefix)]

    def unread(self) -> list[str]:
        return sorted(set(self) - self.read)


@dataclasses.dataclass(frozen=True)
class Family:
    """An official checkpoint layout: its converter, the repository that publishes it, and the models it feeds."""

    name: str
    convert: Callable[[StateDict, Any], dict]
    source: str  # Where the authors publish code and weights (owner/repo).
    models: tuple[str, ...]  # Prefixes of the registered vit_jax model names this layout converts into.
    doc: str = ''


OFFICIAL: _registry.Registry[Family] = _registry.Registry('official family', plural='official families',
                                                       modules=(f'vit_jax.porting.{m}' for m in _MODULES))


def official(name: str, *, source: str, models: Iterable[str] = ()) -> Callable:
    """Decorator registering `fn(sd: StateDict, model) -> variables` as the converter of official layout `name`."""
    doc = lambda fn: (fn.__doc__ or '').strip().split('\n')[0]  # noqa: E731
    return OFFICIAL.register(name, entry=lambda fn: Family(name, fn, source, tuple(models), doc(fn)))


def official_families() -> list[str]:
    """Names of the official checkpoint layouts `from_official` converts."""
    return sorted(OFFICIAL.names())


def get_family(name: str) -> Family:
    """The official layout `name`; a ValueError naming the known ones otherwise."""
    return OFFICIAL.get(name)


# Wrappers the training scripts of the papers save around the state dict.
_WRAPPERS = ('state_dict', 'model', 'model_state', 'model_state_dict', 'module', 'net', 'network', 'params',
             'gen')  # 'gen': QueryOTR's generator.


def unwrap(obj: Any) -> dict:
    """The state dict inside a checkpoint: `{'model': ...}`, `{'state_dict': ...}`... unwrapped, `module.` removed."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPERS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None or all(hasattr(v, 'shape') for v in obj.values()):
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise ConversionError('The checkpoint does not hold a state dict (a mapping of names to tensors).')
    out = {}
    for k, v in obj.items():
        if not hasattr(v, 'shape'):
            continue  # Scalars and metadata next to the tensors (e.g. an epoch counter).
        while k.startswith('module.'):
            k = k[len('module.'):]
        out[k] = to_numpy(v)
    if not out:
        raise ConversionError('The checkpoint holds no tensors.')
    return out


def to_numpy(t: Any) -> np.ndarray:
    """A torch tensor (or array) as a float32 numpy array (integer buffers keep their dtype)."""
    if hasattr(t, 'detach'):
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        t = t.numpy()
    a = np.asarray(t)
    return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a


def _flat(tree: Any, prefix: str = '') -> dict[str, Any]:
    out = {}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            out.update(_flat(v, f'{prefix}/{k}' if prefix else str(k)))
    else:
        out[prefix] = tree
    return out


def check_variables(variables: Mapping, model: Any, *, family: str = '') -> None:
    """Raises ConversionError naming every missing, extra or mis-shaped variable against `model`'s own."""
    from vit_jax import models

    expected = _flat(dict(models.init_shapes(model)))
    got = _flat(dict(variables))
    what = f'official:{family} -> {type(model).__name__}' if family else type(model).__name__
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    bad = [f'{k}: converted {tuple(np.shape(got[k]))}, model {tuple(expected[k].shape)}'
           for k in sorted(set(got) & set(expected)) if tuple(np.shape(got[k])) != tuple(expected[k].shape)]
    msgs = []
    if missing:
        msgs.append(f'variables the checkpoint does not provide: {missing}')
    if extra:
        msgs.append(f'converted variables the model does not have: {extra}')
    if bad:
        msgs.append(f'shape mismatches: {bad}')
    if msgs:
        raise ConversionError(f'{what}: ' + '; '.join(msgs) + '. Build the model with the hyper-parameters of the '
                              'checkpoint (depth, width, heads, patch size, image size, classes).')


def convert_consumed(family: str, state_dict: Mapping, model: Any) -> dict:
    """Runs the converter of `family` on `state_dict` for `model`; raises ConversionError naming a key the layout
    needs and the checkpoint lacks, or any checkpoint key left unconverted. Empty collections are dropped."""
    fam = get_family(family)
    sd = StateDict(unwrap(state_dict))
    try:
        variables = fam.convert(sd, model)
    except KeyError as e:
        raise ConversionError(f'official:{family}: the checkpoint has no key {e.args[0]!r}, which this layout needs '
                              f'({fam.source}); is it a {family} checkpoint for this model?') from None
    unread = sd.unread()
    if unread:
        raise ConversionError(f'official:{family}: checkpoint keys left unconverted (a variant the model as built '
                              f'does not have?): {unread[:40]}' + (' ...' if len(unread) > 40 else ''))
    return {k: v for k, v in variables.items() if v}


def from_official(family: str, state_dict: Mapping, model: Any) -> dict:
    """Variables for `model` (a vit_jax module built with the checkpoint's hyper-parameters) from an official
    state dict of `family`. Every official key must be consumed and every model variable provided, shapes equal."""
    variables = convert_consumed(family, state_dict, model)
    check_variables(variables, model, family=family)
    return variables
