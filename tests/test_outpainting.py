"""Outpainting pieces: PSNR / SSIM / FID / IS against hand-computed reference formulas, the data pipelines (centre
crop as input, full image as target; built-in photographs; flat folders), the objective's reconstruction loss and
PyTorch-Adam optimiser, and the PNG grid tool."""

import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from vit_jax import config_utils, data, objectives, optim, train
from vit_jax.data import outpainting as outdata
from vit_jax.evaluators import outpainting as metrics
from vit_jax.tools import outpaint_grid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------------------------
# Metrics.
# ----------------------------------------------------------------------------------------------------------------
def test_psnr_hand_computed():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 8, 8, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(scale=0.1, size=x.shape), 0, 1).astype(np.float32)
    want = [10 * np.log10(1.0 / np.mean((x[i].astype(np.float64) - y[i]) ** 2)) for i in range(3)]
    np.testing.assert_allclose(np.asarray(metrics.psnr(jnp.asarray(x), jnp.asarray(y))), want, rtol=1e-5)
    # Masked: only the pixels where the mask is 1 (the outer ring).
    mask = np.ones((1, 8, 8, 1), np.float32)
    mask[:, 2:6, 2:6] = 0
    sel = mask[0, ..., 0] > 0
    want = [10 * np.log10(1.0 / np.mean((x[i][sel].astype(np.float64) - y[i][sel]) ** 2)) for i in range(3)]
    np.testing.assert_allclose(np.asarray(metrics.psnr(jnp.asarray(x), jnp.asarray(y), mask=jnp.asarray(mask))),
                               want, rtol=1e-5)
    # A uniform error of 0.1 everywhere: 20 dB exactly; data range 255 with error 25.5: also 20 dB.
    np.testing.assert_allclose(float(metrics.psnr(jnp.zeros((1, 4, 4, 3)), jnp.full((1, 4, 4, 3), 0.1))[0]), 20.0,
                               rtol=1e-5)
    np.testing.assert_allclose(float(metrics.psnr(jnp.zeros((1, 4, 4, 3)), jnp.full((1, 4, 4, 3), 25.5), 255.0)[0]),
                               20.0, rtol=1e-5)


def ssim_reference(x, y, data_range=1.0):
    """SSIM from its definition: a loop over every valid 11x11 window and channel, Gaussian weights (sigma 1.5)."""
    r = np.arange(11) - 5.0
    g = np.exp(-r ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    h, wd, ch = x.shape
    vals = []
    for i in range(h - 10):
        for j in range(wd - 10):
            for c in range(ch):
                a, b = x[i:i + 11, j:j + 11, c].astype(np.float64), y[i:i + 11, j:j + 11, c].astype(np.float64)
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * a * a).sum() - ma ** 2, (w * b * b).sum() - mb ** 2
                cov = (w * a * b).sum() - ma * mb
                vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return np.mean(vals)


def test_ssim_matches_definition():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(2, 16, 15, 3)).astype(np.float32)
    y = np.clip(x * 0.8 + rng.normal(scale=0.05, size=x.shape) + 0.1, 0, 1).astype(np.float32)
    got = np.asarray(metrics.ssim(jnp.asarray(x), jnp.asarray(y)))
    np.testing.assert_allclose(got, [ssim_reference(x[i], y[i]) for i in range(2)], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics.ssim(jnp.asarray(x), jnp.asarray(x))), 1.0, rtol=1e-6)
    # Constant images a and b: sigma = 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 0.3, 0.6, 0.01 ** 2
    got = float(metrics.ssim(jnp.full((1, 12, 12, 1), a), jnp.full((1, 12, 12, 1), b))[0])
    np.testing.assert_allclose(got, (2 * a * b + c1) / (a * a + b * b + c1), rtol=1e-5)


def test_frechet_distance_closed_forms():
    # 1-D Gaussians: (m1 - m2)^2 + v1 + v2 - 2 sqrt(v1 v2).
    np.testing.assert_allclose(metrics.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]),
                                                        np.array([[9.0]])), 4.0 + 4 + 9 - 2 * 6, rtol=1e-9)
    # Diagonal covariances: sum over dimensions of the same.
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 2.0, 3.0]), np.array([4.0, 2.0, 0.5])
    want = np.sum((m1 - m2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    np.testing.assert_allclose(metrics.frechet_distance(m1, np.diag(v1), m2, np.diag(v2)), want, rtol=1e-9)
    # Rotated (non-diagonal) covariances: FID is invariant to a common rotation.
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    np.testing.assert_allclose(metrics.frechet_distance(q @ m1, q @ np.diag(v1) @ q.T, q @ m2,
                                                        q @ np.diag(v2) @ q.T), want, rtol=1e-6)
    f = np.random.default_rng(1).normal(size=(200, 4))
    assert abs(metrics.fid_from_features(f, f)) < 1e-6
    assert metrics.fid_from_features(f, f + 1.0) == pytest.approx(4.0, rel=1e-6)  # Shift by 1 in 4 dims.


def test_inception_score():
    assert metrics.inception_score(np.zeros((20, 10)), splits=2)[0] == pytest.approx(1.0)
    # Confident and evenly spread over K = 5 classes: IS = K.
    logits = np.full((50, 5), -100.0)
    logits[np.arange(50), np.arange(50) % 5] = 100.0
    mean, std = metrics.inception_score(logits, splits=5)
    assert mean == pytest.approx(5.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------------------------------------------
def test_builtin_photographs_pipeline():
    assert {'outpaint_samples', 'flat_folder:'} <= set(data.list_datasets())
    cfg = dict(value_range=(0.0, 1.0))
    ds = data.get_dataset('outpaint_samples', 'train', data_config=cfg, batch_size=8, image_size=32, train=True)
    b = next(iter(ds))
    assert b['image'].shape == (8, 32, 32, 3) and b['target'].shape == (8, 48, 48, 3)
    np.testing.assert_array_equal(b['target'][:, 8:40, 8:40], b['image'])  # The input is the target's centre.
    assert 0.0 <= b['target'].min() and b['target'].max() <= 1.0 and b['target'].std() > 0.05
    b2 = next(iter(data.get_dataset('outpaint_samples', 'train', data_config=cfg, batch_size=8, image_size=32,
                                    train=True)))
    np.testing.assert_array_equal(b['target'], b2['target'])  # Deterministic.
    ev = data.get_dataset('outpaint_samples', 'test', data_config=cfg, batch_size=64, image_size=(32, 32),
                          train=False)
    assert ev.num_examples == outdata.SAMPLES_TEST and ev.num_batches == 4
    e = next(iter(ev))
    np.testing.assert_array_equal(e['target'][:, 8:40, 8:40], e['image'])
    # Test crops never overlap the training region: they come from the right strip of each photograph.
    assert outdata.SAMPLES_SPLIT_COL + outdata.SAMPLES_GAP + 112 == 640
    assert outdata.sample_crops('test').shape == (outdata.SAMPLES_TEST, 96, 96, 3)


def test_flat_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (('train', 3), ('test', 2)):
        os.makedirs(tmp_path / split / 'sub', exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), np.uint8)).save(tmp_path / split / 'sub' / f'{i}.png')
    (tmp_path / 'test' / 'notes.txt').write_text('not an image')
    cfg = dict(value_range=(0.0, 1.0), train_pp=outdata.OUTPAINT_TRAIN_PP, eval_pp=outdata.OUTPAINT_EVAL_PP)
    ev = data.get_dataset(f'flat_folder:{tmp_path}', 'test', data_config=cfg, batch_size=4, image_size=16,
                          train=False)
    b = next(iter(ev))
    assert ev.num_examples == 2 and b['mask'].tolist() == [True, True, False, False]
    assert b['target'].shape == (4, 24, 24, 3)
    np.testing.assert_array_equal(b['target'][:, 4:20, 4:20], b['image'])
    with pytest.raises(FileNotFoundError, match='flat_folder'):
        data.get_dataset(f'flat_folder:{tmp_path}', 'validation', data_config=cfg, batch_size=4, image_size=16,
                         train=False)


def test_pixel_stats():
    mean, std = outdata.pixel_stats('outpaint_samples', 'test', size=32, max_examples=64)
    assert 0.2 < mean < 0.8 and 0.05 < std < 0.5


# ----------------------------------------------------------------------------------------------------------------
# Objective pieces (the full GAN step is trained in test_queryotr_train.py).
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def objective():
    c = config_utils.load(os.path.join(ROOT, 'configs/queryotr_tiny.py:tiny'))
    return objectives.build(c, train.build_model(c))


def test_reconstruction_loss_is_outer_ring_mse_in_normalised_space(objective):
    rng = np.random.default_rng(0)
    target = rng.uniform(size=(2, 48, 48, 3)).astype(np.float32)
    fake = rng.uniform(size=(2, 48, 48, 3)).astype(np.float32)
    got = float(objective.rec_loss(jnp.asarray(fake), jnp.asarray(target)))
    outer = np.ones((48, 48), bool)
    outer[8:40, 8:40] = False
    std = objective.model.output_std
    want = np.mean(((fake - target)[:, outer] / std) ** 2)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    fake2 = fake.copy()
    fake2[:, 8:40, 8:40] = 0.0  # The centre does not count.
    np.testing.assert_allclose(float(objective.rec_loss(jnp.asarray(fake2), jnp.asarray(target))), got, rtol=1e-6)
    assert objective.perc_name == 'perceptual_loss_random_features'  # No VGG weights: named as a stand-in.
    assert (objective.rec_weight, objective.adv_weight, objective.perc_weight) == (5.0, 1.0, 10.0)


def test_objective_checks_batches(objective):
    with pytest.raises(ValueError, match="needs batches with 'target'"):
        objective.check_batch({'image': np.zeros((1, 32, 32, 3))})
    with pytest.raises(ValueError, match='outpaint_scale'):
        objective.check_batch({'image': np.zeros((1, 32, 32, 3)), 'target': np.zeros((1, 64, 64, 3))})
    objective.check_batch({'image': np.zeros((1, 32, 32, 3)), 'target': np.zeros((1, 48, 48, 3))})


def test_adam_is_pytorch_adam_with_coupled_weight_decay_and_offset_lr_mult():
    """optimizer.name='adam' + weight_decay (optim.make) = torch.optim.Adam(betas=(0, 0.99), weight_decay=1e-4); the
    objective gives params whose path contains conv_offset_mask 0.1x the learning rate (the official param group
    with lr_scale 0.1)."""
    cfg = config_utils.load(os.path.join(ROOT, 'configs/queryotr_tiny.py:tiny'))
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5,)).astype(np.float32)
    grads = [rng.normal(size=(5,)).astype(np.float32) for _ in range(4)]
    params = {'a': jnp.asarray(w0), 'conv_offset_mask': {'kernel': jnp.asarray(w0)}}
    gen = objectives.build(cfg, train.build_model(cfg)).groups()[-1]
    assert gen.name == 'model' and gen.optimizer['lr_mults'] == (('conv_offset_mask', 0.1),)
    tx, _ = optim.make(cfg, params, 10, optimizer=gen.optimizer, schedule=lambda s: 1e-2)
    state = tx.init(params)
    p = params
    for g in grads:
        upd, state = tx.update({'a': jnp.asarray(g), 'conv_offset_mask': {'kernel': jnp.asarray(g)}}, state, p)
        p = optax.apply_updates(p, upd)
    for lr, got in ((1e-2, p['a']), (1e-3, p['conv_offset_mask']['kernel'])):
        t = torch.nn.Parameter(torch.from_numpy(w0.copy()))
        opt = torch.optim.Adam([t], lr=lr, betas=(0.0, 0.99), weight_decay=1e-4)
        for g in grads:
            opt.zero_grad()
            t.grad = torch.from_numpy(g.copy())
            opt.step()
        np.testing.assert_allclose(np.asarray(got), t.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_objective_rejects_non_outpainting_models():
    c = config_utils.base_config()
    c.model = dict(name='ViT-Ti/16', num_classes=10, image_size=32, patch_size=4)
    c.objective = dict(type='outpainting')
    with pytest.raises(ValueError, match='outpainting model'):
        objectives.build(c, train.build_model(c))


# ----------------------------------------------------------------------------------------------------------------
# Grid tool.
# ----------------------------------------------------------------------------------------------------------------
def test_make_grid_layout(tmp_path):
    inputs = np.full((2, 4, 4, 3), 1.0)
    outputs = np.zeros((2, 8, 8, 3))
    targets = np.full((2, 8, 8, 3), 0.25)
    g = outpaint_grid.make_grid(inputs, outputs, targets, margin=1)
    assert g.shape == (2 * 9 + 1, 3 * 9 + 1, 3) and g.dtype == np.uint8
    assert g[1 + 2, 1 + 2, 0] == 255 and g[1, 1, 0] == 128  # Input centred on grey.
    assert g[1, 10, 0] == 0 and g[1, 19, 0] == 64  # Output, then ground truth.
    path = outpaint_grid.write_grid(str(tmp_path / 'g' / 'grid.png'), inputs, outputs, targets, upscale=2)
    from PIL import Image

    assert Image.open(path).size == (3 * 16 + 4 * 2, 2 * 16 + 3 * 2)  # Cells 8 px x 2; margins 2 px.


def test_paper_configs():
    for arg, steps_per_epoch in (('scenery', 79), ('building', 250), ('wikiart', 711)):
        c = config_utils.load(os.path.join(ROOT, f'configs/queryotr.py:{arg}'))
        config_utils.validate(c)
        assert c.model.name == 'QueryOTR' and c.batch_size == 64
        assert c.total_steps == 300 * steps_per_epoch
        assert c.objective.warmup_steps == c.lr.warmup_steps == 10 * steps_per_epoch
        assert (c.objective.rec_weight, c.objective.adv_weight, c.objective.perc_weight) == (5.0, 1.0, 10.0)
        assert (c.optimizer.name, c.optimizer.b1, c.optimizer.b2, c.optimizer.weight_decay) == ('adam', 0.0, 0.99,
                                                                                              1e-4)
        assert c.lr.base == 1e-4 and c.lr.decay == 'constant' and c.objective.offset_lr_mult == 0.1
    with pytest.raises(ValueError, match='scenery'):
        config_utils.load(os.path.join(ROOT, 'configs/queryotr.py:places'))
