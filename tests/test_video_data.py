"""Video input: the built-in moving digits, clip sampling / jitter / crop / flip ops, multi-view test views, TFDS
video datasets (a tiny prepared builder) and view averaging."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
tfds = pytest.importorskip('tensorflow_datasets')

from vit_jax import data  # noqa: E402
from vit_jax.data import datasets as datasets_lib  # noqa: E402
from vit_jax.data import video  # noqa: E402


def _centroid_direction(videos):
    """Direction (0 right, 1 left, 2 down, 3 up) of the ink's centroid from the first to the last frame."""
    ink = videos[..., 0].astype(np.float64)
    mass = ink.sum((2, 3))
    pos = np.arange(ink.shape[-1])
    cx = (ink.sum(2) * pos).sum(-1) / mass
    cy = (ink.sum(3) * pos).sum(-1) / mass
    dx, dy = cx[:, -1] - cx[:, 0], cy[:, -1] - cy[:, 0]
    return np.where(np.abs(dx) > np.abs(dy), np.where(dx > 0, 0, 1), np.where(dy > 0, 2, 3)), mass


def test_moving_digits_content_and_determinism():
    a = video.moving_digits_arrays('train', num_examples=512, seed=0)
    v, y = a['videos'], a['labels']
    assert v.shape == (512, 8, 32, 32, 1) and v.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y), [128] * 4)  # Balanced directions.
    np.testing.assert_array_equal(y, a['directions'])
    got, mass = _centroid_direction(v)
    np.testing.assert_array_equal(got, y)  # The label is the direction of motion.
    assert (np.ptp(mass, axis=1) == 0).all()  # The whole digit stays on the canvas in every frame.
    again = video.moving_digits_arrays('train', num_examples=512, seed=0)
    np.testing.assert_array_equal(v, again['videos'])
    assert not np.array_equal(v, video.moving_digits_arrays('train', num_examples=512, seed=1)['videos'])
    t1 = video.moving_digits_arrays('test', num_examples=256, seed=0)
    t2 = video.moving_digits_arrays('test', num_examples=256, seed=7)
    np.testing.assert_array_equal(t1['videos'], t2['videos'])  # The test clips never depend on the seed ...
    held_out = set(datasets_lib.digits_arrays()['test'][2])
    assert set(t1['image_index']) <= held_out  # ... and use only the held-out digit images.
    assert not set(a['image_index']) & held_out
    both = video.moving_digits_arrays('test', num_examples=256, label='digit_direction')
    np.testing.assert_array_equal(both['labels'], t1['digits'] * 4 + t1['directions'])
    with pytest.raises(ValueError, match='moving_digits_label'):
        video.moving_digits_arrays('test', label='speed')


def test_moving_digits_pipeline():
    cfg = {'num_frames': 8, 'moving_digits_train_size': 64, 'moving_digits_test_size': 20}
    ds = data.get_dataset('moving_digits', 'train', data_config=cfg, batch_size=8, image_size=32, train=True)
    assert ds.num_classes == 4 and ds.class_names == ['right', 'left', 'down', 'up']
    b = next(iter(ds))
    assert b['image'].shape == (8, 8, 32, 32, 3) and b['image'].dtype == np.float32
    assert b['image'].min() == -1.0 and b['image'].max() == 1.0
    ev = data.get_dataset('moving_digits', 'test', data_config=cfg, batch_size=8, image_size=24, train=False)
    batches = list(ev)
    assert len(batches) == 3 and batches[0]['image'].shape == (8, 8, 24, 24, 3)
    assert int(sum(b['mask'].sum() for b in batches)) == 20
    labels = np.concatenate([b['label'][b['mask']] for b in batches])
    np.testing.assert_array_equal(labels, video.moving_digits_arrays('test', num_examples=20)['labels'])
    with pytest.raises(ValueError, match='cannot move'):
        data.get_dataset('moving_digits', 'test', data_config={**cfg, 'moving_digits_size': 16}, batch_size=4,
                         image_size=16, train=False)


def test_clip_sampling_rules():
    # SlowFast: floor(linspace(start, start + T*stride - 1, T)), clamped to the video.
    idx = video.clip_indices(tf.constant(300), 8, 32, tf.constant(10.0)).numpy()
    np.testing.assert_array_equal(idx, np.floor(np.linspace(10, 10 + 255, 8)).astype(int))
    np.testing.assert_array_equal(video.clip_indices(tf.constant(5), 4, 2, tf.constant(0.0)).numpy(), [0, 2, 4, 4])
    assert float(video.clip_start(tf.constant(300), 8, 32)) == 0.0  # 1 test view: SlowFast starts at frame 0.
    assert float(video.clip_start(tf.constant(300), 8, 32, view=1, num_views=2)) == 22.0  # delta * 1 / 2.
    starts = [float(video.clip_start(tf.constant(300), 8, 32, seed=tf.constant([i, 0]))) for i in range(20)]
    assert min(starts) >= 0 and max(starts) <= 44 and len(set(starts)) > 10
    seg = video.segment_indices(tf.constant(17), 4).numpy()  # Segments of (17 - 1) / 4 = 4 frames: middles.
    np.testing.assert_array_equal(seg, [2, 6, 10, 14])
    for i in range(10):
        r = video.segment_indices(tf.constant(17), 4, seed=tf.constant([i, 1])).numpy()
        assert ((r >= [0, 4, 8, 12]) & (r <= [4, 8, 12, 16])).all()
    sides = {int(video.jitter_short_side(256, 320, tf.constant([i, 2]))) for i in range(50)}
    assert min(sides) >= 256 and max(sides) <= 320 and len(sides) > 10


def test_spatial_ops_consistent_across_frames():
    frames = tf.constant(np.random.RandomState(0).randint(0, 255, (3, 20, 30, 3)), tf.float32)
    out = video.resize_short_side(frames, 10)
    assert out.shape == (3, 10, 15, 3)
    crops = [video.uniform_crop(frames, (20, 20), j, 3).numpy() for j in range(3)]
    np.testing.assert_array_equal(crops[0], frames.numpy()[:, :, 0:20])  # Left, centre, right.
    np.testing.assert_array_equal(crops[1], frames.numpy()[:, :, 5:25])
    np.testing.assert_array_equal(crops[2], frames.numpy()[:, :, 10:30])
    tall = tf.transpose(frames, [0, 2, 1, 3])  # Portrait frames: crops along the height.
    np.testing.assert_array_equal(video.uniform_crop(tall, (20, 20), 2, 3).numpy(), tall.numpy()[:, 10:30])
    crop = video.random_crop_video(frames, (8, 8), tf.constant([1, 2])).numpy()
    same = [np.argwhere(np.all(frames.numpy()[0] == crop[0, 0, 0], axis=-1))]
    assert crop.shape == (3, 8, 8, 3) and len(same[0])
    y, x = same[0][0]
    np.testing.assert_array_equal(crop, frames.numpy()[:, y:y + 8, x:x + 8])  # One window for every frame.
    flips = [video.flip_video(frames, tf.constant([i, 3])).numpy() for i in range(12)]
    for f in flips:
        assert np.array_equal(f, frames.numpy()) or np.array_equal(f, frames.numpy()[:, :, ::-1])
    assert any(np.array_equal(f, frames.numpy()[:, :, ::-1]) for f in flips)


def test_multi_view_and_score_averaging():
    vid = tf.constant(np.arange(40 * 4 * 6 * 1).reshape(40, 4, 6, 1) % 251, tf.uint8)
    views = video.multi_view(vid, num_frames=4, stride=2, crop_size=(4, 4), short_side=4, temporal_views=2,
                             spatial_crops=3).numpy()
    assert views.shape == (6, 4, 4, 4, 3)
    full = vid.numpy().astype(np.float32).repeat(3, -1)
    first = full[np.floor(np.linspace(0, 7, 4)).astype(int)]
    second = full[np.floor(np.linspace(16, 23, 4)).astype(int)]  # delta = 32, view 1 of 2 starts at 16.
    np.testing.assert_array_equal(views[0], first[:, :, 0:4])
    np.testing.assert_array_equal(views[2], first[:, :, 2:6])
    np.testing.assert_array_equal(views[4], second[:, :, 1:5])
    import jax.numpy as jnp

    logits = jnp.asarray(np.random.RandomState(0).randn(2, 3, 5), jnp.float32)
    clips = jnp.zeros((2, 3, 1, 1, 1, 3))
    scores = video.multi_view_scores(lambda x: logits.reshape(6, 5), clips)
    p = np.exp(np.asarray(logits))
    np.testing.assert_allclose(scores, (p / p.sum(-1, keepdims=True)).mean(1), rtol=1e-6)


class VitJaxTestVideos(tfds.core.GeneratorBasedBuilder):
    """A tiny TFDS video dataset: video i has 10 + i frames; frame f is constant 10 * (f + 1); label i % 2."""

    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'video': tfds.features.Video(shape=(None, 12, 16, 3)),
            'label': tfds.features.ClassLabel(num_classes=2),
        }))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {'train': self._generate_examples(6), 'test': self._generate_examples(3)}

    def _generate_examples(self, n):
        for i in range(n):
            frames = np.stack([np.full((12, 16, 3), 10 * (f + 1), np.uint8) for f in range(10 + i)])
            yield i, {'video': frames, 'label': i % 2}


def test_tfds_video_dataset(tmp_path):
    data_dir = str(tmp_path)
    VitJaxTestVideos(data_dir=data_dir).download_and_prepare()
    cfg = {'data_dir': data_dir, 'num_frames': 4, 'frame_stride': 2, 'value_range': (0, 255)}
    ds = data.get_dataset('video:vit_jax_test_videos', 'train', data_config=cfg, batch_size=2, image_size=8,
                          train=True)
    assert ds.num_classes == 2 and ds.num_examples == 6
    b = next(iter(ds))
    assert b['image'].shape == (2, 4, 8, 8, 3)
    for clip in b['image']:  # Frames in order, from the video.
        values = clip[:, 0, 0, 0]
        assert np.all(np.diff(values) >= 0) and np.all(np.isin(np.round(values), 10 * np.arange(1, 16)))
    ev = data.get_dataset('video:vit_jax_test_videos', 'test', batch_size=2, image_size=8, train=False,
                          data_config={**cfg, 'eval_pp': 'video_multi_view(1, 3)'})
    batches = list(ev)
    assert batches[0]['image'].shape == (2, 3, 4, 8, 8, 3) and int(sum(b['mask'].sum() for b in batches)) == 3
    # One clip from frame 0 (SlowFast's single test view): frames floor(linspace(0, 7, 4)) = 0, 2, 4, 7.
    np.testing.assert_allclose(batches[0]['image'][0, :, :, 0, 0, 0], [[10, 30, 50, 80]] * 3, atol=1e-3)
