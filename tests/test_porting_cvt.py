"""Official CvT layout (microsoft/CvT, lib/models/cls_cvt.py) -> CvT: every key consumed (BatchNorm running
statistics into `batch_stats`), and logits equal to HuggingFace's PyTorch CvtForImageClassification loaded with the
same weights renamed from the official layout (its MLP activation set to the official QuickGELU), on a small unusual
three-stage config with per-stage q/k/v bias and MLP ratios."""


import jax
import numpy as np
import pytest
from _porting_common import RandomStateDict, rename

from vit_jax import convert, models
from vit_jax.models import cvt
from vit_jax.porting import registry

DIMS, HEADS, DEPTHS, RATIOS = (8, 12, 20), (1, 2, 4), (1, 2, 3), (4.0, 2.0, 3.0)
QKV_BIAS, CLS, PATCH, STRIDE, PAD = (True, False, True), (False, False, True), (7, 3, 3), (4, 2, 2), (2, 1, 1)
IMAGE, CLASSES = 44, 5


def official_state_dict(seed: int = 0, methods=('dw_bn',) * 3) -> dict:
    """Random weights with the official names and shapes (ConvolutionalVisionTransformer)."""
    sd = RandomStateDict(seed)
    c_in = 3
    for i, d in enumerate(DIMS):
        s = f'stage{i}'
        sd.conv(f'{s}.patch_embed.proj', d, c_in, PATCH[i])
        sd.ln(f'{s}.patch_embed.norm', d)
        if CLS[i]:
            sd[f'{s}.cls_token'] = sd.r(1, 1, d)
        for j in range(DEPTHS[i]):
            b = f'{s}.blocks.{j}'
            sd.ln(f'{b}.norm1', d)
            if methods[i] == 'dw_bn':
                for w in 'qkv':
                    sd.conv(f'{b}.attn.conv_proj_{w}.conv', d, 1, 3, bias=False, scale=0.3)
                    sd.bn(f'{b}.attn.conv_proj_{w}.bn', d)
            for w in 'qkv':
                sd.linear(f'{b}.attn.proj_{w}', d, d, bias=QKV_BIAS[i])
            sd.linear(f'{b}.attn.proj', d, d)
            sd.ln(f'{b}.norm2', d)
            sd.mlp(f'{b}.mlp', d, int(d * RATIOS[i]))
        c_in = d
    sd.ln('norm', DIMS[-1])
    sd.linear('head', CLASSES, DIMS[-1])
    return sd


def _model(**kw) -> cvt.CvT:
    kw = {'num_classes': CLASSES, 'image_size': IMAGE, 'embed_dims': DIMS, 'num_heads': HEADS, 'depths': DEPTHS,
          'mlp_ratios': RATIOS, 'patch_sizes': PATCH, 'patch_strides': STRIDE, 'patch_paddings': PAD,
          'cls_token': CLS, 'qkv_bias': QKV_BIAS, 'drop_path_rate': 0.0, **kw}
    return cvt.CvT(**kw)


_QKV = {'q': 'query', 'k': 'key', 'v': 'value'}
_BLOCK, _HF_LAYER = r'^stage(\d+)\.blocks\.(\d+)\.', r'cvt.encoder.stages.\1.layers.\2.'
_TO_HF = (
    (r'^stage(\d+)\.patch_embed\.proj\.', r'cvt.encoder.stages.\1.embedding.convolution_embeddings.projection.'),
    (r'^stage(\d+)\.patch_embed\.norm\.', r'cvt.encoder.stages.\1.embedding.convolution_embeddings.normalization.'),
    (r'^stage(\d+)\.cls_token$', r'cvt.encoder.stages.\1.cls_token'),
    (_BLOCK + r'attn\.conv_proj_([qkv])\.(conv|bn)\.',
     lambda m: f'cvt.encoder.stages.{m[1]}.layers.{m[2]}.attention.attention.convolution_projection_{_QKV[m[3]]}.'
               f'convolution_projection.{"convolution" if m[4] == "conv" else "normalization"}.'),
    (_BLOCK + r'attn\.proj_([qkv])\.',
     lambda m: f'cvt.encoder.stages.{m[1]}.layers.{m[2]}.attention.attention.projection_{_QKV[m[3]]}.'),
    (_BLOCK + r'attn\.proj\.', _HF_LAYER + 'attention.output.dense.'),
    (_BLOCK + r'norm1\.', _HF_LAYER + 'layernorm_before.'),
    (_BLOCK + r'norm2\.', _HF_LAYER + 'layernorm_after.'),
    (_BLOCK + r'mlp\.fc1\.', _HF_LAYER + 'intermediate.dense.'),
    (_BLOCK + r'mlp\.fc2\.', _HF_LAYER + 'output.dense.'),
    (r'^norm\.', 'layernorm.'),
    (r'^head\.', 'classifier.'),
)


def _hf_logits(sd: dict, images: np.ndarray, methods=('dw_bn',) * 3) -> np.ndarray:
    """Logits of HuggingFace's CvtForImageClassification holding the official weights renamed, with the official
    QuickGELU in its MLPs (HF hard-codes nn.GELU) and, in 'avg' stages, the official projections put in place (HF
    builds no module for 'avg': identity q, AvgPool2d(ceil_mode=True) k/v)."""
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    cfg = transformers.CvtConfig(
        num_labels=CLASSES, embed_dim=list(DIMS), num_heads=list(HEADS), depth=list(DEPTHS), mlp_ratio=list(RATIOS),
        qkv_bias=list(QKV_BIAS), cls_token=list(CLS), patch_sizes=list(PATCH), patch_stride=list(STRIDE),
        patch_padding=list(PAD), drop_path_rate=[0.0] * 3, qkv_projection_method=list(methods))
    hf = transformers.CvtForImageClassification(cfg).eval()
    hf_sd = rename(sd, _TO_HF)
    missing, unexpected = hf.load_state_dict({k: torch.from_numpy(v) for k, v in hf_sd.items()}, strict=False)
    assert not missing and not unexpected, (missing, unexpected)

    class QuickGELU(torch.nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(1.702 * x)

    for i, stage in enumerate(hf.cvt.encoder.stages):
        for layer in stage.layers:
            layer.intermediate.activation = QuickGELU()
            if methods[i] == 'avg':
                a = layer.attention.attention
                a.convolution_projection_query.convolution_projection = torch.nn.Identity()
                for p in (a.convolution_projection_key, a.convolution_projection_value):
                    p.convolution_projection = torch.nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True)
    with torch.no_grad():
        return hf(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).logits.numpy()


def test_official_cvt_matches_hf_with_quick_gelu():
    sd = official_state_dict()
    model = _model()
    variables = convert.from_official('cvt', {'state_dict': {f'module.{k}': v for k, v in sd.items()}}, model)
    assert set(variables) == {'params', 'batch_stats'}
    images = np.random.RandomState(1).randn(2, IMAGE, IMAGE, 3).astype(np.float32)
    logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    np.testing.assert_allclose(np.asarray(logits), _hf_logits(sd, images), atol=2e-5, rtol=1e-5)


def test_official_cvt_linear_projection_and_refusals():
    # QKV_PROJ_METHOD 'linear' in the first stage: no conv_proj weights there.
    sd = official_state_dict(methods=('linear', 'dw_bn', 'dw_bn'))
    variables = convert.from_official('cvt', sd, _model(qkv_method=('linear', 'dw_bn', 'dw_bn')))
    assert 'qkv_transform' not in variables['params']['stage_0_block_0']['MultiHeadDotProductAttention_1']
    with pytest.raises(registry.ConversionError, match='qkv_method'):
        convert.from_official('cvt', sd, _model())
    full = official_state_dict()
    with pytest.raises(registry.ConversionError, match='cls_token'):
        convert.from_official('cvt', full, _model(cls_token=(False, False, False)))
    with pytest.raises(registry.ConversionError, match='head'):
        convert.from_official('cvt', full, _model(num_classes=0))
    with pytest.raises(registry.ConversionError, match='unconverted'):
        convert.from_official('cvt', full, _model(depths=(1, 1, 3)))
    with pytest.raises(registry.ConversionError, match='shape mismatches'):
        convert.from_official('cvt', full, _model(mlp_ratios=4.0))


def _supports_avg() -> bool:
    try:
        models.init_shapes(_model(qkv_method=('avg', 'dw_bn', 'avg')))
    except ValueError:
        return False
    return True


def test_official_cvt_avg_projection_matches_reference():
    """QKV_PROJ_METHOD 'avg' (identity q, AvgPool2d(ceil_mode=True) k/v, no weights) against HF's CvT with the
    official projections put in place (HF builds no module for 'avg')."""
    if not _supports_avg():
        pytest.skip("CvT has no qkv_method='avg' yet")
    methods = ('avg', 'dw_bn', 'avg')
    sd = official_state_dict(methods=methods)
    model = _model(qkv_method=methods)
    variables = convert.from_official('cvt', sd, model)
    images = np.random.RandomState(2).randn(2, IMAGE, IMAGE, 3).astype(np.float32)
    logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    np.testing.assert_allclose(np.asarray(logits), _hf_logits(sd, images, methods), atol=2e-5, rtol=1e-5)
