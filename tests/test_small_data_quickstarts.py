"""The small-data families (CCT / CVT / ViT-Lite, DHVT, DTN) train on the built-in digits with their quickstart
configs, and every recipe config of the papers builds and runs a few steps end to end (its model, augmentations,
mixup/CutMix, schedule) with the dataset swapped for the built-in digits."""

import os

import pytest

from vit_jax import config_utils, models, train
from vit_jax.data import preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(spec):
    return config_utils.load(os.path.join(ROOT, 'configs', spec))


# (config, minimum held-out accuracy). Measured here: CCT 0.817 (200 steps), DHVT 0.936 (200 steps), DTN 0.925
# (600 steps); the thresholds leave room for numerical differences between machines in these short runs.
QUICKSTARTS = [
    ('quickstart_cct.py:CCT,tiny', 0.70),
    ('quickstart_dhvt.py:tiny', 0.80),
    pytest.param('quickstart_dtn.py:tiny', 0.75, marks=pytest.mark.slow),  # 600 steps: ~1 min on 2 cores.
]


@pytest.mark.parametrize('spec,min_acc', QUICKSTARTS)
def test_quickstart_trains(spec, min_acc, tmp_path):
    result = train.train_and_evaluate(_load(spec), str(tmp_path))
    assert result['val/accuracy'] >= min_acc, result['val/accuracy']


# CVT / ViT-Lite (2x2 patch tokens, no convolutional tokenizer) learn the 8 px digits more slowly than CCT: after
# the tiny config's 200 steps both were at 27.2% (still rising; the >= 0.6 thresholds set with the test were never
# met here), after 600 steps CVT 67.5% and ViT-Lite 55.6% (2026-12-06), so they run 600 steps.
@pytest.mark.slow
@pytest.mark.parametrize('spec,steps,min_acc', [('quickstart_cct.py:CVT,tiny', 600, 0.6),
                                                ('quickstart_cct.py:ViT-Lite,tiny', 600, 0.45),
                                                ('quickstart_dtn.py:layernorm,tiny', None, 0.6)])
def test_other_quickstarts_train(spec, steps, min_acc, tmp_path):
    config = _load(spec)
    if steps:
        config.total_steps = steps
    result = train.train_and_evaluate(config, str(tmp_path))
    assert result['val/accuracy'] >= min_acc, result['val/accuracy']


RECIPES = ['cct_7_3x1.py:cifar10', 'cct_7_3x1.py:cifar10,1500', 'cct_7_3x1.py:cifar100', 'cct_7_3x1.py:cifar100,5000',
           'cct_7_3x1.py:cifar10,300,CVT-7/4', 'cct_7_3x1.py:cifar100,300,ViT-Lite-7/4', 'cct_7_7x2.py',
           'cct_14_7x2.py:imagenet', 'cct_14_7x2.py:imagenet384', 'cct_14_7x2.py:flowers384',
           'dhvt.py:S-CIFAR/2,cifar100', 'dhvt.py:T-CIFAR/4,cifar10', 'dhvt.py:T,imagenet', 'dtn_vit.py:T*',
           'dtn_vit.py:S*,layernorm', 'dtn_vit.py:B*,dtn_var']


@pytest.mark.parametrize('spec', RECIPES)
def test_recipe_configs_are_valid(spec):
    c = _load(spec)
    config_utils.validate(c)
    assert models.get_entry(c.model.name)
    models.get_model(**dict(c.model))  # Every model override is a field.
    size = (c.model.image_size,) * 2
    preprocess.build(c.data.train_pp, image_size=size, train=True, config=c.data)
    preprocess.build(c.data.eval_pp, image_size=size, train=False, config=c.data)
    if c.data.get('train_batch_pp'):
        preprocess.build(c.data.train_batch_pp, image_size=size, train=True, config=c.data, batch=True)
    assert c.total_steps > c.lr.warmup_steps > 0 or spec.endswith('imagenet384')


def _on_digits(spec, **model):
    """A recipe with the dataset swapped for the digits (upsampled to the recipe's input size) and a tiny model."""
    c = _load(spec)
    c.dataset = 'digits'
    c.data.train_split = 'train'
    c.data.shuffle_buffer = 256
    c.model.num_classes = 10
    c.model.update(model)
    c.data.num_classes = 10  # mixup's label_dist.
    c.evals = {'val': dict(type='classification', split='test', every=0)}
    c.batch_size, c.total_steps, c.log_every = 12, 2, 1
    c.eval_every = c.checkpoint_every = 0
    c.lr.warmup_steps = 1
    c.tensorboard = False
    return c


@pytest.mark.slow  # ~40-80 s on 2 cores.
def test_cct_cifar_recipe_runs_end_to_end(tmp_path):
    c = _on_digits('cct_7_3x1.py:cifar10', hidden_size=16, num_layers=1, num_heads=2)
    result = train.train_and_evaluate(c, str(tmp_path))
    assert result['step'] == 2 and 0.0 <= result['val/accuracy'] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize('spec,model', [
    ('dhvt.py:T-CIFAR/4,cifar10', dict(hidden_size=16, num_layers=1, num_heads=2)),
    ('dtn_vit.py:T*', dict(image_size=32, patch_size=4, hidden_size=16, num_layers=2, local_up_to_layer=1)),
    ('cct_7_7x2.py', dict(image_size=64, hidden_size=16, num_layers=1, num_heads=2)),
])
def test_other_recipes_run_end_to_end(spec, model, tmp_path):
    result = train.train_and_evaluate(_on_digits(spec, **model), str(tmp_path))
    assert result['step'] == 2
