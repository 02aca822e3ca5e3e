"""vit_jax.attacks: eps-ball and value-range invariants, the pixel-scale eps convention, jit behaviour, and that the
attacks lower the accuracy of a tiny ViT trained on the built-in digits."""

import _robust_common as rc
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import attacks


def _linear_logits_fn(seed=0, shape=(6, 6, 3), classes=5):
    w = jax.random.normal(jax.random.PRNGKey(seed), (int(np.prod(shape)), classes))
    return lambda x: x.reshape(x.shape[0], -1) @ w


def _images(seed=1, n=8, shape=(6, 6, 3), value_range=(-1.0, 1.0)):
    lo, hi = value_range
    return jax.random.uniform(jax.random.PRNGKey(seed), (n, *shape), minval=lo, maxval=hi)


@pytest.mark.parametrize('value_range', [(-1.0, 1.0), (0.0, 1.0), (0.0, 255.0)])
@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_pgd_stays_in_ball_and_range(value_range, norm):
    fn = _linear_logits_fn()
    x = _images(value_range=value_range)
    y = jnp.arange(8) % 5
    eps = 4 / 255 if norm == 'linf' else 0.5
    x_adv = attacks.pgd(fn, x, y, eps=eps, step_size=eps / 2, num_steps=5, rng=jax.random.PRNGKey(0), norm=norm,
                        value_range=value_range)
    lo, hi = value_range
    assert x_adv.shape == x.shape
    assert float(x_adv.min()) >= lo and float(x_adv.max()) <= hi
    scale = hi - lo  # eps is in pixel scale [0, 1]: the model-unit radius is eps * (hi - lo).
    if norm == 'linf':
        d = float(jnp.max(jnp.abs(x_adv - x)))
        assert d <= eps * scale * (1 + 1e-5)
        assert d >= 0.99 * eps * scale  # Sign steps reach the boundary.
        assert float(attacks.linf_distance(x_adv, x, value_range).max()) <= eps + 1e-6
    else:
        d = np.asarray(attacks.l2_distance(x_adv, x, value_range))
        assert np.all(d <= eps * (1 + 1e-5))
    assert float(jnp.max(jnp.abs(x_adv - x))) > 0


def test_fgsm_is_one_signed_step_and_raises_the_loss():
    fn = _linear_logits_fn()
    x = _images() * 0.5  # Away from the range edges: no clipping.
    y = jnp.arange(8) % 5
    x_adv = attacks.fgsm(fn, x, y, eps=2 / 255, value_range=(-1.0, 1.0))
    np.testing.assert_allclose(np.abs(np.asarray(x_adv - x)), 4 / 255, rtol=1e-5)
    ce = lambda im: -jnp.take_along_axis(jax.nn.log_softmax(fn(im)), y[:, None], 1).sum()  # noqa: E731
    assert float(ce(x_adv)) > float(ce(x))


def test_random_start_and_targeted():
    fn = _linear_logits_fn()
    x = _images()
    y = jnp.arange(8) % 5
    a = attacks.pgd(fn, x, y, eps=8 / 255, step_size=1 / 255, num_steps=0, rng=jax.random.PRNGKey(0))
    b = attacks.pgd(fn, x, y, eps=8 / 255, step_size=1 / 255, num_steps=0, rng=jax.random.PRNGKey(1))
    assert float(jnp.max(jnp.abs(a - x))) > 0 and not np.allclose(a, b)  # Random start, key-dependent.
    c = attacks.pgd(fn, x, y, eps=8 / 255, step_size=1 / 255, num_steps=0, rng=None, random_start=False)
    np.testing.assert_array_equal(c, x)
    target = (y + 1) % 5
    t = attacks.pgd(fn, x, target, eps=16 / 255, step_size=4 / 255, num_steps=5, rng=jax.random.PRNGKey(0),
                    targeted=True)
    p = lambda im: jnp.take_along_axis(jax.nn.softmax(fn(im)), target[:, None], 1)  # noqa: E731
    assert float(p(t).mean()) > float(p(x).mean())


def test_per_example_eps_and_jit():
    fn = _linear_logits_fn()
    x = _images()
    y = jnp.arange(8) % 5
    eps = jnp.linspace(0.0, 8 / 255, 8)
    x_adv = attacks.pgd(fn, x, y, eps=eps, step_size=2 / 255, num_steps=3, rng=jax.random.PRNGKey(0))
    d = np.asarray(attacks.linf_distance(x_adv, x))
    assert np.all(d <= np.asarray(eps) + 1e-6) and d[0] == 0.0
    # Inside a jit trace the attack is traced inline and gives what the compiled top-level call gives.
    jitted = jax.jit(lambda x, y, r: attacks.pgd(fn, x, y, eps=4 / 255, step_size=1 / 255, num_steps=3, rng=r))
    top = attacks.pgd(fn, x, y, eps=4 / 255, step_size=1 / 255, num_steps=3, rng=jax.random.PRNGKey(3))
    np.testing.assert_allclose(jitted(x, y, jax.random.PRNGKey(3)), top, atol=1e-6)
    # Same logits_fn, another eps: no new compilation (eps is a traced argument).
    before = attacks._pgd_jit._cache_size()
    attacks.pgd(fn, x, y, eps=2 / 255, step_size=1 / 255, num_steps=3, rng=jax.random.PRNGKey(3))
    assert attacks._pgd_jit._cache_size() == before


def test_apgd_checkpoints_and_bounds():
    assert attacks.apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]  # p_j of Croce & Hein, x 100.
    fn = _linear_logits_fn()
    x = _images()
    y = jnp.arange(8) % 5
    for norm, eps in (('linf', 4 / 255), ('l2', 0.3)):
        x_adv = attacks.apgd_ce(fn, x, y, eps=eps, num_steps=12, rng=jax.random.PRNGKey(0), norm=norm)
        assert float(x_adv.min()) >= -1 and float(x_adv.max()) <= 1
        dist = attacks.linf_distance if norm == 'linf' else attacks.l2_distance
        assert float(dist(x_adv, x).max()) <= eps * (1 + 1e-5)


def test_perturbation_image_and_errors():
    x = _images()
    x_adv = attacks.project(x + 0.5, x, 8 / 255 * 2, 'linf', (-1.0, 1.0))
    p = attacks.perturbation_image(x, x_adv, eps=8 / 255, value_range=(-1.0, 1.0))
    assert float(p.min()) >= -1 and float(p.max()) <= 1
    with pytest.raises(ValueError, match='norm'):
        attacks.pgd(_linear_logits_fn(), x, jnp.zeros(8, int), eps=0.1, step_size=0.1, num_steps=1, rng=None,
                    random_start=False, norm='l1')
    with pytest.raises(ValueError, match='Unknown attack'):
        attacks.get_attack('cw')


@pytest.mark.slow  # Trains a model first: ~1-2 min.
def test_attacks_lower_accuracy_of_a_trained_tiny_vit():
    params = rc.trained_params()
    model = rc.tiny_model()
    x, y = rc.digits('test')
    x, y = jnp.asarray(x), jnp.asarray(y)
    fn = lambda im: model.apply({'params': params}, im)[0]  # noqa: E731
    clean = rc.accuracy(params, x, y)
    eps = 8 / 255
    adv = {
        'fgsm': attacks.fgsm(fn, x, y, eps=eps),
        'pgd': attacks.pgd(fn, x, y, eps=eps, step_size=eps / 4, num_steps=10, rng=jax.random.PRNGKey(0)),
        'pgd_l2': attacks.pgd(fn, x, y, eps=1.0, step_size=0.25, num_steps=10, rng=jax.random.PRNGKey(0),
                              norm='l2'),
        'apgd_ce': attacks.apgd_ce(fn, x, y, eps=eps, num_steps=20, rng=jax.random.PRNGKey(0)),
    }
    accs = {k: rc.accuracy(params, v, y) for k, v in adv.items()}
    print('clean', clean, accs)
    # Measured here: clean ~0.90; FGSM ~0.2, PGD-10 / APGD-20 <= ~0.05, L2 PGD (eps 1.0) ~0.1 at eps 8/255.
    assert clean >= 0.8
    assert accs['fgsm'] < clean - 0.3
    assert accs['pgd'] < 0.25 and accs['apgd_ce'] < 0.25
    assert accs['pgd'] <= accs['fgsm'] + 0.02
    assert accs['pgd_l2'] < clean - 0.3
    for k, v in adv.items():
        dist = attacks.l2_distance(v, x) if k == 'pgd_l2' else attacks.linf_distance(v, x)
        assert float(dist.max()) <= (1.0 if k == 'pgd_l2' else eps) * (1 + 1e-5), k
        assert float(v.min()) >= -1.0 and float(v.max()) <= 1.0
