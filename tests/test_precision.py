"""bfloat16 compute with float32 parameters, checked against float32 compute.

Tolerance: bfloat16 keeps 8 significant bits (eps = 2**-8 = 0.39%); through a few transformer blocks the logits
drift by about 1% of their largest magnitude (measured with these random weights: ViT-testing 0.65%, a 4-layer
ViT-Ti/16 at 64 px 1.28%). The test allows 3% of max|logits| and requires the same arg-max on every example.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import models

REL_TOL = 0.03  # max|logits_bf16 - logits_f32| <= 3% of max|logits_f32|.


def _random_variables(model, x, scale=0.05, seed=1):
    # Random values of the right shapes (cheaper than compiling the RNG-based init on CPU); unlike the release init
    # (zero head) they give non-trivial logits. Norm scales around 1.
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    rs = np.random.RandomState(seed)

    def fill(path, s):
        base = 1.0 if 'scale' in str(path[-1]) else 0.0
        return jnp.asarray(base + scale * rs.randn(*s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize('name,overrides', [('ViT-testing', {}), ('ViT-Ti/16', dict(image_size=64, num_layers=4))])
def test_bfloat16_logits_match_float32(name, overrides):
    m32 = models.get_model(name, num_classes=10, **overrides)
    m16 = m32.clone(dtype=jnp.bfloat16)
    x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (4, *models.input_shape(m32)[1:])).astype(np.float32))
    variables = _random_variables(m32, x)
    # Parameters stay float32 under a bfloat16 compute dtype.
    shapes16 = jax.eval_shape(m16.init, jax.random.PRNGKey(0), x)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(shapes16)} == {jnp.dtype(jnp.float32)}
    a, _ = jax.jit(m32.apply)(variables, x)
    b, out16 = jax.jit(m16.apply)(variables, x)
    assert b.dtype == jnp.float32  # Logits are returned in float32.
    assert out16['encoded'].dtype == jnp.bfloat16  # ... but the body really ran in bfloat16.
    scale = float(jnp.abs(a).max())
    diff = float(jnp.abs(a - b).max())
    assert scale > 0.1
    assert diff <= REL_TOL * scale, (diff, scale)
    assert diff > 0.0  # Not silently float32.
    np.testing.assert_array_equal(np.argmax(a, -1), np.argmax(b, -1))


def test_auto_dtype_policy():
    """'auto': bfloat16 compute on accelerators, float32 on CPUs; parameters float32 either way."""
    model = models.get_model('ViT-testing', dtype='auto')
    want = jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16
    assert model.dtype == want
    shapes = models.init_shapes(models.get_model('ViT-testing', dtype='bfloat16'))
    assert {x.dtype for x in jax.tree_util.tree_leaves(shapes['params'])} == {jnp.dtype(jnp.float32)}
    with pytest.raises(ValueError, match='not a dtype'):
        models.get_model('ViT-testing', dtype='bf16x')


def test_cross_entropy_in_float32():
    from vit_jax.objectives.classification import cross_entropy

    logits = jnp.asarray([[12.0, -3.0, 0.5]], jnp.bfloat16)
    loss = cross_entropy(logits, jax.nn.one_hot(jnp.asarray([1]), 3))
    assert loss.dtype == jnp.float32
    ref = -jax.nn.log_softmax(logits.astype(jnp.float32))[0, 1]
    np.testing.assert_allclose(loss[0], ref, rtol=1e-6)


@pytest.mark.slow
def test_bfloat16_training_within_a_point_of_float32(tmp_path):
    """The quickstart (built-in digits, 1000 steps) with bfloat16 compute ends within 1 point of float32 accuracy."""
    from vit_jax import config_utils, train

    acc = {}
    for dtype in ('float32', 'bfloat16'):
        c = config_utils.load('configs/quickstart.py')
        c.model.dtype = dtype
        c.optimizer.mu_dtype = 'bfloat16' if dtype == 'bfloat16' else None
        c.checkpoint_every = 0
        c.tensorboard = False
        acc[dtype] = train.train_and_evaluate(c, str(tmp_path / dtype))['val/accuracy']
    assert acc['float32'] > 0.95, acc
    assert abs(acc['bfloat16'] - acc['float32']) <= 0.01, acc
