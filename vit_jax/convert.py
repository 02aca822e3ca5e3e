"""Weights from PyTorch implementations into vit_jax models.

    model, variables = convert.from_transformers(hf_model)   # HuggingFace ViT, CvT, DPT, TimeSformer, BEiT ...

Each family registers its converter next to its model with `@convert.hf_converter('CvtModel', ...)`; a converter
takes the HuggingFace PyTorch module and returns `(flax_module, variables)`. Converters read the module's
`state_dict()` and `config` only: no hub download, no pickles.

Helpers here turn PyTorch layouts into Flax ones: Linear (out, in) -> (in, out), Conv OIHW -> HWIO, and the
per-head DenseGeneral kernels of attention.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np

_HF_CONVERTERS: dict[str, Callable[[Any], tuple[Any, dict]]] = {}


def hf_converter(*class_names: str):
    """Decorator registering a converter for the given HuggingFace model class names."""

    def wrap(fn):
        for n in class_names:
            _HF_CONVERTERS[n] = fn
        return fn

    return wrap


def from_transformers(hf_model: Any) -> tuple[Any, dict]:
    """Converts a HuggingFace `transformers` PyTorch model into `(vit_jax module, variables)`."""
    from vit_jax import models

    models._load_families()  # Family modules register their converters on import.
    name = type(hf_model).__name__
    if name not in _HF_CONVERTERS:
        raise ValueError(f'No converter for HuggingFace {name}; supported: {", ".join(sorted(_HF_CONVERTERS))}.')
    return _HF_CONVERTERS[name](hf_model)


# ----------------------------------------------------------------------------------------------------------------
# Layout helpers shared by the converters.
# ----------------------------------------------------------------------------------------------------------------
from vit_jax.porting.common import attention_in, attention_out, batchnorm, conv, hf_activation, linear, norm, to_numpy  # noqa: E402,F401

# ----------------------------------------------------------------------------------------------------------------
# ViT: HuggingFace transformers (ViTModel / ViTForImageClassification) and timm-style state dicts.
# ----------------------------------------------------------------------------------------------------------------
# HuggingFace transformers 4.x names (still used by files on the hub) -> the 5.x names read below.
_HF_V4_TO_V5 = (
    (re.compile(r'^encoder\.layer\.(\d+)\.attention\.attention\.query\.'), r'layers.\1.attention.q_proj.'),
    (re.compile(r'^encoder\.layer\.(\d+)\.attention\.attention\.key\.'), r'layers.\1.attention.k_proj.'),
    (re.compile(r'^encoder\.layer\.(\d+)\.attention\.attention\.value\.'), r'layers.\1.attention.v_proj.'),
    (re.compile(r'^encoder\.layer\.(\d+)\.attention\.output\.dense\.'), r'layers.\1.attention.o_proj.'),
    (re.compile(r'^encoder\.layer\.(\d+)\.intermediate\.dense\.'), r'layers.\1.mlp.fc1.'),
    (re.compile(r'^encoder\.layer\.(\d+)\.output\.dense\.'), r'layers.\1.mlp.fc2.'),
    (re.compile(r'^encoder\.layer\.(\d+)\.'), r'layers.\1.'),
)


def _hf_vit_keys(sd: dict) -> dict:
    """A HF ViT state dict with the `vit.` prefix removed and 4.x layer names mapped to 5.x names."""
    out = {}
    for k, v in sd.items():
        if k.startswith('vit.'):
            k = k[len('vit.'):]
        for pattern, repl in _HF_V4_TO_V5:
            new = pattern.sub(repl, k)
            if new != k:
                k = new
                break
        out[k] = v
    return out


def _cfg(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


class _Consumed(dict):
    """A state dict that records which keys were read (to refuse checkpoints with unconverted weights)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.read: set = set()

    def __getitem__(self, k):
        self.read.add(k)
        return super().__getitem__(k)

    def __contains__(self, k):
        return super().__contains__(k)

    def unread(self) -> list:
        return sorted(set(self) - self.read)


def vit_from_hf_state_dict(config: Any, state_dict: dict) -> tuple[Any, dict]:
    """`(VisionTransformer, variables)` from a HuggingFace ViT config (object or dict) and its state dict.

    Works from files alone (no `transformers` model is built): the state dict of `ViTModel` (with or without the
    pooler), of `ViTForImageClassification` (with `classifier`), in the 4.x or 5.x naming. HuggingFace's choices are
    kept: `hidden_act` ('gelu' is exact erf GELU -> activation='gelu_exact'), `layer_norm_eps` (1e-12 in the hub
    configs), `image_size` / `patch_size` (ints or (h, w) pairs) and `qkv_bias`. The pooler (dense + tanh) becomes
    `pre_logits` (representation_size), the classifier `head`.
    """
    from vit_jax import models

    sd = _Consumed(_hf_vit_keys(state_dict))
    hidden = int(_cfg(config, 'hidden_size', 768))
    heads = int(_cfg(config, 'num_attention_heads', 12))
    head_dim = _cfg(config, 'head_dim', None)
    if head_dim is not None and int(head_dim) * heads != hidden:
        raise ValueError(f'head_dim={head_dim} x {heads} heads != hidden_size={hidden}: not supported by ViT here.')
    if int(_cfg(config, 'num_channels', 3)) != 3:
        raise ValueError(f'Only 3-channel (RGB) ViTs convert; this one has num_channels='
                         f'{_cfg(config, "num_channels")}.')
    depth = int(_cfg(config, 'num_hidden_layers', 12))
    have_depth = len({k.split('.')[1] for k in sd if k.startswith('layers.')})
    if have_depth != depth:
        raise ValueError(f'The config has num_hidden_layers={depth} but the state dict holds {have_depth} layers.')
    pooled = 'pooler.dense.weight' in sd
    if pooled and _cfg(config, 'pooler_act', 'tanh') != 'tanh':
        raise ValueError(f"Only a tanh pooler converts (pre_logits); got pooler_act={_cfg(config, 'pooler_act')!r}.")
    num_classes = int(sd['classifier.weight'].shape[0]) if 'classifier.weight' in sd else None
    image_size = _cfg(config, 'image_size', 224)
    patch_size = _cfg(config, 'patch_size', 16)
    model = models.get_model(
        'ViT-B/16', num_classes=num_classes,
        image_size=tuple(image_size) if not isinstance(image_size, int) else image_size,
        patch_size=tuple(patch_size) if not isinstance(patch_size, int) else patch_size,
        hidden_size=hidden, mlp_dim=int(_cfg(config, 'intermediate_size', 3072)), num_heads=heads,
        num_layers=depth, classifier='token',
        representation_size=int(sd['pooler.dense.weight'].shape[0]) if pooled else None,
        dropout_rate=float(_cfg(config, 'hidden_dropout_prob', 0.0) or 0.0),
        attention_dropout_rate=float(_cfg(config, 'attention_probs_dropout_prob', 0.0) or 0.0),
        norm_eps=float(_cfg(config, 'layer_norm_eps', 1e-12)), activation=hf_activation(_cfg(config, 'hidden_act',
                                                                                             'gelu')),
        qkv_bias=bool(_cfg(config, 'qkv_bias', True)))
    n_grid = model.grid_size[0] * model.grid_size[1]
    pe = to_numpy(sd['embeddings.position_embeddings'])
    if pe.shape != (1, n_grid + 1, hidden):
        raise ValueError(f'position_embeddings has shape {pe.shape}; image_size={image_size} and '
                         f'patch_size={patch_size} give {n_grid} patches + the class token.')
    tr = {'posembed_input': {'pos_embedding': pe}}
    for i in range(depth):
        L = f'layers.{i}'
        tr[f'encoderblock_{i}'] = {
            'LayerNorm_0': norm(sd, f'{L}.layernorm_before'),
            'MultiHeadDotProductAttention_1': {
                'query': attention_in(sd, f'{L}.attention.q_proj', heads),
                'key': attention_in(sd, f'{L}.attention.k_proj', heads),
                'value': attention_in(sd, f'{L}.attention.v_proj', heads),
                'out': attention_out(sd, f'{L}.attention.o_proj', heads)},
            'LayerNorm_2': norm(sd, f'{L}.layernorm_after'),
            'MlpBlock_3': {'Dense_0': linear(sd, f'{L}.mlp.fc1'), 'Dense_1': linear(sd, f'{L}.mlp.fc2')},
        }
    tr['encoder_norm'] = norm(sd, 'layernorm')
    params = {'embedding': conv(sd, 'embeddings.patch_embeddings.projection'),
              'cls': to_numpy(sd['embeddings.cls_token']), 'Transformer': tr}
    if pooled:
        params['pre_logits'] = linear(sd, 'pooler.dense')
    if num_classes:
        params['head'] = linear(sd, 'classifier')
    unread = [k for k in sd.unread() if k != 'embeddings.mask_token']
    if unread:
        raise ValueError(f'Unconverted HuggingFace ViT weights (a variant this converter does not know): {unread}.')
    return model, {'params': params}


@hf_converter('ViTModel', 'ViTForImageClassification')
def from_hf_vit(hf_model: Any) -> tuple[Any, dict]:
    """Converts a HuggingFace `ViTModel` / `ViTForImageClassification` into `(VisionTransformer, variables)`.

    The converted model's logits equal `ViTForImageClassification`'s; for `ViTModel`, `out['encoded']` equals
    `last_hidden_state` and `out['pre_logits']` the `pooler_output` (when the model has its pooler).
    """
    return vit_from_hf_state_dict(hf_model.config, hf_model.state_dict())


# Attention heads of the standard ViT widths (timm state dicts do not record the head count).
TIMM_HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


def vit_from_timm_state_dict(state_dict: dict, *, num_heads: int | None = None, image_size: Any = None,
                             norm_eps: float = 1e-6, activation: str = 'gelu_exact') -> tuple[Any, dict]:
    """`(VisionTransformer, variables)` from a timm-style ViT state dict (`timm.models.vision_transformer`).

    Keys: `cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`,
    `norm`, optional `head` and old-timm `pre_logits.fc`. Width, depth, MLP width, patch size, class count and qkv
    bias are read from the shapes; `num_heads` defaults to the standard head count of the width
    (`TIMM_HEADS_BY_WIDTH`); `image_size` defaults to the square grid of `pos_embed` (pass (h, w) otherwise).
    timm's ViT uses exact GELU and LayerNorm eps 1e-6. Models without a class token become `classifier='gap'`;
    `pos_embed` without the class token (`no_embed_class`) gets a zero row for it (the same function). Features
    this ViT does not have (register tokens, layer scale, qk-norm, fc_norm, norm_pre) are refused by name.
    """
    from vit_jax import models

    sd = _Consumed({k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()})
    unsupported = sorted({k.split('.')[0] if not k.startswith('blocks.') else '.'.join(k.split('.')[2:4])
                          for k in sd if re.match(r'(reg_token|fc_norm|norm_pre|attn_pool|blocks\.\d+\.(ls\d|attn\.'
                                                  r'[qk]_norm))', k)})
    if unsupported:
        raise ValueError(f'This timm ViT uses {unsupported}, which vit_jax.models.vit.VisionTransformer does not '
                         'have; it cannot be converted exactly.')
    if 'patch_embed.proj.weight' not in sd:
        raise ValueError('Not a timm ViT state dict: no patch_embed.proj.weight (keys start with '
                         f'{sorted({k.split(".")[0] for k in sd})}).')
    w = sd['patch_embed.proj.weight']
    hidden, _, ph, pw = (int(s) for s in w.shape)
    depth = len({k.split('.')[1] for k in sd if k.startswith('blocks.')})
    if depth == 0:
        raise ValueError('Not a timm ViT state dict: no blocks.{i}.* entries.')
    heads = int(num_heads or TIMM_HEADS_BY_WIDTH.get(hidden, 0))
    if not heads:
        raise ValueError(f'Width {hidden} is not a standard ViT width; pass num_heads.')
    if hidden % heads:
        raise ValueError(f'num_heads={heads} does not divide the width {hidden}.')
    has_cls = 'cls_token' in sd
    pe = to_numpy(sd['pos_embed'])
    n_tokens = pe.shape[1]
    if image_size is None:
        for prefix in ((1, 0) if has_cls else (0,)):
            s = int(round(np.sqrt(n_tokens - prefix)))
            if s * s == n_tokens - prefix:
                image_size = (s * ph, s * pw)
                break
        else:
            raise ValueError(f'pos_embed has {n_tokens} tokens, not a square grid; pass image_size=(h, w).')
    image_size = (int(image_size), int(image_size)) if isinstance(image_size, (int, np.integer)) else tuple(
        int(x) for x in image_size)
    n_grid = (image_size[0] // ph) * (image_size[1] // pw)
    if has_cls and n_tokens == n_grid:  # no_embed_class: the class token gets no position embedding.
        pe = np.concatenate([np.zeros((1, 1, hidden), pe.dtype), pe], axis=1)
    if pe.shape[1] != n_grid + int(has_cls):
        raise ValueError(f'pos_embed has {n_tokens} tokens but image_size={image_size} with patch {(ph, pw)} gives '
                         f'{n_grid} patches' + (' + the class token.' if has_cls else '.'))
    qkv_bias = 'blocks.0.attn.qkv.bias' in sd
    num_classes = int(sd['head.weight'].shape[0]) if 'head.weight' in sd else None
    rep = int(sd['pre_logits.fc.weight'].shape[0]) if 'pre_logits.fc.weight' in sd else None
    model = models.get_model(
        'ViT-B/16', num_classes=num_classes, image_size=image_size, patch_size=(ph, pw), hidden_size=hidden,
        mlp_dim=int(sd['blocks.0.mlp.fc1.weight'].shape[0]), num_heads=heads, num_layers=depth,
        classifier='token' if has_cls else 'gap', representation_size=rep, norm_eps=norm_eps,
        activation=activation, qkv_bias=qkv_bias)
    tr = {'posembed_input': {'pos_embedding': pe}}
    for i in range(depth):
        b = f'blocks.{i}'
        qkv_w = to_numpy(sd[f'{b}.attn.qkv.weight'])
        qkv_b = to_numpy(sd[f'{b}.attn.qkv.bias']) if qkv_bias else None
        split = {}
        for j, name in enumerate(('query', 'key', 'value')):
            part = {f'{name}.weight': qkv_w[j * hidden:(j + 1) * hidden]}
            if qkv_b is not None:
                part[f'{name}.bias'] = qkv_b[j * hidden:(j + 1) * hidden]
            split[name] = attention_in(part, name, heads)
        tr[f'encoderblock_{i}'] = {
            'LayerNorm_0': norm(sd, f'{b}.norm1'),
            'MultiHeadDotProductAttention_1': {**split, 'out': attention_out(sd, f'{b}.attn.proj', heads)},
            'LayerNorm_2': norm(sd, f'{b}.norm2'),
            'MlpBlock_3': {'Dense_0': linear(sd, f'{b}.mlp.fc1'), 'Dense_1': linear(sd, f'{b}.mlp.fc2')},
        }
    tr['encoder_norm'] = norm(sd, 'norm')
    params = {'embedding': conv(sd, 'patch_embed.proj'), 'Transformer': tr}
    if has_cls:
        params['cls'] = to_numpy(sd['cls_token'])
    if rep:
        params['pre_logits'] = linear(sd, 'pre_logits.fc')
    if num_classes:
        params['head'] = linear(sd, 'head')
    unread = sd.unread()
    if unread:
        raise ValueError(f'Unconverted timm ViT weights (a variant this converter does not know): {unread}.')
    return model, {'params': params}


def model_overrides(model: Any) -> dict:
    """`config.model` entries (name + overrides) that rebuild a converted VisionTransformer with `get_model`."""
    import dataclasses

    from vit_jax import models

    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name not in ('parent', 'name')}
    best, best_diff = None, None
    for name in models.list_models('vit'):
        entry = models.get_entry(name)
        defaults = {f.name: f.default for f in dataclasses.fields(entry.cls) if f.name in fields}
        defaults.update(entry.defaults)
        diff = {k: v for k, v in fields.items() if _norm_value(defaults.get(k)) != _norm_value(v)}
        if best_diff is None or len(diff) < len(best_diff):
            best, best_diff = name, diff
    return {'name': best, **{k: _norm_value(v) for k, v in best_diff.items()}}


def _norm_value(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        v = tuple(_norm_value(x) for x in v)
        return v[0] if len(v) == 2 and v[0] == v[1] and isinstance(v[0], int) else v
    return v


# ----------------------------------------------------------------------------------------------------------------
# Command line: a saved PyTorch checkpoint -> a release-layout .npz.
# ----------------------------------------------------------------------------------------------------------------
def read_torch_state_dict(path: str) -> dict:
    """A state dict of numpy arrays from `.safetensors` (no torch needed) or `.bin/.pt/.pth` (torch, weights only)."""
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f'No checkpoint file at {path!r}.')
    if path.endswith('.safetensors'):
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except Exception as e:
            raise ValueError(f'{path!r} is not a readable .safetensors file ({type(e).__name__}: {e}).') from None
    try:
        import torch
    except ImportError:
        raise ImportError(f'Reading {path!r} needs PyTorch (pip install torch); .safetensors files do not.') from None
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)  # Refuses arbitrary pickled objects.
    except Exception as e:
        raise ValueError(f'{path!r} could not be read as a PyTorch weights file with torch.load(weights_only=True) '
                         f'({type(e).__name__}: {str(e)[:300]}). Only plain state dicts of tensors are accepted.'
                         ) from None
    for key in ('state_dict', 'model', 'module', 'model_state_dict'):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(hasattr(v, 'shape') for v in obj.values()):
        raise ValueError(f'{path!r} does not hold a state dict of tensors.')
    return {k: to_numpy(v) for k, v in obj.items()}


def _hf_files(path: str, config_path: str | None) -> tuple[str, str]:
    import os

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


def convert_file(source: str, path: str, out: str, *, hf_config: str | None = None, num_heads: int | None = None,
                 image_size: Any = None) -> dict:
    """Converts a saved PyTorch ViT (`source`: 'transformers' or 'timm') into a `.npz`; returns `config.model`."""
    from vit_jax import checkpoint

    if source == 'transformers':
        weights, config_path = _hf_files(path, hf_config)
        try:
            from transformers import ViTConfig
        except ImportError:
            raise ImportError('--from=transformers needs the transformers package (pip install transformers).'
                              ) from None
        config = ViTConfig.from_json_file(config_path)
        model, variables = vit_from_hf_state_dict(config, read_torch_state_dict(weights))
    elif source == 'timm':
        model, variables = vit_from_timm_state_dict(read_torch_state_dict(path), num_heads=num_heads,
                                                    image_size=image_size)
    else:
        raise ValueError(f"--from must be 'transformers' or 'timm', got {source!r}.")
    checkpoint.save_npz(out, variables['params'])
    return model_overrides(model)


def main(argv: list[str] | None = None) -> int:
    """`python -m vit_jax.convert --from=transformers|timm INPUT --out OUT.npz`."""
    import argparse
    import sys

    p = argparse.ArgumentParser(
        prog='python -m vit_jax.convert',
        description='Convert a saved PyTorch ViT (HuggingFace transformers or timm) into a .npz parameter file in '
                    'the ViT release layout, loadable with config.init_from.path / checkpoint.load_pretrained.')
    p.add_argument('input', help='HuggingFace: a model directory (config.json + model.safetensors or '
                                 'pytorch_model.bin) or the weights file; timm: a .pth/.pt/.bin/.safetensors file.')
    p.add_argument('--from', dest='source', required=True, choices=('transformers', 'timm'))
    p.add_argument('--out', required=True, help='Output .npz file.')
    p.add_argument('--hf_config', default=None, help='HuggingFace config.json (default: next to the weights).')
    p.add_argument('--num_heads', type=int, default=None, help='timm: attention heads (default: standard for width).')
    p.add_argument('--image_size', default=None, help='timm: H or H,W (default: from pos_embed, square).')
    args = p.parse_args(argv)
    image_size = None
    if args.image_size:
        image_size = tuple(int(x) for x in args.image_size.split(','))
        image_size = image_size[0] if len(image_size) == 1 else image_size
    if not args.out.endswith('.npz'):
        print('error: --out must end in .npz', file=sys.stderr)
        return 2
    try:
        model_cfg = convert_file(args.source, args.input, args.out, hf_config=args.hf_config,
                                 num_heads=args.num_heads, image_size=image_size)
    except (OSError, ValueError, ImportError, KeyError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    flags = ' '.join(f'--config.model.{k}={_flag(v)}' for k, v in model_cfg.items())
    print(f'Wrote {args.out}.\nThe equivalent vit_jax model: {model_cfg}\n'
          f'Fine-tune with: --config.init_from.path={args.out} {flags}')
    return 0


def _flag(v: Any) -> str:
    s = repr(v) if not isinstance(v, str) else v
    return f'"{s}"' if any(c in s for c in ' (),') else s


if __name__ == '__main__':
    raise SystemExit(main())
