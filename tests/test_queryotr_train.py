"""QueryOTR trained end to end by the one trainer with the GAN objective on the built-in photographs.

configs/queryotr_tiny.py:tiny with batch 8: 300 steps, the first 50 reconstruction-only, then a discriminator step
and a generator step (5 rec + 1 adv + 10 perceptual) every step. Checked: every logged loss is finite; the
warm-up has no discriminator step and the GAN phase has one; the outer-ring reconstruction loss falls; the held-out
outer-ring PSNR and L1 improve over the untrained model (the figures are in the README section); the centre of every
output equals the input; FID / IS without Inception weights are named *_random_features; the evaluator and the grid
tool write PNGs.

Marked slow (about 280 s of CPU time: the GAN train step's compilation and 300 steps): run with `-m slow`.
Measured (seed 0): held-out outer-ring PSNR 8.43 dB -> 21.63 dB, outer L1 0.359 -> 0.065, SSIM 0.498 -> 0.771,
full-image PSNR 10.99 -> 24.18 dB (96 test crops).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vit_jax import config_utils, data, evaluators, models, objectives, sharding, train
from vit_jax.evaluators.base import Context
from vit_jax.tools import outpaint_grid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_queryotr_trains_with_the_gan_objective(tmp_path):
    c = config_utils.load(os.path.join(ROOT, 'configs/queryotr_tiny.py:tiny'))
    c.batch_size = 8
    c.evals.val = dict(type='outpainting', split='test', every=0, max_examples=96, grid=4,
                       inception=dict(kind='tiny_random'))

    # The untrained model (the trainer's initial state: same seed, same init).
    model = train.build_model(c)
    objective = objectives.build(c, model)
    size = tuple(models.input_shape(model)[1:3])
    state0 = jax.jit(objective.init_state)(jax.random.PRNGKey(c.seed), {'image': jnp.zeros((1, *size, 3))})

    def make_dataset(split, *, batch_size, train=False, dataset=None, data_config=None, **kw):
        dcfg = {**dict(c.data), **dict(data_config or {})}
        return data.get_dataset(dataset or c.dataset, split, data_config=dcfg, batch_size=batch_size,
                                image_size=size, train=train, seed=c.seed)

    ctx = Context(config=c, model=model, objective=objective, mesh=sharding.make_mesh(c.mesh), image_size=size,
                  make_dataset=make_dataset)
    start = evaluators.get('outpainting')('val', c.evals.val, ctx).run(state0)

    result = train.train_and_evaluate(c, str(tmp_path))
    with open(tmp_path / 'metrics.jsonl') as f:
        rows = [json.loads(line) for line in f]
    train_rows = [r for r in rows if 'train/loss' in r]
    assert len(train_rows) == 6
    for r in train_rows:
        for k in ('train/loss', 'train/rec_loss', 'train/adv_loss', 'train/d_loss',
                  'train/perceptual_loss_random_features', 'train/l2_grads'):
            assert np.isfinite(r[k]), (r['step'], k)
    first, last = train_rows[0], train_rows[-1]
    assert first['train/gan_phase'] == 0.0 and first['train/d_loss'] == 0.0  # Steps 1-50: reconstruction only.
    assert last['train/gan_phase'] == 1.0 and last['train/d_loss'] > 0.0
    assert last['train/perceptual_loss_random_features'] > 0.0
    assert 'train/perceptual_loss' not in last  # No VGG weights: never reported under the paper's name.
    assert last['train/rec_loss'] < 0.6 * first['train/rec_loss']

    # Held-out figures improve over the untrained model.
    print('start', start, 'final', {k: v for k, v in result.items() if k.startswith('val/')})
    assert result['val/num_examples'] == 96
    assert result['val/psnr_outer'] > start['psnr_outer'] + 3.0
    assert result['val/l1_outer'] < 0.7 * start['l1_outer']
    assert result['val/psnr'] > result['val/psnr_outer']  # The copied centre is exact.
    assert 'val/fid_random_features' in result and 'val/is_random_features' in result
    assert 'val/fid' not in result and 'val/is' not in result

    # The centre of every output equals the input.
    batch = next(iter(make_dataset('test', batch_size=16)))
    out = np.asarray(jax.jit(objective.predict)(result['state'], batch)['outpainted'])
    assert out.shape == (16, 48, 48, 3)
    np.testing.assert_array_equal(out[:, 8:40, 8:40], batch['image'])

    # PNG grids: the evaluator's and the command-line tool's.
    assert os.path.isfile(tmp_path / 'outpaint_val_0000300.png')
    png = tmp_path / 'grid.png'
    assert outpaint_grid.main(['--workdir', str(tmp_path), '--out', str(png), '--num', '3', '--upscale', '2']) == 0
    assert Image.open(png).size == (3 * 96 + 4 * 2, 3 * 96 + 4 * 2)
