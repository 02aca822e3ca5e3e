"""Weights from PyTorch into vit_jax: the public face of `vit_jax.porting`, and the one converter command line.

    variables = convert.from_official('cct', state_dict, model)   # an official checkpoint's state dict
    convert.official_families()                                    # the official layouts it knows
    model, variables = convert.from_transformers(hf_model)         # HuggingFace ViT, CvT, DPT, TimeSformer, BEiT, CLIP
    model, variables = convert.vit_from_timm_state_dict(sd)        # a timm ViT state dict

Command line (IN: `.pth`, `.pt`, `.pyth`, `.bin`, `.ckpt`, `.pth.tar` or `.safetensors`; torch files are read with
`torch.load(weights_only=True)`, which refuses pickled objects; `{'model': ...}` / `{'state_dict': ...}` wrappers and
`module.` prefixes are removed):

    python -m vit_jax.convert --from=official:cct --model=CCT-7/3x1 [--model.num_classes=100 ...] IN --out OUT.npz
    python -m vit_jax.convert --from=transformers HF_MODEL_DIR --out OUT.npz
    python -m vit_jax.convert --from=timm IN --out OUT.npz

Export (`vit_jax/porting/export.py`): `convert.to_transformers(model, variables, out_dir)` writes a HuggingFace model
directory (ViT/DeiT, CvT, BEiT, DPT, TimeSformer), `convert.to_timm(model, variables, path)` a timm ViT/DeiT state
dict (.safetensors); on the command line `--to=transformers|timm --workdir_or_npz IN --out OUT [--model=NAME ...]`.

The `.npz` holds the parameters in the release layout (and non-trainable collections such as BatchNorm
`batch_stats` under `model_state/...`); it loads with `config.init_from.path` and `checkpoint.load_pretrained`. The
command prints the matching `config.model` flags and the input size. Converters live in `vit_jax/porting/`, one
module per family; `models/` is pure architecture.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import sys
from typing import Any, Callable

if __name__ == '__main__':  # The command line: library logging off before TensorFlow loads (--verbose: on).
    from vit_jax import console

    console.setup(verbose='--verbose' in sys.argv)
    if '--verbose' in sys.argv:
        sys.argv.remove('--verbose')

import numpy as np  # noqa: E402

from vit_jax.porting import export, registry
from vit_jax.porting.common import (  # noqa: F401  (layout helpers, re-exported)
    attention_in,
    attention_out,
    batchnorm,
    conv,
    hf_activation,
    linear,
    norm,
    to_numpy,
)
from vit_jax.porting.export import ExportError, to_timm, to_transformers  # noqa: F401
from vit_jax.porting.hf import (  # noqa: F401
    from_hf_beit,
    from_hf_clip_vision,
    from_hf_cvt,
    from_hf_dpt,
    from_hf_timesformer,
    from_hf_vit,
    from_transformers,
    hf_classes,
    hf_converter,
    vit_from_hf_state_dict,
)
from vit_jax.porting.registry import (  # noqa: F401
    ConversionError,
    StateDict,
    check_variables,
    from_official,
    official_families,
    unwrap,
)
from vit_jax.porting.timm import TIMM_HEADS_BY_WIDTH, vit_from_timm_state_dict  # noqa: F401

# File types the command line reads.
TORCH_SUFFIXES = ('.pth', '.pt', '.pyth', '.bin', '.ckpt', '.tar')
SUFFIXES = TORCH_SUFFIXES + ('.safetensors',)


# ----------------------------------------------------------------------------------------------------------------
# Reading checkpoint files.
# ----------------------------------------------------------------------------------------------------------------
def read_torch_state_dict(path: str, key: str | None = None) -> dict:
    """A state dict of numpy arrays from `.safetensors` (no torch needed) or `.pth/.pt/.pyth/.bin` (torch, weights
    only: pickled objects are refused). Wrappers (`{'model': ...}`, `{'state_dict': ...}`, ...) and `module.`
    prefixes are removed (`porting.registry.unwrap`); `key` picks one entry of the file's dict first (e.g.
    'state_dict_ema' or 'model_ema' for the EMA weights some training scripts save next to the raw ones)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'No checkpoint file at {path!r}.')
    if path.endswith('.safetensors'):
        from safetensors.numpy import load_file

        try:
            obj = dict(load_file(path))
        except Exception as e:
            raise ValueError(f'{path!r} is not a readable .safetensors file ({type(e).__name__}: {e}).') from None
    else:
        try:
            import torch
        except ImportError:
            raise ImportError(f'Reading {path!r} needs PyTorch (pip install torch); .safetensors files do not.'
                              ) from None
        try:
            # weights_only refuses arbitrary pickled objects; argparse.Namespace (the `args` that DeiT-style training
            # scripts save next to the weights) only sets attributes and is allowed.
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:
            raise ValueError(f'{path!r} could not be read as a PyTorch weights file with torch.load(weights_only=True) '
                             f'({type(e).__name__}: {str(e)[:300]}). Only plain state dicts of tensors (possibly '
                             "inside {'model': ...} / {'state_dict': ...}) are accepted.") from None
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            have = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f'{path!r} has no entry {key!r} (--key); it has: {have}.')
        obj = obj[key]
    try:
        return unwrap(obj)
    except ConversionError as e:
        raise ValueError(f'{path!r}: {e}') from None


def _hf_files(path: str, config_path: str | None) -> tuple[str, str]:
    if os.path.isdir(path):
        for name in ('model.safetensors', 'pytorch_model.bin'):
            if os.path.isfile(os.path.join(path, name)):
                weights = os.path.join(path, name)
                break
        else:
            raise FileNotFoundError(f'{path!r} has no model.safetensors or pytorch_model.bin.')
        config_path = config_path or os.path.join(path, 'config.json')
    else:
        weights = path
        config_path = config_path or os.path.join(os.path.dirname(os.path.abspath(path)), 'config.json')
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f'No HuggingFace config.json at {config_path!r}; pass --hf_config PATH.')
    return weights, config_path


# ----------------------------------------------------------------------------------------------------------------
# The model a conversion produced, as config.model entries.
# ----------------------------------------------------------------------------------------------------------------
def model_overrides(model: Any) -> dict:
    """`config.model` entries (name + overrides) that rebuild `model` with `models.get_model`: the registered variant
    of its class that needs the fewest overrides."""
    from vit_jax import models

    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name not in ('parent', 'name')}
    best, best_diff = None, None
    for name in models.list_models():
        entry = models.get_entry(name)
        if entry.cls is not type(model):
            continue
        defaults = {f.name: f.default for f in dataclasses.fields(entry.cls) if f.name in fields}
        defaults.update(entry.defaults)
        diff = {k: v for k, v in fields.items() if _norm_value(defaults.get(k)) != _norm_value(v)}
        if best_diff is None or len(diff) < len(best_diff):
            best, best_diff = name, diff
    if best is None:
        raise ValueError(f'No registered model has the class {type(model).__name__}.')
    return {'name': best, **{k: _norm_value(v) for k, v in best_diff.items()}}


def _norm_value(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        v = tuple(_norm_value(x) for x in v)
        return v[0] if len(v) == 2 and v[0] == v[1] and isinstance(v[0], int) else v
    return v


def _flag(v: Any) -> str:
    s = repr(v) if not isinstance(v, str) else v
    return f'"{s}"' if any(c in s for c in ' (),\'') else s


def _parse_value(s: str) -> Any:
    """A command-line value: a Python literal (3, 0.1, True, None, (224, 224), 'x') or else the string itself."""
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError):
        return s


# ----------------------------------------------------------------------------------------------------------------
# Conversions behind the command line: each returns (model, variables, config.model entries).
# ----------------------------------------------------------------------------------------------------------------
def convert_partial(family: str, state_dict: dict, model: Any) -> dict:
    """The variables an official checkpoint holds for part of `model` (e.g. an MAE encoder for QueryOTR's encoder).

    As `from_official`, every checkpoint key must be consumed and every converted variable must exist in `model`
    with its shape; variables the checkpoint does not provide are left out (load them with
    `init_from.dont_load=...`, they keep their fresh initialisation).
    """
    variables = registry.convert_consumed(family, state_dict, model)
    from vit_jax import models

    expected = registry._flat(dict(models.init_shapes(model)))
    got = registry._flat(variables)
    extra = sorted(set(got) - set(expected))
    bad = [f'{k}: converted {tuple(np.shape(got[k]))}, model {tuple(expected[k].shape)}'
           for k in sorted(set(got) & set(expected)) if tuple(np.shape(got[k])) != tuple(expected[k].shape)]
    if extra or bad:
        raise ConversionError(f'official:{family}: converted variables the model does not have: {extra}; shape '
                              f'mismatches: {bad}.')
    return variables


def _from_official(args: Any, model_flags: dict) -> tuple[Any, dict, dict, tuple[str, ...]]:
    from vit_jax import models

    family = args.source.split(':', 1)[1]
    fam = registry.get_family(family)  # ValueError naming the known families.
    if not args.model:
        prefixes = ', '.join(fam.models) or 'see models.list_models()'
        raise ValueError(f'--from=official:{family} needs --model=<registered name> (names starting with {prefixes}) '
                         'and --model.<field>=<value> for the checkpoint\'s hyper-parameters.')
    model = models.get_model(args.model, **model_flags)
    sd = read_torch_state_dict(args.input, key=args.key)
    if args.partial:
        variables = convert_partial(family, sd, model)
        expected = registry._flat(dict(models.init_shapes(model)))
        got = registry._flat(variables)
        left = sorted({k.split('/')[1] for k in expected if k not in got and k.startswith('params/')})
        dont_load = tuple(f'{k}/.*' if any(e.startswith(f'params/{k}/') for e in expected) else k for k in left)
    else:
        variables = from_official(family, sd, model)
        dont_load = ()
    name = models.get_entry(args.model).name
    return model, variables, {'name': name, **model_flags}, dont_load


def _from_transformers(args: Any, model_flags: dict) -> tuple[Any, dict, dict, tuple[str, ...]]:
    weights, config_path = _hf_files(args.input, args.hf_config)
    try:
        from transformers import ViTConfig
    except ImportError:
        raise ImportError('--from=transformers needs the transformers package (pip install transformers).') from None
    config = ViTConfig.from_json_file(config_path)
    model, variables = vit_from_hf_state_dict(config, read_torch_state_dict(weights))
    return model, variables, model_overrides(model), ()


def _from_timm(args: Any, model_flags: dict) -> tuple[Any, dict, dict, tuple[str, ...]]:
    image_size = None
    if args.image_size:
        image_size = tuple(int(x) for x in str(args.image_size).split(','))
        image_size = image_size[0] if len(image_size) == 1 else image_size
    sd = read_torch_state_dict(args.input, key=args.key)
    model, variables = vit_from_timm_state_dict(sd, num_heads=args.num_heads, image_size=image_size)
    return model, variables, model_overrides(model), ()


# --from=<source>: name -> fn(args, model flags) -> (model, variables, config.model entries, dont_load).
IMPORTS: dict[str, Callable] = {'official': _from_official, 'transformers': _from_transformers, 'timm': _from_timm}


def save_variables(path: str, variables: dict) -> None:
    """Writes converted variables as one `.npz`: `params` at the top level, other collections under model_state/."""
    from vit_jax import checkpoint

    checkpoint.save_npz(path, variables['params'], model_state={k: v for k, v in variables.items() if k != 'params'})


def convert_file(source: str, path: str, out: str, *, hf_config: str | None = None, num_heads: int | None = None,
                 image_size: Any = None, model: str | None = None, model_flags: dict | None = None,
                 partial: bool = False) -> dict:
    """Converts a saved PyTorch checkpoint into a `.npz`; returns the `config.model` entries of the converted model.

    `source`: 'transformers', 'timm' or 'official:<family>' (then `model` is the registered vit_jax name and
    `model_flags` its overrides).
    """
    kind = source.split(':', 1)[0]
    if kind not in IMPORTS or (kind == 'official') != (':' in source):
        raise ValueError(f"--from must be 'transformers', 'timm' or 'official:<family>' (families: "
                         f"{', '.join(official_families())}), got {source!r}.")
    args = dataclasses.make_dataclass('Args', ['source', 'input', 'hf_config', 'num_heads', 'image_size', 'model',
                                               'partial', 'key'])(source, path, hf_config, num_heads, image_size,
                                                                  model, partial, None)
    _, variables, model_cfg, _ = IMPORTS[kind](args, dict(model_flags or {}))
    save_variables(out, variables)
    return model_cfg


# ----------------------------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='python -m vit_jax.convert',
        description='Convert a saved PyTorch checkpoint (an official release, HuggingFace transformers or timm) into '
                    'a .npz parameter file in the vit_jax layout, loadable with config.init_from.path / '
                    'checkpoint.load_pretrained. Model fields for --from=official: --model.<field>=<value>. '
                    'Export: --to=transformers|timm (--to=timm --help).')
    p.add_argument('input', nargs='?', default=None,
                   help='official / timm: a .pth/.pt/.pyth/.bin/.ckpt/.pth.tar/.safetensors file; HuggingFace: a '
                        'model directory (config.json + model.safetensors or pytorch_model.bin) or the weights file.')
    p.add_argument('--from', dest='source', default=None,
                   help=f"'official:<family>' ({', '.join(official_families())}), 'transformers' (a ViT) or "
                        "'timm' (a ViT).")
    p.add_argument('--out', required=True, help='Output .npz file.')
    p.add_argument('--model', default=None, help='official: the registered vit_jax model to convert into (e.g. '
                                                 'CCT-7/3x1); set its hyper-parameters with --model.<field>=<value>.')
    p.add_argument('--key', default=None,
                   help="official / timm: the entry of the checkpoint's dict that holds the weights, e.g. "
                        "state_dict_ema (default: the first of 'state_dict', 'model', ... found; see "
                        "porting.registry.unwrap).")
    p.add_argument('--partial', action='store_true',
                   help='official: convert the parts the checkpoint holds (e.g. an MAE encoder for QueryOTR) instead '
                        'of requiring every model variable; the printed init_from.dont_load covers the rest.')
    p.add_argument('--hf_config', default=None, help='transformers: config.json (default: next to the weights).')
    p.add_argument('--num_heads', type=int, default=None, help='timm: attention heads (default: standard for width).')
    p.add_argument('--image_size', default=None, help='timm: H or H,W (default: from pos_embed, square).')
    return p


def _split_model_flags(argv: list[str]) -> tuple[list[str], dict]:
    """Takes `--model.<field>=<value>` (or `--model.<field> <value>`) out of argv: (the other args, {field: value})."""
    from vit_jax import config_utils

    rest, pairs = config_utils.split_overrides(argv, prefix='--model.')
    return rest, {k: _parse_value(v) for k, v in pairs}


def main(argv: list[str] | None = None) -> int:
    """`python -m vit_jax.convert --from=official:<family>|transformers|timm [--model=NAME --model.X=V] IN --out O.npz`.

    Returns 0 on success, 1 for a checkpoint that cannot be converted (the reason on stderr), 2 for bad usage.
    A new mode (e.g. an export `--to=...`) adds its flags in `_parser()` and its branch here.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if export.wants_export(argv):  # --to=transformers|timm: the export mode, with its own flags (porting/export.py).
        return export.main(argv)
    rest, model_flags = _split_model_flags(argv)
    p = _parser()
    args = p.parse_args(rest)
    # Modes: --from=<source> (IMPORTS). Another mode (e.g. an export --to=...) adds its flags in _parser() and is
    # dispatched here, before the import checks.
    if args.source is None:
        p.error('--from is required: official:<family>, transformers or timm.')
    if args.input is None:
        p.error('the checkpoint to convert (IN) is required.')
    if not args.out.endswith('.npz'):
        print('error: --out must end in .npz', file=sys.stderr)
        return 2
    kind = args.source.split(':', 1)[0]
    if kind not in IMPORTS or (kind == 'official') != (':' in args.source):
        print(f"error: --from must be 'transformers', 'timm' or 'official:<family>' (families: "
              f"{', '.join(official_families())}), got {args.source!r}.", file=sys.stderr)
        return 2
    if model_flags and kind != 'official':
        print(f'error: --model.<field> flags apply to --from=official:<family>, not --from={args.source}.',
              file=sys.stderr)
        return 2
    if os.path.isfile(args.input) and not args.input.endswith(SUFFIXES):
        print(f'error: {args.input!r}: expected one of {", ".join(SUFFIXES)}.', file=sys.stderr)
        return 2
    try:
        model, variables, model_cfg, dont_load = IMPORTS[kind](args, model_flags)
        save_variables(args.out, variables)
    except (OSError, ValueError, ImportError, KeyError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    _report(args.out, model, variables, model_cfg, dont_load)
    return 0


def _report(out: str, model: Any, variables: dict, model_cfg: dict, dont_load: tuple[str, ...]) -> None:
    from vit_jax import models

    n = sum(int(np.prod(np.shape(x))) for x in registry._flat(variables.get('params', {})).values())
    others = ', '.join(sorted(k for k in variables if k != 'params'))
    shape = models.input_shape(model)
    size = 'x'.join(str(s) for s in shape[-3:-1])
    frames = f', {shape[1]} frames' if len(shape) == 5 else ''
    flags = ' '.join(f'--config.model.{k}={_flag(v)}' for k, v in model_cfg.items())
    dl = f' --config.init_from.dont_load="{dont_load}"' if dont_load else ''
    print(f'Wrote {out}: {n:,} parameters' + (f' and model_state ({others})' if others else '') + '.\n'
          f'The equivalent vit_jax model: {model_cfg}\n'
          f'Input: {size} pixels{frames} (image_size of the converted model).\n'
          f'Fine-tune with: {flags} --config.init_from.path={out}{dl}')


if __name__ == '__main__':
    raise SystemExit(main())
