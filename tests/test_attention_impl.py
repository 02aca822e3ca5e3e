"""The attention switch: every kernel available here computes the same function (outputs and gradients)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import layers


def _qkv(seed=0, b=2, tq=7, tk=9, h=3, d=8):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(ks[0], (b, tq, h, d))
    k = jax.random.normal(ks[1], (b, tk, h, d))
    v = jax.random.normal(ks[2], (b, tk, h, d))
    bias = jax.random.normal(ks[3], (1, h, tq, tk))
    return q, k, v, bias


def _reference(q, k, v, bias, scale):
    s = np.einsum('bqhd,bkhd->bhqk', np.asarray(q, np.float64) * scale, np.asarray(k, np.float64)) + np.asarray(bias)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum('bhqk,bkhd->bqhd', p, np.asarray(v, np.float64))


@pytest.mark.parametrize('impl', ['auto', 'xla', 'cpu'])
def test_implementations_agree_outputs_and_gradients(impl):
    q, k, v, bias = _qkv()
    scale = 8 ** -0.5
    out, w = layers.dot_product_attention(q, k, v, scale=scale, bias=bias, implementation=impl)
    assert w is None
    np.testing.assert_allclose(out, _reference(q, k, v, bias, scale), atol=2e-5)

    def loss(q, k, v, bias, impl):
        o, _ = layers.dot_product_attention(q, k, v, scale=scale, bias=bias, implementation=impl)
        return jnp.sum(jnp.sin(o))

    g = jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias, impl)
    # The materialised softmax path (returned weights) is the reference for the gradients.
    def loss_ref(q, k, v, bias):
        o, _ = layers.dot_product_attention(q, k, v, scale=scale, bias=bias, return_weights=True)
        return jnp.sum(jnp.sin(o))

    g_ref = jax.grad(loss_ref, argnums=(0, 1, 2, 3))(q, k, v, bias)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_cudnn_off_gpu_is_a_clear_error():
    q, k, v, _ = _qkv()
    if jax.default_backend() == 'gpu':
        pytest.skip('runs on a GPU')
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        layers.dot_product_attention(q, k, v, scale=1.0, implementation='cudnn')
    with pytest.raises(ValueError, match='not one of'):
        layers.dot_product_attention(q, k, v, scale=1.0, implementation='flash')


def test_auto_resolution_by_platform():
    assert layers.resolve_attention_impl('auto', dtype=jnp.float32, head_dim=64) == (
        'cpu' if jax.default_backend() == 'cpu' else ('xla' if jax.default_backend() == 'tpu' else 'xla'))
    assert layers.resolve_attention_impl('xla', dtype=jnp.float32, head_dim=64) == 'xla'


@pytest.mark.parametrize('impl', ['xla', 'cpu'])
def test_attention_maps_whichever_kernel(impl):
    mha = layers.MultiHeadAttention(num_heads=2, attention_impl=impl)
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 5, 16))
    variables = mha.init(jax.random.PRNGKey(0), x)
    y, state = mha.apply(variables, x, mutable=['intermediates'])
    w = state['intermediates']['attention_weights'][0]
    assert w.shape == (1, 2, 5, 5)
    np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, atol=1e-5)
    y_plain = mha.apply(variables, x)
    y_other = layers.MultiHeadAttention(num_heads=2, attention_impl='cpu' if impl == 'xla' else 'xla').apply(
        variables, x)
    np.testing.assert_allclose(y, y_plain, atol=1e-5)
    np.testing.assert_allclose(y_plain, y_other, atol=1e-5)


def test_vit_attention_impl_switch_same_logits_and_maps():
    from vit_jax import models

    x = jax.random.normal(jax.random.PRNGKey(2), (2, 32, 32, 3))
    base = models.get_model('ViT-testing', num_classes=5, attention_impl='cpu')
    variables = base.init(jax.random.PRNGKey(0), x)
    ref, _ = base.apply(variables, x)
    for impl in ('xla', 'auto'):
        logits, _ = models.get_model('ViT-testing', num_classes=5, attention_impl=impl).apply(variables, x)
        np.testing.assert_allclose(logits, ref, atol=1e-5)
    _, state = models.get_model('ViT-testing', num_classes=5, attention_impl='xla').apply(
        variables, x, mutable=['intermediates'])
    maps = jax.tree_util.tree_leaves(state['intermediates'])
    assert maps and all(np.allclose(np.asarray(m).sum(-1), 1.0, atol=1e-5) for m in maps if m.ndim == 4)


# ----------------------------------------------------------------------------------------------------------------
# Every family honours the switch.
# ----------------------------------------------------------------------------------------------------------------
# One small registered variant per model class with attention: (name, overrides shrinking it, apply kwargs maker).
_FAMILIES = {
    'VisionTransformer': ('ViT-testing', {}),
    'CompactTransformer': ('CCT-2/3x2', dict(image_size=16, hidden_size=32, num_heads=2, num_layers=1,
                                             conv_channels=8, num_classes=5)),
    'DHVT': ('DHVT-T-CIFAR/4', dict(image_size=16, hidden_size=32, num_heads=2, num_layers=1, num_classes=5)),
    'DTNViT': ('DTN-ViT-T*', dict(image_size=32, patch_size=8, hidden_size=32, num_heads=2, num_layers=2,
                                  local_up_to_layer=1, num_classes=5)),
    'CvT': ('CvT-13', dict(image_size=32, embed_dims=(16, 32, 32), num_heads=(1, 2, 2), depths=(1, 1, 1),
                           num_classes=5)),
    'T2TViT': ('T2T-ViT_t-14', dict(image_size=32, token_dim=16, hidden_size=32, num_heads=2, num_layers=1,
                                    num_classes=5)),
    'CrossViT': ('CrossViT-Ti', dict(image_size=32, branch_sizes=(24, 32), patch_sizes=(6, 8), embed_dims=(16, 32),
                                     num_heads=(2, 2), depths=(1, 1), num_encoders=1, num_classes=5)),
    'TimeSformer': ('TimeSformer-testing', dict(num_frames=2, num_layers=1, num_classes=5)),
    'Segmenter': ('Seg-testing', dict(decoder='mask_transformer', num_layers=1, decoder_layers=1)),
    'DPT': ('DPT-testing', {}),
    'BEiT': ('BEiT-testing', dict(rel_pos_bias='per_layer', vocab_size=7)),
    'MILAN': ('MILAN-testing', {}),
    'CLIPVisionTransformer': ('CLIP-testing', {}),
    'VQGAN': ('VQGAN-testing', {}),
    'QueryOTR': ('QueryOTR-testing', {}),
}
# Registered classes without attention (so without the switch).
_ATTENTION_FREE = {
    'InceptionV3': 'convolutional (FID / IS feature extractor)',
    'VGG': 'convolutional (perceptual loss)',
}


def _registered_classes():
    from vit_jax import models

    return {models.get_entry(n).cls for n in models.list_models()}


def test_every_model_with_attention_has_the_switch():
    import dataclasses

    classes = _registered_classes()
    missing = [c.__name__ for c in classes if c.__name__ not in _ATTENTION_FREE
               and 'attention_impl' not in {f.name for f in dataclasses.fields(c)}]
    assert not missing, f'registered models without an attention_impl field: {missing}'
    # A new attention family must join the parity test below.
    untested = sorted(c.__name__ for c in classes if c.__name__ not in _ATTENTION_FREE and c.__name__ not in _FAMILIES)
    assert not untested, f'add a small variant of {untested} to _FAMILIES'


def _apply_kwargs(model, x):
    if type(model).__name__ == 'MILAN':  # The decoder only runs on a masked batch.
        n = model.grid_size[0] * model.grid_size[1]
        return {'ids_shuffle': jax.vmap(lambda k: jax.random.permutation(k, n))(
            jax.random.split(jax.random.PRNGKey(3), x.shape[0]))}
    return {}


@pytest.mark.parametrize('cls_name', sorted(_FAMILIES))
def test_family_attention_impls_same_outputs(cls_name):
    from vit_jax import models

    name, overrides = _FAMILIES[cls_name]
    model = models.get_model(name, attention_impl='cpu', **overrides)
    x = jax.random.uniform(jax.random.PRNGKey(1), models.input_shape(model, 2), minval=-1.0, maxval=1.0)
    kw = _apply_kwargs(model, x)
    # Random variables of the model's shapes (jax.eval_shape: no initialiser is compiled), kept in a sane range:
    # kernels ~ N(0, 1/fan_in), scales near 1, positive variances; the rest (biases, embeddings, relative-position
    # tables, gates, LayerScale) nonzero so that every piece takes part.
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x, **kw)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        key, n = path[-1].key, rng.standard_normal(leaf.shape)
        if key == 'kernel':
            return (n / np.sqrt(max(1, int(np.prod(leaf.shape[:-1]))))).astype(leaf.dtype)
        if key in ('scale', 'alpha', 'gamma_1', 'gamma_2'):
            return (1.0 + 0.1 * n).astype(leaf.dtype)
        if key == 'var':
            return (1.0 + 0.1 * np.abs(n)).astype(leaf.dtype)
        return (0.1 * n).astype(leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(fill, shapes)

    def logits(impl):
        m = models.get_model(name, attention_impl=impl, **overrides)
        return jax.jit(lambda v, x, kw: m.apply(v, x, train=False, **kw)[0])(variables, x, kw)

    ref = logits('cpu')
    got = logits('xla')
    assert np.all(np.isfinite(np.asarray(ref)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5)

    if jax.default_backend() != 'gpu':
        with pytest.raises(ValueError, match='needs an NVIDIA GPU'):
            logits('cudnn')


def test_config_attention_impl_is_checked_up_front():
    from vit_jax import config_utils

    c = config_utils.load('configs/quickstart.py')
    c.model.attention_impl = 'flash'
    with pytest.raises(config_utils.ConfigError, match='attention_impl'):
        config_utils.validate(c)
    if jax.default_backend() != 'gpu':
        c.model.attention_impl = 'cudnn'
        with pytest.raises(config_utils.ConfigError, match='needs an NVIDIA GPU'):
            config_utils.validate(c)
    c.model.attention_impl = 'xla'
    config_utils.validate(c)
