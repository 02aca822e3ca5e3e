"""Checkpoints: Orbax train-state checkpoints, release-format `.npz` parameter files, and pretrained loading.

    params = checkpoint.load_npz(path)            # flat '/'-joined keys, the original ViT release format
    checkpoint.save_npz(path, params)
    params = checkpoint.load_pretrained(init_params, path, dont_load=('head/.*',))
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Optional, Sequence

import flax
import jax
import numpy as np
from flax import traverse_util

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# .npz parameter files.
# ----------------------------------------------------------------------------------------------------------------
def flatten(tree: Any) -> dict[str, np.ndarray]:
    """Nested dict -> {'a/b/c': array}."""
    tree = flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else tree
    return {'/'.join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def unflatten(flat: dict[str, Any]) -> dict:
    """{'a/b/c': array} -> nested dict."""
    return traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})


def save_npz(path: str, params: Any) -> None:
    """Writes parameters as a flat `.npz` (atomically: a temporary file renamed into place)."""
    flat = {k: np.asarray(jax.device_get(v)) for k, v in flatten(params).items()}
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f'.{os.path.basename(path)}.tmp.npz')
    np.savez(tmp, **flat)
    os.replace(tmp, path)


# Pre-linen (and linen auto-numbered) module names inside an encoder block -> the release names used here.
_BLOCK_RENAMES = {
    # big_vision / linen auto-numbering: LayerNorm_0, LayerNorm_1, MultiHeadDotProductAttention_0, MlpBlock_0.
    'linen': {'LayerNorm_0': 'LayerNorm_0', 'LayerNorm_1': 'LayerNorm_2',
              'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1', 'MlpBlock_0': 'MlpBlock_3'},
}


def _normalise_keys(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Maps older layouts onto the names of this project's modules.

    - Encoder blocks saved with linen auto-numbering (`LayerNorm_1`, `MultiHeadDotProductAttention_0`,
      `MlpBlock_0`) get the release's pre-linen names (`LayerNorm_2`, `MultiHeadDotProductAttention_1`,
      `MlpBlock_3`).
    - GroupNorm scale/bias stored with singleton axes (1, 1, 1, C) (flax < 0.3.6) are squeezed to (C,).
    """
    out = {}
    linen_style = any(re.search(r'encoderblock(_\d+)?/MlpBlock_0/', k) for k in flat)
    for k, v in flat.items():
        if linen_style and re.search(r'encoderblock(_\d+)?/', k):
            parts = k.split('/')
            parts = [_BLOCK_RENAMES['linen'].get(p, p) for p in parts]
            k = '/'.join(parts)
        if re.search(r'(^|/)gn[^/]*/(scale|bias)$', k) and v.ndim > 1:
            v = v.reshape(-1)
        out[k] = v
    return out


def load_npz(path: str) -> dict:
    """Loads a flat `.npz` parameter file (never unpickles) into a nested dict with this project's names."""
    if not os.path.exists(path):
        raise FileNotFoundError(f'No parameter file at {path!r}.')
    try:
        with np.load(path, allow_pickle=False) as f:
            flat = {k: f[k] for k in f.files}
    except ValueError as e:
        raise ValueError(f'{path!r} is not a plain .npz parameter file (object arrays are refused): {e}') from e
    return unflatten(_normalise_keys(flat))


# ----------------------------------------------------------------------------------------------------------------
# Loading pretrained weights into a freshly initialised tree.
# ----------------------------------------------------------------------------------------------------------------
def _scan_to_loop(flat: dict[str, np.ndarray], init_flat: dict[str, Any]) -> dict[str, np.ndarray]:
    """Converts between `encoderblock/block/...` (stacked, scan=True) and `encoderblock_{i}/...` as `init` needs."""
    init_scanned = any('/encoderblock/block/' in k for k in init_flat)
    src_scanned = any('/encoderblock/block/' in k for k in flat)
    if init_scanned == src_scanned:
        return flat
    out = {}
    if src_scanned:  # Stacked -> per layer.
        for k, v in flat.items():
            if '/encoderblock/block/' in k:
                for i in range(v.shape[0]):
                    out[k.replace('/encoderblock/block/', f'/encoderblock_{i}/')] = v[i]
            else:
                out[k] = v
        return out
    groups: dict[str, dict[int, np.ndarray]] = {}
    for k, v in flat.items():
        m = re.search(r'/encoderblock_(\d+)/', k)
        if m:
            key = k.replace(m.group(0), '/encoderblock/block/')
            groups.setdefault(key, {})[int(m.group(1))] = v
        else:
            out[k] = v
    for k, d in groups.items():
        out[k] = np.stack([d[i] for i in sorted(d)])
    return out


def _posemb_key(k: str) -> bool:
    return k.endswith('pos_embedding') or k.endswith('posembed_input/pos_embedding')


def load_params(path: str) -> dict:
    """Reads parameters from a `.npz` file or from an Orbax train-state checkpoint written by `train.py`.

    `path` may be a workdir (its latest checkpoint), a checkpoint step directory, or a `.npz` file. A suffix
    `:a/b` selects a subtree (e.g. `model.npz:img` or a workdir's `params/encoder`).
    """
    sub = None
    if ':' in path and not os.path.exists(path):
        path, sub = path.rsplit(':', 1)
    if path.endswith('.npz'):
        params = load_npz(path)
    else:
        params = restore_params(path)
    if sub:
        for part in sub.strip('/').split('/'):
            if part not in params:
                raise KeyError(f'{path!r} has no subtree {sub!r}; top-level keys: {sorted(params)}.')
            params = params[part]
    return params


def load_pretrained(init_params: Any, path: str | dict, dont_load: Sequence[str] = (),
                    resample_posemb: bool = True) -> Any:
    """Merges pretrained weights into a freshly initialised parameter tree.

    Keys matching a regex of `dont_load` keep their init value (e.g. a new zero-initialised head). Any other
    missing, unexpected or mis-shaped key is an error that lists them all. Position embeddings whose token count
    differs are resampled to the new grid (the class token kept), so a 224-px checkpoint fine-tunes at 384 px.
    """
    from vit_jax.models import layers

    loaded = load_params(path) if isinstance(path, str) else path
    init_flat = flatten(init_params)
    flat = _scan_to_loop(_normalise_keys({k: np.asarray(v) for k, v in flatten(loaded).items()}), init_flat)
    skip = lambda k: any(re.fullmatch(p, k) or re.match(p, k) for p in dont_load)  # noqa: E731
    missing = [k for k in init_flat if k not in flat and not skip(k)]
    unexpected = [k for k in flat if k not in init_flat and not skip(k)]
    mismatched, merged = [], {}
    for k, init_v in init_flat.items():
        if skip(k) or k not in flat:
            merged[k] = init_v
            continue
        v = flat[k]
        if tuple(v.shape) != tuple(init_v.shape):
            if resample_posemb and _posemb_key(k) and v.ndim == 3 and v.shape[-1] == init_v.shape[-1]:
                prefix = _num_prefix(v.shape[1], init_v.shape[1])
                log.info('Resampling %s from %s to %s.', k, v.shape, init_v.shape)
                v = layers.resample_posemb(v, init_v.shape[1], num_prefix_tokens=prefix)
            else:
                mismatched.append(f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(init_v.shape)}')
                continue
        merged[k] = np.asarray(v, dtype=getattr(init_v, 'dtype', v.dtype))
    problems = []
    if missing:
        problems.append(f'missing in the checkpoint ({len(missing)}): {", ".join(missing[:20])}'
                        + (' ...' if len(missing) > 20 else ''))
    if unexpected:
        problems.append(f'not in the model ({len(unexpected)}): {", ".join(unexpected[:20])}'
                        + (' ...' if len(unexpected) > 20 else ''))
    if mismatched:
        problems.append(f'shape mismatch ({len(mismatched)}): {"; ".join(mismatched[:20])}')
    if problems:
        raise ValueError(f'The checkpoint {path if isinstance(path, str) else "<params>"} does not match the model: '
                         + ' | '.join(problems) + '. Use dont_load=(regex, ...) for keys the model should keep '
                         "freshly initialised (e.g. 'head/.*' for a new head).")
    return unflatten(merged)


def _num_prefix(n_old: int, n_new: int) -> int:
    """Number of non-grid tokens (0 or 1) that makes both token counts square grids."""
    for prefix in (1, 0, 2):
        a, b = n_old - prefix, n_new - prefix
        if a > 0 and b > 0 and int(np.sqrt(a)) ** 2 == a and int(np.sqrt(b)) ** 2 == b:
            return prefix
    raise ValueError(f'Cannot resample a position embedding of {n_old} tokens to {n_new} as square grids.')


# ----------------------------------------------------------------------------------------------------------------
# Orbax train-state checkpoints.
# ----------------------------------------------------------------------------------------------------------------
def _ocp():
    import orbax.checkpoint as ocp

    return ocp


class Manager:
    """Periodic Orbax checkpoints of the whole train state in `<workdir>/checkpoints/<step>`; keeps the last N."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = False):
        ocp = _ocp()
        self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self._mngr = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def save(self, step: int, state: Any, force: bool = False) -> bool:
        ocp = _ocp()
        saved = self._mngr.save(int(step), args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                                force=force)
        return bool(saved)

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def restore(self, abstract_state: Any, step: Optional[int] = None) -> tuple[Any, int]:
        """Restores into the structure (and shardings) of `abstract_state`; falls back to older steps on damage."""
        ocp = _ocp()
        steps = [step] if step is not None else sorted(self._mngr.all_steps(), reverse=True)
        target = flax.serialization.to_state_dict(abstract_state)
        errors = []
        for s in steps:
            try:
                restored = self._mngr.restore(s, args=ocp.args.StandardRestore(target))
                return flax.serialization.from_state_dict(abstract_state, restored), s
            except Exception as e:  # A truncated or corrupted checkpoint: warn and try the previous one.
                errors.append(f'step {s}: {type(e).__name__}: {str(e)[:200]}')
                log.warning('Checkpoint at step %s could not be restored (%s); trying an older one.', s, e)
        raise RuntimeError('No checkpoint in %s could be restored: %s' % (self.directory, '; '.join(errors)))

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


def restore_params(path: str) -> dict:
    """The `params` of an Orbax train-state checkpoint (a workdir, its `checkpoints/` dir, or one step dir)."""
    ocp = _ocp()
    path = os.path.abspath(path)
    candidates = [path, os.path.join(path, 'checkpoints')]
    for c in candidates:
        if os.path.isdir(c) and any(d.isdigit() for d in os.listdir(c)):
            step = max(int(d) for d in os.listdir(c) if d.isdigit())
            path = os.path.join(c, str(step))
            break
    item = os.path.join(path, 'default')
    if not os.path.isdir(item):
        raise FileNotFoundError(f'No Orbax checkpoint found at {path!r} (expected <workdir>/checkpoints/<step>/).')
    restored = ocp.StandardCheckpointer().restore(item)
    if 'params' not in restored:
        raise ValueError(f'{path!r} holds no params; keys: {sorted(restored)}.')
    return jax.tree_util.tree_map(np.asarray, restored['params'])
