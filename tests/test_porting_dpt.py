"""Official DPT layout (isl-org/DPT) -> DPT: every key consumed (BatchNorm statistics into `batch_stats`), and outputs
equal to HuggingFace's PyTorch DPTForDepthEstimation / DPTForSemanticSegmentation loaded with the same weights renamed
from the official layout: a ViT depth model, a ViT segmentation model (BatchNorm fusion units, auxiliary head) and an
R50-hybrid depth model, all small (16-px patches as the official code hard-codes, 64x64 inputs, 4 hooks)."""

import jax
import numpy as np
import pytest
from _porting_common import RandomStateDict, rename, timm_block_renames

from vit_jax import convert
from vit_jax.models import dpt
from vit_jax.porting import registry

D, MLP, HEADS, LAYERS, IMAGE, FUSION, CLASSES, BACKBONE = 16, 24, 2, 4, 64, 8, 3, 7
VIT_FEATURES = (8, 12, 16, 16)
HYBRID_LAYERS, HYBRID_WIDTH = (1, 2, 1), 0.5  # Stem 32 channels, stages 128 / 256 / 512.


def official_state_dict(head: str, hybrid: bool = False, seed: int = 0) -> dict:
    """Random weights with the official names and shapes (DPTDepthModel / DPTSegmentationModel)."""
    sd = RandomStateDict(seed)
    m = 'pretrained.model'
    grid = IMAGE // 16
    sd[f'{m}.cls_token'], sd[f'{m}.pos_embed'] = sd.r(1, 1, D), sd.r(1, 1 + grid * grid, D)
    if hybrid:
        b = f'{m}.patch_embed.backbone'
        stem = int(64 * HYBRID_WIDTH)
        sd.conv(f'{b}.stem.conv', stem, 3, 7, bias=False)
        sd.ln(f'{b}.stem.norm', stem)
        c_in = stem
        for s, depth in enumerate(HYBRID_LAYERS):
            out = int(256 * HYBRID_WIDTH) * 2**s
            mid = out // 4
            for j in range(depth):
                p = f'{b}.stages.{s}.blocks.{j}'
                if j == 0:
                    sd.conv(f'{p}.downsample.conv', out, c_in, 1, bias=False)
                    sd.ln(f'{p}.downsample.norm', out)
                for c, (o, i, k) in enumerate(((mid, c_in if j == 0 else out, 1), (mid, mid, 3), (out, mid, 1)), 1):
                    sd.conv(f'{p}.conv{c}', o, i, k, bias=False)
                    sd.ln(f'{p}.norm{c}', o)
            c_in = out
        sd.conv(f'{m}.patch_embed.proj', D, c_in, 1)
        features = (int(256 * HYBRID_WIDTH), int(512 * HYBRID_WIDTH), D, D)
    else:
        sd.conv(f'{m}.patch_embed.proj', D, 3, 16, scale=0.05)
        features = VIT_FEATURES
    for i in range(LAYERS):
        sd.vit_block(f'{m}.blocks.{i}', D, MLP)
    sd.ln(f'{m}.norm', D)
    sd.linear(f'{m}.head', BACKBONE, D)
    for n in range(1, 5):
        if hybrid and n <= 2:
            continue  # act_postprocess1/2 are identities on the ResNet stages.
        ap, f = f'pretrained.act_postprocess{n}', features[n - 1]
        sd.linear(f'{ap}.0.project.0', D, 2 * D)
        sd.conv(f'{ap}.3', f, D, 1)
        if n in (1, 2):  # ConvTranspose2d (in, out, k, k), kernel = stride: 4x, 2x upsampling.
            sd[f'{ap}.4.weight'], sd[f'{ap}.4.bias'] = sd.r(f, f, 4 // n, 4 // n), sd.r(f)
        elif n == 4:
            sd.conv(f'{ap}.4', f, f, 3)
    use_bn = head == 'segmentation'
    for n in range(1, 5):
        sd.conv(f'scratch.layer{n}_rn', FUSION, features[n - 1], 3, bias=False)
        rp = f'scratch.refinenet{n}'
        sd.conv(f'{rp}.out_conv', FUSION, FUSION, 1)
        for u in (1, 2):
            for c in (1, 2):
                sd.conv(f'{rp}.resConfUnit{u}.conv{c}', FUSION, FUSION, 3, bias=not use_bn)
                if use_bn:
                    sd.bn(f'{rp}.resConfUnit{u}.bn{c}', FUSION)
    if head == 'depth':
        sd.conv('scratch.output_conv.0', FUSION // 2, FUSION, 3)
        sd.conv('scratch.output_conv.2', 32, FUSION // 2, 3)
        sd.conv('scratch.output_conv.4', 1, 32, 1)
    else:
        for p in ('scratch.output_conv', 'auxlayer'):
            sd.conv(f'{p}.0', FUSION, FUSION, 3, bias=False)
            sd.bn(f'{p}.1', FUSION)
            sd.conv(f'{p}.4', CLASSES, FUSION, 1)
    return sd


def _model(head: str, hybrid: bool = False, **kw) -> dpt.DPT:
    base = {'num_classes': CLASSES, 'image_size': IMAGE, 'head': head, 'hidden_size': D, 'mlp_dim': MLP,
            'num_heads': HEADS, 'num_layers': LAYERS, 'fusion_features': FUSION, 'backbone_classes': BACKBONE,
            'aux_head': head == 'segmentation'}
    if hybrid:
        base.update(stem='resnet', patch_size=1, resnet_layers=HYBRID_LAYERS, resnet_width=HYBRID_WIDTH,
                    hooks=('resnet/block1', 'resnet/block2', 1, 3),
                    features=(int(256 * HYBRID_WIDTH), int(512 * HYBRID_WIDTH), D, D))
    else:
        base.update(patch_size=16, hooks=(0, 1, 2, 3), features=VIT_FEATURES)
    return dpt.DPT(**{**base, **kw})


_TO_HF = (
    (r'^pretrained\.model\.cls_token$', 'dpt.embeddings.cls_token'),
    (r'^pretrained\.model\.pos_embed$', 'dpt.embeddings.position_embeddings'),
    (r'^pretrained\.model\.patch_embed\.backbone\.stem\.conv\.', 'dpt.embeddings.backbone.bit.embedder.convolution.'),
    (r'^pretrained\.model\.patch_embed\.backbone\.stem\.norm\.', 'dpt.embeddings.backbone.bit.embedder.norm.'),
    (r'^pretrained\.model\.patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.',
     r'dpt.embeddings.backbone.bit.encoder.stages.\1.layers.\2.'),
    *timm_block_renames(r'^pretrained\.model\.blocks\.(\d+)\.', r'dpt.encoder.layer.\1.',
                        qkv=[f'attention.attention.{n}' for n in ('query', 'key', 'value')],
                        proj='attention.output.dense'),
    (r'^pretrained\.model\.norm\.', 'dpt.layernorm.'),
    (r'^pretrained\.act_postprocess(\d)\.0\.project\.0\.', lambda m: f'neck.reassemble_stage.readout_projects.'
                                                                     f'{int(m[1]) - 1}.0.'),
    (r'^pretrained\.act_postprocess(\d)\.3\.', lambda m: f'neck.reassemble_stage.layers.{int(m[1]) - 1}.projection.'),
    (r'^pretrained\.act_postprocess(\d)\.4\.', lambda m: f'neck.reassemble_stage.layers.{int(m[1]) - 1}.resize.'),
    (r'^scratch\.layer(\d)_rn\.', lambda m: f'neck.convs.{int(m[1]) - 1}.'),
    (r'^scratch\.refinenet(\d)\.out_conv\.', lambda m: f'neck.fusion_stage.layers.{4 - int(m[1])}.projection.'),
    (r'^scratch\.refinenet(\d)\.resConfUnit(\d)\.conv(\d)\.',
     lambda m: f'neck.fusion_stage.layers.{4 - int(m[1])}.residual_layer{m[2]}.convolution{m[3]}.'),
    (r'^scratch\.refinenet(\d)\.resConfUnit(\d)\.bn(\d)\.',
     lambda m: f'neck.fusion_stage.layers.{4 - int(m[1])}.residual_layer{m[2]}.batch_norm{m[3]}.'),
    (r'^scratch\.output_conv\.', 'head.head.'),
    (r'^auxlayer\.', 'auxiliary_head.head.'),
)


def _to_hf(sd: dict, hybrid: bool) -> dict:
    patch_embed = 'dpt.embeddings.projection.' if hybrid else 'dpt.embeddings.patch_embeddings.projection.'
    return rename(sd, ((r'^pretrained\.model\.head\.', None),  # timm's classifier: HuggingFace's DPT has none.
                       (r'^pretrained\.model\.patch_embed\.proj\.', patch_embed)) + _TO_HF)


def _hf_model(head: str, hybrid: bool):
    transformers = pytest.importorskip('transformers')
    kw = dict(image_size=IMAGE, patch_size=16, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
              intermediate_size=MLP, hidden_act='gelu', layer_norm_eps=1e-6, fusion_hidden_size=FUSION,
              readout_type='project', num_labels=CLASSES, use_batch_norm_in_fusion_residual=head == 'segmentation',
              use_auxiliary_head=head == 'segmentation')
    if hybrid:
        bb = transformers.BitConfig(
            global_padding='same', layer_type='bottleneck', depths=list(HYBRID_LAYERS),
            embedding_size=int(64 * HYBRID_WIDTH), hidden_sizes=[int(256 * HYBRID_WIDTH) * 2**s for s in range(3)],
            out_features=['stage1', 'stage2', 'stage3'], embedding_dynamic_padding=True, num_groups=32)
        kw.update(is_hybrid=True, backbone_config=bb, backbone_out_indices=[0, 1, 1, 3],
                  neck_hidden_sizes=[int(256 * HYBRID_WIDTH), int(512 * HYBRID_WIDTH), D, D],
                  backbone_featmap_shape=[1, int(1024 * HYBRID_WIDTH), IMAGE // 16, IMAGE // 16])
    else:
        kw.update(backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=list(VIT_FEATURES))
    cfg = transformers.DPTConfig(**kw)
    cls = transformers.DPTForSemanticSegmentation if head == 'segmentation' else transformers.DPTForDepthEstimation
    return cls(cfg).eval()


@pytest.mark.parametrize('head,hybrid', [('depth', False), ('segmentation', False), ('depth', True)])
def test_official_dpt_matches_hf(head, hybrid):
    torch = pytest.importorskip('torch')
    sd = official_state_dict(head, hybrid)
    model = _model(head, hybrid)
    # DPTSegmentationModel checkpoints are saved as {'model': ..., 'optimizer': ...}.
    ckpt = {'model': sd, 'optimizer': {'lr': np.zeros(())}} if head == 'segmentation' else sd
    variables = convert.from_official('dpt', ckpt, model)
    images = np.random.RandomState(1).randn(2, IMAGE, IMAGE, 3).astype(np.float32)
    y, _ = jax.jit(lambda v, x: model.apply(v, x))(variables, images)

    hf = _hf_model(head, hybrid)
    missing, unexpected = hf.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in _to_hf(sd, hybrid).items()}, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    with torch.no_grad():
        out = hf(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    ref = out.predicted_depth.numpy() if head == 'depth' else out.logits.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(y), ref, atol=5e-5, rtol=1e-4)


def test_official_dpt_refusals():
    seg = official_state_dict('segmentation')
    with pytest.raises(registry.ConversionError, match='aux_head=True'):
        convert.from_official('dpt', seg, _model('segmentation', aux_head=False))
    with pytest.raises(registry.ConversionError, match='segmentation'):
        convert.from_official('dpt', seg, _model('depth', fusion_bn=True))
    depth = official_state_dict('depth')
    with pytest.raises(registry.ConversionError, match='stem'):
        convert.from_official('dpt', depth, _model('depth', hybrid=True))
    with pytest.raises(registry.ConversionError, match='unconverted'):  # A 'project' readout into 'ignore'.
        convert.from_official('dpt', depth, _model('depth', readout='ignore'))
    variables = convert.from_official('dpt', depth, _model('depth', backbone_classes=0))
    assert 'head' not in variables['params']  # timm's unused classifier, dropped on purpose.
