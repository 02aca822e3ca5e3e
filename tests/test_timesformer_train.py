"""TimeSformer end to end through the one trainer: the built-in moving digits, the 'video' evaluator with multi-view
testing, and the configs of the paper's Kinetics / SSv2 settings."""

import os

import pytest

from vit_jax import config_utils, models, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(arg=None):
    c = config_utils.load(os.path.join(ROOT, 'configs/timesformer_moving_digits.py') + (f':{arg}' if arg else ''))
    c.tensorboard = False
    c.checkpoint_every = 0
    return c


@pytest.mark.slow  # ~1-3 min on 2 cores; tests/test_train.py keeps an end-to-end training run in the default set.
def test_moving_digits_direction_end_to_end(tmp_path):
    """The quickstart recipe, shortened to 100 steps and 512 test clips (~60 s of CPU): the direction of motion
    needs time (a single frame says nothing; chance is 25%)."""
    c = _config()
    c.total_steps = 100
    c.data.moving_digits_test_size = 512
    result = train.train_and_evaluate(c, str(tmp_path))
    assert result['val/accuracy'] >= 0.90  # Measured: 0.994 (2 CPU cores).
    assert result['val/num_examples'] == 512  # The whole fixed test split, each clip once.


@pytest.mark.slow
def test_moving_digits_quickstart_reaches_stated_accuracy(tmp_path):
    """configs/timesformer_moving_digits.py as documented: 200 steps, >= 95% on the 1024 test clips."""
    result = train.train_and_evaluate(_config(), str(tmp_path))
    assert result['val/accuracy'] >= 0.95  # Measured: 0.996.
    assert result['val/num_examples'] == 1024


@pytest.mark.slow  # ~20-35 s on 2 cores.
def test_multi_view_evaluator_smoke(tmp_path):
    """A few steps with 3 distinct spatial crops per test clip (24-px crops of the 32-px frames)."""
    c = _config('tiny')
    c.total_steps = 2
    c.batch_size = 8
    c.model.image_size = 24
    c.model.num_layers = 1
    c.data.moving_digits_train_size = 16
    c.data.moving_digits_test_size = 20
    c.evals.val = dict(type='video', split='test', temporal_views=1, spatial_crops=3, batch_size=8,
                       data=dict(test_short_side=32))
    result = train.train_and_evaluate(c, str(tmp_path))
    assert result['val/views'] == 3 and result['val/num_examples'] == 20
    assert 0.0 <= result['val/accuracy'] <= 1.0 and 'val/accuracy_1view' in result


@pytest.mark.slow
def test_space_only_cannot_tell_direction(tmp_path):
    """Space-only attention averages frames: it cannot order them, so opposite directions are confused."""
    result = train.train_and_evaluate(_config('space_only'), str(tmp_path))
    assert result['val/accuracy'] <= 0.6  # Measured: 0.250 (chance).


def test_trainer_starts_from_an_image_vit_npz(tmp_path):
    """`--config.init_from.path=<image ViT .npz>` (the Kinetics configs' ImageNet init) through the trainer: each
    block's temporal attention and norm start as its spatial ones (`models.load_pretrained` -> the TimeSformer
    rule), the spatial weights and the class token load as they are, the head keeps its init."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from vit_jax import checkpoint

    image = models.get_model('ViT-testing', num_classes=10, image_size=32, patch_size=8, hidden_size=64, mlp_dim=128,
                             num_heads=2, num_layers=2)
    params = jax.jit(image.init)(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 3)))['params']
    params = jax.tree_util.tree_map(lambda a: np.asarray(a) + 0.01, params)  # Not an init value anywhere.
    npz = str(tmp_path / 'vit.npz')
    checkpoint.save_npz(npz, params)
    c = _config('tiny')
    c.total_steps = 1
    c.lr.base = 0.0  # The step leaves the weights as loaded.
    c.lr.warmup_steps = 0
    c.lr.end = 0.0
    c.evals = {}
    c.data.moving_digits_train_size = 64
    c.init_from = dict(path=npz, dont_load=('head/.*', 'pre_logits/.*'))
    train.train_and_evaluate(c, str(tmp_path / 'run'))
    got = checkpoint.load_params(str(tmp_path / 'run'))
    for i in range(2):
        block, src = got['Transformer'][f'encoderblock_{i}'], params['Transformer'][f'encoderblock_{i}']
        for mine, theirs in [('temporal_attention', 'MultiHeadDotProductAttention_1'), ('temporal_norm', 'LayerNorm_0'),
                             ('MultiHeadDotProductAttention_1', 'MultiHeadDotProductAttention_1')]:
            for a, b in zip(jax.tree_util.tree_leaves(block[mine]), jax.tree_util.tree_leaves(src[theirs])):
                np.testing.assert_allclose(a, b, atol=1e-6)
        assert np.any(block['temporal_fc']['kernel']) == (i == 0)  # The official init: zeros but in block 0.
    np.testing.assert_allclose(got['cls'], params['cls'], atol=1e-6)
    assert got['head']['kernel'].shape == (64, 4)  # A new head (dont_load), the source's has 10 classes.


@pytest.mark.parametrize('spec,name,frames,classes', [
    ('timesformer_k400.py', 'TimeSformer', 8, 400), ('timesformer_k400.py:hr', 'TimeSformer-HR', 16, 400),
    ('timesformer_k400.py:l', 'TimeSformer-L', 96, 400), ('timesformer_k600.py', 'TimeSformer', 8, 600),
    ('timesformer_ssv2.py:base,axial', 'TimeSformer', 8, 174)])
def test_paper_configs(spec, name, frames, classes):
    c = config_utils.load(os.path.join(ROOT, 'configs', spec))
    config_utils.validate(c)
    model = train.build_model(c)
    assert c.model.name == name and model.num_frames == c.data.num_frames == frames and model.num_classes == classes
    assert c.evals.val.type == 'video' and c.evals.val.spatial_crops == 3 and c.batch_size == 8
    assert c.lr.base == 0.005 and c.optimizer.weight_decay == 1e-4
    if 'ssv2' in spec:
        assert c.model.attention_type == 'axial' and c.data.train_pp.startswith('video_sample_segments')
        assert models.count_params(model) == 156_846_510  # 156.8M in the paper's table 1.
