"""The attention switch: every kernel available here computes the same function (outputs and gradients)."""

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
