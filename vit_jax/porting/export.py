"""Weights out: vit_jax models as HuggingFace `transformers` model directories and timm ViT state dicts.

    convert.to_transformers(model, variables, 'out/hf')    # config.json + model.safetensors (+ preprocessor)
    convert.to_timm(model, variables, 'out/vit.safetensors')
    python -m vit_jax.convert --to=transformers --workdir_or_npz workdirs/run1 --out out/hf

`model` is the flax module (`models.get_model(...)`), `variables` its variables (`{'params': ..., 'batch_stats':
...}` or the params alone, scanned or not). Each exporter is the inverse of the matching importer (`porting.hf`,
`porting.timm`): Dense (in, out) -> Linear (out, in), Conv (*K, I, O) -> (O, I, *K), the per-head DenseGeneral
kernels of attention -> Linear. What HuggingFace's classes cannot express is refused with an `ExportError` naming
the option, never exported approximately:

- ViT (`ViTModel` / `ViTForImageClassification`; DeiT-distilled -> `DeiTForImageClassificationWithTeacher`): the
  class token classifier only (`classifier='gap'`, `'map'`, `'unpooled'` have no HF ViT equivalent), the patch stem
  only (no HF ViT-hybrid since transformers 5, no conv stem), LayerNorm only; `representation_size` (a tanh
  pre-logits layer) only without a head (it is `ViTModel`'s pooler). Fixed position embeddings (`posemb='sincos2d'`
  or `'none'`) are written as HF's learned table (same values; they become trainable there). Non-square images and
  patches are fine (`image_size=(h, w)`).
- CvT (`CvtForImageClassification`): HF hard-codes exact GELU and eps 1e-5, so `activation='quick_gelu'` (the
  official CvT, vit_jax's default) is refused; only the `dw_bn` projection; a headless CvT keeps its final norm as
  `CvtForImageClassification` with `num_labels=0` (logits = the normalised pooled features).
- BEiT (`BeitModel` / `BeitForImageClassification` / `BeitForMaskedImageModeling`): the inert key bias of the shared
  block is dropped (it changes no output); `classifier='token'` needs `final_norm`, `'gap'` none (HF's
  `use_mean_pooling`); position embeddings (relative or absolute) only on a square grid (HF resamples both for a
  non-square grid even at its own size: the relative table transposed, the absolute one as if square).
- DPT (`DPTForDepthEstimation` / `DPTForSemanticSegmentation`): ViT or R50-hybrid (BiT) backbone at a square
  `image_size` (HF assumes a square stored position grid), final ReLU of the depth head (`non_negative=True`); a
  metric `depth_scale` is recorded in config.json (`vit_jax_depth_scale`, `vit_jax_depth_shift`), since HF returns
  the inverse depth (vit_jax's `out['inverse_depth']`).
- TimeSformer (`TimesformerModel` / `TimesformerForVideoClassification`): `divided_space_time` and
  `joint_space_time` at a square frame size (HF's space-only model does not average frames as the official code
  does; L+G and axial attention are not in HF).

timm: the `timm.models.vision_transformer` layout (`cls_token`, `pos_embed`, `patch_embed.proj`,
`blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`, `head`, DeiT's `dist_token` / `head_dist`),
saved with safetensors; timm's ViT is pre-norm with exact GELU and eps 1e-6, so other activations or epsilons are
refused, and a sin-cos or absent position embedding is written as `pos_embed`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import numpy as np

from vit_jax.porting.common import HF_MLP, HF_NORMS

# vit_jax activation -> HuggingFace `hidden_act` (the same function in both).
HF_ACTIVATIONS = {'gelu': 'gelu_pytorch_tanh', 'gelu_tanh': 'gelu_pytorch_tanh', 'gelu_exact': 'gelu',
                  'quick_gelu': 'quick_gelu', 'relu': 'relu', 'silu': 'silu', 'tanh': 'tanh'}


class ExportError(ValueError):
    """A model (or an option of it) that the target format cannot represent exactly."""


# ----------------------------------------------------------------------------------------------------------------
# Flax -> PyTorch layouts (inverses of porting.common).
# ----------------------------------------------------------------------------------------------------------------
def _a(x: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, np.float32))


def linear(p: Mapping) -> dict:
    """flax Dense {'kernel': (in, out), 'bias'} -> torch Linear {'weight': (out, in), 'bias'}."""
    out = {'weight': _a(np.asarray(p['kernel']).T)}
    if 'bias' in p:
        out['bias'] = _a(p['bias'])
    return out


def conv(p: Mapping, bias: bool = True) -> dict:
    """flax Conv {'kernel': (*K, I, O)} -> torch Conv {'weight': (O, I, *K), 'bias'}."""
    k = np.asarray(p['kernel'])
    out = {'weight': _a(np.transpose(k, (k.ndim - 1, k.ndim - 2) + tuple(range(k.ndim - 2))))}
    if bias and 'bias' in p:
        out['bias'] = _a(p['bias'])
    return out


def norm(p: Mapping) -> dict:
    """flax LayerNorm/GroupNorm {'scale', 'bias'} -> torch {'weight', 'bias'}."""
    return {'weight': _a(p['scale']), 'bias': _a(p['bias'])}


def batchnorm(p: Mapping, stats: Mapping) -> dict:
    """flax BatchNorm params + batch_stats -> torch BatchNorm (with `num_batches_tracked`, unused in eval)."""
    return {**norm(p), 'running_mean': _a(stats['mean']), 'running_var': _a(stats['var']),
            'num_batches_tracked': np.zeros((), np.int64)}


def attention_in(p: Mapping, bias: bool = True) -> dict:
    """flax DenseGeneral {'kernel': (D, H, hd), 'bias': (H, hd)} -> torch Linear (H*hd, D)."""
    k = np.asarray(p['kernel'])
    out = {'weight': _a(k.reshape(k.shape[0], -1).T)}
    if bias and 'bias' in p:
        out['bias'] = _a(np.asarray(p['bias']).reshape(-1))
    return out


def attention_out(p: Mapping) -> dict:
    """flax DenseGeneral over (heads, head_dim) {'kernel': (H, hd, D), 'bias': (D,)} -> torch Linear (D, H*hd)."""
    k = np.asarray(p['kernel'])
    out = {'weight': _a(k.reshape(-1, k.shape[-1]).T)}
    if 'bias' in p:
        out['bias'] = _a(p['bias'])
    return out


def _put(sd: dict, prefix: str, tensors: Mapping) -> None:
    for k, v in tensors.items():
        sd[f'{prefix}.{k}'] = v


def _put_block(sd: dict, prefix: str, block: Mapping, *, norms: tuple[str, str] = ('norm1', 'norm2'),
               mlp: tuple[str, str] = ('mlp.fc1', 'mlp.fc2')) -> None:
    """The two LayerNorms and the MLP of `layers.Encoder1DBlock` params under torch names relative to `prefix`
    (timm's by default; the inverse of `common.encoder_block`, whose attention each exporter writes itself)."""
    _put(sd, f'{prefix}.{norms[0]}', norm(block['LayerNorm_0']))
    _put(sd, f'{prefix}.{norms[1]}', norm(block['LayerNorm_2']))
    _put(sd, f'{prefix}.{mlp[0]}', linear(block['MlpBlock_3']['Dense_0']))
    _put(sd, f'{prefix}.{mlp[1]}', linear(block['MlpBlock_3']['Dense_1']))


def _put_attention(sd: dict, att: Mapping, query: str, key: str, value: str, out: str, *,
                   key_bias: bool = True) -> None:
    """MultiHeadAttention params -> one torch Linear per projection, at the four given prefixes."""
    _put(sd, query, attention_in(att['query']))
    _put(sd, key, attention_in(att['key'], bias=key_bias))
    _put(sd, value, attention_in(att['value']))
    _put(sd, out, attention_out(att['out']))


def _fused_qkv(att: Mapping, bias: bool) -> dict:
    """MultiHeadAttention query / key / value -> one fused torch Linear {'weight': (3D', D), 'bias': (3D',)}."""
    parts = [attention_in(att[n], bias=bias) for n in ('query', 'key', 'value')]
    out = {'weight': _a(np.concatenate([p['weight'] for p in parts], 0))}
    if bias:
        out['bias'] = _a(np.concatenate([p['bias'] for p in parts], 0))
    return out


def _variables(variables: Mapping) -> tuple[dict, dict]:
    """(params, batch_stats) as nested dicts of numpy arrays, layers unscanned (`encoderblock_{i}`)."""
    import flax

    from vit_jax import checkpoint

    variables = flax.core.unfreeze(variables) if isinstance(variables, flax.core.FrozenDict) else dict(variables)
    if 'params' in variables:
        params, stats = variables['params'], variables.get('batch_stats') or {}
    else:
        params, stats = variables, {}

    def tree(t: Any) -> dict:
        t = flax.core.unfreeze(t) if isinstance(t, flax.core.FrozenDict) else t
        flat = checkpoint._scan_to_loop({k: np.asarray(v) for k, v in checkpoint.flatten(t).items()}, {})
        return checkpoint.unflatten(flat)

    return tree(params), tree(stats)


def _hf_activation(name: str, family: str) -> str:
    if not isinstance(name, str) or name not in HF_ACTIVATIONS:
        raise ExportError(f'{family}: activation={name!r} has no HuggingFace `hidden_act` equivalent; '
                          f'exportable: {sorted(HF_ACTIVATIONS)}.')
    return HF_ACTIVATIONS[name]


def _pair(x: Any) -> tuple[int, int]:
    if isinstance(x, (int, np.integer)):
        return int(x), int(x)
    h, w = (int(v) for v in x)
    return h, w


def _hw_value(x: Any) -> Any:
    """An int for a square (h, w), else a list (HF configs take either)."""
    h, w = _pair(x)
    return h if h == w else [h, w]


def _require(ok: bool, family: str, what: str) -> None:
    if not ok:
        raise ExportError(f'{family}: {what}')


# ----------------------------------------------------------------------------------------------------------------
# ViT (and DeiT with its distillation token).
# ----------------------------------------------------------------------------------------------------------------
def _vit_posemb(model: Any, params: dict, num_prefix: int) -> np.ndarray:
    """The position embedding HF / timm add after the prefix tokens: the learned table, or the fixed one."""
    from vit_jax.models import layers

    tr = params['Transformer']
    if model.posemb == 'learn':
        return _a(tr['posembed_input']['pos_embedding'])
    gh, gw = model.grid_size
    d = model.hidden_size
    if model.posemb == 'sincos2d':
        grid = layers.posemb_sincos_2d(gh, gw, d)
    elif model.posemb == 'none':
        grid = np.zeros((1, gh * gw, d), np.float32)
    else:
        raise ExportError(f'ViT: posemb={model.posemb!r} is not exportable.')
    return _a(np.concatenate([np.zeros((1, num_prefix, d), np.float32), grid], axis=1))


def _check_vit_stem_norm(model: Any, fam: str, why_no_hybrid: str) -> None:
    _require(model.stem == 'patch', fam, f'stem={model.stem!r}: only the linear patch stem exports ({why_no_hybrid}).')
    _require(model.norm == 'layernorm', fam, f'norm={model.norm!r}: only LayerNorm exports.')


def _check_vit(model: Any, target: str) -> None:
    fam = f'ViT -> {target}'
    _check_vit_stem_norm(model, fam, 'HF has no ViT-hybrid since transformers 5, and no conv stem')
    _require(model.classifier in ('token', 'token_unpooled'), fam,
             f"classifier={model.classifier!r} has no {target} equivalent (its ViT pools with the class token); "
             "export a model built with classifier='token'.")
    _require(not (model.classifier == 'token_unpooled' and model.num_classes), fam,
             "classifier='token_unpooled' with a head (a head on every token) has no equivalent; export it headless "
             '(num_classes=None).')


def _hf5_attention_names(layer: str) -> tuple[str, ...]:
    """HuggingFace 5.x names of a layer's query, key, value and output projections (ViT, DeiT, BEiT)."""
    return tuple(f'{layer}.attention.{n}' for n in ('q_proj', 'k_proj', 'v_proj', 'o_proj'))


def _vit_encoder_hf(sd: dict, tr: dict, depth: int, prefix: str) -> None:
    """ViT encoder blocks in the transformers 5 naming (`layers.{i}.attention.q_proj` ...)."""
    for i in range(depth):
        b, L = tr[f'encoderblock_{i}'], f'{prefix}layers.{i}'
        _put_attention(sd, b['MultiHeadDotProductAttention_1'], *_hf5_attention_names(L))
        _put_block(sd, L, b, norms=HF_NORMS)
    _put(sd, f'{prefix}layernorm', norm(tr['encoder_norm']))


def _vit_hf(model: Any, params: dict, stats: dict) -> tuple[Any, str, dict, dict]:
    import transformers

    _check_vit(model, 'HuggingFace')
    distill = bool(model.distill_token)
    has_head = bool(model.num_classes)
    rep = model.representation_size
    _require(rep is None or not has_head, 'ViT -> HuggingFace',
             f'representation_size={rep} (a tanh pre-logits layer) with a head: ViTForImageClassification has no '
             'pre-logits layer. Export without the head (num_classes=None; the layer becomes ViTModel\'s pooler).')
    _require(rep is None or not distill, 'ViT -> HuggingFace', 'representation_size with distill_token.')
    kw = dict(hidden_size=model.hidden_size, num_hidden_layers=model.num_layers,
              num_attention_heads=model.num_heads, intermediate_size=model.mlp_dim,
              hidden_act=_hf_activation(model.activation, 'ViT'), hidden_dropout_prob=float(model.dropout_rate),
              attention_probs_dropout_prob=float(model.attention_dropout_rate), layer_norm_eps=float(model.norm_eps),
              image_size=_hw_value(model.image_size), patch_size=_hw_value(model.patch_size), num_channels=3,
              qkv_bias=bool(model.qkv_bias), encoder_stride=_pair(model.patch_size)[0])
    if has_head:
        kw['num_labels'] = int(model.num_classes)
    if rep is not None:
        kw.update(pooler_output_size=int(rep), pooler_act='tanh')
    if distill:
        config = transformers.DeiTConfig(**kw)
        cls_name = 'DeiTForImageClassificationWithTeacher' if has_head else 'DeiTModel'
        base = 'deit.' if has_head else ''
    else:
        config = transformers.ViTConfig(**kw)
        cls_name = 'ViTForImageClassification' if has_head else 'ViTModel'
        base = 'vit.' if has_head else ''
    init = {} if has_head else {'add_pooling_layer': rep is not None}
    num_prefix = 1 + int(distill)
    sd: dict = {}
    sd[f'{base}embeddings.cls_token'] = _a(params['cls'])
    if distill:
        sd[f'{base}embeddings.distillation_token'] = _a(params['dist_token'])
    sd[f'{base}embeddings.position_embeddings'] = _vit_posemb(model, params, num_prefix)
    _put(sd, f'{base}embeddings.patch_embeddings.projection', conv(params['embedding']))
    _vit_encoder_hf(sd, params['Transformer'], model.num_layers, base)
    if rep is not None:
        _put(sd, 'pooler.dense', linear(params['pre_logits']))
    if has_head and distill:
        _put(sd, 'cls_classifier', linear(params['head']))
        _put(sd, 'distillation_classifier', linear(params['head_dist']))
    elif has_head:
        _put(sd, 'classifier', linear(params['head']))
    return config, cls_name, sd, init


# ----------------------------------------------------------------------------------------------------------------
# CvT.
# ----------------------------------------------------------------------------------------------------------------
def _cvt_hf(model: Any, params: dict, stats: dict) -> tuple[Any, str, dict, dict]:
    import transformers

    fam = 'CvT -> HuggingFace'
    n = len(model.embed_dims)

    def per(v: Any, what: str) -> list:  # A per-stage option (one value or one per stage) as a list.
        v = list(v) if isinstance(v, (list, tuple)) else [v] * n
        _require(len(v) == n, fam, f'{what} has {len(v)} entries for {n} stages.')
        return v

    _require(model.activation == 'gelu_exact', fam,
             f"activation={model.activation!r}: HuggingFace's CvT hard-codes exact GELU (nn.GELU), the official CvT "
             "uses QuickGELU. Only a model trained with activation='gelu_exact' exports exactly.")
    _require(abs(model.norm_eps - 1e-5) < 1e-12 and abs(model.bn_eps - 1e-5) < 1e-12, fam,
             f'norm_eps={model.norm_eps}, bn_eps={model.bn_eps}: HuggingFace hard-codes 1e-5 for both.')
    methods = per(model.qkv_method, 'qkv_method')
    _require(all(m == 'dw_bn' for m in methods), fam,
             f"qkv_method={methods}: only the 'dw_bn' convolutional projection exports.")
    depths = [int(d) for d in per(model.depths, 'depths')]
    _require(all(d > i for i, d in enumerate(depths)), fam,
             f'depths={depths}: HuggingFace CvtStage indexes its drop-path ramp by the stage number, so stage i '
             'needs more than i blocks (CvT-13/21/W24 do).')
    ratios = [float(r) for r in per(model.mlp_ratios, 'mlp_ratios')]
    for i, (d, r) in enumerate(zip(model.embed_dims, ratios)):
        _require(int(d * r) == d * r, fam, f'stage {i}: embed_dim {d} x mlp_ratio {r} is not an integer width.')
    cls_token = [bool(c) for c in per(model.cls_token, 'cls_token')]
    dpr = model.drop_path_rate
    config = transformers.CvtConfig(
        num_channels=3, patch_sizes=list(per(model.patch_sizes, 'patch_sizes')),
        patch_stride=list(per(model.patch_strides, 'patch_strides')),
        patch_padding=list(per(model.patch_paddings, 'patch_paddings')), embed_dim=list(model.embed_dims),
        num_heads=list(per(model.num_heads, 'num_heads')), depth=depths, mlp_ratio=ratios,
        attention_drop_rate=[float(model.attention_dropout_rate)] * n, drop_rate=[float(model.dropout_rate)] * n,
        drop_path_rate=[float(x) for x in per(dpr, 'drop_path_rate')],
        qkv_bias=[bool(b) for b in per(model.qkv_bias, 'qkv_bias')], cls_token=cls_token,
        qkv_projection_method=methods, kernel_qkv=list(per(model.qkv_kernel, 'qkv_kernel')),
        padding_kv=list(per(model.padding_kv, 'padding_kv')), stride_kv=list(per(model.stride_kv, 'stride_kv')),
        padding_q=list(per(model.padding_q, 'padding_q')), stride_q=list(per(model.stride_q, 'stride_q')),
        num_labels=int(model.num_classes or 0))
    sd: dict = {}
    for i in range(n):
        s, st = f'cvt.encoder.stages.{i}', f'stage_{i}'
        emb = f'{s}.embedding.convolution_embeddings'
        _put(sd, f'{emb}.projection', conv(params[f'{st}_embedding']))
        _put(sd, f'{emb}.normalization', norm(params[f'{st}_embedding_norm']))
        if cls_token[i]:
            sd[f'{s}.cls_token'] = _a(params[f'{st}_cls'])
        for j in range(depths[i]):
            L, blk = f'{s}.layers.{j}', params[f'{st}_block_{j}']
            att = blk['MultiHeadDotProductAttention_1']
            att_stats = stats[f'{st}_block_{j}']['MultiHeadDotProductAttention_1']['qkv_transform']
            a = f'{L}.attention.attention'
            for which, hf_name in (('q', 'query'), ('k', 'key'), ('v', 'value')):
                cp = f'{a}.convolution_projection_{hf_name}.convolution_projection'
                proj = att['qkv_transform'][f'conv_proj_{which}']
                _put(sd, f'{cp}.convolution', conv(proj['conv'], bias=False))
                _put(sd, f'{cp}.normalization', batchnorm(proj['bn'], att_stats[f'conv_proj_{which}']['bn']))
            _put_attention(sd, att, f'{a}.projection_query', f'{a}.projection_key', f'{a}.projection_value',
                           f'{L}.attention.output.dense')
            _put_block(sd, L, blk, norms=HF_NORMS, mlp=HF_MLP)
    _put(sd, 'layernorm', norm(params['norm']))
    if model.num_classes:
        _put(sd, 'classifier', linear(params['head']))
    return config, 'CvtForImageClassification', sd, {}


# ----------------------------------------------------------------------------------------------------------------
# BEiT.
# ----------------------------------------------------------------------------------------------------------------
def _beit_hf(model: Any, params: dict, stats: dict) -> tuple[Any, str, dict, dict]:
    import transformers

    fam = 'BEiT -> HuggingFace'
    final_norm = (model.classifier != 'gap') if model.final_norm is None else bool(model.final_norm)
    mean_pool = model.classifier == 'gap'
    _require(final_norm != mean_pool, fam,
             f"classifier={model.classifier!r} with final_norm={final_norm}: HuggingFace BEiT either pools the class "
             "token after a final LayerNorm (classifier='token', final_norm) or mean-pools with fc_norm and no final "
             "norm (classifier='gap').")
    ph, pw = _pair(model.patch_size)
    _require(ph == pw, fam, f'patch_size={model.patch_size}: HuggingFace BEiT needs a square patch.')
    gh, gw = _pair(model.image_size)[0] // ph, _pair(model.image_size)[1] // pw
    _require(gh == gw or model.rel_pos_bias == 'none', fam,
             f"image_size={model.image_size} (a {gh}x{gw} grid) with rel_pos_bias={model.rel_pos_bias!r}: "
             "transformers' BEiT always resamples its relative-position table as a (2w-1, 2h-1) grid to (2h-1, 2w-1), "
             'which scrambles the table of a non-square grid (an HF bug; square grids are unaffected). Export a '
             "model with a square image_size.")
    _require(gh == gw or not model.abs_posemb, fam,
             f"image_size={model.image_size} (a {gh}x{gw} grid) with abs_posemb=True: transformers' BEiT resizes its "
             'absolute position embedding for any non-square input as if the stored grid were square (it fails). '
             'Export a model with a square image_size.')
    has_head = bool(model.num_classes)
    mim = bool(model.vocab_size)
    _require(not (has_head and mim), fam, 'a model with both a classification head (num_classes) and a MIM head '
             '(vocab_size): export one, building the model with num_classes=None or vocab_size=None.')
    _require(not (mim and mean_pool), fam, "the MIM head with classifier='gap' (HF's MIM model has the final norm).")
    ls = model.layer_scale
    use_mask = bool(model.use_mask_token) and not has_head
    config = transformers.BeitConfig(
        vocab_size=int(model.vocab_size or 8192), hidden_size=model.hidden_size,
        num_hidden_layers=model.num_layers, num_attention_heads=model.num_heads, intermediate_size=model.mlp_dim,
        hidden_act=_hf_activation(model.activation, 'BEiT'), hidden_dropout_prob=float(model.dropout_rate),
        attention_probs_dropout_prob=float(model.attention_dropout_rate), layer_norm_eps=float(model.norm_eps),
        image_size=_hw_value(model.image_size), patch_size=ph, num_channels=3, use_mask_token=use_mask,
        use_absolute_position_embeddings=bool(model.abs_posemb),
        use_relative_position_bias=model.rel_pos_bias == 'per_layer',
        use_shared_relative_position_bias=model.rel_pos_bias == 'shared',
        layer_scale_init_value=float(ls) if ls is not None else 0.0, drop_path_rate=float(model.drop_path_rate),
        use_mean_pooling=mean_pool, num_labels=int(model.num_classes) if has_head else 2)
    if has_head:
        cls_name, base = 'BeitForImageClassification', 'beit.'
    elif mim:
        cls_name, base = 'BeitForMaskedImageModeling', 'beit.'
    else:
        cls_name, base = 'BeitModel', ''
    tr = params['Transformer']
    sd: dict = {}
    e = f'{base}embeddings'
    sd[f'{e}.cls_token'] = _a(params['cls'])
    if use_mask:
        sd[f'{e}.mask_token'] = _a(params['mask_token'])
    _put(sd, f'{e}.patch_embeddings.projection', conv(params['embedding']))
    if model.abs_posemb:
        sd[f'{e}.position_embeddings'] = _a(tr['posembed_input']['pos_embedding'])
    if model.rel_pos_bias == 'shared':
        sd[f'{base}shared_position_bias.relative_position_bias_table'] = _a(
            tr['rel_pos_bias']['relative_position_bias_table'])
    for i in range(model.num_layers):
        b, L = tr[f'encoderblock_{i}'], f'{base}layers.{i}'
        # The key bias is inert (see porting/beit.py): HF's BEiT has none.
        _put_attention(sd, b['MultiHeadDotProductAttention_1'], *_hf5_attention_names(L), key_bias=False)
        _put_block(sd, L, b, norms=HF_NORMS)
        if ls is not None:
            sd[f'{L}.lambda_1'] = _a(b['gamma_1'])
            sd[f'{L}.lambda_2'] = _a(b['gamma_2'])
        if model.rel_pos_bias == 'per_layer':
            sd[f'{L}.relative_position_bias.relative_position_bias_table'] = _a(
                tr[f'encoderblock_{i}_rel_pos_bias']['relative_position_bias_table'])
    if final_norm:
        _put(sd, f'{base}layernorm', norm(tr['encoder_norm']))
    if mean_pool:
        _put(sd, f'{base}pooler.layernorm', norm(params['fc_norm']))
    if mim:
        _put(sd, 'layernorm', norm(params['mim_norm']))
        _put(sd, 'lm_head', linear(params['mim_head']))
    if has_head:
        _put(sd, 'classifier', linear(params['head']))
    return config, cls_name, sd, {}


# ----------------------------------------------------------------------------------------------------------------
# DPT.
# ----------------------------------------------------------------------------------------------------------------
def _dpt_hf(model: Any, params: dict, stats: dict) -> tuple[Any, str, dict, dict]:
    import transformers

    fam = 'DPT -> HuggingFace'
    hybrid = model.stem == 'resnet'
    _require(model.stem in ('patch', 'resnet'), fam, f'stem={model.stem!r}: HF DPT has a ViT or a BiT-hybrid '
             'backbone.')
    n = len(model.hooks)
    vit_hooks = model.hooks[2:] if hybrid else model.hooks
    _require(all(isinstance(h, (int, np.integer)) for h in vit_hooks), fam,
             f'hooks={model.hooks}: HF taps ViT blocks (integer hooks)' + (
                 ", after 'resnet/block1', 'resnet/block2' for the hybrid." if hybrid else '.'))
    if hybrid:
        _require(tuple(model.hooks[:2]) == ('resnet/block1', 'resnet/block2') and n == 4, fam,
                 f"hooks={model.hooks}: HF's hybrid taps ResNet stages 1 and 2, then two ViT blocks.")
        _require(len(model.resnet_layers) == 3 and _pair(model.patch_size) == (1, 1), fam,
                 f'resnet_layers={model.resnet_layers}, patch_size={model.patch_size}: HF\'s BiT-hybrid has three '
                 'ResNet stages and a 1x1 projection (the R50 hybrid).')
        _require(model.resnet_variant == 'timm', fam, f"resnet_variant={model.resnet_variant!r}: HF's BiT has "
                 "the 'timm' epsilons.")
        _require(float(64 * model.resnet_width).is_integer(), fam, f'resnet_width={model.resnet_width}.')
    h, w = _pair(model.image_size)
    _require(h == w, fam, f'image_size={model.image_size}: HuggingFace DPT assumes a square stored position grid; '
             'export a model built with a square image_size (inputs of other sizes still work in both).')
    seg = model.head == 'segmentation'
    _require(seg or model.non_negative, fam, "non_negative=False: HuggingFace's depth head always ends in a ReLU.")
    _require(model.norm_eps > 0, fam, 'norm_eps must be positive.')
    stride = 16 if hybrid else _pair(model.patch_size)[0]
    factors = model.reassemble_factors
    if factors is None:
        factors = tuple(stride / (4 * 2**i) for i in range(n))
    factors = [int(f) if float(f).is_integer() else float(f) for f in factors]
    use_bn = model.fusion_bn if model.fusion_bn is not None else seg
    features = list(model.features)
    hybrid_kw = {}
    if hybrid:
        width = int(64 * model.resnet_width)
        sizes = [4 * width * 2**i for i in range(3)]
        features[:2] = sizes[:2]  # The ResNet maps' channels (HF's neck convolutions read them from here).
        hybrid_kw = dict(
            is_hybrid=True, backbone_featmap_shape=[1, sizes[2], h // 16, h // 16],
            backbone_config=dict(model_type='bit', embedding_size=width, hidden_sizes=sizes,
                                 depths=[int(d) for d in model.resnet_layers], num_groups=32, global_padding='same',
                                 layer_type='bottleneck', out_features=['stage1', 'stage2', 'stage3'],
                                 embedding_dynamic_padding=True))
    config = transformers.DPTConfig(
        hidden_size=model.hidden_size, num_hidden_layers=model.num_layers, num_attention_heads=model.num_heads,
        intermediate_size=model.mlp_dim, hidden_act=_hf_activation(model.activation, 'DPT'),
        hidden_dropout_prob=float(model.dropout_rate), attention_probs_dropout_prob=float(model.attention_dropout_rate),
        layer_norm_eps=float(model.norm_eps), image_size=h, patch_size=stride, num_channels=3, qkv_bias=True,
        backbone_out_indices=([0, 1] if hybrid else []) + [int(i) for i in vit_hooks], readout_type=model.readout,
        reassemble_factors=factors, neck_hidden_sizes=features,
        fusion_hidden_size=int(model.fusion_features), head_in_index=-1,
        use_batch_norm_in_fusion_residual=bool(use_bn), use_bias_in_fusion_residual=not use_bn,
        add_projection=False, use_auxiliary_head=bool(seg and model.aux_head),
        semantic_classifier_dropout=float(model.head_dropout), num_labels=int(model.num_classes) if seg else 2,
        **hybrid_kw)
    if not seg and model.depth_scale is not None:
        config.vit_jax_depth_scale = float(model.depth_scale)
        config.vit_jax_depth_shift = float(model.depth_shift)
    sd: dict = {}
    pre = 'dpt.'
    emb = pre + 'embeddings'
    sd[f'{emb}.cls_token'] = _a(params['cls'])
    sd[f'{emb}.position_embeddings'] = _a(params['Transformer']['posembed_input']['pos_embedding'])
    if hybrid:
        _put(sd, f'{emb}.projection', conv(params['embedding']))
        _bit_hf(sd, f'{emb}.backbone.bit', params)
    else:
        _put(sd, f'{emb}.patch_embeddings.projection', conv(params['embedding']))
    tr = params['Transformer']
    for i in range(model.num_layers):
        b, L = tr[f'encoderblock_{i}'], f'{pre}encoder.layer.{i}'
        a = f'{L}.attention.attention'
        _put_attention(sd, b['MultiHeadDotProductAttention_1'], f'{a}.query', f'{a}.key', f'{a}.value',
                       f'{L}.attention.output.dense')
        _put_block(sd, L, b, norms=HF_NORMS, mlp=HF_MLP)
    _put(sd, f'{pre}layernorm', norm(tr['encoder_norm']))
    neck, neck_stats = params['neck'], stats.get('neck', {})
    for i in range(n):
        _put(sd, f'neck.convs.{i}', conv(neck[f'layer{i + 1}_rn'], bias=False))
        if hybrid and i < 2:
            continue  # ResNet maps: no reassembly.
        r = neck[f'reassemble{i + 1}']
        if model.readout == 'project':
            _put(sd, f'neck.reassemble_stage.readout_projects.{i}.0', linear(r['readout_project']))
        lp = f'neck.reassemble_stage.layers.{i}'
        _put(sd, f'{lp}.projection', conv(r['projection']))
        if factors[i] > 1:  # ConvTranspose: (k, k, in, out), spatially flipped -> torch (in, out, k, k).
            k = np.asarray(r['resize']['kernel'])[::-1, ::-1]
            sd[f'{lp}.resize.weight'] = _a(np.transpose(k, (2, 3, 0, 1)))
            sd[f'{lp}.resize.bias'] = _a(r['resize']['bias'])
        elif factors[i] < 1:
            _put(sd, f'{lp}.resize', conv(r['resize']))
    for j in range(n):  # HF fusion layer j (deepest first) is refinenet{n - j}.
        name = f'refinenet{n - j}'
        block, fp = neck[name], f'neck.fusion_stage.layers.{j}'
        _put(sd, f'{fp}.projection', conv(block['out_conv']))
        for u in (1, 2):
            up = f'{fp}.residual_layer{u}'
            unit = block.get(f'resConfUnit{u}')
            if unit is None:  # keep_unused=False: refinenet4's first unit, unused in the forward pass of both.
                unit = _zero_unit(model.fusion_features, use_bn)
                unit_stats = {f'bn{c}': {'mean': np.zeros(model.fusion_features), 'var': np.ones(
                    model.fusion_features)} for c in (1, 2)}
            else:
                unit_stats = neck_stats.get(name, {}).get(f'resConfUnit{u}', {})
            for c in (1, 2):
                _put(sd, f'{up}.convolution{c}', conv(unit[f'conv{c}'], bias=not use_bn))
                if use_bn:
                    _put(sd, f'{up}.batch_norm{c}', batchnorm(unit[f'bn{c}'], unit_stats[f'bn{c}']))
    if seg:
        heads = [('seg_head', 'head.head')] + ([('aux_head', 'auxiliary_head.head')] if model.aux_head else [])
        for name, hp in heads:
            p = params[name]
            _put(sd, f'{hp}.0', conv(p['conv'], bias=False))
            _put(sd, f'{hp}.1', batchnorm(p['bn'], stats[name]['bn']))
            _put(sd, f'{hp}.4', conv(p['classifier']))
        cls_name = 'DPTForSemanticSegmentation'
    else:
        p = params['depth_head']
        for idx, c in ((0, 'conv1'), (2, 'conv2'), (4, 'conv3')):
            _put(sd, f'head.head.{idx}', conv(p[c]))
        cls_name = 'DPTForDepthEstimation'
    return config, cls_name, sd, {}


def _bit_hf(sd: dict, prefix: str, params: dict) -> None:
    """resnet_stem names (`conv_root`, `gn_root`, `block{i}/unit{j}`) -> HuggingFace BitBackbone (bottleneck)."""
    _put(sd, f'{prefix}.embedder.convolution', conv(params['conv_root'], bias=False))
    _put(sd, f'{prefix}.embedder.norm', norm(params['gn_root']))
    stage = 0
    while f'block{stage + 1}' in params:
        block = params[f'block{stage + 1}']
        for unit in range(len(block)):
            u, lp = block[f'unit{unit + 1}'], f'{prefix}.encoder.stages.{stage}.layers.{unit}'
            for c in (1, 2, 3):
                _put(sd, f'{lp}.conv{c}', conv(u[f'conv{c}'], bias=False))
                _put(sd, f'{lp}.norm{c}', norm(u[f'gn{c}']))
            if 'conv_proj' in u:
                _put(sd, f'{lp}.downsample.conv', conv(u['conv_proj'], bias=False))
                _put(sd, f'{lp}.downsample.norm', norm(u['gn_proj']))
        stage += 1


def _zero_unit(f: int, use_bn: bool) -> dict:
    unit = {f'conv{c}': {'kernel': np.zeros((3, 3, f, f), np.float32), 'bias': np.zeros((f,), np.float32)}
            for c in (1, 2)}
    if use_bn:
        unit.update({f'bn{c}': {'scale': np.ones((f,), np.float32), 'bias': np.zeros((f,), np.float32)}
                     for c in (1, 2)})
    return unit


# ----------------------------------------------------------------------------------------------------------------
# TimeSformer.
# ----------------------------------------------------------------------------------------------------------------
def _timesformer_hf(model: Any, params: dict, stats: dict) -> tuple[Any, str, dict, dict]:
    import transformers

    fam = 'TimeSformer -> HuggingFace'
    at = model.attention_type
    _require(at in ('divided_space_time', 'joint_space_time'), fam,
             f"attention_type={at!r}: HuggingFace has 'divided_space_time' and 'joint_space_time' ('space_only' "
             'there returns per-frame outputs without the official frame averaging; L+G and axial are not in HF).')
    _require(model.norm == 'layernorm', fam, f'norm={model.norm!r}: only LayerNorm exports.')
    (h, w), (ph, pw) = _pair(model.image_size), _pair(model.patch_size)
    _require(h == w and ph == pw, fam, f'image_size={model.image_size}, patch_size={model.patch_size}: HuggingFace '
             'TimeSformer needs square frames and patches.')
    has_head = bool(model.num_classes)
    config = transformers.TimesformerConfig(
        image_size=h, patch_size=ph, num_channels=3, num_frames=int(model.num_frames),
        hidden_size=model.hidden_size, num_hidden_layers=model.num_layers, num_attention_heads=model.num_heads,
        intermediate_size=model.mlp_dim, hidden_act=_hf_activation(model.activation, 'TimeSformer'),
        hidden_dropout_prob=float(model.dropout_rate), attention_probs_dropout_prob=float(model.attention_dropout_rate),
        layer_norm_eps=float(model.norm_eps), qkv_bias=bool(model.qkv_bias), attention_type=at,
        # Stochastic depth is training-only; transformers 5 types TimesformerConfig.drop_path_rate as an int and
        # refuses a fraction, so the exported config has none.
        drop_path_rate=0, num_labels=int(model.num_classes) if has_head else 2)
    base = 'timesformer.' if has_head else ''
    tr = params['Transformer']

    def attention(prefix: str, att: dict) -> None:
        _put(sd, f'{prefix}.attention.qkv', _fused_qkv(att, bool(model.qkv_bias)))
        _put(sd, f'{prefix}.output.dense', attention_out(att['out']))

    sd: dict = {}
    e = f'{base}embeddings'
    sd[f'{e}.cls_token'] = _a(params['cls'])
    sd[f'{e}.position_embeddings'] = _a(tr['posembed_input']['pos_embedding'])
    sd[f'{e}.time_embeddings'] = _a(tr['time_embedding'])
    _put(sd, f'{e}.patch_embeddings.projection', conv(params['embedding']))
    for i in range(model.num_layers):
        b, L = tr[f'encoderblock_{i}'], f'{base}encoder.layer.{i}'
        attention(f'{L}.attention', b['MultiHeadDotProductAttention_1'])
        _put_block(sd, L, b, norms=HF_NORMS, mlp=HF_MLP)
        if at == 'divided_space_time':
            _put(sd, f'{L}.temporal_layernorm', norm(b['temporal_norm']))
            attention(f'{L}.temporal_attention', b['temporal_attention'])
            _put(sd, f'{L}.temporal_dense', linear(b['temporal_fc']))
    _put(sd, f'{base}layernorm', norm(tr['encoder_norm']))
    if has_head:
        _put(sd, 'classifier', linear(params['head']))
    return config, 'TimesformerForVideoClassification' if has_head else 'TimesformerModel', sd, {}


# ----------------------------------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------------------------------
_HF_EXPORTERS = {'VisionTransformer': _vit_hf, 'CvT': _cvt_hf, 'BEiT': _beit_hf, 'DPT': _dpt_hf,
                 'TimeSformer': _timesformer_hf}


def transformers_state_dict(model: Any, variables: Mapping) -> tuple[Any, str, dict, dict]:
    """(HF config, HF class name, state dict of numpy arrays, extra HF constructor kwargs) for a vit_jax model."""
    kind = type(model).__name__
    if kind not in _HF_EXPORTERS:
        raise ExportError(f'No HuggingFace export for {kind}; exportable: {", ".join(sorted(_HF_EXPORTERS))} '
                          '(ViT, DeiT, CvT, BEiT, DPT, TimeSformer).')
    params, stats = _variables(variables)
    try:
        return _HF_EXPORTERS[kind](model, params, stats)
    except KeyError as e:
        raise ExportError(f'{kind}: the variables have no {e.args[0]!r}, which the model as built needs; pass the '
                          'variables of this model (model.init / a checkpoint of it).') from None


def build_transformers_model(model: Any, variables: Mapping) -> Any:
    """The HuggingFace PyTorch model (eval mode) holding `variables`; every HF weight is set (strict load)."""
    try:
        import torch
        import transformers
    except ImportError:
        raise ImportError('to_transformers needs PyTorch and transformers: pip install -e ".[test]" (torch CPU + '
                          'transformers 5.23).') from None

    config, cls_name, sd, init = transformers_state_dict(model, variables)
    hf_cls = getattr(transformers, cls_name)
    hf_model = hf_cls(config, **init)
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
    missing, unexpected = hf_model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ExportError(f'{cls_name}: exported weights do not match the HuggingFace module: missing {missing}, '
                          f'unexpected {unexpected}.')
    want = hf_model.state_dict()
    bad = [f'{k}: {tuple(v.shape)} vs {tuple(want[k].shape)}' for k, v in tensors.items()
           if tuple(v.shape) != tuple(want[k].shape)]
    if bad:
        raise ExportError(f'{cls_name}: shape mismatches: {bad}')
    return hf_model.eval()


def to_transformers(model: Any, variables: Mapping, out_dir: str, *,
                    value_range: Optional[tuple[float, float]] = None) -> str:
    """Writes a HuggingFace model directory (config.json + model.safetensors) for a vit_jax model.

    Load it with `transformers.AutoModel...from_pretrained(out_dir)` or the class this returns (headless ViTs
    without `representation_size`: `ViTModel.from_pretrained(out_dir, add_pooling_layer=False)`). HF models take
    NCHW pixels (video: B, T, C, H, W) in the value range the vit_jax model was trained on; with `value_range`
    (the config's `data.value_range`, e.g. (-1, 1)) a `preprocessor_config.json` is written too (resize to the
    model's size, [0, 255] -> value_range), for image models.

    Returns:
      The name of the HuggingFace class written (e.g. 'ViTForImageClassification').

    Raises:
      ExportError: the model, or one of its options, has no exact HuggingFace equivalent (the message names it).
    """
    hf_model = build_transformers_model(model, variables)
    cls_name = type(hf_model).__name__
    os.makedirs(out_dir, exist_ok=True)
    hf_model.save_pretrained(out_dir)
    if value_range is not None and cls_name != 'TimesformerForVideoClassification' and cls_name != 'TimesformerModel':
        write_image_processor(out_dir, model, value_range)
    return cls_name


def write_image_processor(out_dir: str, model: Any, value_range: tuple[float, float]) -> str:
    """A `preprocessor_config.json` (ViTImageProcessor) mapping uint8 RGB to the model's input: resize to its
    image_size (bilinear), then [0, 255] -> value_range."""
    from vit_jax import models

    lo, hi = (float(v) for v in value_range)
    if hi <= lo:
        raise ExportError(f'value_range={value_range}: expected (low, high) with low < high.')
    h, w = models.input_shape(model, 1)[-3:-1]
    std = 1.0 / (hi - lo)  # x / 255 in [0, 1] -> (x / 255 - mean) / std in [lo, hi].
    mean = -lo * std
    cfg = {'image_processor_type': 'ViTImageProcessor', 'do_resize': True, 'size': {'height': h, 'width': w},
           'resample': 2, 'do_rescale': True, 'rescale_factor': 1 / 255, 'do_normalize': True,
           'image_mean': [mean] * 3, 'image_std': [std] * 3}
    path = os.path.join(out_dir, 'preprocessor_config.json')
    with open(path, 'w') as f:
        json.dump(cfg, f, indent=2)
    return path


def timm_state_dict(model: Any, variables: Mapping) -> dict[str, np.ndarray]:
    """A timm `vision_transformer` state dict (numpy arrays) for a vit_jax ViT / DeiT(-distilled)."""
    from vit_jax.models.vit import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise ExportError(f'timm export covers ViT / DeiT (VisionTransformer); got {type(model).__name__}. '
                          'Use to_transformers for CvT, BEiT, DPT and TimeSformer.')
    fam = 'ViT -> timm'
    _check_vit_stem_norm(model, fam, "timm's hybrids use another module layout")
    _require(model.classifier in ('token', 'gap'), fam,
             f"classifier={model.classifier!r}: timm layouts here are 'token' (class token) and 'gap' (no class "
             'token, mean of the tokens).')
    _require(model.activation == 'gelu_exact', fam,
             f"activation={model.activation!r}: timm's ViT uses exact GELU (nn.GELU); the ViT release uses the tanh "
             "approximation ('gelu'). Use to_transformers (it records the activation) or a model with "
             "activation='gelu_exact'.")
    _require(abs(model.norm_eps - 1e-6) < 1e-12, fam, f"norm_eps={model.norm_eps}: timm's ViT uses 1e-6.")
    params, _ = _variables(variables)
    distill = bool(model.distill_token)
    has_cls = model.classifier == 'token'
    sd: dict = {}
    if has_cls:
        sd['cls_token'] = _a(params['cls'])
    if distill:
        sd['dist_token'] = _a(params['dist_token'])
    sd['pos_embed'] = _vit_posemb(model, params, int(has_cls) + int(distill))
    _put(sd, 'patch_embed.proj', conv(params['embedding']))
    tr = params['Transformer']
    for i in range(model.num_layers):
        b, L = tr[f'encoderblock_{i}'], f'blocks.{i}'
        att = b['MultiHeadDotProductAttention_1']
        _put(sd, f'{L}.attn.qkv', _fused_qkv(att, bool(model.qkv_bias)))
        _put(sd, f'{L}.attn.proj', attention_out(att['out']))
        _put_block(sd, L, b)
    _put(sd, 'norm', norm(tr['encoder_norm']))
    if model.representation_size is not None:
        _put(sd, 'pre_logits.fc', linear(params['pre_logits']))
    if model.num_classes:
        _put(sd, 'head', linear(params['head']))
        if distill:
            _put(sd, 'head_dist', linear(params['head_dist']))
    return sd


def to_timm(model: Any, variables: Mapping, path: str) -> dict[str, np.ndarray]:
    """Writes a timm ViT / DeiT state dict as .safetensors at `path` (load it in timm with
    `timm.create_model(name, pretrained=False, ...).load_state_dict(safetensors.torch.load_file(path))`).

    Returns:
      The state dict written (numpy arrays).
    """
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise ImportError('to_timm writes safetensors: pip install safetensors (or the test extras: '
                          'pip install -e ".[test]").') from None

    sd = timm_state_dict(model, variables)
    if not path.endswith('.safetensors'):
        raise ExportError(f'{path}: the timm export is written as safetensors; name it *.safetensors.')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(sd, path, metadata={'format': 'pt'})
    return sd


def timm_kwargs(model: Any) -> dict:
    """Arguments of timm's `VisionTransformer` (or `VisionTransformerDistilled`) that build the exported model."""
    (h, w), (ph, pw) = _pair(model.image_size), _pair(model.patch_size)
    kw = dict(img_size=h if h == w else (h, w), patch_size=ph if ph == pw else (ph, pw),
              num_classes=int(model.num_classes or 0), embed_dim=model.hidden_size, depth=model.num_layers,
              num_heads=model.num_heads, mlp_ratio=model.mlp_dim / model.hidden_size, qkv_bias=bool(model.qkv_bias),
              class_token=model.classifier == 'token', global_pool='token' if model.classifier == 'token' else 'avg')
    if model.classifier != 'token':
        kw['fc_norm'] = False  # The final norm acts on the tokens before pooling, as here.
    return kw


# ----------------------------------------------------------------------------------------------------------------
# Command line: python -m vit_jax.convert --to=transformers|timm --workdir_or_npz IN --out OUT.
# ----------------------------------------------------------------------------------------------------------------
def wants_export(argv: list[str]) -> bool:
    """Whether a `vit_jax.convert` command line asks for an export (`--to=...`)."""
    return any(a == '--to' or a.startswith('--to=') for a in argv)


def _parser() -> Any:
    import argparse

    p = argparse.ArgumentParser(
        prog='python -m vit_jax.convert',
        description='Export a vit_jax model (a run\'s workdir, or a .npz with --model) as a HuggingFace transformers '
                    'model directory (config.json + model.safetensors) or a timm ViT/DeiT state dict (.safetensors). '
                    'Model fields: --model.<field>=<value> (override the workdir\'s config.json, or describe a .npz).')
    p.add_argument('--to', required=True, choices=('transformers', 'timm'), help='Target layout.')
    p.add_argument('--workdir_or_npz', required=True,
                   help='A run\'s workdir (its latest checkpoint, EMA weights when kept; the model from its '
                        'config.json) or a .npz parameter file (then --model is required).')
    p.add_argument('--out', required=True, help='transformers: the output directory; timm: a .safetensors file.')
    p.add_argument('--model', default=None, help='The registered vit_jax model (e.g. ViT-B/16); required for a .npz.')
    p.add_argument('--value_range', default=None,
                   help='transformers: LOW,HIGH model input range for preprocessor_config.json (default for a '
                        'workdir: its data.value_range; for a .npz: no preprocessor file).')
    return p


def _value_range_of_workdir(path: str) -> Optional[tuple[float, float]]:
    """The run's input value range (its config.json `data.value_range`, else the pipeline default), or None."""
    from vit_jax import predict

    try:
        config = predict.load_config(None, path)
    except (ValueError, OSError):
        return None
    data = config.get('data', None) or {}
    vr = data.get('value_range', None) if hasattr(data, 'get') else None
    if vr is None:
        from vit_jax.data import pipeline

        vr = pipeline.DEFAULTS['value_range']
    return float(vr[0]), float(vr[1])


def load_model(path: str, name: Optional[str] = None, overrides: Optional[dict] = None) -> tuple[Any, dict, dict]:
    """(model, variables, config.model entries) from a workdir (model from its config.json) or a `.npz` + name."""
    import jax

    from vit_jax import checkpoint, models

    source = checkpoint._split_subtree(str(path))[0]
    is_file = source.endswith('.npz') or os.path.isfile(source)
    if not is_file and not os.path.isdir(source):
        raise FileNotFoundError(f'{path!r}: no such workdir or .npz file.')
    cfg = {} if is_file else dict(checkpoint.workdir_model_config(source) or {})
    if not name and not cfg.get('name'):
        raise ValueError(f'{path!r} ' + ('is a parameter file: pass --model=<registered name> and '
                                         '--model.<field>=<value> for the hyper-parameters it was trained with.'
                                         if is_file else 'has no config.json naming its model: pass --model=<name>.'))
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    cfg.update(overrides or {})
    if name:
        cfg['name'] = name
    kw = dict(cfg)
    model = models.get_model(kw.pop('name'), **kw)
    params, model_state = checkpoint.load_for_inference(path)
    shapes = models.init_shapes(model)
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes['params'])
    params = checkpoint.load_pretrained(zeros, params, dont_load=(), new_grid=checkpoint.model_grid(model))
    other = [k for k in shapes if k not in ('params', 'intermediates')]
    missing = sorted(set(other) - set(model_state))
    if missing:
        raise ValueError(f'The model needs the collections {missing} (e.g. BatchNorm statistics), which {path} does '
                         'not hold: export from the run\'s workdir (its Orbax checkpoint).')
    return model, {'params': params, **{k: model_state[k] for k in other}}, cfg


def main(argv: list[str]) -> int:
    """`python -m vit_jax.convert --to=transformers|timm --workdir_or_npz IN --out OUT [--model=NAME --model.X=V]`.

    Returns 0 on success, 1 for a model that cannot be read or exported (the reason on stderr), 2 for bad usage.
    """
    import sys

    from vit_jax.convert import _split_model_flags

    rest, model_flags = _split_model_flags(list(argv))
    args = _parser().parse_args(rest)
    if args.to == 'timm' and not args.out.endswith('.safetensors'):
        print('error: --to=timm writes a .safetensors file; --out must end in .safetensors.', file=sys.stderr)
        return 2
    if args.to == 'timm' and args.value_range:
        print('error: --value_range applies to --to=transformers.', file=sys.stderr)
        return 2
    value_range = None
    if args.value_range:
        try:
            value_range = tuple(float(x) for x in args.value_range.split(','))
            assert len(value_range) == 2
        except (ValueError, AssertionError):
            print(f'error: --value_range expects LOW,HIGH (e.g. -1,1), got {args.value_range!r}.', file=sys.stderr)
            return 2
    try:
        model, variables, model_cfg = load_model(args.workdir_or_npz, args.model, model_flags)
        if args.to == 'transformers':
            if value_range is None and not args.workdir_or_npz.endswith('.npz'):
                value_range = _value_range_of_workdir(args.workdir_or_npz)
            cls_name = to_transformers(model, variables, args.out, value_range=value_range)
        else:
            to_timm(model, variables, args.out)
    except (OSError, ValueError, ImportError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'Exported {model_cfg} to {args.out}.')
    if args.to == 'transformers':
        load = f"transformers.{cls_name}.from_pretrained('{args.out}'"
        if cls_name in ('ViTModel', 'DeiTModel') and model.representation_size is None:
            load += ', add_pooling_layer=False'
        print(f'Load it with: {load})' + (f' (and an image processor from {args.out}: input range {value_range})'
                                          if value_range else ''))
        layout = 'pixel_values (B, T, 3, H, W)' if cls_name.startswith('Timesformer') else 'pixel_values (B, 3, H, W)'
        print(f'Inputs: {layout}, preprocessed as for the vit_jax model.')
    else:
        kw = ', '.join(f'{k}={v!r}' for k, v in timm_kwargs(model).items())
        cls = 'VisionTransformerDistilled' if model.distill_token else 'VisionTransformer'
        print(f'Load it with: timm.models.{"deit" if model.distill_token else "vision_transformer"}.{cls}({kw})'
              f".load_state_dict(safetensors.torch.load_file('{args.out}'))")
    return 0
