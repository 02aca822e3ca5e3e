"""models.load: the one spec format for another model (random init, a .npz, a workdir), and its older forms."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_jax import checkpoint, models
from vit_jax.objectives.base import TrainState

TINY = dict(name='ViT-testing', num_classes=10, image_size=16, patch_size=4)


def _leaves_equal(a, b):
    fa, fb = checkpoint.flatten(a), checkpoint.flatten(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def _shifted(params, delta):
    return jax.tree_util.tree_map(lambda a: np.asarray(a) + np.float32(delta), params)


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """A .npz and a run workdir (config.json + Orbax checkpoint with EMA weights) of the tiny ViT."""
    tmp = tmp_path_factory.mktemp('load')
    model = models.get_model('ViT-testing', num_classes=10, image_size=16, patch_size=4)
    params = jax.tree_util.tree_map(np.asarray, model.init(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 3)))['params'])
    npz = str(tmp / 'tiny.npz')
    checkpoint.save_npz(npz, params)
    wd = tmp / 'run'
    wd.mkdir()
    (wd / 'config.json').write_text(json.dumps({'model': dict(TINY, conv_channels=[8, 16, 32, 32])}))
    mngr = checkpoint.Manager(str(wd))
    mngr.save(4, TrainState(step=jnp.asarray(4), params=params, opt_state={}, model_state={},
                            rng=jax.random.PRNGKey(0), ema_params=_shifted(params, 1.0)), force=True)
    mngr.close()
    return dict(params=params, npz=npz, workdir=str(wd))


def test_random_init_is_the_models_own_init_with_the_seed():
    model, variables = models.load(dict(model=TINY), seed=5)
    assert isinstance(model, type(models.get_model('ViT-testing'))) and model.num_classes == 10
    expected = jax.jit(lambda: model.init(jax.random.PRNGKey(5), jnp.zeros((1, 16, 16, 3)), train=False))()
    _leaves_equal(variables, {k: v for k, v in expected.items() if k != 'intermediates'})
    assert all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(variables))
    # A registered name alone: its defaults, seed 0.
    model2, variables2 = models.load('ViT-testing')
    assert model2 == models.get_model('ViT-testing')
    assert 'params' in variables2


def test_npz_in_every_accepted_form(weights):
    expected = {'params': weights['params']}
    forms = [
        dict(model=TINY, weights=weights['npz']),                                  # The format.
        dict(model=dict(name='ViT-testing'), overrides=dict(num_classes=10, image_size=16, patch_size=4),
             weights=weights['npz']),
        dict(model='ViT-testing', overrides=dict(num_classes=10, image_size=16, patch_size=4),
             weights=weights['npz']),                                              # Frozen networks' form.
        dict(model=TINY, checkpoint=weights['npz']),                               # Robustness / teacher form.
        ml_collections.ConfigDict(dict(model=TINY, weights=weights['npz'], tokens='encoded')),  # Extra keys: caller's.
    ]
    for spec in forms:
        model, variables = models.load(spec)
        assert (model.num_classes, model.image_size, model.patch_size) == (10, 16, 4), spec
        _leaves_equal(variables, expected)


def test_workdir_gives_the_ema_weights_and_its_own_model(weights):
    ema = {'params': _shifted(weights['params'], 1.0)}
    model, variables = models.load(dict(model=TINY, weights=weights['workdir']))
    _leaves_equal(variables, ema)
    # Without `model`: the model of the workdir's config.json (lists in JSON become tuples).
    for spec in (dict(weights=weights['workdir']), dict(workdir=weights['workdir']), weights['workdir']):
        m, v = models.load(spec)
        assert m.conv_channels == (8, 16, 32, 32) and m.num_classes == 10
        _leaves_equal(v, ema)
    # `:params` picks the raw (non-EMA) weights.
    _, raw = models.load(dict(model=TINY, weights=weights['workdir'] + ':params'))
    _leaves_equal(raw, {'params': weights['params']})


def test_defaults_fill_only_unset_options_the_model_has(weights):
    m, _ = models.load(dict(model=dict(name='ViT-testing', patch_size=4)), defaults=dict(image_size=32))
    assert m.image_size == 32
    m, _ = models.load(dict(model=TINY), defaults=dict(image_size=32, not_an_option=1))
    assert m.image_size == 16


def test_position_embeddings_are_resampled_to_the_models_grid(weights):
    model, variables = models.load(dict(model=dict(TINY, image_size=32), weights=weights['npz']))
    pe = variables['params']['Transformer']['posembed_input']['pos_embedding']
    assert pe.shape == (1, 1 + 8 * 8, 32)
    src = weights['params']['Transformer']['posembed_input']['pos_embedding']
    np.testing.assert_array_equal(pe[:, 0], src[:, 0])  # The class token's embedding is kept.


def test_spec_normalisation_and_errors(weights, tmp_path):
    s = models.as_spec(dict(model=dict(name='ViT-testing', conv_channels=[8, 16]), overrides=dict(patch_size=4)))
    assert s == models.ModelSpec('ViT-testing', {'conv_channels': (8, 16), 'patch_size': 4}, None)
    with pytest.raises(ValueError, match='names its weights once'):
        models.as_spec(dict(model=TINY, weights='a.npz', checkpoint='b.npz'))
    with pytest.raises(ValueError, match='needs a model'):
        models.as_spec(dict(overrides=dict(num_classes=3)))
    with pytest.raises(ValueError, match='registered name'):
        models.as_spec(dict(model=dict(num_classes=3)))
    with pytest.raises(ValueError, match='no config.json'):
        models.load(dict(weights=weights['npz']))
    for bad in (dict(model='ViT-testin'), 'ViT-testin'):  # A string that is no registered name nor a path.
        with pytest.raises(ValueError, match="Unknown model 'ViT-testin'"):
            models.load(bad)
    with pytest.raises(checkpoint.CheckpointMismatchError):
        models.load(dict(model=dict(TINY, num_classes=7), weights=weights['npz']))
    # A BatchNorm model needs its statistics, which a .npz of params does not hold.
    bn = dict(name='ViTC-1GF', num_classes=10, image_size=16, conv_channels=(8, 16, 32, 32), hidden_size=32,
              mlp_dim=64, num_heads=2, num_layers=1)
    m, v = models.load(dict(model=bn))
    assert 'batch_stats' in v
    checkpoint.save_npz(str(tmp_path / 'bn.npz'), v['params'])
    with pytest.raises(ValueError, match='batch_stats'):
        models.load(dict(model=bn, weights=str(tmp_path / 'bn.npz')))
    checkpoint.save_npz(str(tmp_path / 'bn_full.npz'), v['params'], {'batch_stats': v['batch_stats']})
    _, v2 = models.load(dict(model=bn, weights=str(tmp_path / 'bn_full.npz')))
    _leaves_equal(v2, v)
