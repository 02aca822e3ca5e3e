"""DPT: parameter counts against the paper, HuggingFace parity (depth, segmentation, hybrid), shapes and options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from _helpers import init_model

from vit_jax import convert, models
from vit_jax.models import layers

# Exact counts of this implementation; the spec's analytic counts of the official nn.Modules in brackets
# ([computed] in specs_b.md appendix A). The paper: Hybrid 123M, Large 343-344M.
DPT_COUNTS = {
    # name: (default = official module incl. timm's unused classifier and refinenet4's unused RCU, without them)
    'DPT-Base': (111_647_081, 109_697_921),  # [111.65M / 109.70M]
    'DPT-Large': (344_055_465, 341_850_305),  # [344.06M / 341.85M]; paper 343-344M
    'DPT-Hybrid': (123_146_985, 121_197_825),  # [123.15M / 121.20M]; paper 123M
}
DPT_SEG150_COUNTS = {  # Segmentation head, 150 classes, with the (unused) auxiliary head [112.58 / 344.99 / 124.08M].
    'DPT-Base': 112_576_980, 'DPT-Large': 344_985_364, 'DPT-Hybrid': 124_076_884,
}


@pytest.mark.parametrize('name', sorted(DPT_COUNTS))
def test_param_counts(name):
    full, used = DPT_COUNTS[name]
    assert models.count_params(name) == full
    if name != 'DPT-Large':  # Each count traces the whole model; the Large variants are pinned in the slow test.
        assert models.count_params(name, backbone_classes=0, keep_unused=False) == used
        assert models.count_params(name, head='segmentation', num_classes=150, aux_head=True) == (
            DPT_SEG150_COUNTS[name])


@pytest.mark.slow
def test_large_variant_counts():
    assert models.count_params('DPT-Large', backbone_classes=0, keep_unused=False) == DPT_COUNTS['DPT-Large'][1]
    assert models.count_params('DPT-Large', head='segmentation', num_classes=150, aux_head=True) == (
        DPT_SEG150_COUNTS['DPT-Large'])


def test_paper_headline_counts():
    # The paper: DPT-Hybrid 123M, DPT-Large 343-344M; the spec's analytic count of the official modules: 123.1M,
    # 344.1M.
    assert round(DPT_COUNTS['DPT-Hybrid'][0] / 1e6, 1) == 123.1
    assert round(DPT_COUNTS['DPT-Large'][0] / 1e6, 1) == 344.1


def test_align_corners_resize_matches_torch():
    x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
    for ac in (True, False):
        for size in ((10, 14), (3, 4), (9, 20)):
            ref = torch.nn.functional.interpolate(torch.tensor(x).permute(0, 3, 1, 2), size=size, mode='bilinear',
                                                  align_corners=ac).permute(0, 2, 3, 1).numpy()
            np.testing.assert_allclose(np.asarray(layers.resize_bilinear(jnp.asarray(x), size, ac)), ref, atol=2e-6)
            np.testing.assert_allclose(layers.resize_bilinear(x, size, ac), ref, atol=2e-6)  # numpy path


@pytest.fixture(scope='module')
def tiny():
    return init_model('DPT-testing', jax.random.normal(jax.random.PRNGKey(0), (2, 32, 64, 3)), seed=1)


def test_shapes_taps_and_input_resolution(tiny):
    model, v, x = tiny
    depth, out = jax.jit(model.apply)(v, x)
    assert depth.shape == (2, 32, 64)
    assert float(depth.min()) >= 0.0  # Non-negative inverse depth.
    # Taps reassembled to 1/4 ... 1/32 of the input (factors 1, 1/2, 1/4, 1/8 of the 4-px patch grid); fusion
    # outputs at 1/2, 1/4, 1/8 and 1/16.
    assert out['neck/path_1'].shape[1:3] == (16, 32) and out['neck/path_3'].shape[1:3] == (4, 8)
    # Taps are raw block outputs (before the final LayerNorm), one readout projection per tap.
    p = v['params']['neck']
    assert all(f'reassemble{i}' in p and 'readout_project' in p[f'reassemble{i}'] for i in (1, 2, 3, 4))
    assert 'resConfUnit1' in p['refinenet4']  # Owned, unused (as the official and HF modules).
    # Another input size: the position embedding is resized on the fly; odd grids still give full resolution.
    d2, _ = jax.jit(model.apply)(v, jnp.zeros((1, 36, 44, 3)))
    assert d2.shape == (1, 36, 44)


@pytest.mark.slow  # ~1-3 min.
def test_metric_depth_and_segmentation_head():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 32, 32, 3))
    m = models.get_model('DPT-testing', depth_scale=0.5, depth_shift=0.25)
    v = jax.jit(m.init)(jax.random.PRNGKey(1), x)
    depth, out = jax.jit(m.apply)(v, x)
    np.testing.assert_allclose(depth, 1.0 / np.maximum(0.5 * np.asarray(out['inverse_depth']) + 0.25, 1e-8),
                               rtol=1e-6)
    seg = models.get_model('DPT-testing', head='segmentation', num_classes=5, aux_head=True)
    v = jax.jit(seg.init)(jax.random.PRNGKey(1), x)
    assert 'batch_stats' in v and 'bn1' in v['params']['neck']['refinenet1']['resConfUnit2']  # BN in the fusion.
    logits, out = jax.jit(seg.apply)(v, x)
    assert logits.shape == (1, 32, 32, 5) and out['aux_logits'].shape == (1, 32, 32, 5)
    (logits_t, _), upd = jax.jit(lambda v, x: seg.apply(v, x, train=True, rngs={'dropout': jax.random.PRNGKey(2)},
                                                      mutable=['batch_stats']))(v, x)
    assert logits_t.shape == logits.shape and 'batch_stats' in upd


@pytest.mark.slow  # Builds several DPT variants: ~1-3 min.
def test_readout_options_and_errors():
    x = jnp.zeros((1, 32, 32, 3))
    for ro in ('ignore', 'add'):
        m = models.get_model('DPT-testing', readout=ro)
        v = jax.jit(m.init)(jax.random.PRNGKey(0), x)
        assert 'readout_project' not in v['params']['neck']['reassemble1']
    with pytest.raises(ValueError, match='multiple'):
        m.apply(v, jnp.zeros((1, 30, 32, 3)))
    with pytest.raises(ValueError, match='hook'):
        models.get_model('DPT-testing', hooks=(0, 1, 2, 9)).init(jax.random.PRNGKey(0), x)


# ----------------------------------------------------------------------------------------------------------------
# HuggingFace parity (random weights, tiny configs, no hub).
# ----------------------------------------------------------------------------------------------------------------
def _randomize(m):
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.ndim >= 2:
                fan_in = p.shape[0] if n.endswith('resize.weight') else p[0].numel()
                p.normal_(0, fan_in**-0.5)
            elif any(s in n for s in ('norm', 'batch_norm', 'head.1.', 'layernorm')) and n.endswith('weight'):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.1)
        for n, b in m.named_buffers():
            if n.endswith('running_mean'):
                b.normal_(0, 0.1)
            elif n.endswith('running_var'):
                b.uniform_(0.5, 1.5)
    return m.eval()


def _hf_config(**kw):
    from transformers import DPTConfig

    base = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64,
                patch_size=16, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32],
                fusion_hidden_size=16, layer_norm_eps=1e-6)
    base.update(kw)
    return DPTConfig(**base)


def _parity(hf, x):
    model, variables = convert.from_transformers(hf)
    with torch.no_grad():
        o = hf(pixel_values=torch.tensor(x).permute(0, 3, 1, 2))
    if hasattr(o, 'predicted_depth'):
        ref = o.predicted_depth.numpy()
    else:
        ref = o.logits.permute(0, 2, 3, 1).numpy()
    y, out = jax.jit(model.apply)(variables, jnp.asarray(x))
    diff = float(np.abs(np.asarray(y) - ref).max())
    scale = float(np.abs(ref).max())
    return diff, scale, model, variables, out


X64 = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)


def test_hf_depth_parity_project():
    from transformers import DPTForDepthEstimation

    diff, scale, model, _, _ = _parity(_randomize(DPTForDepthEstimation(_hf_config())), X64)
    assert scale > 0.1 and diff <= 1e-4 * scale, (diff, scale)  # Measured: ~2e-6 at scale ~1.
    assert model.hooks == (0, 1, 2, 3) and model.readout == 'project'


@pytest.mark.parametrize('readout', ['add', 'ignore'])
def test_hf_depth_parity_readouts(readout):
    from transformers import DPTForDepthEstimation

    diff, scale, _, _, _ = _parity(_randomize(DPTForDepthEstimation(_hf_config(readout_type=readout))), X64)
    assert scale > 0.1 and diff <= 1e-4 * scale, (diff, scale)


def test_hf_segmentation_parity_with_batchnorm_and_aux_head():
    from transformers import DPTForSemanticSegmentation

    hf = _randomize(DPTForSemanticSegmentation(_hf_config(num_labels=5, use_batch_norm_in_fusion_residual=True)))
    captured = {}
    hf.auxiliary_head.register_forward_hook(lambda mod, inp, outp: captured.update(aux=outp))
    diff, scale, model, _, out = _parity(hf, X64)
    assert scale > 0.1 and diff <= 1e-4 * scale, (diff, scale)
    aux = captured['aux'].permute(0, 2, 3, 1).numpy()
    assert np.abs(np.asarray(out['aux_logits_raw']) - aux).max() <= 1e-4 * np.abs(aux).max()


def test_hf_hybrid_depth_parity():
    from transformers import DPTForDepthEstimation

    bit = dict(embedding_size=32, hidden_sizes=[128, 256, 512], depths=[1, 1, 1], num_groups=32, global_padding='same',
               layer_type='bottleneck', out_features=['stage1', 'stage2', 'stage3'], embedding_dynamic_padding=True)
    hf = _randomize(DPTForDepthEstimation(_hf_config(is_hybrid=True, backbone_config=bit,
                                                     neck_hidden_sizes=[128, 256, 32, 32],
                                                     backbone_featmap_shape=[1, 512, 4, 4])))
    diff, scale, model, _, _ = _parity(hf, X64)
    assert scale > 0.1 and diff <= 1e-4 * scale, (diff, scale)  # Measured: ~6e-6 at scale ~4.6.
    assert model.stem == 'resnet' and model.hooks[:2] == ('resnet/block1', 'resnet/block2')


def test_backbone_initialises_from_a_vit_checkpoint(tmp_path, tiny):
    from vit_jax import checkpoint
    from vit_jax.models.vit import VisionTransformer

    model, v, _ = tiny
    vit = VisionTransformer(num_classes=10, image_size=32, patch_size=4, hidden_size=64, mlp_dim=128, num_heads=2,
                            num_layers=4, activation='gelu_exact')
    vit_params = jax.jit(vit.init)(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 3)))['params']
    path = str(tmp_path / 'vit.npz')
    checkpoint.save_npz(path, vit_params)
    dont_load = ('neck/.*', 'depth_head/.*', 'head/.*')
    params = checkpoint.load_pretrained(jax.device_get(v['params']), path, dont_load=dont_load)
    np.testing.assert_array_equal(params['embedding']['kernel'], vit_params['embedding']['kernel'])
    # DPT-testing stores the position embedding for 32x32 inputs (the fixture's 32x64 batch resized it on the fly).
    assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 65, 64)
