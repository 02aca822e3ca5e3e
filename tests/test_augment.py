"""Augmentations of the small-data recipes: PIL parity of the image ops, statistics (mixup label mass, CutMix box
area, erasing area and rate, switching rate) and determinism; their use in the input pipeline (batch op with the
training step, repeated augmentation)."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from vit_jax.data import augment, get_dataset

RNG = np.random.RandomState(0)
IMG = RNG.randint(0, 256, (12, 10, 3)).astype(np.uint8)
IMG[:3, :3] = 40  # Some repeated values for equalize.


def _seed(i):
    return tf.constant([i, 7], tf.int32)


def _np(x):
    return np.asarray(x, np.float32)


@pytest.mark.parametrize('name,ours,pil', [
    ('autocontrast', augment.autocontrast, ImageOps.autocontrast),
    ('equalize', augment.equalize, ImageOps.equalize),
    ('invert', augment.invert, ImageOps.invert),
    ('posterize3', lambda x: augment.posterize(x, tf.constant(3)), lambda im: ImageOps.posterize(im, 3)),
    ('solarize100', lambda x: augment.solarize(x, 100.0), lambda im: ImageOps.solarize(im, 100)),
    ('color0.3', lambda x: augment.color(x, 0.3), lambda im: ImageEnhance.Color(im).enhance(0.3)),
    ('color1.7', lambda x: augment.color(x, 1.7), lambda im: ImageEnhance.Color(im).enhance(1.7)),
    ('contrast0.4', lambda x: augment.contrast(x, 0.4), lambda im: ImageEnhance.Contrast(im).enhance(0.4)),
    ('brightness1.6', lambda x: augment.brightness(x, 1.6), lambda im: ImageEnhance.Brightness(im).enhance(1.6)),
    ('sharpness1.8', lambda x: augment.sharpness(x, 1.8), lambda im: ImageEnhance.Sharpness(im).enhance(1.8)),
])
def test_pointwise_ops_match_pil(name, ours, pil):
    got = _np(ours(tf.constant(IMG, tf.float32)))
    want = np.asarray(pil(Image.fromarray(IMG)), np.float32)
    assert np.abs(got - want).max() <= 1.0, name  # PIL's integer rounding differs by at most one level.


def test_geometric_ops():
    x = tf.constant(IMG, tf.float32)
    np.testing.assert_array_equal(_np(augment.rotate(x, 0.0, (0, 0, 0))), IMG)
    np.testing.assert_array_equal(_np(augment.shear_x(x, 0.0, (0, 0, 0))), IMG)
    shifted = _np(augment.translate_x(x, 3.0, (1, 2, 3)))  # Output (x, y) samples input (x + 3, y).
    np.testing.assert_array_equal(shifted[:, :-3], IMG[:, 3:])
    np.testing.assert_array_equal(shifted[:, -3:], np.broadcast_to([1, 2, 3], shifted[:, -3:].shape))
    r = _np(augment.rotate(tf.constant(np.pad(IMG, ((0, 0), (1, 1), (0, 0))), tf.float32), 180.0, (0, 0, 0)))
    np.testing.assert_allclose(r, np.pad(IMG, ((0, 0), (1, 1), (0, 0)))[::-1, ::-1], atol=1)


def _all_ops_run(fn, n):
    outs = [_np(fn(tf.constant(IMG, tf.float32), _seed(i))) for i in range(n)]
    for o in outs:
        assert o.shape == IMG.shape and o.min() >= 0 and o.max() <= 255 and np.all(o == np.round(o))
    return outs


def test_randaugment_every_op_and_determinism():
    for op in augment.RAND_INCREASING_OPS + augment.RAND_OPS:  # Each op alone, always applied, at magnitude 9.
        out = _np(augment.randaugment_image(tf.constant(IMG, tf.float32), _seed(1), num_layers=1, prob=1.0,
                                            ops=[op]))
        assert out.shape == IMG.shape and out.min() >= 0 and out.max() <= 255, op
    f = tf.function(lambda x, s: augment.randaugment_image(x, s))
    outs = _all_ops_run(f, 12)
    np.testing.assert_array_equal(outs[3], _np(f(tf.constant(IMG, tf.float32), _seed(3))))
    assert sum(not np.array_equal(o, IMG) for o in outs) >= 6  # Two layers at p=0.5: most images change.
    assert len({o.tobytes() for o in outs}) >= 8
    none = _np(augment.randaugment_image(tf.constant(IMG, tf.float32), _seed(0), prob=0.0))
    np.testing.assert_array_equal(none, IMG)


def test_autoaugment_cifar_policy():
    assert len(augment.CIFAR10_POLICY) == 25
    f = tf.function(lambda x, s: augment.autoaugment_cifar_image(x, s))
    outs = _all_ops_run(f, 12)
    np.testing.assert_array_equal(outs[5], _np(f(tf.constant(IMG, tf.float32), _seed(5))))
    assert len({o.tobytes() for o in outs}) >= 4
    for op1, _, m1, op2, _, m2 in augment.CIFAR10_POLICY:  # Every op at its policy magnitude.
        for op, m in ((op1, m1), (op2, m2)):
            y = _np(augment._aa_op(op, augment._AA_RANGES[op][m], (128.0,) * 3)(tf.constant(IMG, tf.float32), 1.0))
            assert y.shape == IMG.shape and 0 <= y.min() and y.max() <= 255


def test_random_erasing_statistics_and_determinism():
    x = tf.zeros([32, 32, 3])
    f = tf.function(lambda s: augment.random_erasing_image(x, s, prob=1.0, mode='const') + 0.0)
    g = tf.function(lambda s: augment.random_erasing_image(tf.ones([32, 32, 3]), s, prob=1.0, mode='const'))
    fractions, rows_cols = [], []
    for i in range(200):
        erased = _np(g(_seed(i)))[..., 0] == 0
        frac = erased.mean()
        fractions.append(frac)
        ys, xs = np.nonzero(erased)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert erased.sum() == h * w  # One solid box.
        rows_cols.append(h / w)
    fractions = np.array(fractions)
    assert fractions.min() >= 0.015 and fractions.max() <= 1 / 3 + 0.05  # Area in [2%, 1/3] (rounded sides).
    assert 0.3 * 0.8 <= min(rows_cols) and max(rows_cols) <= 1 / 0.3 * 1.25
    del f
    rate = np.mean([np.any(_np(augment.random_erasing_image(tf.ones([8, 8, 3]), _seed(i), prob=0.25, mode='const'))
                           == 0) for i in range(400)])
    assert 0.18 <= rate <= 0.32  # 0.25 +- 3.3 sigma
    a = _np(augment.random_erasing_image(tf.ones([16, 16, 3]), _seed(3), prob=1.0))
    b = _np(augment.random_erasing_image(tf.ones([16, 16, 3]), _seed(3), prob=1.0))
    np.testing.assert_array_equal(a, b)
    assert np.std(a[a != 1]) > 0.5  # 'pixel' mode: N(0, 1) noise.


def _batch(b=8, h=16, w=16, k=10):
    rng = np.random.RandomState(1)
    return {'image': tf.constant(rng.rand(b, h, w, 3).astype(np.float32)),
            'label': tf.constant(np.arange(b) % k, tf.int32)}


MIX = tf.function(lambda batch, seed, **kw: augment.mixup_batch(batch, seed, 10, **kw))


def test_mixup_label_mass_and_pixels():
    batch = _batch()
    x, labels = _np(batch['image']), np.asarray(batch['label'])
    for i in range(20):
        out = augment.mixup_batch(batch, _seed(i), 10, mixup_alpha=0.8, cutmix_alpha=0.0)
        dist, img = _np(out['label_dist']), _np(out['image'])
        np.testing.assert_allclose(dist.sum(-1), 1.0, atol=1e-6)
        lam = dist[np.arange(8), labels]  # Labels are distinct from their partners' (i vs 7 - i).
        assert np.allclose(lam, lam[0])  # Batch mode: one lambda.
        np.testing.assert_allclose(dist[np.arange(8), labels[::-1]], 1 - lam, atol=1e-6)
        np.testing.assert_allclose(img, lam[0] * x + (1 - lam[0]) * x[::-1], atol=1e-5)


def test_cutmix_box_area_equals_label_mass():
    batch = _batch()
    x, labels = _np(batch['image']), np.asarray(batch['label'])
    for i in range(20):
        out = augment.mixup_batch(batch, _seed(i), 10, mixup_alpha=0.0, cutmix_alpha=1.0, mode='elem')
        dist, img = _np(out['label_dist']), _np(out['image'])
        for j in range(8):
            from_partner = np.all(img[j] == x[7 - j], -1) & ~np.all(x[j] == x[7 - j], -1)
            lam = dist[j, labels[j]]
            np.testing.assert_allclose(from_partner.mean(), 1 - lam, atol=1e-6)
            ys, xs = np.nonzero(from_partner)
            if ys.size:
                assert from_partner.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # A box.


def test_mixup_switching_and_lambda_statistics():
    batch = _batch(b=4)
    cut, lams = 0, []
    for i in range(300):
        out = MIX(batch, _seed(i), mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)
        img, dist = _np(out['image']), _np(out['label_dist'])
        lam = dist[0, 0]
        lams.append(lam)
        mixed = lam * _np(batch['image']) + (1 - lam) * _np(batch['image'])[::-1]
        cut += not np.allclose(img, mixed, atol=1e-5)
    assert 0.41 <= cut / 300 <= 0.59  # switch_prob 0.5 (+- 3 sigma)
    # Mixup alone: lambda ~ Beta(0.8, 0.8), mean 1/2, variance 1 / (4 (2 * 0.8 + 1)) = 0.096.
    lams = [_np(MIX(batch, _seed(i), mixup_alpha=0.8, cutmix_alpha=0.0)['label_dist'])[0, 0] for i in range(300)]
    assert abs(np.mean(lams) - 0.5) < 0.06 and abs(np.var(lams) - 0.096) < 0.03
    same = MIX(batch, _seed(3), mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)
    again = MIX(batch, _seed(3), mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)
    np.testing.assert_array_equal(_np(same['image']), _np(again['image']))
    off = augment.mixup_batch(batch, _seed(0), 10, prob=0.0)
    np.testing.assert_array_equal(_np(off['image']), _np(batch['image']))
    np.testing.assert_array_equal(_np(off['label_dist']), np.eye(10)[np.asarray(batch['label'])])


def test_pipeline_batch_op_with_step_and_repeated_aug():
    cfg = dict(train_pp='resize|flip|randaugment|value_range(0, 1)|random_erasing(0.25)',
               train_batch_pp='mixup(num_classes=10, off_step=2)', shuffle_buffer=64)
    ds = get_dataset('digits', 'train', data_config=cfg, batch_size=8, image_size=8, train=True, seed=3)
    batches = [b for _, b in zip(range(3), ds)]
    again = [b for _, b in zip(range(3), get_dataset('digits', 'train', data_config=cfg, batch_size=8,
                                                     image_size=8, train=True, seed=3))]
    for a, b in zip(batches, again):  # Deterministic.
        np.testing.assert_array_equal(a['image'], b['image'])
        np.testing.assert_array_equal(a['label_dist'], b['label_dist'])
    assert '_step' not in batches[0]
    for b in batches:
        np.testing.assert_allclose(b['label_dist'].sum(-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(batches[2]['label_dist'], np.eye(10)[batches[2]['label']])  # Step 2: off.
    # Repeated augmentation: consecutive examples are copies of one image (without random ops: identical).
    ra = get_dataset('digits', 'train', data_config=dict(train_pp='resize', flip=False, repeated_aug=3),
                     batch_size=9, image_size=8, train=True, seed=0)
    b = next(iter(ra))
    for i in range(0, 9, 3):
        np.testing.assert_array_equal(b['image'][i], b['image'][i + 2])
        assert b['label'][i] == b['label'][i + 1] == b['label'][i + 2]
    assert not np.array_equal(b['image'][0], b['image'][3])
