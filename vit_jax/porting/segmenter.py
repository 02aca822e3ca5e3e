"""Official Segmenter checkpoints (rstrudel/segmenter, `segm/model/{vit,decoder,segmenter}.py`) -> `Segmenter`.

The released `checkpoint.pth` holds `{'model': state_dict}` (unwrapped by `registry.unwrap`). Official names ->
vit_jax (the encoder keeps the ViT release names at the top level, the decoder lives under `decoder`):

    encoder.patch_embed.proj / cls_token / pos_embed  -> embedding / cls / Transformer/posembed_input/pos_embedding
    encoder.dist_token (DeiT-distilled, Seg-B†/16)    -> dist_token (a model built with distilled=True, e.g.
                                                         'Seg-B†/16', 'Seg-B†-Mask/16')
    encoder.blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}
                                                      -> Transformer/encoderblock_{i}/{LayerNorm_0, MultiHead...,
                                                         LayerNorm_2, MlpBlock_3}
    encoder.norm                                      -> Transformer/encoder_norm
    encoder.head / encoder.head_dist                  -> head / head_dist (the encoder's 1000-way classifier; unused
                                                         by segmentation. A model built with backbone_classes=0 has
                                                         none, and then these two keys are dropped on purpose)
    linear decoder:  decoder.head                     -> decoder
    mask transformer: decoder.proj_dec / cls_emb / blocks.{i}.* / decoder_norm / proj_patch / proj_classes / mask_norm
                                                      -> decoder/proj_dec / cls_emb / blocks/encoderblock_{i}/* /
                                                         decoder_norm / proj_patch / proj_classes / mask_norm
                                                         (proj_patch and proj_classes are right-multiplied in both
                                                         codes: copied as they are)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vit_jax.porting import common, registry


def _distilled(model: Any) -> bool:
    return bool(getattr(model, 'distill_token', False) or getattr(model, 'distilled', False))


@registry.official('segmenter', source='rstrudel/segmenter', models=('Seg-',))
def convert(sd: registry.StateDict, model: Any) -> dict:
    """rstrudel/segmenter (ViT / DeiT-distilled encoder; linear or mask-transformer decoder) -> Segmenter."""
    has_dist = 'encoder.dist_token' in sd
    if has_dist and not _distilled(model):
        raise registry.ConversionError(
            'official:segmenter: the checkpoint has a DeiT distillation token (encoder.dist_token: a Seg-B†/16 '
            'model) but the model is built without one; build the distilled variant (Seg-B†/16, Seg-B†-Mask/16, '
            'or distilled=True) instead.')
    if _distilled(model) and not has_dist:
        raise registry.ConversionError(
            'official:segmenter: the model has a distillation token but the checkpoint has no encoder.dist_token; '
            'build the model without it.')
    decoder = model.decoder
    has_mask = 'decoder.cls_emb' in sd
    if has_mask != (decoder == 'mask_transformer'):
        raise registry.ConversionError(
            f'official:segmenter: the checkpoint has a {"mask-transformer" if has_mask else "linear"} decoder '
            f'(decoder.{"cls_emb" if has_mask else "head"}) but the model is built with decoder={decoder!r}; build '
            f'it with decoder={"mask_transformer" if has_mask else "linear"!r}.')
    params = common.timm_vit(sd, 'encoder.', model.num_layers, model.num_heads)
    if has_dist:
        params['dist_token'] = np.asarray(sd['encoder.dist_token'])
    if model.backbone_classes:
        params['head'] = common.linear(sd, 'encoder.head')
        if has_dist:
            params['head_dist'] = common.linear(sd, 'encoder.head_dist')
    else:
        # The encoder's ImageNet classifier takes no part in segmentation; a model without it drops it.
        sd.ignore(r'encoder\.head\.(weight|bias)', r'encoder\.head_dist\.(weight|bias)')

    if decoder == 'linear':
        params['decoder'] = common.linear(sd, 'decoder.head')
    else:
        n_layers = len({k.split('.')[2] for k in sd if k.startswith('decoder.blocks.')})
        if n_layers != model.decoder_layers:
            raise registry.ConversionError(
                f'official:segmenter: the checkpoint\'s mask transformer has {n_layers} blocks, the model '
                f'decoder_layers={model.decoder_layers}; build it with decoder_layers={n_layers}.')
        heads = model.decoder_heads or max(model.hidden_size // 64, 1)
        params['decoder'] = {
            'proj_dec': common.linear(sd, 'decoder.proj_dec'),
            'cls_emb': np.asarray(sd['decoder.cls_emb']),
            'blocks': common.timm_blocks(sd, 'decoder.', n_layers, heads),
            'decoder_norm': common.norm(sd, 'decoder.decoder_norm'),
            'proj_patch': np.asarray(sd['decoder.proj_patch']),
            'proj_classes': np.asarray(sd['decoder.proj_classes']),
            'mask_norm': common.norm(sd, 'decoder.mask_norm'),
        }
    return {'params': params}
