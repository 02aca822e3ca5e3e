"""Official MILAN checkpoints (zejiangh/MILAN) -> `MILAN` (pre-training) and the fine-tuned classifiers.

Pre-training (`models_milan.py` MaskedAutoencoderViT, the released `checkpoint-399.pth` files) -> `MILAN`:

    patch_embed.proj (Conv2d)             -> embedding
    cls_token (1, 1, D)                   -> cls
    pos_embed (1, 1 + N, D)               fixed sin-cos buffer (requires_grad=False): not loaded, VERIFIED equal to the
                                          table the model computes (MAE convention, zero class-token row; max |diff|
                                          1e-5), otherwise refused
    blocks.{i}.norm1 / attn.qkv, attn.proj / norm2 / mlp.fc1, fc2
                                          -> Transformer/encoderblock_{i}/LayerNorm_0 / MultiHeadDotProductAttention_1 /
                                             LayerNorm_2 / MlpBlock_3/Dense_{0,1}
    norm                                  -> Transformer/encoder_norm
    decoder_embed                         -> decoder_embed
    mask_token (1, 1, Dd)                 -> mask_token
    decoder_pos_embed (1, 1 + N, Dd)      verified like pos_embed
    decoder_blocks.{i}.norm1 / attn.q, attn.kv (Dd -> 2 Dd: [k; v]), attn.proj / norm2 / mlp.fc1, fc2
                                          -> decoder_block_{i}/LayerNorm_0 / MultiHeadDotProductAttention_1/{query,
                                             key, value, out} / LayerNorm_2 / MlpBlock_3          (decoder='prompt')
    decoder_blocks.{i}.attn.qkv (models_mae.py, plain MAE decoder)
                                          -> decoder_blocks/encoderblock_{i}/...                  (decoder='mae')
    decoder_norm / decoder_pred           -> decoder_norm / decoder_pred

Fine-tuned classifiers (`models_vit.py` VisionTransformer, timm-style; `pos_embed` is a trained parameter there):

- `--global_pool` (FINETUNE.sh; `fc_norm`, no `norm`): mean of the patch tokens (the class token attends but is not
  pooled) then `fc_norm`. `VisionTransformer` cannot express that (its 'gap' has no class token and normalises before
  pooling), so it converts into `BEiT` built as a plain ViT: `models.get_model('BEiT-B/16', abs_posemb=True,
  rel_pos_bias='none', layer_scale=None, use_mask_token=False, classifier='gap', drop_path_rate=0.1,
  num_classes=1000)` (qkv with biases, eps 1e-6, exact GELU: the same network). The state dict cannot tell
  `--global_pool` from `--global_pool_wcls` (class token included in the mean; same keys): `fc_norm` is read as
  `--global_pool`, the option MILAN's scripts use.
- `--cls_token` (`norm`, no `fc_norm`) -> `VisionTransformer(classifier='token', posemb='learn', norm_eps=1e-6,
  activation='gelu_exact')`, e.g. `models.get_model('ViT-B/16', norm_eps=1e-6, activation='gelu_exact')`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vit_jax.models import layers
from vit_jax.porting import common, registry
from vit_jax.porting.common import timm_block


def _prompt_block(sd: registry.StateDict, prefix: str, num_heads: int) -> dict:
    """MILAN's `Block_fordecoder` (attn.q, attn.kv = [k; v], attn.proj) -> PromptDecoderBlock params."""
    kv_w, kv_b = sd[f'{prefix}.attn.kv.weight'], sd.get(f'{prefix}.attn.kv.bias')
    d = kv_w.shape[0] // 2
    att = {'query': common.attention_in(sd, f'{prefix}.attn.q', num_heads)}
    for i, name in enumerate(('key', 'value')):
        part = {'x.weight': kv_w[i * d:(i + 1) * d]}
        if kv_b is not None:
            part['x.bias'] = kv_b[i * d:(i + 1) * d]
        att[name] = common.attention_in(part, 'x', num_heads)
    att['out'] = common.attention_out(sd, f'{prefix}.attn.proj', num_heads)
    return common.encoder_block(sd, prefix, att)


def verify_sincos(sd: registry.StateDict, key: str, grid: tuple[int, int], dim: int, atol: float = 1e-5) -> None:
    """Reads the fixed sin-cos buffer `key` and checks it equals the model's own table (MAE convention, zero class
    row); raises ConversionError naming the key otherwise. The model computes the table, so nothing is loaded."""
    got = np.asarray(sd[key], np.float32)
    want = np.concatenate([np.zeros((1, 1, dim), np.float32),
                           layers.posemb_sincos_2d(*grid, dim, convention='mae')], axis=1)
    if got.shape != want.shape:
        raise registry.ConversionError(f'official:milan: {key} has shape {got.shape}, the model\'s fixed table '
                                       f'{want.shape} (grid {grid}, width {dim}); build the model with the '
                                       'checkpoint\'s image and patch size.')
    diff = float(np.abs(got - want).max())
    if diff > atol:
        bv = np.concatenate([np.zeros((1, 1, dim), np.float32), layers.posemb_sincos_2d(*grid, dim)], axis=1)
        hint = (" (it is big_vision's convention, omega = 1/10000**(k/(D/4-1)))"
                if float(np.abs(got - bv).max()) <= atol else '')
        raise registry.ConversionError(
            f'official:milan: {key} differs from the fixed MAE sin-cos table the model computes by up to {diff:.3g}'
            f'{hint}; the model cannot carry another table.')


def _pretrain(sd: registry.StateDict, model: Any) -> dict:
    (h, w), d, dd = model.grid_size, model.hidden_size, model.decoder_dim
    verify_sincos(sd, 'pos_embed', (h, w), d)
    verify_sincos(sd, 'decoder_pos_embed', (h, w), dd)
    has_kv = 'decoder_blocks.0.attn.kv.weight' in sd
    has_qkv = 'decoder_blocks.0.attn.qkv.weight' in sd
    if (model.decoder == 'prompt' and not has_kv) or (model.decoder == 'mae' and not has_qkv):
        ckpt = 'prompt (attn.q / attn.kv)' if has_kv else 'plain MAE (attn.qkv)' if has_qkv else 'no'
        raise registry.ConversionError(
            f'official:milan: the checkpoint has a {ckpt} decoder (decoder_blocks.0.attn.*) but the model is built '
            f"with decoder={model.decoder!r}; use decoder='prompt' for models_milan.py, 'mae' for models_mae.py.")
    tr = {f'encoderblock_{i}': timm_block(sd, f'blocks.{i}', model.num_heads) for i in range(model.num_layers)}
    tr['encoder_norm'] = common.norm(sd, 'norm')
    params: dict = {
        'embedding': common.conv(sd, 'patch_embed.proj'),
        'cls': sd['cls_token'].reshape(1, 1, -1),
        'Transformer': tr,
        'decoder_embed': common.linear(sd, 'decoder_embed'),
        'mask_token': sd['mask_token'].reshape(1, 1, -1),
        'decoder_norm': common.norm(sd, 'decoder_norm'),
        'decoder_pred': common.linear(sd, 'decoder_pred'),
    }
    if model.decoder == 'prompt':
        for i in range(model.decoder_depth):
            params[f'decoder_block_{i}'] = _prompt_block(sd, f'decoder_blocks.{i}', model.decoder_heads)
    else:
        params['decoder_blocks'] = {f'encoderblock_{i}': timm_block(sd, f'decoder_blocks.{i}', model.decoder_heads)
                                    for i in range(model.decoder_depth)}
    return {'params': params}


def _finetuned(sd: registry.StateDict, model: Any) -> dict:
    name = type(model).__name__
    pooled = 'fc_norm.weight' in sd
    if pooled and name != 'BEiT':
        raise registry.ConversionError(
            'official:milan: this fine-tuned checkpoint has fc_norm (--global_pool: mean of the patch tokens, class '
            'token kept in the sequence, then fc_norm), which VisionTransformer cannot express; convert it into '
            "models.get_model('BEiT-B/16', abs_posemb=True, rel_pos_bias='none', layer_scale=None, "
            "use_mask_token=False, classifier='gap', num_classes=...) (the same network).")
    if not pooled and name != 'VisionTransformer':
        raise registry.ConversionError(
            'official:milan: this fine-tuned checkpoint classifies the class token (norm, no fc_norm); convert it '
            "into models.get_model('ViT-B/16', norm_eps=1e-6, activation='gelu_exact', num_classes=...).")
    problems = []
    if abs(model.norm_eps - 1e-6) > 1e-12:
        problems.append(f'norm_eps=1e-6 (got {model.norm_eps})')
    if model.activation != 'gelu_exact':
        problems.append(f"activation='gelu_exact' (got {model.activation!r})")
    if name == 'BEiT':
        final_norm = (model.classifier != 'gap') if model.final_norm is None else model.final_norm
        want = dict(abs_posemb=True, rel_pos_bias='none', layer_scale=None, use_mask_token=False, classifier='gap',
                    vocab_size=None)
        problems += [f'{k}={v!r} (got {getattr(model, k)!r})' for k, v in want.items() if getattr(model, k) != v]
        if final_norm:
            problems.append('final_norm=False')
    else:
        want = dict(stem='patch', classifier='token', posemb='learn', representation_size=None, distill_token=False,
                    norm='layernorm', qkv_bias=True)
        problems += [f'{k}={v!r} (got {getattr(model, k)!r})' for k, v in want.items() if getattr(model, k) != v]
    if problems:
        raise registry.ConversionError(f'official:milan: the fine-tuned MAE-style ViT needs a {name} with '
                                       + ', '.join(problems) + '.')
    depth = len({k.split('.')[1] for k in sd if k.startswith('blocks.')})
    if depth != model.num_layers:
        raise registry.ConversionError(f'official:milan: the checkpoint has {depth} blocks, the model '
                                       f'{model.num_layers}.')
    params = common.timm_vit(sd, '', depth, model.num_heads, final_norm=not pooled)
    if pooled:
        params['fc_norm'] = common.norm(sd, 'fc_norm')
    params.update(common.classifier_head(sd, 'milan', model.num_classes))
    return {'params': params}


@registry.official('milan', source='zejiangh/MILAN', models=('MILAN-', 'BEiT-', 'ViT-'))
def convert(sd: registry.StateDict, model: Any) -> dict:
    """zejiangh/MILAN pre-training (encoder + prompting decoder) -> MILAN; fine-tuned classifiers -> BEiT / ViT."""
    is_pretrain = any(k.startswith('decoder_') for k in sd) or 'mask_token' in sd
    if is_pretrain:
        if type(model).__name__ != 'MILAN':
            raise registry.ConversionError(
                'official:milan: this is a pre-training checkpoint (decoder_*, mask_token); convert it into a MILAN '
                "model (models.get_model('MILAN-B/16') with the checkpoint's sizes), then fine-tune from it with "
                "init_from.dont_load=('head/.*', 'decoder.*', 'mask_token').")
        return _pretrain(sd, model)
    if type(model).__name__ == 'MILAN':
        raise registry.ConversionError('official:milan: this checkpoint has no decoder (a fine-tuned classifier); '
                                       'the MILAN model needs a pre-training checkpoint.')
    return _finetuned(sd, model)
