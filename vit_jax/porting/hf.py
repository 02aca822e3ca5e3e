"""HuggingFace `transformers` models -> vit_jax: ViT, CvT, DPT, TimeSformer, BEiT and the CLIP vision tower.

    model, variables = convert.from_transformers(hf_model)

A converter takes the HuggingFace PyTorch module and returns `(flax module, variables)`; it reads the module's
`state_dict()` and `config` only (no hub download, no pickles) and is registered for its HuggingFace class names with
`@hf_converter(...)`. `vit_from_hf_state_dict` converts a ViT from files alone (config + state dict).
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import models
from vit_jax.models.beit import BEiT
from vit_jax.models.cvt import CvT
from vit_jax.models.dpt import DPT
from vit_jax.models.milan import CLIPVisionTransformer
from vit_jax.models.timesformer import TimeSformer
from vit_jax.models.vit import to_2tuple
from vit_jax.porting.common import (
    HF_MLP,
    HF_NORMS,
    batchnorm,
    conv,
    encoder_block,
    fused_attention,
    hf_activation,
    linear,
    norm,
    separate_attention,
    to_numpy,
)
from vit_jax.porting.dpt import fusion_block
from vit_jax.porting.registry import StateDict, check_variables

_HF_CONVERTERS: dict[str, Callable[[Any], tuple[Any, dict]]] = {}


def hf_converter(*class_names: str) -> Callable:
    """Decorator registering a converter for the given HuggingFace model class names."""

    def wrap(fn):
        for n in class_names:
            _HF_CONVERTERS[n] = fn
        return fn

    return wrap


def hf_classes() -> list[str]:
    """The HuggingFace model class names `from_transformers` converts."""
    return sorted(_HF_CONVERTERS)


def from_transformers(hf_model: Any) -> tuple[Any, dict]:
    """Converts a HuggingFace `transformers` PyTorch model into `(vit_jax module, variables)`."""
    name = type(hf_model).__name__
    if name not in _HF_CONVERTERS:
        raise ValueError(f'No converter for HuggingFace {name}; supported: {", ".join(sorted(_HF_CONVERTERS))}.')
    return _HF_CONVERTERS[name](hf_model)


# ----------------------------------------------------------------------------------------------------------------
# ViT (ViTModel / ViTForImageClassification), also from files alone.
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


def _hf5_attention(sd: dict, prefix: str, num_heads: int, out: str = 'o_proj') -> dict:
    """HuggingFace 5.x attention (`{prefix}.q_proj`, `k_proj`, `v_proj`, `{prefix}.{out}`) -> MultiHeadAttention."""
    return separate_attention(sd, num_heads, f'{prefix}.q_proj', f'{prefix}.k_proj', f'{prefix}.v_proj',
                              f'{prefix}.{out}')


def _cfg(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def vit_from_hf_state_dict(config: Any, state_dict: dict) -> tuple[Any, dict]:
    """`(VisionTransformer, variables)` from a HuggingFace ViT config (object or dict) and its state dict.

    Works from files alone (no `transformers` model is built): the state dict of `ViTModel` (with or without the
    pooler), of `ViTForImageClassification` (with `classifier`), in the 4.x or 5.x naming. HuggingFace's choices are
    kept: `hidden_act` ('gelu' is exact erf GELU -> activation='gelu_exact'), `layer_norm_eps` (1e-12 in the hub
    configs), `image_size` / `patch_size` (ints or (h, w) pairs) and `qkv_bias`. The pooler (dense + tanh) becomes
    `pre_logits` (representation_size), the classifier `head`.
    """
    sd = StateDict(_hf_vit_keys(state_dict))
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
        tr[f'encoderblock_{i}'] = encoder_block(sd, f'layers.{i}', _hf5_attention(sd, f'layers.{i}.attention', heads),
                                                norms=HF_NORMS)
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


# ----------------------------------------------------------------------------------------------------------------
# CvT.
# ----------------------------------------------------------------------------------------------------------------
@hf_converter('CvtModel', 'CvtForImageClassification')
def from_hf_cvt(hf_model: Any) -> tuple[CvT, dict]:
    """Converts a HuggingFace `CvtModel` / `CvtForImageClassification` into `(CvT, variables)`.

    HuggingFace uses exact GELU (the official code QuickGELU), LayerNorm eps 1e-5 everywhere (its
    `layer_norm_eps` is unused) and puts the final LayerNorm in `CvtForImageClassification` only: a converted
    `CvtModel` gets an identity `norm` and no head, and its `out['tokens_2d']` / `out['cls_token']` equal HF's
    `last_hidden_state` (transposed to NHWC) / `cls_token_value`.
    """
    cfg = hf_model.config
    sd = hf_model.state_dict()
    is_cls = type(hf_model).__name__ == 'CvtForImageClassification'
    base = 'cvt.encoder.stages' if is_cls else 'encoder.stages'
    if any(m not in ('dw_bn',) for m in cfg.qkv_projection_method):
        raise ValueError(f'Only the dw_bn projection converts; got {cfg.qkv_projection_method}.')
    for what in ('drop_rate', 'attention_drop_rate'):
        if len(set(getattr(cfg, what))) > 1:
            raise ValueError(f'CvT uses one {what} for all stages; the config has {getattr(cfg, what)}.')
    n = len(cfg.depth)
    model = CvT(
        num_classes=(cfg.num_labels if is_cls else None), embed_dims=tuple(cfg.embed_dim),
        num_heads=tuple(cfg.num_heads), depths=tuple(cfg.depth), mlp_ratios=tuple(float(r) for r in cfg.mlp_ratio),
        patch_sizes=tuple(cfg.patch_sizes), patch_strides=tuple(cfg.patch_stride),
        patch_paddings=tuple(cfg.patch_padding), cls_token=tuple(bool(c) for c in cfg.cls_token),
        qkv_method=tuple(cfg.qkv_projection_method), qkv_kernel=tuple(cfg.kernel_qkv), stride_q=tuple(cfg.stride_q),
        stride_kv=tuple(cfg.stride_kv), padding_q=tuple(cfg.padding_q), padding_kv=tuple(cfg.padding_kv),
        qkv_bias=tuple(bool(b) for b in cfg.qkv_bias), dropout_rate=float(cfg.drop_rate[0]),
        attention_dropout_rate=float(cfg.attention_drop_rate[0]),
        drop_path_rate=tuple(float(r) for r in cfg.drop_path_rate), activation='gelu_exact', norm_eps=1e-5)
    params, stats = {}, {}
    for i in range(n):
        s, st = f'{base}.{i}', f'stage_{i}'
        emb = f'{s}.embedding.convolution_embeddings'
        params[f'{st}_embedding'] = conv(sd, f'{emb}.projection')
        params[f'{st}_embedding_norm'] = norm(sd, f'{emb}.normalization')
        if cfg.cls_token[i]:
            params[f'{st}_cls'] = to_numpy(sd[f'{s}.cls_token'])
        heads = cfg.num_heads[i]
        for j in range(cfg.depth[i]):
            L = f'{s}.layers.{j}'
            a = f'{L}.attention.attention'
            proj_p, proj_s = {}, {}
            for which, hf_name in (('q', 'query'), ('k', 'key'), ('v', 'value')):
                cp = f'{a}.convolution_projection_{hf_name}.convolution_projection'
                bn_p, bn_s = batchnorm(sd, f'{cp}.normalization')
                proj_p[f'conv_proj_{which}'] = {'conv': conv(sd, f'{cp}.convolution', bias=False),
                                                'bn': bn_p}
                proj_s[f'conv_proj_{which}'] = {'bn': bn_s}
            attn = {'qkv_transform': proj_p, **separate_attention(
                sd, heads, f'{a}.projection_query', f'{a}.projection_key', f'{a}.projection_value',
                f'{L}.attention.output.dense')}
            params[f'{st}_block_{j}'] = encoder_block(sd, L, attn, norms=HF_NORMS, mlp=HF_MLP)
            stats[f'{st}_block_{j}'] = {'MultiHeadDotProductAttention_1': {'qkv_transform': proj_s}}
    d = cfg.embed_dim[-1]
    if is_cls:
        params['norm'] = norm(sd, 'layernorm')
        if cfg.num_labels:
            params['head'] = linear(sd, 'classifier')
    else:
        params['norm'] = {'scale': np.ones((d,), np.float32), 'bias': np.zeros((d,), np.float32)}
    return model, {'params': params, 'batch_stats': stats}


# ----------------------------------------------------------------------------------------------------------------
# DPT (ViT and BiT-hybrid backbones).
# ----------------------------------------------------------------------------------------------------------------
@hf_converter('DPTForDepthEstimation', 'DPTForSemanticSegmentation')
def from_hf_dpt(hf_model: Any) -> tuple[DPT, dict]:
    """HuggingFace DPT (ViT or hybrid backbone) -> (DPT module, variables)."""
    cfg = hf_model.config
    sd = {k: v for k, v in hf_model.state_dict().items()}
    if getattr(cfg, 'backbone_config', None) is not None and not cfg.is_hybrid:
        raise ValueError('Only DPT with a ViT or BiT-hybrid backbone converts (not DINOv2 / BEiT / Swin backbones).')
    seg = type(hf_model).__name__ == 'DPTForSemanticSegmentation'
    img = to_2tuple(cfg.image_size)
    patch = to_2tuple(cfg.patch_size)[0]
    hybrid = bool(cfg.is_hybrid)
    n_hooks = len(cfg.neck_hidden_sizes)
    if hybrid:
        hooks = ('resnet/block1', 'resnet/block2') + tuple(int(i) for i in cfg.backbone_out_indices[2:])
    else:
        hooks = tuple(int(i) for i in cfg.backbone_out_indices)
    kw = dict(
        num_classes=int(cfg.num_labels) if seg else 1, image_size=img, head='segmentation' if seg else 'depth',
        patch_size=1 if hybrid else patch, hidden_size=cfg.hidden_size, mlp_dim=cfg.intermediate_size,
        num_heads=cfg.num_attention_heads, num_layers=cfg.num_hidden_layers, hooks=hooks, readout=cfg.readout_type,
        features=tuple(cfg.neck_hidden_sizes), reassemble_factors=tuple(cfg.reassemble_factors),
        fusion_features=cfg.fusion_hidden_size, fusion_bn=bool(cfg.use_batch_norm_in_fusion_residual),
        head_dropout=float(getattr(cfg, 'semantic_classifier_dropout', 0.1)),
        aux_head=bool(seg and cfg.use_auxiliary_head), backbone_classes=0, keep_unused=True,
        norm_eps=float(cfg.layer_norm_eps), activation=hf_activation(cfg.hidden_act))
    if seg:
        ub = cfg.use_bias_in_fusion_residual
        if ub is not None and bool(ub) == bool(cfg.use_batch_norm_in_fusion_residual):
            raise ValueError('DPT converter: conv biases together with BatchNorm in the fusion units are unsupported.')
    if hybrid:
        bb = cfg.backbone_config
        if bb.layer_type != 'bottleneck' or str(bb.global_padding).upper() != 'SAME' or bb.num_groups != 32:
            raise ValueError('DPT-Hybrid converter expects a BiT backbone with bottleneck layers, SAME padding and '
                             '32 groups.')
        width = bb.embedding_size / 64
        if list(bb.hidden_sizes[:3]) != [int(256 * width * 2**i) for i in range(3)]:
            raise ValueError(f'Unsupported BiT widths {bb.hidden_sizes} (expected 4x the stem width, doubling).')
        kw.update(stem='resnet', resnet_layers=tuple(bb.depths), resnet_width=width, resnet_variant='timm')
    if getattr(cfg, 'add_projection', False):
        raise ValueError('DPT converter: add_projection=True (DINOv2-style depth heads) is unsupported.')
    model = DPT(**kw)

    params: dict = {}
    stats: dict = {}
    pre = 'dpt.'
    emb = pre + 'embeddings.'
    params['cls'] = to_numpy(sd[emb + 'cls_token'])
    t: dict = {'posembed_input': {'pos_embedding': to_numpy(sd[emb + 'position_embeddings'])}}
    if hybrid:
        params['embedding'] = conv(sd, emb + 'projection')
        _convert_bit(sd, emb + 'backbone.', params)
    else:
        params['embedding'] = conv(sd, emb + 'patch_embeddings.projection')
    nh = cfg.num_attention_heads
    for i in range(cfg.num_hidden_layers):
        p = f'{pre}encoder.layer.{i}'
        attn = separate_attention(sd, nh, f'{p}.attention.attention.query', f'{p}.attention.attention.key',
                                  f'{p}.attention.attention.value', f'{p}.attention.output.dense')
        t[f'encoderblock_{i}'] = encoder_block(sd, p, attn, norms=HF_NORMS, mlp=HF_MLP)
    t['encoder_norm'] = norm(sd, pre + 'layernorm')
    params['Transformer'] = t

    neck: dict = {}
    neck_stats: dict = {}
    for i in range(n_hooks):
        if isinstance(hooks[i], str):
            continue
        r = {}
        if cfg.readout_type == 'project':
            r['readout_project'] = linear(sd, f'neck.reassemble_stage.readout_projects.{i}.0')
        lp = f'neck.reassemble_stage.layers.{i}.'
        r['projection'] = conv(sd, lp + 'projection')
        factor = cfg.reassemble_factors[i]
        if factor > 1:
            w = to_numpy(sd[lp + 'resize.weight'])  # (in, out, k, k)
            r['resize'] = {'kernel': np.ascontiguousarray(np.transpose(w, (2, 3, 0, 1))[::-1, ::-1]),
                           'bias': to_numpy(sd[lp + 'resize.bias'])}
        elif factor < 1:
            r['resize'] = conv(sd, lp + 'resize')
        neck[f'reassemble{i + 1}'] = r
    for i in range(n_hooks):
        neck[f'layer{i + 1}_rn'] = conv(sd, f'neck.convs.{i}', bias=False)
    use_bn = bool(cfg.use_batch_norm_in_fusion_residual)
    for j in range(n_hooks):  # HF fusion layer j (deepest first) is refinenet{n - j}.
        neck[f'refinenet{n_hooks - j}'], block_stats = fusion_block(
            sd, f'neck.fusion_stage.layers.{j}', use_bn, out_conv='projection', unit='residual_layer',
            conv='convolution', bn='batch_norm')
        if block_stats:
            neck_stats[f'refinenet{n_hooks - j}'] = block_stats
    params['neck'] = neck
    if neck_stats:
        stats['neck'] = neck_stats
    if seg:
        for name, hp in (('seg_head', 'head.head.'), ('aux_head', 'auxiliary_head.head.')):
            if name == 'aux_head' and not kw['aux_head']:
                continue
            bn_p, bn_s = batchnorm(sd, hp + '1')
            params[name] = {'conv': conv(sd, hp + '0', bias=False), 'bn': bn_p,
                            'classifier': conv(sd, hp + '4')}
            stats[name] = {'bn': bn_s}
    else:
        params['depth_head'] = {'conv1': conv(sd, 'head.head.0'), 'conv2': conv(sd, 'head.head.2'),
                                'conv3': conv(sd, 'head.head.4')}
    variables = {'params': params}
    if stats:
        variables['batch_stats'] = stats
    return model, variables


def _convert_bit(sd: dict, prefix: str, params: dict) -> None:
    """HuggingFace BitBackbone (bottleneck layers) -> resnet_stem names (`conv_root`, `gn_root`, `block{i}/unit{j}`)."""
    params['conv_root'] = conv(sd, prefix + 'bit.embedder.convolution', bias=False)
    params['gn_root'] = norm(sd, prefix + 'bit.embedder.norm')
    stage = 0
    while f'{prefix}bit.encoder.stages.{stage}.layers.0.conv1.weight' in sd:
        unit = 0
        block = {}
        while f'{prefix}bit.encoder.stages.{stage}.layers.{unit}.conv1.weight' in sd:
            lp = f'{prefix}bit.encoder.stages.{stage}.layers.{unit}.'
            u = {f'conv{c}': conv(sd, f'{lp}conv{c}', bias=False) for c in (1, 2, 3)}
            u.update({f'gn{c}': norm(sd, f'{lp}norm{c}') for c in (1, 2, 3)})
            if f'{lp}downsample.conv.weight' in sd:
                u['conv_proj'] = conv(sd, lp + 'downsample.conv', bias=False)
                u['gn_proj'] = norm(sd, lp + 'downsample.norm')
            block[f'unit{unit + 1}'] = u
            unit += 1
        params[f'block{stage + 1}'] = block
        stage += 1


# ----------------------------------------------------------------------------------------------------------------
# TimeSformer.
# ----------------------------------------------------------------------------------------------------------------
@hf_converter('TimesformerModel', 'TimesformerForVideoClassification')
def from_hf_timesformer(hf_model: Any) -> tuple[TimeSformer, dict]:
    """HuggingFace TimesformerModel / TimesformerForVideoClassification -> (TimeSformer, variables).

    Inputs differ in layout only: HuggingFace takes (B, T, 3, H, W), this model (B, T, H, W, 3). A TimesformerModel
    converts without a head (`num_classes=0`; compare `out['encoded']` with `last_hidden_state`). HuggingFace's
    space-only model returns per-frame outputs of shape (B*T, ...) without the official frame averaging; the converted
    model averages as the official code does (its `out['encoder/block_XX']` equal HuggingFace's hidden states).
    """
    cfg = hf_model.config
    sd = {k: v for k, v in hf_model.state_dict().items()}
    prefix = 'timesformer.' if any(k.startswith('timesformer.') for k in sd) else ''
    has_head = type(hf_model).__name__ == 'TimesformerForVideoClassification' and cfg.num_labels > 0
    if cfg.num_channels != 3:
        raise ValueError(f'Only 3-channel TimeSformers convert (config.num_channels={cfg.num_channels}).')
    model = TimeSformer(
        num_classes=cfg.num_labels if has_head else 0, image_size=cfg.image_size, num_frames=cfg.num_frames,
        attention_type=cfg.attention_type, patch_size=cfg.patch_size, hidden_size=cfg.hidden_size,
        mlp_dim=cfg.intermediate_size, num_heads=cfg.num_attention_heads, num_layers=cfg.num_hidden_layers,
        dropout_rate=float(cfg.hidden_dropout_prob), attention_dropout_rate=float(cfg.attention_probs_dropout_prob),
        drop_path_rate=float(cfg.drop_path_rate), norm_eps=cfg.layer_norm_eps,
        activation=hf_activation(cfg.hidden_act), qkv_bias=cfg.qkv_bias)
    heads = cfg.num_attention_heads

    def attention(p: str) -> dict:
        return fused_attention(sd, p, heads, qkv='attention.qkv', proj='output.dense')

    e = f'{prefix}embeddings'
    tr = {'posembed_input': {'pos_embedding': to_numpy(sd[f'{e}.position_embeddings'])}}
    if cfg.attention_type != 'space_only':
        tr['time_embedding'] = to_numpy(sd[f'{e}.time_embeddings'])
    for i in range(cfg.num_hidden_layers):
        lp = f'{prefix}encoder.layer.{i}'
        blk = encoder_block(sd, lp, attention(f'{lp}.attention'), norms=HF_NORMS, mlp=HF_MLP)
        if cfg.attention_type == 'divided_space_time':
            blk['temporal_norm'] = norm(sd, f'{lp}.temporal_layernorm')
            blk['temporal_attention'] = attention(f'{lp}.temporal_attention')
            blk['temporal_fc'] = linear(sd, f'{lp}.temporal_dense')
        tr[f'encoderblock_{i}'] = blk
    tr['encoder_norm'] = norm(sd, f'{prefix}layernorm')
    params = {
        'embedding': conv(sd, f'{e}.patch_embeddings.projection'),
        'cls': to_numpy(sd[f'{e}.cls_token']),
        'Transformer': tr,
    }
    if has_head:
        params['head'] = linear(sd, 'classifier')
    variables = {'params': params}
    check_variables(variables, model)
    return model, variables


# ----------------------------------------------------------------------------------------------------------------
# BEiT.
# ----------------------------------------------------------------------------------------------------------------
@hf_converter('BeitModel', 'BeitForMaskedImageModeling', 'BeitForImageClassification')
def from_hf_beit(hf_model: Any) -> tuple[BEiT, dict]:
    """HuggingFace BeitModel / BeitForMaskedImageModeling / BeitForImageClassification -> (BEiT, variables).

    Inputs differ in layout only (HuggingFace NCHW, here NHWC); HuggingFace's `bool_masked_pos` is `mask`.
    - BeitModel: `out['encoded']` equals `last_hidden_state` (its `layernorm` is `encoder_norm`, absent when
      `use_mean_pooling`); `out['pre_logits']` equals `pooler_output` (mean pooling + `fc_norm`, or the cls token).
    - BeitForMaskedImageModeling: `out['mim_logits']` equals `logits`.
    - BeitForImageClassification: the returned logits equal `logits`.
    """
    cfg = hf_model.config
    kind = type(hf_model).__name__
    sd = dict(hf_model.state_dict())
    prefix = 'beit.' if any(k.startswith('beit.') for k in sd) else ''
    if cfg.num_channels != 3:
        raise ValueError(f'Only 3-channel BEiTs convert (config.num_channels={cfg.num_channels}).')
    if getattr(cfg, 'head_dim', None) not in (None, cfg.hidden_size // cfg.num_attention_heads):
        raise ValueError('BEiT configs with a custom head_dim are not supported.')
    if cfg.use_shared_relative_position_bias:
        rel = 'shared'
    elif cfg.use_relative_position_bias:
        rel = 'per_layer'
    else:
        rel = 'none'
    mean_pool = bool(cfg.use_mean_pooling)
    has_head = kind == 'BeitForImageClassification' and cfg.num_labels > 0
    is_mim = kind == 'BeitForMaskedImageModeling'
    has_pool = kind != 'BeitForMaskedImageModeling' and f'{prefix}pooler.layernorm.weight' in sd
    classifier = 'gap' if (mean_pool and (has_pool or has_head)) else 'token'
    ls = float(cfg.layer_scale_init_value)
    model = BEiT(
        num_classes=cfg.num_labels if has_head else 0, image_size=cfg.image_size, patch_size=cfg.patch_size,
        hidden_size=cfg.hidden_size, mlp_dim=cfg.intermediate_size, num_heads=cfg.num_attention_heads,
        num_layers=cfg.num_hidden_layers, rel_pos_bias=rel, abs_posemb=bool(cfg.use_absolute_position_embeddings),
        layer_scale=ls if ls > 0 else None, use_mask_token=f'{prefix}embeddings.mask_token' in sd,
        vocab_size=cfg.vocab_size if is_mim else None, classifier=classifier, final_norm=not mean_pool,
        dropout_rate=float(cfg.hidden_dropout_prob), attention_dropout_rate=float(cfg.attention_probs_dropout_prob),
        drop_path_rate=float(cfg.drop_path_rate), norm_eps=float(cfg.layer_norm_eps),
        activation=hf_activation(cfg.hidden_act))
    heads, d = cfg.num_attention_heads, cfg.hidden_size
    e = f'{prefix}embeddings'
    tr: dict[str, Any] = {}
    if cfg.use_absolute_position_embeddings:
        tr['posembed_input'] = {'pos_embedding': to_numpy(sd[f'{e}.position_embeddings'])}
    if rel == 'shared':
        tr['rel_pos_bias'] = {'relative_position_bias_table': to_numpy(
            sd[f'{prefix}shared_position_bias.relative_position_bias_table'])}
    for i in range(cfg.num_hidden_layers):
        lp = f'{prefix}layers.{i}'
        att = _hf5_attention(sd, f'{lp}.attention', heads)
        att['key'].setdefault('bias', np.zeros((heads, d // heads), np.float32))  # BEiT has no key bias.
        blk = encoder_block(sd, lp, att, norms=HF_NORMS)
        if ls > 0:
            blk['gamma_1'] = to_numpy(sd[f'{lp}.lambda_1'])
            blk['gamma_2'] = to_numpy(sd[f'{lp}.lambda_2'])
        tr[f'encoderblock_{i}'] = blk
        if rel == 'per_layer':
            tr[f'encoderblock_{i}_rel_pos_bias'] = {'relative_position_bias_table': to_numpy(
                sd[f'{lp}.relative_position_bias.relative_position_bias_table'])}
    if not mean_pool:
        tr['encoder_norm'] = norm(sd, f'{prefix}layernorm')
    params: dict[str, Any] = {
        'embedding': conv(sd, f'{e}.patch_embeddings.projection'),
        'cls': to_numpy(sd[f'{e}.cls_token']),
        'Transformer': tr,
    }
    if model.use_mask_token:
        params['mask_token'] = to_numpy(sd[f'{e}.mask_token'])
    if is_mim:
        params['mim_norm'] = norm(sd, 'layernorm')
        params['mim_head'] = linear(sd, 'lm_head')
    if classifier == 'gap':
        params['fc_norm'] = norm(sd, f'{prefix}pooler.layernorm')
    if has_head:
        params['head'] = linear(sd, 'classifier')
    variables = {'params': jax.tree_util.tree_map(jnp.asarray, params)}
    check_variables(variables, model)
    return model, variables


# ----------------------------------------------------------------------------------------------------------------
# CLIP vision tower (MILAN's teacher).
# ----------------------------------------------------------------------------------------------------------------
@hf_converter('CLIPVisionModelWithProjection', 'CLIPVisionModel')
def from_hf_clip_vision(hf_model: Any) -> tuple[CLIPVisionTransformer, dict]:
    """HuggingFace CLIPVisionModelWithProjection (or CLIPVisionModel) -> (CLIPVisionTransformer, variables).

    Inputs: HuggingFace NCHW, here NHWC. `out['encoded']` equals `last_hidden_state`, `out['pre_logits']` equals
    `pooler_output`, the returned embedding equals `image_embeds`. A CLIPVisionModel has no projection: `proj` is
    then the identity (projection_dim = hidden size).
    """
    cfg = hf_model.config
    sd = dict(hf_model.state_dict())
    v = 'vision_model.'
    heads, d = cfg.num_attention_heads, cfg.hidden_size
    has_proj = 'visual_projection.weight' in sd
    model = CLIPVisionTransformer(
        image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=d, mlp_dim=cfg.intermediate_size,
        num_heads=heads, num_layers=cfg.num_hidden_layers,
        projection_dim=int(cfg.projection_dim) if has_proj else d, norm_eps=float(cfg.layer_norm_eps),
        activation=hf_activation(cfg.hidden_act))
    tr = {}
    for i in range(cfg.num_hidden_layers):
        lp = f'{v}encoder.layers.{i}'
        att = _hf5_attention(sd, f'{lp}.self_attn', heads, out='out_proj')
        tr[f'encoderblock_{i}'] = encoder_block(sd, lp, att, norms=('layer_norm1', 'layer_norm2'))
    e = f'{v}embeddings'
    params = {
        'embedding': conv(sd, f'{e}.patch_embedding', bias=False),
        'cls': to_numpy(sd[f'{e}.class_embedding']).reshape(1, 1, d),
        'posembed_input': {'pos_embedding': to_numpy(sd[f'{e}.position_embedding.weight'])[None]},
        'ln_pre': norm(sd, f'{v}pre_layrnorm'),
        'Transformer': tr,
        'ln_post': norm(sd, f'{v}post_layernorm'),
        'proj': ({'kernel': to_numpy(sd['visual_projection.weight']).T} if has_proj
                 else {'kernel': np.eye(d, dtype=np.float32)}),
    }
    return model, {'params': jax.tree_util.tree_map(jnp.asarray, params)}
