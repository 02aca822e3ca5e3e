"""Checkpoints: Orbax train-state checkpoints, release-format `.npz` parameter files, and pretrained loading.

    params = checkpoint.load_npz(path)            # flat '/'-joined keys, the original ViT release format
    checkpoint.save_npz(path, params)
    params = checkpoint.load_params('workdirs/run1')             # the params of a run's latest Orbax checkpoint
    params = checkpoint.load_pretrained(init_params, path, dont_load=('head/.*',))

`path` everywhere may be a `.npz` file, a run's workdir (its latest checkpoint), its `checkpoints/` directory or one
`checkpoints/<step>` directory; a suffix `:a/b` selects a subtree (`model.npz:img`, `workdir:ema_params`,
`workdir:params/encoder`).

A `.npz` holds the parameters at the top level (the release layout) and, for models with non-trainable collections
(BatchNorm `batch_stats`, T2T's Performer `constants`), those under `model_state/<collection>/...`
(`save_npz(path, params, model_state=...)`): `load_npz` returns the parameters only, `load_npz_model_state` the
collections, and `load_pretrained_model_state` merges them into a model's fresh ones (`config.init_from`).

Names: this project's modules use the names of the original ViT release (`Transformer/encoderblock_{i}/
LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3/Dense_{0,1}`, `encoder_norm`,
`posembed_input/pos_embedding`, `embedding`, `cls`, `head`, `pre_logits`). Files written with linen's per-class
numbering (`LayerNorm_1`, `MultiHeadDotProductAttention_0`, `MlpBlock_0`: the linen version of the release and
big_vision), big_vision's scanned blocks (`encoderblock/LayerNorm_0` with a layer axis) and hybrid GroupNorm
parameters stored with singleton axes (flax < 0.3.6) are mapped onto those names when loaded. Loading never
unpickles.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import zlib
from typing import Any, Optional, Sequence

import flax
import jax
import numpy as np
from flax import traverse_util

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model; `missing`, `unexpected` and `mismatched` list every offending key."""

    def __init__(self, message: str, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                 mismatched: Sequence[str] = ()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


# ----------------------------------------------------------------------------------------------------------------
# Flat <-> nested.
# ----------------------------------------------------------------------------------------------------------------
def flatten(tree: Any) -> dict[str, Any]:
    """Nested dict -> {'a/b/c': array}."""
    tree = flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else tree
    if not tree:
        return {}
    return {'/'.join(str(p) for p in k): v for k, v in traverse_util.flatten_dict(tree).items()}


def unflatten(flat: dict[str, Any]) -> dict:
    """{'a/b/c': array} -> nested dict."""
    return traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})


# ----------------------------------------------------------------------------------------------------------------
# .npz parameter files.
# ----------------------------------------------------------------------------------------------------------------
# .npz key prefix of the non-trainable collections (`model_state/batch_stats/...`).
MODEL_STATE_PREFIX = 'model_state/'


def save_npz(path: str, params: Any, model_state: Any = None) -> None:
    """Writes parameters as a flat `.npz` of '/'-joined names (atomically: a temporary file renamed into place).

    `model_state` ({collection: tree}, e.g. BatchNorm `batch_stats`) is written under `model_state/...`.
    bfloat16 / float16 leaves are written as float32 (exact; plain numpy cannot store bfloat16 without pickles).
    """
    if not str(path).endswith('.npz'):
        raise ValueError(f'save_npz writes .npz files; got {path!r}.')
    flat = {}
    tree = flatten(params)
    if any(k.startswith(MODEL_STATE_PREFIX) for k in tree):
        raise ValueError(f'save_npz: a parameter name starts with the reserved {MODEL_STATE_PREFIX!r}.')
    tree.update({MODEL_STATE_PREFIX + k: v for k, v in flatten(model_state or {}).items()})
    for k, v in tree.items():
        a = np.asarray(jax.device_get(v))
        if a.dtype.kind == 'V' or a.dtype.name in ('bfloat16', 'float16'):
            a = a.astype(np.float32)
        if a.dtype == object:
            raise TypeError(f'save_npz: parameter {k!r} is not a numeric array ({type(v).__name__}).')
        flat[k] = a
    if not flat:
        raise ValueError('save_npz: no parameters to write (empty tree).')
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f'.{os.path.basename(path)}.{os.getpid()}.tmp.npz')  # Unique: parallel writers.
    np.savez(tmp, **flat)
    os.replace(tmp, path)


# Linen per-class numbering inside an encoder block -> the release's pre-linen numbering.
_LINEN_TO_RELEASE = {'LayerNorm_0': 'LayerNorm_0', 'LayerNorm_1': 'LayerNorm_2',
                     'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1', 'MlpBlock_0': 'MlpBlock_3'}
_BLOCK_RE = re.compile(r'^(.*?(?:^|/)encoderblock(?:_\d+)?)/(.+)$')
_GN_RE = re.compile(r'(^|/)gn[^/]*/(scale|bias)$')


def normalise_keys(flat: dict[str, Any]) -> dict[str, Any]:
    """Maps the key layouts of other ViT writers onto this project's names (see the module docstring).

    Decided per encoder block: a block whose children include `LayerNorm_1`, `MultiHeadDotProductAttention_0` or
    `MlpBlock_0` uses linen numbering and is renamed; big_vision's scanned `encoderblock/<module>` gets this
    project's `encoderblock/block/<module>`; GroupNorm `gn*/scale|bias` with extra singleton axes are squeezed.
    """
    children: dict[str, set] = {}
    for k in flat:
        m = _BLOCK_RE.match(k)
        if m:
            children.setdefault(m.group(1), set()).add(m.group(2).split('/', 1)[0])
    linen_blocks = {b for b, c in children.items()
                    if c & {'LayerNorm_1', 'MultiHeadDotProductAttention_0', 'MlpBlock_0'}}
    out = {}
    for k, v in flat.items():
        m = _BLOCK_RE.match(k)
        if m:
            block, rest = m.group(1), m.group(2)
            first, _, tail = rest.partition('/')
            if block in linen_blocks:
                first = _LINEN_TO_RELEASE.get(first, first)
            if block.endswith('/encoderblock') or block == 'encoderblock':
                if first != 'block':  # big_vision scan: no adapter scope.
                    first = f'block/{first}'
            k = f'{block}/{first}' + (f'/{tail}' if tail else '')
        if _GN_RE.search(k) and getattr(v, 'ndim', 0) > 1 and int(np.prod(v.shape)) == v.shape[-1]:
            v = np.reshape(v, (-1,))
        out[k] = v
    return out


def load_npz(path: str) -> dict:
    """Loads a flat `.npz` parameter file (never unpickles) into a nested dict with this project's names."""
    if not os.path.exists(path):
        raise FileNotFoundError(f'No parameter file at {path!r}.')
    if os.path.isdir(path):
        raise IsADirectoryError(f'{path!r} is a directory; load_npz reads a .npz file (use load_params for a '
                                'workdir or an Orbax checkpoint).')
    try:
        f = np.load(path, allow_pickle=False)
        if not hasattr(f, 'files'):
            raise ValueError('it holds a single array (.npy), not named parameters')
        try:
            flat = {k: f[k] for k in f.files}
        finally:
            f.close()
    except ValueError as e:
        raise ValueError(f'{path!r} is not a plain .npz parameter file ({e}). Parameter files are written by '
                         'checkpoint.save_npz or `python -m vit_jax.convert`; pickled/object arrays are refused.'
                         ) from None
    except (OSError, EOFError) as e:
        raise ValueError(f'{path!r} could not be read as a .npz parameter file ({type(e).__name__}: {e}).') from None
    flat = {k: v for k, v in flat.items() if not k.startswith(MODEL_STATE_PREFIX)}
    if not flat:
        raise ValueError(f'{path!r} holds no parameters.')
    return unflatten(normalise_keys(flat))


def load_npz_model_state(path: str) -> dict:
    """The non-trainable collections of a `.npz` ({'batch_stats': ..., 'constants': ...}); {} when it has none."""
    try:
        f = np.load(path, allow_pickle=False)
        if not hasattr(f, 'files'):
            return {}
        with f:
            flat = {k[len(MODEL_STATE_PREFIX):]: f[k] for k in f.files if k.startswith(MODEL_STATE_PREFIX)}
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f'{path!r} could not be read as a .npz parameter file ({type(e).__name__}: {e}).') from None
    return unflatten(flat) if flat else {}


def load_pretrained_model_state(init_state: Any, path: str, dont_load: Sequence[str] = ()) -> dict:
    """`init_state` ({collection: tree}) with the collections a `.npz` at `path` holds merged in.

    A file without `model_state/...` entries (or a path that is not a `.npz` file) leaves `init_state` unchanged.
    Within each collection the file provides, names and shapes must match the model's (CheckpointMismatchError
    otherwise), except names matching a `dont_load` regex, which keep their init value.
    """
    init_state = flax.core.unfreeze(init_state) if isinstance(init_state, flax.core.FrozenDict) else dict(init_state)
    source, sub = _split_subtree(str(path))
    if sub or not os.path.isfile(source) or not source.endswith('.npz'):
        return init_state
    loaded = load_npz_model_state(source)
    if not loaded:
        return init_state
    patterns = [re.compile(p) for p in dont_load]
    skip = lambda k: any(p.match(k) for p in patterns)  # noqa: E731
    init_flat = {k: v for c, t in init_state.items() for k, v in flatten({c: t}).items()}
    file_flat = _scan_to_loop(flatten(loaded), init_flat)  # Looped or scanned layers, as the model has them.
    given = {k.split('/', 1)[0] for k in file_flat}
    missing = [k for k in init_flat if k.split('/', 1)[0] in given and k not in file_flat and not skip(k)]
    unexpected = [k for k in file_flat if k not in init_flat and not skip(k)]
    mismatched = [f'{k}: checkpoint {tuple(np.shape(v))} vs model {tuple(np.shape(init_flat[k]))}'
                  for k, v in file_flat.items() if k in init_flat and not skip(k)
                  and tuple(np.shape(v)) != tuple(np.shape(init_flat[k]))]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(
            f'The model state (non-trainable collections) in {path} does not match the model: missing {missing}, '
            f'unexpected {unexpected}, shape mismatches {mismatched}. Check the model options against the file.',
            missing, unexpected, mismatched)
    merged = {k: (np.asarray(file_flat[k], dtype=np.asarray(v).dtype) if k in file_flat and not skip(k)
                  else np.asarray(v)) for k, v in init_flat.items()}
    return unflatten(merged) if merged else init_state


# ----------------------------------------------------------------------------------------------------------------
# Reading parameters from any supported source.
# ----------------------------------------------------------------------------------------------------------------
def _split_subtree(path: str) -> tuple[str, Optional[str]]:
    if ':' in path and not os.path.exists(path):
        head, sub = path.rsplit(':', 1)
        if head:
            return head, sub.strip('/') or None
    return path, None


def _select(tree: dict, sub: str, where: str) -> Any:
    node = tree
    done = []
    for part in sub.split('/'):
        if not isinstance(node, dict) or part not in node:
            have = sorted(node) if isinstance(node, dict) else []
            raise KeyError(f'{where} has no subtree {sub!r}: {"/".join(done) or "the top level"} has '
                           f'{", ".join(have) or "no children"}.')
        node = node[part]
        done.append(part)
    if not isinstance(node, dict):
        raise ValueError(f'{where}:{sub} is a single array, not a parameter tree.')
    return node


# ----------------------------------------------------------------------------------------------------------------
# Orbax step directories: discovery, checksum manifests, damage.
# ----------------------------------------------------------------------------------------------------------------
CHECKSUMS_FILE = 'vit_jax_checksums.json'  # In each step directory: size and CRC-32 of every file of its item.
_ITEM = 'default'  # The Orbax item directory of a step.
_ASIDE_RE = re.compile(r'^\d+\.(corrupt|incomplete)-')  # Step directories set aside by `Manager`.
_ORBAX_TMP = '.orbax-checkpoint-tmp'  # Orbax's unfinished (or aborted) writes; Orbax cleans them up itself.
_warned: set[str] = set()


class CheckpointDamagedError(ValueError):
    """A checkpoint step whose files differ from the checksums written when it was saved."""


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _step_problem(step_dir: str) -> Optional[str]:
    """Why a numbered directory is not a complete step (empty, or without its item); None when it is one."""
    try:
        if not os.listdir(step_dir):
            return 'an empty directory'
        if not os.path.isdir(os.path.join(step_dir, _ITEM)):
            return f'no {_ITEM}/ item directory'
        if not os.listdir(os.path.join(step_dir, _ITEM)):
            return f'an empty {_ITEM}/ item directory'
    except OSError as e:
        return f'unreadable ({type(e).__name__}: {e.strerror or e})'
    return None


def scan_steps(ckpt_dir: str) -> tuple[list[int], list[tuple[str, str]]]:
    """(complete steps in ascending order, [(path, why it is not a step)]) of a `checkpoints/` directory.

    A complete step is a numbered directory with a non-empty `default/` item. Incomplete step directories (empty,
    or without their item: a crash or a copy that stopped half-way), directories set aside as damaged or incomplete
    (`60.corrupt-<time>`, `70.incomplete-<time>`) and foreign entries are listed with the reason; hidden entries
    and Orbax's temporary directories of unfinished writes are left out.
    """
    steps, ignored = [], []
    try:
        names = sorted(os.listdir(ckpt_dir))
    except OSError:
        return [], []
    for name in names:
        path = os.path.join(ckpt_dir, name)
        if name.startswith('.') or _ORBAX_TMP in name:
            continue
        if name.isdigit():
            problem = _step_problem(path) if os.path.isdir(path) else 'a file, not a directory'
            if problem is None:
                steps.append(int(name))
            else:
                ignored.append((path, f'incomplete step directory: {problem}'))
        elif _ASIDE_RE.match(name):
            ignored.append((path, 'set aside earlier as damaged or incomplete; delete it when no longer needed'))
        else:
            ignored.append((path, 'not a checkpoint step'))
    return sorted(steps), ignored


def _file_crc(path: str) -> int:
    crc = 0
    with open(path, 'rb') as f:
        while chunk := f.read(1 << 23):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_checksums(step_dir: str) -> str:
    """Writes `CHECKSUMS_FILE` into a finished step: the size and CRC-32 of every file of its `default/` item."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(os.path.join(step_dir, _ITEM)):
        dirnames.sort()
        for fn in sorted(filenames):
            p = os.path.join(dirpath, fn)
            files[os.path.relpath(p, step_dir)] = [os.path.getsize(p), _file_crc(p)]
    path = os.path.join(step_dir, CHECKSUMS_FILE)
    tmp = os.path.join(step_dir, f'.{CHECKSUMS_FILE}.{os.getpid()}.tmp')
    with open(tmp, 'w') as f:
        json.dump({'format': 1, 'algorithm': 'crc32', 'files': files}, f)
    os.replace(tmp, path)
    return path


def verify_checksums(step_dir: str) -> Optional[str]:
    """What differs between a step's files and its checksum manifest; None when they match or it has none.

    Steps written before manifests existed (or by a run killed between the save and its manifest) have none and
    are restored unverified.
    """
    manifest = os.path.join(step_dir, CHECKSUMS_FILE)
    if not os.path.isfile(manifest):
        return None
    try:
        with open(manifest) as f:
            files = {str(k): (int(v[0]), int(v[1])) for k, v in json.load(f)['files'].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        return f'its checksum manifest {CHECKSUMS_FILE} is unreadable ({type(e).__name__})'
    for rel, (size, crc) in sorted(files.items()):
        p = os.path.join(step_dir, rel)
        try:
            got = os.path.getsize(p)
            if got != size:
                return f'{rel} has {got} bytes, {size} when saved (checksum manifest)'
            if _file_crc(p) != crc:
                return f'{rel} does not match its checksum (CRC-32): its bytes changed after it was saved'
        except FileNotFoundError:
            return f'{rel} is missing (listed in the checksum manifest)'
        except OSError as e:
            return f'{rel} cannot be read for the checksum check ({type(e).__name__}: {e.strerror or e})'
    return None


def _candidate_steps(path: str) -> tuple[list[str], bool]:
    """(step directories newest first, whether `path` named one step) for a workdir, checkpoints/ or a step dir.

    Incomplete and foreign entries of the checkpoints directory are named in a warning (once per process).
    """
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, _ITEM)):
        return [path], True
    for c in (os.path.join(path, 'checkpoints'), path):
        if os.path.isdir(c):
            steps, ignored = scan_steps(c)
            if c == path and not steps:
                continue  # Not a checkpoints directory (e.g. a workdir without checkpoints): nothing to report.
            for p, why in ignored:
                _warn_once(f'Ignoring {p} ({why}).')
            if steps:
                return [os.path.join(c, str(s)) for s in reversed(steps)], False
    if not os.path.exists(path):
        raise FileNotFoundError(f'No checkpoint at {path!r}: expected a .npz file, a run workdir, its checkpoints/ '
                                'directory or a checkpoints/<step> directory.')
    raise FileNotFoundError(f'No Orbax checkpoint found under {path!r} (expected <workdir>/checkpoints/<step>/default/'
                            ' as written by vit_jax.train, or pass a .npz parameter file).')


def find_checkpoint_step(path: str) -> str:
    """The Orbax step directory for a workdir, its `checkpoints/` directory (its latest complete step, incomplete
    and foreign entries named in a warning) or a step directory."""
    return _candidate_steps(path)[0][0]


def _restore_latest(path: str) -> tuple[str, dict]:
    """(step directory, state) of the newest step under `path` that restores and matches its checksums.

    Damaged newer steps are named in a warning and skipped (nothing is renamed: this is the read-only path of
    `load_params` and predict). A step directory named explicitly is restored or raises.
    """
    candidates, explicit = _candidate_steps(path)
    if explicit:
        return candidates[0], _restore_state_dict(candidates[0])
    errors = []
    for i, step_dir in enumerate(candidates):
        try:
            return step_dir, _restore_state_dict(step_dir)
        except ValueError as e:
            errors.append(str(e))
            if i + 1 < len(candidates):
                log.warning('Checkpoint step %s could not be restored, using the previous step %s instead: %s',
                            os.path.basename(step_dir), os.path.basename(candidates[i + 1]), e)
    raise ValueError(errors[0] if len(errors) == 1 else
                     f'No checkpoint under {path!r} could be restored: ' + ' '.join(errors))


def _restore_state_dict(step_dir: str) -> dict:
    import orbax.checkpoint as ocp

    problem = verify_checksums(step_dir)
    if problem is not None:
        raise CheckpointDamagedError(f'The Orbax checkpoint {step_dir!r} is damaged: {problem}.')
    path = os.path.join(step_dir, 'default')
    try:
        # Restore onto this process's first device whatever layout wrote it (a pod slice, 2 processes, 8 devices):
        # without a target Orbax re-creates the saved sharding and refuses a different topology.
        ckptr = ocp.StandardCheckpointer()
        meta = ckptr.metadata(path)
        meta = getattr(meta, 'item_metadata', meta)
        sd = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

        def target(m):
            if hasattr(m, 'shape') and hasattr(m, 'dtype') and m.dtype is not None:
                return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sd)
            return m

        restored = ckptr.restore(path, jax.tree_util.tree_map(target, meta))
    except Exception as e:  # Truncated / foreign directories: say which one.
        raise ValueError(f'The Orbax checkpoint {step_dir!r} could not be restored ({type(e).__name__}: '
                         f'{str(e)[:300]}).') from None
    return jax.tree_util.tree_map(np.asarray, restored)


def restore_params(path: str, item: str = 'params') -> dict:
    """`item` ('params' or 'ema_params') of an Orbax train-state checkpoint (workdir, checkpoints/, or a step dir)."""
    step_dir, state = _restore_latest(path)
    if item not in state or state[item] is None:
        have = sorted(k for k, v in state.items() if v is not None)
        raise ValueError(f'The checkpoint {step_dir!r} holds no {item!r}; it has: {", ".join(have)}.')
    return state[item]


def workdir_model_config(path: str) -> Optional[dict]:
    """The `config.model` of the run that wrote a checkpoint (from its workdir's config.json), or None."""
    try:
        step_dir = find_checkpoint_step(path)
    except FileNotFoundError:
        return None
    for d in (os.path.dirname(os.path.dirname(step_dir)), os.path.dirname(step_dir)):
        f = os.path.join(d, 'config.json')
        if os.path.isfile(f):
            try:
                with open(f) as fh:
                    model = json.load(fh).get('model')
                return dict(model) if isinstance(model, dict) else None
            except (OSError, ValueError):
                return None
    return None


def load_params(path: str) -> dict:
    """Reads parameters from a `.npz` file or from an Orbax train-state checkpoint written by `train.py`.

    `path` may be a `.npz` file, a workdir (its latest checkpoint), its `checkpoints/` directory or a step
    directory. A suffix `:a/b` selects a subtree: for `.npz` files a subtree of the file (`model.npz:img`); for
    Orbax checkpoints `:ema_params` (the EMA weights), `:params/encoder` or just `:encoder` (a subtree of params).
    """
    path, sub = _split_subtree(str(path))
    if path.endswith('.npz') or os.path.isfile(path):
        params = load_npz(path)
        return _select(params, sub, path) if sub else params
    step_dir, state = _restore_latest(path)
    top = sub.split('/', 1)[0] if sub else 'params'
    if top in state and top in ('params', 'ema_params', 'extra'):
        if state[top] is None:
            raise ValueError(f'The checkpoint {step_dir!r} holds no {top!r} (the run kept none).')
        tree, rest = state[top], (sub.split('/', 1)[1] if sub and '/' in sub else None)
    else:
        tree, rest = state.get('params'), sub
    tree = flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else tree
    return _select(tree, rest, f'{step_dir} params') if rest else tree


def load_for_inference(path: str) -> tuple[dict, dict]:
    """(params, model_state) for inference: the EMA weights of an Orbax checkpoint when the run kept them.

    `model_state` holds the run's non-trainable collections (e.g. BatchNorm `batch_stats`); for a `.npz` file those
    it holds under `model_state/...` (written by `python -m vit_jax.convert`), often none.
    """
    source, sub = _split_subtree(str(path))
    if sub or source.endswith('.npz') or os.path.isfile(source):
        return load_params(path), ({} if sub else load_npz_model_state(source))
    state = _restore_latest(source)[1]
    params = state.get('ema_params') if state.get('ema_params') is not None else state.get('params')
    if params is None:
        raise ValueError(f'The checkpoint {path!r} holds no params.')
    return params, dict(state.get('model_state') or {})


# ----------------------------------------------------------------------------------------------------------------
# Loading pretrained weights into a freshly initialised tree.
# ----------------------------------------------------------------------------------------------------------------
def _scan_to_loop(flat: dict[str, np.ndarray], init_flat: dict[str, Any]) -> dict[str, np.ndarray]:
    """`flat` in the encoder layout of `init_flat`: scanned segments (`encoderblock/block/...`,
    `encoderblock_{a}-{b}/...` stacked on a layer axis) or per-layer `encoderblock_{i}/...`, for every family
    built on `layers.Encoder` (empty `init_flat`: the per-layer layout)."""
    from vit_jax.models import layers

    if any(layers.is_scanned_key(k) for k in init_flat):
        return layers.scan_params_like(flat, init_flat)
    return layers.unscan_params(flat)


def _is_posemb(k: str) -> bool:
    return k.rsplit('/', 1)[-1] in ('pos_embedding', 'pos_embed', 'posemb')


def _is_rel_pos_table(k: str) -> bool:
    return k.rsplit('/', 1)[-1] == 'relative_position_bias_table'


def _resample_rel_pos_tables(flat: dict[str, np.ndarray], shapes: dict[str, Any], old_grid: Any, new_grid: Any,
                             problems: list[str]) -> dict[str, np.ndarray]:
    """`flat` with its BEiT relative-position tables resampled to the model's grid where their row counts differ
    from `shapes` (the model's, both in the per-layer layout); a table that cannot be (its grid unknown) is kept
    and `problems` says why."""
    out = dict(flat)
    for k, v in flat.items():
        shape = shapes[k].shape if k in shapes else None
        if (_is_rel_pos_table(k) and shape is not None and len(shape) == v.ndim == 2 and v.shape != shape
                and v.shape[1] == shape[1]):
            try:
                out[k] = _resample_rel_pos_table(k, v, shape[0], old_grid, new_grid)
            except ValueError as e:
                problems.append(f'{k}: {e}')
    return out


def _resample_rel_pos_table(k: str, v: np.ndarray, rows: int, old_grid: Any, new_grid: Any) -> np.ndarray:
    """A BEiT relative-position table `v` resampled to `rows` rows ((2h-1)(2w-1)+3 of the model's grid)."""
    from vit_jax.models import beit

    def grid(n: int, g: Any) -> tuple[int, int]:
        g = _as_grid(g)
        if g is not None and (2 * g[0] - 1) * (2 * g[1] - 1) + 3 == n:
            return g
        side = (math.isqrt(n - 3) + 1) // 2 if n > 3 else 0
        if side < 1 or (2 * side - 1) ** 2 + 3 != n:
            raise ValueError(f'{n} rows are not the (2h-1)(2w-1)+3 of a square grid; pass old_grid/new_grid')
        return side, side

    og, ng = grid(v.shape[0], old_grid), grid(rows, new_grid)
    log.info('Resampling %s from grid %s to %s (BEiT rule).', k, og, ng)
    return beit.resample_rel_pos_table(v, og, ng)


def _as_grid(g: Any) -> Optional[tuple[int, int]]:
    if g is None:
        return None
    if isinstance(g, (int, np.integer)):
        return int(g), int(g)
    try:
        h, w = (int(x) for x in g)
    except (TypeError, ValueError):
        return None
    return (h, w) if h > 0 and w > 0 else None


def _square(n: int) -> Optional[tuple[int, int]]:
    s = int(round(np.sqrt(n))) if n > 0 else 0
    return (s, s) if s > 0 and s * s == n else None


def _same_aspect(n: int, like: tuple[int, int]) -> Optional[tuple[int, int]]:
    """The (h, w) with h * w == n and h / w == like[0] / like[1], if there is one."""
    for h in range(1, n + 1):
        if n % h == 0 and h * like[1] == (n // h) * like[0]:
            return h, n // h
    return None


def posemb_grids(n_old: int, n_new: int, old_grid: Any = None, new_grid: Any = None
                 ) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """(prefix tokens, old grid, new grid) for resampling a position embedding of n_old tokens to n_new.

    Known grids are used when they fit the token counts (the prefix is what remains: 1 with a class token, 0
    without); otherwise grids are square, or have the aspect ratio of the other (known or square) grid.
    """
    old_g, new_g = _as_grid(old_grid), _as_grid(new_grid)
    prefixes = []
    for g, n in ((new_g, n_new), (old_g, n_old)):
        if g is not None and 0 <= n - g[0] * g[1] <= 8:
            prefixes.append(n - g[0] * g[1])
    candidates = [prefixes[0]] if prefixes else [1, 0, 2]
    for p in candidates:
        a, b = n_old - p, n_new - p
        if a <= 0 or b <= 0:
            continue
        og = old_g if old_g is not None and old_g[0] * old_g[1] == a else None
        ng = new_g if new_g is not None and new_g[0] * new_g[1] == b else None
        og = og or _square(a) or (_same_aspect(a, ng) if ng else None)
        ng = ng or _square(b) or (_same_aspect(b, og) if og else None)
        og = og or (_same_aspect(a, ng) if ng else None)
        if og and ng:
            return p, og, ng
    raise ValueError(
        f'Cannot tell the token grids of a position embedding resampled from {n_old} to {n_new} tokens '
        f'(old grid {old_grid}, new grid {new_grid}). Pass old_grid=(h, w) and new_grid=(h, w) to load_pretrained '
        '(the model\'s `grid_size`; in configs: config.init_from.old_grid).')


def _grid_of_model_config(model_cfg: Optional[dict]) -> Optional[tuple[int, int]]:
    if not model_cfg or 'name' not in model_cfg:
        return None
    try:
        from vit_jax import models

        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in model_cfg.items() if k != 'name'}
        kw.pop('dtype', None)
        return _as_grid(getattr(models.get_model(model_cfg['name'], **kw), 'grid_size', None))
    except Exception:  # A model of another version or family: fall back to inference.
        return None


def load_pretrained(init_params: Any, path: str | dict, dont_load: Sequence[str] = (),
                    resample_posemb: bool = True, *, old_grid: Any = None, new_grid: Any = None) -> dict:
    """Merges pretrained weights into a freshly initialised parameter tree.

    Args:
      init_params: the model's freshly initialised `params` (fixes every name and shape of the result).
      path: a `.npz` file, a run workdir / Orbax checkpoint, either with a `:subtree` suffix (see `load_params`),
        or an already loaded (nested or '/'-flat) parameter dict.
      dont_load: regexes of '/'-joined names (matched at the start of the name, e.g. 'head/.*'): such parameters
        keep their fresh init value (a new zero-initialised head), and such checkpoint entries may be absent from
        the model (e.g. 'pre_logits/.*' when the new model has no pre-logits layer).
      resample_posemb: resample position embeddings whose token count differs (the ViT release's rule:
        `scipy.ndimage.zoom` order 1 on the grid, prefix tokens such as the class token kept), and BEiT
        relative-position tables (`relative_position_bias_table`) of another grid (the unilm BEiT loaders' rule,
        `beit.resample_rel_pos_table`). A checkpoint's shared attention-bias table (BEiT pretraining's
        `Transformer/rel_pos_bias`) is copied into every layer of a model with one per layer (BEiT fine-tuning).
      old_grid, new_grid: (h, w) token grids of the checkpoint and the model, for non-square grids. When omitted
        they are taken from the run's config.json (Orbax workdirs) or inferred (square, or the other grid's
        aspect ratio).

    Returns:
      A nested dict of numpy arrays with exactly the structure, shapes and dtypes of `init_params`.

    Raises:
      CheckpointMismatchError: listing every missing, unexpected and mis-shaped key.
    """
    from vit_jax.models import layers

    if isinstance(path, str):
        loaded = load_params(path)
        where = path
        source = _split_subtree(path)[0]
        if old_grid is None and not os.path.isfile(source):
            old_grid = _grid_of_model_config(workdir_model_config(source))
    else:
        loaded, where = path, '<params>'
    flat_loaded = flatten(loaded)  # Nested or already '/'-flat.
    init_flat = flatten(init_params)
    flat = normalise_keys({k: np.asarray(v) for k, v in flat_loaded.items()})
    # A shared attention-bias table into a model with one per layer (BEiT pretraining -> BEiT fine-tuning).
    loop_shapes = layers.unscan_shapes(init_flat)  # Shared-table expansion and table resampling work per layer.
    flat = layers.shared_bias_to_per_layer_like(flat, loop_shapes)
    rel_pos_problems = []
    if resample_posemb:
        flat = _resample_rel_pos_tables(flat, loop_shapes, old_grid, new_grid, rel_pos_problems)
    flat = _scan_to_loop(flat, init_flat)
    patterns = [re.compile(p) for p in dont_load]
    skip = lambda k: any(p.match(k) for p in patterns)  # noqa: E731
    for p in patterns:
        if not any(p.match(k) for k in list(init_flat) + list(flat)):
            log.warning('dont_load pattern %r matches no parameter of the model or the checkpoint.', p.pattern)
    missing = [k for k in init_flat if k not in flat and not skip(k)]
    unexpected = [k for k in flat if k not in init_flat and not skip(k)]
    mismatched, merged = [], {}
    for k, init_v in init_flat.items():
        if skip(k) or k not in flat:
            merged[k] = np.asarray(init_v)
            continue
        v = flat[k]
        regrid = (tuple(v.shape) == tuple(init_v.shape) and resample_posemb and _is_posemb(k) and v.ndim == 3
                  and _as_grid(old_grid) is not None and _as_grid(new_grid) is not None
                  and _as_grid(old_grid) != _as_grid(new_grid))
        if regrid:  # Same token count on another grid (e.g. 12x8 -> 8x12): resample when both grids are known.
            p = v.shape[1] - _as_grid(new_grid)[0] * _as_grid(new_grid)[1]
            og = _as_grid(old_grid)
            if p >= 0 and og[0] * og[1] + p == v.shape[1]:
                v = layers.resample_posemb(v, v.shape[1], num_prefix_tokens=p, old_hw=og, new_hw=_as_grid(new_grid))
        if tuple(v.shape) != tuple(init_v.shape):
            if (resample_posemb and _is_posemb(k) and v.ndim == 3 and init_v.ndim == 3 and v.shape[0] == 1
                    and v.shape[-1] == init_v.shape[-1]):
                try:
                    prefix, og, ng = posemb_grids(v.shape[1], init_v.shape[1], old_grid, new_grid)
                except ValueError as e:
                    mismatched.append(f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(init_v.shape)} ({e})')
                    continue
                log.info('Resampling %s from %s (grid %s) to %s (grid %s).', k, v.shape, og, init_v.shape, ng)
                v = layers.resample_posemb(v, init_v.shape[1], num_prefix_tokens=prefix, old_hw=og, new_hw=ng)
            else:
                mismatched.append(f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(init_v.shape)}')
                continue
        merged[k] = np.asarray(v, dtype=np.asarray(init_v).dtype)
    if missing or unexpected or mismatched:
        lines = [f'The checkpoint {where} does not match the model:']
        if missing:
            lines.append(f'  missing in the checkpoint ({len(missing)}):')
            lines += [f'    {k}' for k in missing]
        if unexpected:
            lines.append(f'  in the checkpoint but not in the model ({len(unexpected)}):')
            lines += [f'    {k}' for k in unexpected]
        if mismatched:
            lines.append(f'  shape mismatch ({len(mismatched)}):')
            lines += [f'    {k}' for k in mismatched]
            lines += [f'    (not resampled: {p})' for p in rel_pos_problems]
        lines.append("Check the model name and options (width, depth, patch size, classifier, representation_size) "
                     "against the checkpoint. Parameters the new model should keep freshly initialised, or checkpoint "
                     "entries it has no use for, go in dont_load=(regex, ...), e.g. ('head/.*', 'pre_logits/.*') for "
                     "a new head (config.init_from.dont_load).")
        raise CheckpointMismatchError('\n'.join(lines), missing, unexpected, mismatched)
    return unflatten(merged)


# ----------------------------------------------------------------------------------------------------------------
# Orbax train-state checkpoints.
# ----------------------------------------------------------------------------------------------------------------
def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def _fits(step_dir: str, target: Any) -> Optional[bool]:
    """Whether a step's metadata holds exactly the names and shapes of `target`; None when it cannot be read."""
    try:
        meta = _ocp().StandardCheckpointer().metadata(os.path.join(step_dir, _ITEM))
        meta = getattr(meta, 'item_metadata', meta)
    except Exception:  # noqa: BLE001 - unreadable metadata: damage.
        return None

    def shapes(tree: Any) -> dict[str, tuple]:
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {jax.tree_util.keystr(p): tuple(getattr(x, 'shape', None) or ()) for p, x in leaves
                if hasattr(x, 'shape')}

    try:
        return shapes(meta) == shapes(target)
    except Exception:  # noqa: BLE001
        return None


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f'vit_jax.checkpoint.{name}')


def _set_aside(path: str, kind: str) -> str:
    """Renames a step directory to `<step>.<kind>-<UTC time>` (never deletes it); returns the new path."""
    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
    new, i = f'{path}.{kind}-{stamp}', 1
    while os.path.exists(new):
        i += 1
        new = f'{path}.{kind}-{stamp}-{i}'
    os.rename(path, new)
    return new


class Manager:
    """Periodic Orbax checkpoints of the whole train state in `<workdir>/checkpoints/<step>`; keeps the last N.

    Each saved step gets a checksum manifest (`CHECKSUMS_FILE`: size and CRC-32 of every file), verified before the
    step is restored, so flipped bytes are caught instead of loaded. Step directories that are incomplete (empty,
    without their `default/` item) are renamed `<step>.incomplete-<time>` when the manager opens; steps that turn
    out damaged while restoring are renamed `<step>.corrupt-<time>` once an older step restored. Both with a
    warning naming them; nothing is deleted, and the step can be saved again (the retrained final step is).
    """

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = False, verify: bool = True):
        ocp = _ocp()
        self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
        self.verify = verify
        self._async = async_save
        self._unsealed: list[int] = []
        self._primary = jax.process_index() == 0
        self._tidy()  # Every process, directory or not: the sync inside must be reached by all of them.
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self._mngr = ocp.CheckpointManager(self.directory, options=options)

    def _tidy(self) -> None:
        """Sets incomplete step directories aside (Orbax would count them as steps and fail on every restore)."""
        for path, why in (scan_steps(self.directory)[1] if os.path.isdir(self.directory) else []):
            if why.startswith('incomplete') and self._primary:
                log.warning('Ignoring the checkpoint directory %s (%s): renamed to %s.', path, why,
                            _set_aside(path, 'incomplete'))
            elif not why.startswith('incomplete'):
                log.warning('Ignoring %s (%s).', path, why)
        _sync('tidy')

    def latest_step(self) -> Optional[int]:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def save(self, step: int, state: Any, force: bool = False) -> bool:
        ocp = _ocp()
        if self._unsealed:  # An asynchronous save still without its manifest (Orbax would wait for it anyway).
            self.wait()
        saved = bool(self._mngr.save(int(step), args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                                     force=force))
        if saved:
            self._unsealed.append(int(step))
            if not self._async:
                self._seal()
        return saved

    def _seal(self) -> None:
        """Writes the checksum manifests of the finished saves (the first process; the files are shared)."""
        steps, self._unsealed = self._unsealed, []
        for s in steps if self._primary else ():
            step_dir = os.path.join(self.directory, str(s))
            if os.path.isdir(os.path.join(step_dir, _ITEM)):  # Not already removed by keep-last-N.
                try:
                    write_checksums(step_dir)
                except OSError as e:
                    log.warning('Could not write the checksum manifest of %s (%s): it will be restored unverified.',
                                step_dir, e)

    def wait(self) -> None:
        self._mngr.wait_until_finished()
        self._seal()

    def restore(self, abstract_state: Any, step: Optional[int] = None) -> tuple[Any, int]:
        """Restores into the structure (and shardings) of `abstract_state`; falls back to older steps on damage.

        A step is damaged when its files differ from its checksum manifest, or when it fails to restore although
        its metadata matches `abstract_state` (or cannot be read). Damaged steps newer than the one restored are
        renamed `<step>.corrupt-<time>` (see the class docstring); a step written for another model is not damage
        and is left in place.
        """
        ocp = _ocp()
        steps = [step] if step is not None else sorted(self._mngr.all_steps(), reverse=True)
        target = flax.serialization.to_state_dict(abstract_state)
        errors, damaged = [], []
        for s in steps:
            step_dir = os.path.join(self.directory, str(s))
            problem = verify_checksums(step_dir) if self.verify else None
            if problem is None:
                try:
                    restored = self._mngr.restore(s, args=ocp.args.StandardRestore(target))
                except Exception as e:  # noqa: BLE001 - truncated / corrupted files, or another model's state.
                    problem = f'{type(e).__name__}: {str(e)[:300]}'
                    if _fits(step_dir, target) is False:
                        errors.append(f'step {s}: {problem}')
                        log.warning('Checkpoint at step %s (%s) could not be restored and holds other names or '
                                    'shapes than this model (%s); trying an older one.', s, step_dir, problem)
                        continue
                else:
                    self._set_aside_damaged(damaged)
                    return flax.serialization.from_state_dict(abstract_state, restored), s
            errors.append(f'step {s}: {problem}')
            damaged.append(s)
            log.warning('Checkpoint at step %s (%s) could not be restored, it is damaged (%s); trying an older one.',
                        s, step_dir, problem)
        raise RuntimeError('No checkpoint in %s could be restored: %s' % (self.directory, '; '.join(errors)))

    def _set_aside_damaged(self, steps: list[int]) -> None:
        """Renames damaged steps newer than the restored one, so Orbax neither lists them nor refuses to save them."""
        if not steps:
            return
        for s in steps if self._primary else ():
            path = os.path.join(self.directory, str(s))
            try:
                new = _set_aside(path, 'corrupt')
                log.warning('The damaged checkpoint at step %s was renamed to %s (kept for inspection; delete it when '
                            'no longer needed); step %s will be saved again.', s, new, s)
            except OSError as e:
                log.warning('Could not rename the damaged checkpoint %s (%s).', path, e)
        _sync('set_aside')
        self._mngr.reload()

    def close(self) -> None:
        self.wait()
        self._mngr.close()


def model_grid(model: Any) -> Optional[tuple[int, int]]:
    """The (h, w) token grid of a model that defines `grid_size` (ViT family), else None."""
    try:
        return _as_grid(getattr(model, 'grid_size', None))
    except Exception:  # A property that cannot be computed for this configuration.
        return None
