"""ViT family: registry, parameter counts against the papers, forward passes, options, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import models

# Exact counts of the original ViT release (vit_jax/models_test.py there), 224 px, 1000 classes.
RELEASE_COUNTS = {
    'ViT-Ti/16': 5_717_416,
    'ViT-S/16': 22_050_664,
    'ViT-S/32': 22_878_952,
    'ViT-B/8': 86_576_872,
    'ViT-B/16': 86_567_656,
    'ViT-B/32': 88_224_232,
    'ViT-L/16': 304_326_632,
    'ViT-L/32': 306_535_400,
    'ViT-H/14': 632_045_800,
    'R+ViT-Ti/16': 6_337_704,
    'R26+ViT-S/32': 36_431_912,
    'R26+ViT-B/32': 101_383_976,
    'R50+ViT-B/16': 98_659_112,
    'R50+ViT-L/32': 328_994_856,
}

# "Early Convolutions Help Transformers See Better", table 1 (M params): exact integers from this implementation.
EARLY_CONV_COUNTS = {
    'ViTP-1GF': (4_830_376, 4.8), 'ViTP-4GF': (18_507_112, 18.5), 'ViTP-18GF': (86_567_656, 86.6),
    'ViTP-36GF': (178_364_392, 178.4), 'ViTC-1GF': (4_567_936, 4.6), 'ViTC-4GF': (17_754_136, 17.8),
    'ViTC-18GF': (81_573_160, 81.6), 'ViTC-36GF': (167_796_008, 167.8),
}


@pytest.mark.parametrize('name,count', sorted(RELEASE_COUNTS.items()))
def test_release_param_counts(name, count):
    assert models.count_params(name, num_classes=1000) == count


@pytest.mark.parametrize('name,expected', sorted(EARLY_CONV_COUNTS.items()))
def test_early_conv_param_counts(name, expected):
    exact, paper_m = expected
    n = models.count_params(name, num_classes=1000)
    assert n == exact
    assert abs(n / 1e6 - paper_m) < 0.05 + 1e-9


def test_paper_headline_counts():
    assert models.count_params('ViT-B/16', num_classes=1000) == 86_567_656
    assert round(models.count_params('ViT-L/16', num_classes=1000) / 1e6, 2) == 304.33
    assert round(models.count_params('ViT-H/14', num_classes=1000) / 1e6, 2) == 632.05
    # gap-norep variant of the release.
    assert models.count_params('ViT-B/16', num_classes=1000, classifier='gap') == 86_566_120
    # At 384 px only the position embedding grows (the paper's fine-tuning resolution).
    assert models.count_params('ViT-B/16', num_classes=1000, image_size=384) == 86_567_656 + (576 - 196) * 768


def test_aliases_and_listing():
    names = models.list_models()
    for n in list(RELEASE_COUNTS) + list(EARLY_CONV_COUNTS):
        assert n in names
    assert models.get_entry('ViT-B_16').name == 'ViT-B/16'
    assert models.get_entry('R50+ViT-B_16').name == 'R50+ViT-B/16'


@pytest.mark.parametrize('name', [n for n in models.list_models('vit')] + [n for n in models.list_models('early_conv')])
def test_every_vit_variant_forward_shapes(name):
    """Every registered ViT-family variant runs a forward pass (eval_shape: no weights materialised)."""
    model = models.get_model(name, num_classes=7)
    shapes = models.init_shapes(model)
    x = jax.ShapeDtypeStruct(models.input_shape(model, 2), jnp.float32)
    logits, out = jax.eval_shape(lambda v, x: model.apply(v, x), shapes, x)
    assert logits.shape == (2, 7)
    assert 'pre_logits' in out and 'stem' in out


def test_small_vit_runs_for_real_with_release_names():
    model = models.get_model('ViT-Ti/16', num_classes=10, image_size=32, patch_size=8, num_layers=2)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    variables = model.init(jax.random.PRNGKey(1), x)
    params = variables['params']
    assert set(params) == {'embedding', 'cls', 'Transformer', 'head'}
    assert set(params['Transformer']) == {'posembed_input', 'encoderblock_0', 'encoderblock_1', 'encoder_norm'}
    assert set(params['Transformer']['encoderblock_0']) == {'LayerNorm_0', 'MultiHeadDotProductAttention_1',
                                                            'LayerNorm_2', 'MlpBlock_3'}
    assert params['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_1']['query']['kernel'].shape == (
        192, 3, 64)
    # The release zero-initialises the head and the class token.
    assert not np.any(params['head']['kernel']) and not np.any(params['cls'])
    logits, out = model.apply(variables, x)
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    assert out['encoder/block_01'].shape == (2, 17, 192)
    assert out['tokens_2d'].shape == (2, 4, 4, 192)


def test_hybrid_stem_names_and_stride():
    model = models.get_model('R50+ViT-B/16', num_classes=10, image_size=64, num_layers=1)
    shapes = models.init_shapes(model)['params']
    assert {'conv_root', 'gn_root', 'block1', 'block2', 'block3', 'embedding'} <= set(shapes)
    assert shapes['block3']['unit9']['conv3']['kernel'].shape == (1, 1, 256, 1024)
    assert shapes['Transformer']['posembed_input']['pos_embedding'].shape == (1, 1 + 16, 768)  # 64/16 = 4x4 grid.


@pytest.mark.parametrize('classifier', ['token', 'gap', 'map'])
def test_classifiers_and_representation(classifier):
    model = models.get_model('ViT-testing', num_classes=5, classifier=classifier, representation_size=16)
    x = jnp.ones((2, 32, 32, 3))
    v = model.init(jax.random.PRNGKey(0), x)
    logits, out = model.apply(v, x)
    assert logits.shape == (2, 5) and out['pre_logits'].shape == (2, 16)
    assert 'pre_logits' in v['params']


def test_unpooled_returns_all_tokens():
    model = models.get_model('ViT-testing', num_classes=5, classifier='unpooled')
    x = jnp.ones((1, 32, 32, 3))
    logits, _ = model.apply(model.init(jax.random.PRNGKey(0), x), x)
    assert logits.shape == (1, 64, 5)


def test_scan_matches_loop_and_remat():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    loop = models.get_model('ViT-testing', num_classes=10)
    v = loop.init(jax.random.PRNGKey(1), x)
    p = jax.tree_util.tree_map(lambda a: a, v['params'])  # A copy: v stays intact.
    p['Transformer'] = dict(p['Transformer'])
    blocks = [p['Transformer'].pop(f'encoderblock_{i}') for i in range(2)]
    p['Transformer']['encoderblock'] = {'block': jax.tree_util.tree_map(lambda *a: jnp.stack(a), *blocks)}
    for remat in (None, 'nothing_saveable', 'dots_saveable'):
        scan = models.get_model('ViT-testing', num_classes=10, scan=True, remat_policy=remat)
        y_scan, _ = scan.apply({'params': p}, x)
        y_loop, _ = loop.apply(v, x)
        np.testing.assert_allclose(y_scan, y_loop, atol=1e-5)


@pytest.mark.slow  # ~1 min.
def test_stochastic_depth_and_dropout_are_train_only():
    model = models.get_model('ViT-testing', num_classes=10, drop_path_rate=0.5, dropout_rate=0.2,
                             attention_dropout_rate=0.1)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
    v = model.init(jax.random.PRNGKey(1), x)
    v = jax.tree_util.tree_map(lambda a: a + 0.01 * jax.random.normal(jax.random.PRNGKey(2), a.shape), v)
    e1, _ = model.apply(v, x)
    e2, _ = model.apply(v, x)
    np.testing.assert_array_equal(e1, e2)
    t1, _ = model.apply(v, x, train=True, rngs={'dropout': jax.random.PRNGKey(3)})
    t2, _ = model.apply(v, x, train=True, rngs={'dropout': jax.random.PRNGKey(4)})
    assert not np.allclose(t1, t2)


@pytest.mark.slow  # tests/test_precision.py covers bfloat16 in the default run.
def test_bf16_compute_close_to_float32():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    m32 = models.get_model('ViT-testing', num_classes=10, head_bias_init=0.0)
    v = m32.init(jax.random.PRNGKey(1), x)
    v = jax.tree_util.tree_map(lambda a: a + 0.05 * jax.random.normal(jax.random.PRNGKey(2), a.shape), v)
    y32, _ = m32.apply(v, x)
    y16, out = models.get_model('ViT-testing', num_classes=10, dtype='bfloat16').apply(v, x)
    assert out['encoded'].dtype == jnp.bfloat16 and y16.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(y16 - y32))) < 0.05 * float(jnp.max(jnp.abs(y32))) + 0.05


@pytest.mark.slow  # ~1-2 min.
def test_conv_stem_batchnorm_train_and_eval():
    model = models.get_model('ViTC-1GF', num_classes=10, image_size=32, num_layers=1)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
    v = model.init(jax.random.PRNGKey(1), x)
    assert 'batch_stats' in v
    (_, _), updates = model.apply(v, x, train=True, mutable=['batch_stats'])
    before = v['batch_stats']['stem']['bn_0']['mean']
    after = updates['batch_stats']['stem']['bn_0']['mean']
    assert not np.allclose(before, after)  # Running statistics move in training ...
    y1, _ = model.apply(v, x)  # ... and are used (not batch statistics) in eval.
    y2, _ = model.apply(v, x[:1])
    np.testing.assert_allclose(y1[:1], y2, atol=1e-5)


def test_attention_weights_are_available():
    model = models.get_model('ViT-testing', num_classes=10)
    x = jnp.ones((1, 32, 32, 3))
    v = model.init(jax.random.PRNGKey(0), x)
    _, inter = model.apply(v, x, mutable=['intermediates'])
    w = inter['intermediates']['Transformer']['encoderblock_1']['MultiHeadDotProductAttention_1'][
        'attention_weights'][0]
    assert w.shape == (1, 2, 65, 65)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


def test_unknown_model_lists_registered_names():
    with pytest.raises(ValueError, match=r"Unknown model 'ViT-B/17'.*Did you mean.*ViT-B/16.*Registered models"):
        models.get_model('ViT-B/17')


def test_unknown_override_names_close_match():
    with pytest.raises(ValueError, match=r"no option 'hiden_size' \(did you mean hidden_size"):
        models.get_model('ViT-B/16', hiden_size=3)


@pytest.mark.parametrize('shape,match', [
    ((2, 3, 32, 32), 'NCHW'),
    ((32, 32, 3), r'Add a batch axis'),
    ((2, 48, 48, 3), r'built for image_size=\(32, 32\)'),
    ((2, 30, 30, 3), r'not a multiple of \(4, 4\)'),
])
def test_wrong_image_shape_is_a_clear_error(shape, match):
    model = models.get_model('ViT-testing', num_classes=10)
    v = model.init(jax.random.PRNGKey(0), jnp.ones((1, 32, 32, 3)))
    with pytest.raises(ValueError, match=match):
        model.apply(v, jnp.ones(shape))
