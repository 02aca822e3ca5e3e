"""The outpainting GAN train step on its own (fast; the trained run is tests/test_queryotr_train.py, marked slow):
the reconstruction-only warm-up leaves the discriminator alone; afterwards each step updates the discriminator and
the generator with finite losses of the three kinds; the output's centre stays the input."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import config_utils, data, objectives, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # Compiling the GAN step (QueryOTR + VGG + PatchGAN) takes ~2-3 min on 2 cores.
def test_warmup_then_discriminator_and_generator_steps():
    c = config_utils.load(os.path.join(ROOT, 'configs/queryotr_tiny.py:tiny'))
    c.model = dict(c.model, num_layers=1)
    c.batch_size = 2
    c.total_steps = 3
    c.objective.warmup_steps = 1
    c.objective.disc = dict(num_scales=2, ndf=4, n_layers=2)
    c.objective.perceptual = dict(model='VGG19', overrides=dict(num_classes=0, width_divisor=32))
    model = train.build_model(c)
    objective = objectives.build(c, model)
    state = jax.jit(objective.init_state)(jax.random.PRNGKey(0), {'image': jnp.zeros((1, 32, 32, 3))})
    ds = data.get_dataset(c.dataset, 'train', data_config=c.data, batch_size=2, image_size=32, train=True)
    it = iter(ds)
    step = jax.jit(objective.train_step)
    d0 = jax.device_get(state.extra['disc']['params'])
    g0 = jax.device_get(state.params)
    changed = lambda a, b: any(np.any(x != y) for x, y in zip(jax.tree_util.tree_leaves(a),  # noqa: E731
                                                               jax.tree_util.tree_leaves(b)))

    state, m = step(state, next(it))  # Warm-up: reconstruction only.
    assert float(m['gan_phase']) == 0.0 and float(m['d_loss']) == 0.0 and float(m['adv_loss']) == 0.0
    assert not changed(jax.device_get(state.extra['disc']['params']), d0)
    assert changed(jax.device_get(state.params), g0)
    for _ in range(2):  # GAN phase: a D step, then a G step against the updated D.
        d1 = jax.device_get(state.extra['disc']['params'])
        state, m = step(state, next(it))
        m = jax.device_get(m)
        assert m['gan_phase'] == 1.0 and m['nonfinite'] == 0.0
        assert all(np.isfinite(m[k]) for k in ('loss', 'rec_loss', 'adv_loss', 'd_loss',
                                               'perceptual_loss_random_features'))
        assert m['d_loss'] > 0 and m['perceptual_loss_random_features'] > 0
        np.testing.assert_allclose(m['loss'], 5 * m['rec_loss'] + m['adv_loss']
                                   + 10 * m['perceptual_loss_random_features'], rtol=1e-5)
        assert changed(jax.device_get(state.extra['disc']['params']), d1)
    assert int(state.step) == 3
    batch = next(it)
    out = np.asarray(jax.jit(objective.predict)(state, batch)['outpainted'])
    np.testing.assert_array_equal(out[:, 8:40, 8:40], batch['image'])
