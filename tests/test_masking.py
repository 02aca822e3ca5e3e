"""Masking generators: BEiT blockwise (equal to a restatement of BEiT's generator, statistics, determinism),
MAE uniform, MILAN semantic-aware (Gumbel-top-k = sampling without replacement), and the tf.data ops."""

import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.data import masking


class _BeitReference:
    """A restatement of unilm/beit/masking_generator.py's MaskingGenerator (global `random`)."""

    def __init__(self, input_size, num_masking_patches, min_num_patches=4, max_num_patches=None, min_aspect=0.3,
                 max_aspect=None):
        self.height, self.width = input_size
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def _mask(self, mask, max_mask_patches):
        delta = 0
        for _ in range(10):
            target_area = random.uniform(self.min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(random.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = random.randint(0, self.height - h)
                left = random.randint(0, self.width - w)
                num_masked = mask[top:top + h, left:left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
                if delta > 0:
                    break
        return delta

    def __call__(self):
        mask = np.zeros((self.height, self.width), int)
        count = 0
        while count < self.num_masking_patches:
            budget = min(self.num_masking_patches - count, self.max_num_patches)
            delta = self._mask(mask, budget)
            if delta == 0:
                break
            count += delta
        return mask


def test_blockwise_equals_beit_generator():
    ref = _BeitReference((14, 14), 75, min_num_patches=16)
    for seed in range(50):
        random.seed(seed)
        want = ref().astype(bool)
        np.testing.assert_array_equal(masking.blockwise_mask(seed), want)


def test_blockwise_statistics():
    counts, aspects, first_areas = [], [], []
    for seed in range(400):
        m, blocks = masking.blockwise_mask(seed, (14, 14), 75, 16, 0.3, return_blocks=True)
        assert m.shape == (14, 14) and m.dtype == bool
        counts.append(int(m.sum()))
        first_areas.append(blocks[0][2] * blocks[0][3])
        for top, left, h, w in blocks:
            assert 0 < h < 14 and 0 < w < 14 and top + h <= 14 and left + w <= 14
            aspects.append(h / w)
    counts = np.array(counts)
    assert counts.max() <= 75  # Never above the target ...
    assert counts.mean() > 70 and np.mean(counts == 75) > 0.5, (counts.mean(), np.mean(counts == 75))
    # ... while the budget allows, blocks of at least ~16 patches (rounding of h and w can shave a few; near the end
    # BEiT draws the area from U(16, remaining) with reversed bounds, hence smaller last blocks); aspect ratios
    # spread over [0.3, 3.3].
    assert min(first_areas) >= 12 and np.median(first_areas) > 30
    la = np.log(aspects)
    assert la.min() < np.log(0.45) and la.max() > np.log(1 / 0.45) and abs(np.median(la)) < 0.3
    assert np.all((np.array(aspects) > 0.3 / 2) & (np.array(aspects) < 2 / 0.3))


def test_blockwise_determinism_and_seed_forms():
    a = masking.blockwise_mask(np.array([3, 7], np.int32))
    b = masking.blockwise_mask(np.array([3, 7], np.int32))
    c = masking.blockwise_mask(np.array([3, 8], np.int32))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    small = masking.blockwise_mask(0, (8, 8), num_masking_patches=25, min_num_patches=4)
    assert small.shape == (8, 8) and small.sum() <= 25


def test_random_mask_exact_count():
    for s in range(5):
        m = masking.random_mask(s, (14, 14), 0.75)
        assert m.sum() == 196 - 49
    assert not np.array_equal(masking.random_mask(0), masking.random_mask(1))
    np.testing.assert_array_equal(masking.random_mask(4), masking.random_mask(4))


def test_mask_from_shuffle_and_random_ids():
    ids = masking.random_ids_shuffle(jax.random.PRNGKey(0), 3, 16)
    mask, restore = masking.mask_from_shuffle(ids, 4)
    assert mask.shape == (3, 16) and np.all(np.asarray(mask).sum(1) == 12)
    ids, mask, restore = map(np.asarray, (ids, mask, restore))
    for b in range(3):
        assert not mask[b, ids[b, :4]].any() and mask[b, ids[b, 4:]].all()
        np.testing.assert_array_equal(ids[b][restore[b]], np.arange(16))


def test_semantic_masking_keeps_important_patches_visible():
    # Plackett-Luce: P(patch i drawn first) = w_i / sum(w). Checked on the first draw, and importance-weighted
    # patches are kept (visible) far more often than a uniform draw would keep them.
    w = jnp.array([[8.0, 4.0, 2.0, 1.0, 1.0, 0.0]])
    n = 20_000
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    ids = jax.vmap(lambda k: masking.semantic_ids_shuffle(k, w)[0])(keys)
    first = np.bincount(np.asarray(ids[:, 0]), minlength=6) / n
    np.testing.assert_allclose(first, np.asarray(w[0] / w.sum()), atol=0.015)
    # Second draw given the first is 0: probabilities of the rest renormalised (without replacement).
    sel = np.asarray(ids[:, 0]) == 0
    second = np.bincount(np.asarray(ids[sel, 1]), minlength=6) / sel.sum()
    np.testing.assert_allclose(second, [0, 0.5, 0.25, 0.125, 0.125, 0], atol=0.02)
    assert np.all(np.sort(np.asarray(ids), 1) == np.arange(6))  # Permutations: no repeats.
    mask, _ = masking.mask_from_shuffle(ids[:, None].reshape(n, 6), 2)
    assert np.asarray(mask[:, 5]).all()  # Zero importance: always masked.


def test_tfdata_ops_deterministic():
    pytest.importorskip('tensorflow')
    import tensorflow as tf

    from vit_jax.data import preprocess

    fn = preprocess.build('beit_mask(grid=14, num_masking_patches=75)|random_mask(patch_size=16, key="m2")',
                          image_size=(224, 224), train=True)
    ex = {'image': tf.zeros((224, 224, 3), tf.uint8), 'label': tf.constant(0)}
    s1 = tf.constant([1, 2], tf.int32)
    a = fn(dict(ex), s1)
    b = fn(dict(ex), s1)
    c = fn(dict(ex), tf.constant([1, 3], tf.int32))
    assert a['patch_mask'].shape == (196,) and a['patch_mask'].dtype == tf.bool
    np.testing.assert_array_equal(a['patch_mask'].numpy(), b['patch_mask'].numpy())
    assert not np.array_equal(a['patch_mask'].numpy(), c['patch_mask'].numpy())
    assert a['m2'].numpy().sum() == 147
    assert a['patch_mask'].numpy().sum() <= 75
    ev = preprocess.build('beit_mask(patch_size=16)', image_size=(224, 224), train=False)
    e1 = ev({**ex, '_index': tf.constant(5, tf.int64)})['patch_mask'].numpy()
    e2 = ev({**ex, '_index': tf.constant(5, tf.int64)})['patch_mask'].numpy()
    np.testing.assert_array_equal(e1, e2)
