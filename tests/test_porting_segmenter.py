"""Official Segmenter layout (rstrudel/segmenter) -> Segmenter: every key consumed, and per-pixel logits equal to an
independent PyTorch reference: HuggingFace's ViTModel as the encoder (weights renamed from the official layout,
LayerNorm eps 1e-5 as the official nn.LayerNorm) followed by the decoders and the bilinear upsampling written out with
torch operations from the official decoder.py / segmenter.py, for the linear and the mask-transformer decoders on a
small unusual config (non-square 12x20 input, 3 heads of 8, a 2-head decoder)."""

import jax
import numpy as np
import pytest
from _porting_common import RandomStateDict, rename, timm_block_renames

from vit_jax import convert
from vit_jax.models import segmenter
from vit_jax.porting import registry

D, MLP, HEADS, LAYERS, PATCH, IMAGE, CLASSES, BACKBONE = 24, 40, 3, 2, 4, (12, 20), 5, 7
DEC_LAYERS, DEC_HEADS = 2, 2


def official_state_dict(decoder: str, seed: int = 0, distilled: bool = False) -> dict:
    """Random weights with the official names and shapes (Segmenter of VisionTransformer + DecoderLinear or
    MaskTransformer)."""
    sd = RandomStateDict(seed)
    n = (IMAGE[0] // PATCH) * (IMAGE[1] // PATCH)
    sd['encoder.cls_token'], sd['encoder.pos_embed'] = sd.r(1, 1, D), sd.r(1, n + 1 + distilled, D)
    if distilled:  # DeiT-distilled encoder (Seg-B†): distillation token and its own classifier.
        sd['encoder.dist_token'] = sd.r(1, 1, D)
        sd.linear('encoder.head_dist', BACKBONE, D)
    sd['encoder.patch_embed.proj.weight'], sd['encoder.patch_embed.proj.bias'] = sd.r(D, 3, PATCH, PATCH), sd.r(D)
    for i in range(LAYERS):
        sd.vit_block(f'encoder.blocks.{i}', D, MLP)
    sd.ln('encoder.norm', D)
    sd.linear('encoder.head', BACKBONE, D)
    if decoder == 'linear':
        sd.linear('decoder.head', CLASSES, D)
    else:
        sd['decoder.cls_emb'] = sd.r(1, CLASSES, D)
        sd.linear('decoder.proj_dec', D, D)
        sd['decoder.proj_patch'], sd['decoder.proj_classes'] = sd.r(D, D), sd.r(D, D)
        for i in range(DEC_LAYERS):
            sd.vit_block(f'decoder.blocks.{i}', D, 4 * D)
        sd.ln('decoder.decoder_norm', D)
        sd.ln('decoder.mask_norm', CLASSES)
    return sd


def _model(decoder: str, **kw) -> segmenter.Segmenter:
    kw = {'num_classes': CLASSES, 'image_size': IMAGE, 'patch_size': PATCH, 'hidden_size': D, 'mlp_dim': MLP,
          'num_heads': HEADS, 'num_layers': LAYERS, 'decoder_layers': DEC_LAYERS, 'decoder_heads': DEC_HEADS,
          'backbone_classes': BACKBONE, 'drop_path_rate': 0.0, 'decoder_dropout': 0.0, **kw}
    return segmenter.Segmenter(decoder=decoder, **kw)


_ENC_TO_HF = (
    (r'^encoder\.cls_token$', 'embeddings.cls_token'),
    (r'^encoder\.dist_token$', 'embeddings.distillation_token'),
    (r'^encoder\.pos_embed$', 'embeddings.position_embeddings'),
    (r'^encoder\.patch_embed\.proj\.', 'embeddings.patch_embeddings.projection.'),
    *timm_block_renames(r'^encoder\.blocks\.(\d+)\.', r'layers.\1.', qkv=[f'attention.{n}_proj' for n in 'qkv'],
                        proj='attention.o_proj', mlp=('mlp.fc1', 'mlp.fc2')),
    (r'^encoder\.norm\.', 'layernorm.'),
)


def _hf_encoder_state_dict(sd: dict) -> dict:
    return rename({k: v for k, v in sd.items() if k.startswith('encoder.') and not k.startswith('encoder.head')},
                  _ENC_TO_HF)


def _reference_logits(sd: dict, decoder: str, images: np.ndarray, distilled: bool = False) -> np.ndarray:
    """The official forward restated with torch ops (encoder: HuggingFace ViTModel, or DeiTModel for a distilled
    encoder, with the same weights)."""
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    F = torch.nn.functional
    config_cls, model_cls = ((transformers.DeiTConfig, transformers.DeiTModel) if distilled
                             else (transformers.ViTConfig, transformers.ViTModel))
    cfg = config_cls(image_size=list(IMAGE), patch_size=PATCH, hidden_size=D, num_hidden_layers=LAYERS,
                     num_attention_heads=HEADS, intermediate_size=MLP, hidden_act='gelu', layer_norm_eps=1e-5,
                     qkv_bias=True)
    enc = model_cls(cfg, add_pooling_layer=False).eval()
    missing, unexpected = enc.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in _hf_encoder_state_dict(sd).items()}, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    t = {k: torch.from_numpy(v) for k, v in sd.items()}
    x_img = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    gh, gw = IMAGE[0] // PATCH, IMAGE[1] // PATCH
    with torch.no_grad():
        x = enc(pixel_values=x_img).last_hidden_state[:, 1 + distilled:]  # Class (and distillation) token removed.
        if decoder == 'linear':
            masks = F.linear(x, t['decoder.head.weight'], t['decoder.head.bias'])
        else:
            x = F.linear(x, t['decoder.proj_dec.weight'], t['decoder.proj_dec.bias'])
            x = torch.cat([x, t['decoder.cls_emb'].expand(x.shape[0], -1, -1)], 1)
            for i in range(DEC_LAYERS):
                p = f'decoder.blocks.{i}'
                y = F.layer_norm(x, (D,), t[f'{p}.norm1.weight'], t[f'{p}.norm1.bias'])
                b, n, _ = y.shape
                qkv = F.linear(y, t[f'{p}.attn.qkv.weight'], t[f'{p}.attn.qkv.bias'])
                q, k, v = qkv.reshape(b, n, 3, DEC_HEADS, D // DEC_HEADS).permute(2, 0, 3, 1, 4)
                a = ((q @ k.transpose(-2, -1)) * (D // DEC_HEADS) ** -0.5).softmax(-1)
                y = (a @ v).transpose(1, 2).reshape(b, n, D)
                x = x + F.linear(y, t[f'{p}.attn.proj.weight'], t[f'{p}.attn.proj.bias'])
                y = F.layer_norm(x, (D,), t[f'{p}.norm2.weight'], t[f'{p}.norm2.bias'])
                y = F.linear(F.gelu(F.linear(y, t[f'{p}.mlp.fc1.weight'], t[f'{p}.mlp.fc1.bias'])),
                             t[f'{p}.mlp.fc2.weight'], t[f'{p}.mlp.fc2.bias'])
                x = x + y
            x = F.layer_norm(x, (D,), t['decoder.decoder_norm.weight'], t['decoder.decoder_norm.bias'])
            patches, cls = x[:, :-CLASSES] @ t['decoder.proj_patch'], x[:, -CLASSES:] @ t['decoder.proj_classes']
            patches = patches / patches.norm(dim=-1, keepdim=True)
            cls = cls / cls.norm(dim=-1, keepdim=True)
            masks = F.layer_norm(patches @ cls.transpose(1, 2), (CLASSES,), t['decoder.mask_norm.weight'],
                                 t['decoder.mask_norm.bias'])
        masks = masks.reshape(masks.shape[0], gh, gw, -1).permute(0, 3, 1, 2)
        out = F.interpolate(masks, size=IMAGE, mode='bilinear')
    return out.permute(0, 2, 3, 1).numpy()


_HAS_DISTILLED = 'distilled' in segmenter.Segmenter.__dataclass_fields__


@pytest.mark.parametrize('decoder,distilled', [
    ('linear', False), ('mask_transformer', False),
    pytest.param('mask_transformer', True, marks=pytest.mark.skipif(
        not _HAS_DISTILLED, reason='Segmenter has no DeiT-distilled encoder (distilled=True) yet'))])
def test_official_segmenter_matches_reference(decoder, distilled):
    sd = official_state_dict(decoder, distilled=distilled)
    model = _model(decoder, **({'distilled': True} if distilled else {}))
    variables = convert.from_official('segmenter', {'model': sd}, model)  # As released: {'model': state_dict}.
    if distilled:
        assert variables['params']['dist_token'].shape == (1, 1, D) and 'head_dist' in variables['params']
    images = np.random.RandomState(1).randn(2, *IMAGE, 3).astype(np.float32)
    logits, _ = jax.jit(lambda v, x: model.apply(v, x))(variables, images)
    ref = _reference_logits(sd, decoder, images, distilled)
    np.testing.assert_allclose(np.asarray(logits), ref, atol=3e-5, rtol=1e-5)


def test_official_segmenter_refusals_and_dropped_backbone_head():
    sd = official_state_dict('mask_transformer')
    variables = convert.from_official('segmenter', sd, _model('mask_transformer', backbone_classes=0))
    assert 'head' not in variables['params']  # The encoder's unused ImageNet classifier, dropped on purpose.
    with pytest.raises(registry.ConversionError, match='mask-transformer decoder'):
        convert.from_official('segmenter', sd, _model('linear'))
    with pytest.raises(registry.ConversionError, match='decoder_layers'):
        convert.from_official('segmenter', sd, _model('mask_transformer', decoder_layers=1))
    with_dist = {**sd, 'encoder.dist_token': np.zeros((1, 1, D), np.float32)}
    with pytest.raises(registry.ConversionError, match='distillation token'):
        convert.from_official('segmenter', with_dist, _model('mask_transformer'))
