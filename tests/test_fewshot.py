"""Few-shot linear evaluator: the closed-form solver, shot sampling, digits features, and the trainer plug-in."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_jax import config_utils, evaluators, models, objectives, sharding, train
from vit_jax.data import datasets
from vit_jax.evaluators import fewshot
from vit_jax.evaluators.base import Context


def test_solver_is_regularised_least_squares_to_pm1_targets():
    rs = np.random.RandomState(0)
    for n, d in ((40, 6), (5, 12)):  # Primal (N >= D) and dual (N < D) forms.
        x, y = rs.randn(n, d), rs.randint(0, 3, n)
        fit = fewshot.fit_least_squares(x, y, 3, l2_reg=0.7)
        xs = np.pad((x - x.mean(0)) / (x.std(0) + 1e-5), ((0, 0), (0, 1)), constant_values=fewshot.BIAS_CONSTANT)
        t = 2.0 * np.eye(3)[y] - 1.0
        # The minimiser of ||xs W - t||^2 + l2 ||W||^2 has zero gradient.
        grad = xs.T @ (xs @ fit['w'] - t) + 0.7 * fit['w']
        assert np.abs(grad).max() < 1e-8
        want = np.linalg.solve(xs.T @ xs + 0.7 * np.eye(d + 1), xs.T @ t)
        np.testing.assert_allclose(fit['w'], want, rtol=1e-6, atol=1e-9)


def test_sample_shots_is_per_class_and_seeded():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0])
    idx = fewshot.sample_shots(labels, 2, 3, seed=0)
    assert np.bincount(labels[idx], minlength=3).tolist() == [2, 2, 2]
    np.testing.assert_array_equal(idx, fewshot.sample_shots(labels, 2, 3, seed=0))
    assert any(not np.array_equal(idx, fewshot.sample_shots(labels, 2, 3, seed=s)) for s in range(1, 6))
    big = fewshot.sample_shots(labels, 10, 4, seed=0)  # Classes with fewer examples give all they have.
    assert np.bincount(labels[big], minlength=4).tolist() == [5, 3, 3, 0]


def test_separable_features_are_solved_from_one_shot():
    rs = np.random.RandomState(1)
    centers = rs.randn(5, 16) * 10
    y = np.repeat(np.arange(5), 20)
    x = centers[y] + rs.randn(100, 16) * 0.1
    acc = fewshot.fewshot_accuracy(x, y, x, y, shots=(1, 5), l2_reg=1.0)
    assert acc == {1: 1.0, 5: 1.0}


def test_digits_pixel_features():
    """Raw pixels of the built-in digits (8x8, 64 features) as frozen features: accuracy grows with the shots."""
    arrays = datasets.digits_arrays()
    feats = {s: arrays[s][0][:, ::4, ::4, 0].reshape(len(arrays[s][1]), -1).astype(np.float32) for s in arrays}
    acc = fewshot.fewshot_accuracy(feats['train'], arrays['train'][1], feats['test'], arrays['test'][1],
                                   shots=(1, 5, 10, 25), l2_reg=fewshot.DEFAULT_L2_REG / 64, seeds=3)
    print('digits pixels few-shot accuracy:', acc)
    assert acc[1] > 0.4 and acc[25] > 0.85
    assert acc[1] < acc[5] < acc[25]


def _context(config):
    model = train.build_model(config)
    objective = objectives.build(config, model)
    mesh = sharding.make_mesh(None)
    image_size = train.model_image_size(model)

    def make_dataset(split, *, batch_size, train=False, dataset=None, data_config=None, **kw):
        from vit_jax import data

        dcfg = dict(config.data)
        dcfg.update(dict(data_config or {}))
        return data.get_dataset(dataset or config.dataset, split, data_config=dcfg, batch_size=batch_size,
                                image_size=image_size, train=train, **kw)

    return Context(config=config, model=model, objective=objective, mesh=mesh, image_size=image_size,
                   make_dataset=make_dataset), model, objective


def _tiny_config():
    c = config_utils.base_config()
    c.dataset = 'digits'
    c.model = dict(name='ViT-testing', num_classes=10, image_size=16, patch_size=4, hidden_size=32, mlp_dim=64,
                   num_heads=2, num_layers=1)
    c.batch_size = 128
    return c


@pytest.mark.slow  # ~1-2 min.
def test_evaluator_on_digits_with_a_model():
    config = _tiny_config()
    ctx, model, objective = _context(config)
    cfg = ml_collections.ConfigDict(dict(type='fewshot', shots=(1, 10), seeds=2, representation='pre_logits',
                                         datasets={'digits': dict(dataset='digits', train_split='train[:600]',
                                                                  test_split='test')}))
    ev = evaluators.get('fewshot')('fewshot', cfg, ctx)
    state = objective.init_state(jax.random.PRNGKey(0), {'image': jnp.zeros((1, 16, 16, 3))})
    res = ev.run(state)
    print('random-ViT pre_logits few-shot accuracy on digits:', res)
    assert sorted(res) == ['digits_10shot', 'digits_1shot']
    assert 0.1 < res['digits_1shot'] < res['digits_10shot'] <= 1.0  # Random features are still informative.
    # The same numbers from features computed by hand.
    ds_train = ctx.make_dataset('train[:600]', batch_size=600, train=False)
    ds_test = ctx.make_dataset('test', batch_size=360, train=False)
    tr, te = next(iter(ds_train)), next(iter(ds_test))
    feat = lambda b: np.asarray(model.apply({'params': state.params}, jnp.asarray(b['image']))[1]['pre_logits'])
    want = fewshot.fewshot_accuracy(feat(tr), tr['label'], feat(te), te['label'], shots=(1, 10), num_classes=10,
                                    seeds=2)
    assert res == pytest.approx({f'digits_{k}shot': v for k, v in want.items()}, abs=1e-9)
    # Another representation (flattened) and the default dataset (the training one).
    ev2 = evaluators.get('fewshot')('fs', ml_collections.ConfigDict(dict(type='fewshot', shots=(5,), seeds=1,
                                                                          representation='encoded')), ctx)
    assert list(ev2.run(state)) == ['digits_5shot']


def test_evaluator_errors():
    ctx, _, objective = _context(_tiny_config())
    get = evaluators.get('fewshot')
    with pytest.raises(ValueError, match='shots must be positive'):
        get('fs', ml_collections.ConfigDict(dict(type='fewshot', shots=(0,))), ctx)
    with pytest.raises(ValueError, match='unknown keys'):
        get('fs', ml_collections.ConfigDict(dict(type='fewshot', datasets={'d': dict(dataset='digits', splt='x')})),
            ctx)
    ev = get('fs', ml_collections.ConfigDict(dict(type='fewshot', shots=(1,), representation='nope')), ctx)
    state = objective.init_state(jax.random.PRNGKey(0), {'image': jnp.zeros((1, 16, 16, 3))})
    with pytest.raises(KeyError, match="no 'nope'.*pre_logits"):
        ev.run(state)
    assert models  # The registry import is part of the public API used above.
