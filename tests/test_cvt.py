"""CvT: parameter counts, shapes, train/eval behaviour and parity with HuggingFace `CvtModel`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import convert, models
from vit_jax.models import cvt

# Exact integers of this implementation (= the official code's structure, with BN affine parameters; BN running
# statistics live in `batch_stats` and are not counted). Paper table 2 says 19.98M / 31.54M / 276.7M: the code has
# 17k / 83k / 0.5M more. The spec's analytic count of the official code gives the same 20.00M / 31.62M / 277.20M as
# this module, and the HuggingFace port (converted from the official weights) has exactly as many parameters
# (test_param_count_equals_hf). No subset of parameter groups (BN affine, depthwise convs, q/k/v biases, head ...)
# explains the paper's figures for all three models at once, so the table was presumably computed on a slightly
# different model revision.
PINNED = {
    'CvT-13': 19_997_480,  # paper 19.98M
    'CvT-21': 31_622_696,  # paper 31.54M
    'CvT-W24': 277_196_392,  # paper 276.7M (the paper text says 298.3M, inconsistent with its table)
}


def test_registered():
    assert set(PINNED) <= set(models.list_models('cvt'))
    assert models.get_entry('cvt-13').name == 'CvT-13'


@pytest.mark.parametrize('name', sorted(PINNED))
@pytest.mark.parametrize('size', [224, 384])
def test_param_counts_and_shapes(name, size):
    model = models.get_model(name, num_classes=1000, image_size=size)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    (logits, out), variables = jax.eval_shape(
        lambda images: model.init_with_output(jax.random.PRNGKey(0), images), x)
    # No position embedding: the parameter count does not depend on the resolution.
    assert sum(np.prod(v.shape) for v in jax.tree_util.tree_leaves(variables['params'])) == PINNED[name]
    d = model.embed_dims
    assert logits.shape == (2, 1000)
    # 224 -> 56 -> 28 -> 14; 384 -> 96 -> 48 -> 24.
    for i, s in enumerate((size // 4, size // 8, size // 16)):
        assert out[f'stage_{i}'].shape == (2, s, s, d[i])
    assert out['cls_token'].shape == (2, d[-1])
    assert out['pre_logits'].shape == (2, d[-1])
    assert out['stage_2/block_00'].shape == (2, 1 + (size // 16) ** 2, d[-1])


_HF_SIZES = {
    'CvT-13': dict(embed_dim=[64, 192, 384], num_heads=[1, 3, 6], depth=[1, 2, 10]),
    'CvT-21': dict(embed_dim=[64, 192, 384], num_heads=[1, 3, 6], depth=[1, 4, 16]),
    'CvT-W24': dict(embed_dim=[192, 768, 1024], num_heads=[3, 12, 16], depth=[2, 2, 20]),
}


@pytest.mark.parametrize('name', sorted(PINNED))
def test_param_count_equals_hf(name):
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    with torch.device('meta'):  # Shapes only, no memory.
        hf = transformers.CvtForImageClassification(transformers.CvtConfig(num_labels=1000, **_HF_SIZES[name]))
    assert sum(p.numel() for p in hf.parameters()) == PINNED[name]


def _random_variables(model, x, seed=0):
    """Variables with random values of the right shapes (cheaper than compiling the RNG-based init on CPU)."""
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    rs = np.random.RandomState(seed)
    fill = lambda path, s: (np.ones(s.shape, np.float32) if str(path[-1]) in ("['var']", "['scale']")
                            else 0.1 * rs.randn(*s.shape).astype(np.float32))
    return jax.tree_util.tree_map_with_path(fill, shapes)


def _tiny():
    return models.get_model('CvT-13', num_classes=7, image_size=32, embed_dims=(16, 32, 48), num_heads=(1, 2, 3),
                            depths=(1, 1, 2))


@pytest.mark.slow  # ~1 min.
def test_train_mode_updates_batch_stats_and_drop_path():
    model = _tiny().clone(drop_path_rate=(0.0, 0.0, 0.5), dropout_rate=0.1)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
    variables = _random_variables(model, x)
    # The class token bypasses the conv projection; BN stats exist for q, k and v of every block.
    stats = variables['batch_stats']['stage_2_block_1']['MultiHeadDotProductAttention_1']['qkv_transform']
    assert set(stats) == {'conv_proj_q', 'conv_proj_k', 'conv_proj_v'}

    @jax.jit
    def train_step(variables, rng):
        return model.apply(variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': rng})

    (logits, _), new_vars = train_step(variables, jax.random.PRNGKey(2))
    (logits2, _), _ = train_step(variables, jax.random.PRNGKey(3))
    assert logits.shape == (4, 7)
    assert not np.allclose(logits, logits2)  # Dropout / stochastic depth are active.
    before = jax.tree_util.tree_leaves(variables['batch_stats'])
    after = jax.tree_util.tree_leaves(new_vars['batch_stats'])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    # Eval is deterministic and does not need a dropout rng.
    evaluate = jax.jit(lambda v: model.apply(v, x)[0])
    np.testing.assert_array_equal(evaluate(variables), evaluate(variables))


def test_any_resolution_and_bad_input():
    model = _tiny()
    x = jnp.zeros((1, 48, 40, 3))
    variables = _random_variables(model, x)
    logits, out = jax.jit(model.apply)(variables, x)
    assert logits.shape == (1, 7) and out['stage_2'].shape == (1, 3, 3, 48)
    with pytest.raises(ValueError, match='channels'):
        jax.eval_shape(model.apply, variables, jnp.zeros((1, 3, 32, 32)))


# ----------------------------------------------------------------------------------------------------------------
# HuggingFace parity.
# ----------------------------------------------------------------------------------------------------------------
def _randomize(hf_model, seed=0):
    """Random weights everywhere (HF's init leaves LN/BN at identity), positive BN variances."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in hf_model.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            noise = torch.randn(t.shape, generator=gen) * 0.2
            if name.endswith('running_var'):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif name.endswith('weight') and t.ndim == 1:  # LN / BN scale.
                t.copy_(1.0 + noise)
            else:
                t.add_(noise)
    return hf_model.eval()


_HF_CONFIGS = {
    # The CvT-13 layout, shrunk; cls token in the last stage, odd token maps (48 px -> 12, 6, 3; k/v 2x2).
    # (HF indexes its per-stage drop-path list by the stage number, so stage i needs depth > i.)
    'cls_last': dict(embed_dim=[16, 32, 48], num_heads=[1, 2, 3], depth=[1, 2, 3], num_labels=5),
    # Mean pooling (no cls token), per-stage mlp ratios, no q/k/v bias in stage 1, k/v stride 1 in stage 0.
    'gap': dict(embed_dim=[8, 24, 32], num_heads=[2, 3, 4], depth=[2, 2, 3], num_labels=3,
                cls_token=[False, False, False], mlp_ratio=[2.0, 3.0, 4.0], qkv_bias=[True, False, True],
                stride_kv=[1, 2, 2]),
}


@pytest.mark.parametrize('config_name', sorted(_HF_CONFIGS))
@pytest.mark.parametrize('head', [True, False])
def test_hf_parity(config_name, head):
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(0)
    config = transformers.CvtConfig(**_HF_CONFIGS[config_name])
    cls = transformers.CvtForImageClassification if head else transformers.CvtModel
    hf = _randomize(cls(config))
    images = np.random.RandomState(0).randn(2, 48, 48, 3).astype(np.float32)
    with torch.no_grad():
        pixels = torch.from_numpy(images.transpose(0, 3, 1, 2))
        if head and not config.cls_token[-1]:
            # HF's CvtForImageClassification.forward fails without a class token (it indexes outputs[1], which the
            # output tuple drops when cls_token_value is None); apply its own norm + mean + classifier by hand.
            hidden = hf.cvt(pixels).last_hidden_state.flatten(2).transpose(1, 2)
            ref = transformers.modeling_outputs.ImageClassifierOutputWithNoAttention(
                logits=hf.classifier(hf.layernorm(hidden).mean(dim=1)))
        else:
            ref = hf(pixels)

    model, variables = convert.from_transformers(hf)
    assert isinstance(model, cvt.CvT) and model.activation == 'gelu_exact'
    logits, out = jax.jit(model.apply)(variables, jnp.asarray(images))
    if head:
        np.testing.assert_allclose(logits, ref.logits.numpy(), atol=1e-4, rtol=0)
        assert np.abs(np.asarray(logits) - ref.logits.numpy()).max() <= 1e-4
    else:
        np.testing.assert_allclose(out['tokens_2d'], ref.last_hidden_state.numpy().transpose(0, 2, 3, 1), atol=1e-4,
                                   rtol=0)
        if config.cls_token[-1]:
            np.testing.assert_allclose(out['cls_token'], ref.cls_token_value.numpy()[:, 0], atol=1e-4, rtol=0)
    # The converted variables have exactly the structure the model initialises.
    init = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.asarray(images))
    assert jax.tree_util.tree_structure(init) == jax.tree_util.tree_structure(
        jax.tree_util.tree_map(jnp.asarray, variables))
    for a, b in zip(jax.tree_util.tree_leaves(init), jax.tree_util.tree_leaves(variables)):
        assert a.shape == b.shape
