"""Official TimeSformer layout (facebookresearch/TimeSformer) -> TimeSformer: every key consumed, and logits equal to
HuggingFace's PyTorch TimesformerForVideoClassification loaded with the same weights renamed from the official layout,
for the three official attention types on a small unusual config."""


import numpy as np
import pytest
from _porting_common import RandomStateDict, rename, timm_block_renames

from vit_jax import convert
from vit_jax.models import timesformer
from vit_jax.porting import registry

D, HEADS, MLP, LAYERS, PATCH, IMAGE, FRAMES, CLASSES = 12, 2, 20, 2, 4, 12, 3, 5


def official_state_dict(attention_type: str, seed: int = 0, qkv_bias: bool = True) -> dict:
    """Random weights with the official key names and shapes (`VisionTransformer` of timesformer/models/vit.py)."""
    sd = RandomStateDict(seed)
    n = (IMAGE // PATCH) ** 2
    sd['cls_token'], sd['pos_embed'] = sd.r(1, 1, D), sd.r(1, n + 1, D)
    sd.conv('patch_embed.proj', D, 3, PATCH, scale=0.1)
    if attention_type != 'space_only':
        sd['time_embed'] = sd.r(1, FRAMES, D)
    for i in range(LAYERS):
        b = f'blocks.{i}'
        sd.ln(f'{b}.norm1', D)
        sd.attention(f'{b}.attn', D, qkv_bias)
        if attention_type == 'divided_space_time':
            sd.ln(f'{b}.temporal_norm1', D)
            sd.attention(f'{b}.temporal_attn', D, qkv_bias)
            sd.linear(f'{b}.temporal_fc', D, D)
        sd.ln(f'{b}.norm2', D)
        sd.mlp(f'{b}.mlp', D, MLP)
    sd.ln('norm', D)
    sd.linear('head', CLASSES, D)
    return sd


def _model(attention_type: str, **kw) -> timesformer.TimeSformer:
    kw = {'num_classes': CLASSES, 'image_size': IMAGE, 'num_frames': FRAMES, 'patch_size': PATCH, 'hidden_size': D,
          'mlp_dim': MLP, 'num_heads': HEADS, 'num_layers': LAYERS, 'drop_path_rate': 0.0, **kw}
    return timesformer.TimeSformer(attention_type=attention_type, **kw)


# Official -> HuggingFace transformers names (a port of the same code; used as the independent reference).
_LAYER = r'timesformer.encoder.layer.\1.'
_TO_HF = (
    (r'^cls_token$', 'timesformer.embeddings.cls_token'),
    (r'^pos_embed$', 'timesformer.embeddings.position_embeddings'),
    (r'^time_embed$', 'timesformer.embeddings.time_embeddings'),
    (r'^patch_embed\.proj\.', 'timesformer.embeddings.patch_embeddings.projection.'),
    *timm_block_renames(r'^blocks\.(\d+)\.', _LAYER, qkv='attention.attention.qkv', proj='attention.output.dense'),
    (r'^blocks\.(\d+)\.temporal_norm1\.', _LAYER + 'temporal_layernorm.'),
    (r'^blocks\.(\d+)\.temporal_attn\.qkv\.', _LAYER + 'temporal_attention.attention.qkv.'),
    (r'^blocks\.(\d+)\.temporal_attn\.proj\.', _LAYER + 'temporal_attention.output.dense.'),
    (r'^blocks\.(\d+)\.temporal_fc\.', _LAYER + 'temporal_dense.'),
    (r'^norm\.', 'timesformer.layernorm.'),
    (r'^head\.', 'classifier.'),
)


def _to_hf(sd: dict) -> dict:
    return rename(sd, _TO_HF)


def _hf_logits(attention_type: str, sd: dict, video: np.ndarray) -> np.ndarray:
    """Logits of HuggingFace's PyTorch TimeSformer (space_only: frame-averaged as the official code)."""
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    cfg = transformers.TimesformerConfig(
        image_size=IMAGE, patch_size=PATCH, num_frames=FRAMES, hidden_size=D, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=MLP, num_labels=CLASSES, attention_type=attention_type,
        hidden_act='gelu', layer_norm_eps=1e-6, qkv_bias=True)
    hf = transformers.TimesformerForVideoClassification(cfg).eval()
    missing, unexpected = hf.load_state_dict({k: torch.from_numpy(v) for k, v in _to_hf(sd).items()}, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    x = torch.from_numpy(video.transpose(0, 1, 4, 2, 3).copy())  # (B, T, C, H, W)
    with torch.no_grad():
        if attention_type != 'space_only':
            return hf(pixel_values=x).logits.numpy()
        # HF's space-only model keeps per-frame sequences (B*T, 1+N, D); the official code averages over frames
        # before the final norm.
        h = hf.timesformer(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        h = h.reshape(video.shape[0], FRAMES, *h.shape[1:]).mean(1)
        return hf.classifier(hf.timesformer.layernorm(h)[:, 0]).numpy()


@pytest.mark.parametrize('attention_type', ('divided_space_time', 'space_only',
                                                                 'joint_space_time'))
def test_official_timesformer_matches_hf(attention_type):
    sd = official_state_dict(attention_type)
    model = _model(attention_type)
    # As released: {'model_state': {'model.<key>': ...}} (the vit_base_patch16_224 wrapper).
    variables = convert.from_official('timesformer', {'model_state': {f'model.{k}': v for k, v in sd.items()}},
                                      model)
    video = np.random.RandomState(1).randn(2, FRAMES, IMAGE, IMAGE, 3).astype(np.float32)
    logits, _ = model.apply(variables, video)
    np.testing.assert_allclose(np.asarray(logits), _hf_logits(attention_type, sd, video), atol=2e-5, rtol=1e-5)


def test_official_timesformer_bare_state_dict_and_no_qkv_bias():
    sd = official_state_dict('joint_space_time', qkv_bias=False)
    variables = convert.from_official('timesformer', sd, _model('joint_space_time', qkv_bias=False))
    assert 'bias' not in variables['params']['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_1'][
        'query']
    with pytest.raises(registry.ConversionError, match='qkv_transform|bias'):
        convert.from_official('timesformer', sd, _model('joint_space_time'))


def test_official_timesformer_refusals():
    sd = official_state_dict('divided_space_time')
    with pytest.raises(registry.ConversionError, match='attention_type'):
        convert.from_official('timesformer', sd, _model('space_only'))
    with pytest.raises(registry.ConversionError, match='no official checkpoint'):
        convert.from_official('timesformer', sd, _model('axial'))
    with pytest.raises(registry.ConversionError, match='unconverted'):  # A deeper checkpoint than the model.
        convert.from_official('timesformer', sd, _model('divided_space_time', num_layers=1))
    with pytest.raises(registry.ConversionError, match='head'):
        convert.from_official('timesformer', sd, _model('divided_space_time', num_classes=0))
    assert 'timesformer' in convert.official_families()
