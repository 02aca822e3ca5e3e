"""Input pipelines: built-in digits, TFDS (mocked and a tiny prepared builder), image folders, resume, eval padding,
per-process sharding and the error for an unprepared TFDS dataset."""

from __future__ import annotations

import os

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
tfds = pytest.importorskip('tensorflow_datasets')

from vit_jax import data  # noqa: E402
from vit_jax.data import datasets as datasets_lib  # noqa: E402
from vit_jax.data import preprocess  # noqa: E402


def _take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ---------------------------------------------------------------------------------------------------------------
# Built-in digits.


def test_digits_fixed_split():
    arrays = datasets_lib.digits_arrays()
    (xtr, _, itr), (xte, yte, ite) = arrays['train'], arrays['test']
    assert xtr.shape == (1437, 32, 32, 3) and xte.shape == (360, 32, 32, 3)
    assert xtr.dtype == np.uint8 and xtr.max() == 255 and xtr.min() == 0
    assert set(itr).isdisjoint(ite) and len(set(itr) | set(ite)) == 1797
    np.testing.assert_array_equal(np.bincount(yte, minlength=10) >= 35, True)  # Stratified: ~36 per class.
    from sklearn.datasets import load_digits

    d = load_digits()
    np.testing.assert_array_equal(xte[:, ::4, ::4, 0], np.round(d.images[ite] * 255 / 16).astype(np.uint8))
    np.testing.assert_array_equal(yte, d.target[ite])
    assert data.dataset_info('digits', 'train[:10%]')['num_examples'] == 144


def test_digits_train_batches_shapes_range_determinism():
    kw = dict(data_config={'train_pp': 'inception_crop', 'flip': True}, batch_size=16, image_size=(12, 10),
              train=True)
    ds = data.get_dataset('digits', 'train', seed=3, **kw)
    assert ds.num_classes == 10 and ds.num_examples == 1437 and ds.num_examples_local == 1437
    batches = _take(ds, 2)
    b = batches[0]
    assert set(b) == {'image', 'label'}
    assert b['image'].shape == (16, 12, 10, 3) and b['image'].dtype == np.float32
    assert b['label'].shape == (16,) and b['label'].dtype == np.int32
    assert b['image'].min() >= -1.0 and b['image'].max() <= 1.0 and b['image'].max() > 0.5
    assert 0 <= b['label'].min() and b['label'].max() <= 9
    _assert_batches_equal(batches, _take(data.get_dataset('digits', 'train', seed=3, **kw), 2))
    other = _take(data.get_dataset('digits', 'train', seed=4, **kw), 1)[0]
    assert not np.array_equal(other['label'], b['label'])
    # value_range is honoured; 'digits' defaults to no flip.
    ds01 = data.get_dataset('digits', 'train', data_config={'value_range': (0, 1), 'train_pp': 'random_shift'},
                            batch_size=8, image_size=16, train=True)
    assert ds01.config['flip'] is False and ds01.config['train_pp'] == 'random_shift'
    x = next(iter(ds01))['image']
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.shape == (8, 16, 16, 3)


def test_digits_eval_exact_padding_and_fixed_test_split():
    xte, yte, _ = datasets_lib.digits_arrays()['test']
    outs = []
    for seed in (0, 1):
        ds = data.get_dataset('digits', 'test', data_config={'value_range': (0, 255)}, batch_size=64,
                              image_size=32, train=False, seed=seed)
        batches = list(ds)
        assert len(batches) == ds.num_batches == len(ds) == 6
        outs.append(batches)
    _assert_batches_equal(*outs)  # The test split never depends on the training seed.
    batches = outs[0]
    mask = np.concatenate([b['mask'] for b in batches])
    assert mask.dtype == bool and mask.sum() == 360 and mask[:360].all() and not mask[360:].any()
    labels = np.concatenate([b['label'] for b in batches])[:360]
    images = np.concatenate([b['image'] for b in batches])
    np.testing.assert_array_equal(labels, yte)
    np.testing.assert_allclose(images[:360], xte.astype(np.float32), atol=1e-3)  # Same size: resize is identity.
    assert (images[360:] == 0).all()
    assert all(b['image'].shape == (64, 32, 32, 3) for b in batches)


def test_digits_sliced_splits_are_disjoint():
    kw = dict(data_config={'value_range': (0, 255)}, batch_size=50, image_size=32, train=False)
    a = data.get_dataset('digits', 'train[:80%]', **kw)
    b = data.get_dataset('digits', 'train[80%:]', **kw)
    assert a.num_examples + b.num_examples == 1437

    def rows(ds):
        out = []
        for batch in ds:
            out += [img.tobytes() for img, m in zip(batch['image'], batch['mask']) if m]
        return out

    ra, rb = rows(a), rows(b)
    assert len(ra) == a.num_examples and len(rb) == b.num_examples
    xtr = datasets_lib.digits_arrays()['train'][0].astype(np.float32)
    assert ra[0] == xtr[0].tobytes() and rb[0] == xtr[a.num_examples].tobytes()


def test_resume_gives_the_same_batches():
    # 144 examples, batch 32: 4.5 batches per epoch, so resuming crosses epoch boundaries.
    kw = dict(data_config={'train_pp': 'inception_crop', 'flip': True, 'shuffle_buffer': 64}, batch_size=32,
              image_size=8, train=True, seed=7)
    full = _take(data.get_dataset('digits', 'train[:10%]', **kw), 8)
    for k in (3, 5):
        resumed = _take(data.get_dataset('digits', 'train[:10%]', start_step=k, **kw), 8 - k)
        _assert_batches_equal(full[k:], resumed)
    # Every example appears once per epoch.
    ds = data.get_dataset('digits', 'train[:10%]', **{**kw, 'batch_size': 48})
    labels = np.concatenate([b['label'] for b in _take(ds, 3)])
    assert np.array_equal(np.bincount(labels, minlength=10),
                          np.bincount(datasets_lib.digits_arrays()['train'][1][:144], minlength=10))


def test_process_sharding_digits():
    kw = dict(data_config={'value_range': (0, 255)}, batch_size=32, image_size=32, train=False)
    full = data.get_dataset('digits', 'test', **kw)
    shards = [data.get_dataset('digits', 'test', process_index=p, process_count=3, **kw) for p in range(3)]
    assert [s.num_examples_local for s in shards] == [120, 120, 120]
    assert len({s.num_batches for s in shards}) == 1
    got = np.concatenate([np.concatenate([b['label'][b['mask']] for b in s]) for s in shards])
    np.testing.assert_array_equal(got, np.concatenate([b['label'][b['mask']] for b in full]))


# ---------------------------------------------------------------------------------------------------------------
# TFDS.


class VitJaxTestImages(tfds.core.GeneratorBasedBuilder):
    """A tiny real TFDS dataset: example i is a constant image of value i (sizes vary), label i % 3."""

    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(num_classes=3),
        }))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {'train': self._generate_examples(0, 23), 'test': self._generate_examples(100, 10)}

    def _generate_examples(self, start, n):
        for i in range(start, start + n):
            yield i, {'image': np.full((6 + i % 3, 9, 3), i, np.uint8), 'label': i % 3}


@pytest.fixture(scope='module')
def tiny_tfds(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp('tfds'))
    VitJaxTestImages(data_dir=data_dir).download_and_prepare()
    return data_dir


def _ids(ds):
    """Example ids (the constant pixel value) of an eval dataset built with value_range (0, 255)."""
    out = []
    for b in ds:
        out += [int(round(float(img[0, 0, 0]))) for img, m in zip(b['image'], b['mask']) if m]
    return out


def test_tfds_eval_exact_and_sharded(tiny_tfds):
    kw = dict(data_config={'data_dir': tiny_tfds, 'value_range': (0, 255)}, batch_size=4, image_size=8,
              train=False)
    ds = data.get_dataset('vit_jax_test_images', 'test', **kw)
    assert ds.num_classes == 3 and ds.num_examples == 10 and ds.num_batches == 3
    ids = _ids(ds)
    assert sorted(ids) == list(range(100, 110))
    shards = [data.get_dataset('vit_jax_test_images', 'train[:20]', process_index=p, process_count=3, **kw)
              for p in range(3)]
    assert sum(s.num_examples_local for s in shards) == 20 and all(s.num_examples == 20 for s in shards)
    assert len({s.num_batches for s in shards}) == 1 and len({len(list(s)) for s in shards}) == 1
    shard_ids = [_ids(s) for s in shards]
    assert sorted(sum(shard_ids, [])) == sorted(_ids(data.get_dataset('vit_jax_test_images', 'train[:20]', **kw)))
    assert len(set(sum(shard_ids, []))) == 20
    for s in shards:
        assert all(i < 23 for i in _ids(s))


def test_tfds_train_shards_disjoint_and_resume(tiny_tfds):
    kw = dict(data_config={'data_dir': tiny_tfds, 'value_range': (0, 255), 'train_pp': 'resize'}, batch_size=3,
              image_size=8, train=True, seed=1)
    seen = []
    for p in range(2):
        ds = data.get_dataset('vit_jax_test_images', 'train', process_index=p, process_count=2, **kw)
        n = ds.num_examples_local
        assert n in (11, 12)
        batches = _take(ds, 4)  # 12 examples: one epoch of this process's share (+1 of the next if n == 11).
        ids = [int(round(float(x[0, 0, 0]))) for b in batches for x in b['image']]
        assert len(set(ids[:n])) == n
        seen.append(set(ids[:n]))
        resumed = _take(data.get_dataset('vit_jax_test_images', 'train', process_index=p, process_count=2,
                                         start_step=2, **kw), 2)
        _assert_batches_equal(batches[2:], resumed)
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(23))


def test_tfds_mock_cifar10(tmp_path):
    data_dir = str(tmp_path)
    builder = tfds.builder('cifar10', data_dir=data_dir)  # Metadata only: splits of 24 examples, no records.
    template = tfds.core.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name='cifar10', split='train',
                                             filetype_suffix='tfrecord')
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=s, shard_lengths=[24], num_bytes=0, filename_template=template.replace(split=s))
        for s in ('train', 'test')]))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    with tfds.testing.mock_data(num_examples=24, data_dir=data_dir):
        cfg = {'data_dir': data_dir}
        ds = data.get_dataset('cifar10', 'train', data_config=cfg, batch_size=8, image_size=16, train=True)
        assert ds.num_classes == 10 and ds.num_examples == 24 and len(ds.class_names) == 10
        b = next(iter(ds))
        assert b['image'].shape == (8, 16, 16, 3) and b['label'].dtype == np.int32
        assert -1.0 <= b['image'].min() and b['image'].max() <= 1.0
        ev = data.get_dataset('cifar10', 'test', data_config={**cfg, 'eval_pp': 'resize_crop'}, batch_size=10,
                              image_size=16, train=False)
        batches = list(ev)
        assert len(batches) == 3 and sum(int(b['mask'].sum()) for b in batches) == 24


def test_unprepared_tfds_dataset_error(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError) as e:
        data.get_dataset('cifar10', 'train', data_config={'data_dir': str(tmp_path)}, batch_size=8, image_size=16,
                         train=True)
    msg = str(e.value)
    assert 'cifar10' in msg and str(tmp_path) in msg and 'tfds build cifar10' in msg
    assert 'download_and_prepare' in msg and "'digits'" in msg
    with pytest.raises(data.DatasetNotPreparedError, match='manual'):
        data.get_dataset('imagenet2012', 'train', data_config={'data_dir': str(tmp_path)}, batch_size=8,
                         image_size=16, train=True)
    with pytest.raises(ValueError, match='Did you mean: cifar10'):
        data.get_dataset('cifar_10', 'train', data_config={'data_dir': str(tmp_path)}, batch_size=8,
                         image_size=16, train=True)


# ---------------------------------------------------------------------------------------------------------------
# Image folders.


def _write_folder(root):
    from PIL import Image

    rng = np.random.default_rng(0)

    def img(mode, size=(20, 14)):
        if mode == 'L':
            return Image.fromarray(rng.integers(0, 255, size[::-1], dtype=np.uint8), 'L')
        return Image.fromarray(rng.integers(0, 255, (*size[::-1], len(mode)), dtype=np.uint8), mode)

    for split, n in (('train', 4), ('test', 2)):
        for cls in ('dog', 'cat'):  # Labels follow alphabetical order: cat=0, dog=1.
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                img('RGB').save(d / f'{i}.jpg')
            img('L').save(d / 'gray.PNG')
            img('RGBA').save(d / 'alpha.png')
            img('RGB').save(d / 'upper.JPEG')
            (d / 'notes.txt').write_text('not an image')  # Ignored (extension).
    (root / 'train' / 'cat' / 'broken.jpg').write_bytes(b'this is not a jpeg')  # Bad header: skipped at build.
    png = (root / 'train' / 'dog' / 'gray.PNG').read_bytes()
    (root / 'train' / 'dog' / 'truncated.png').write_bytes(png[:len(png) // 2])  # Fails to decode: skipped later.


def test_image_folder(tmp_path):
    root = tmp_path / 'images'
    _write_folder(root)
    name = f'folder:{root}'
    kw = dict(data_config={'value_range': (0, 1)}, batch_size=5, image_size=(10, 12))
    ev = data.get_dataset(name, 'test', train=False, **kw)
    assert ev.num_classes == 2 and ev.class_names == ['cat', 'dog'] and ev.num_examples == 10
    batches = list(ev)
    assert len(batches) == 2 and all(b['mask'].all() for b in batches)
    assert batches[0]['image'].shape == (5, 10, 12, 3) and 0 <= batches[0]['image'].min()
    assert np.bincount(np.concatenate([b['label'] for b in batches])).tolist() == [5, 5]

    tr = data.get_dataset(name, 'train', train=False, **kw)
    assert tr.num_examples == 15 and tr.num_skipped == 1  # broken.jpg (header) is left out at construction.
    batches = list(tr)
    assert sum(int(b['mask'].sum()) for b in batches) == 14  # truncated.png fails to decode and is skipped ...
    assert tr.num_skipped == 2  # ... and counted.
    train = data.get_dataset(name, 'train', train=True, **kw)
    assert next(iter(train))['image'].shape == (5, 10, 12, 3)
    # Slices of train are a fixed pseudo-random mix of the classes.
    head = data.get_dataset(name, 'train[:8]', train=False, **kw)
    assert head.num_examples == 8


def test_image_folder_errors(tmp_path):
    root = tmp_path / 'only_train'
    (root / 'train' / 'a').mkdir(parents=True)
    from PIL import Image

    Image.new('RGB', (4, 4)).save(root / 'train' / 'a' / 'x.jpg')
    with pytest.raises(FileNotFoundError, match="no 'test' directory.*train\\[:90%\\]"):
        data.get_dataset(f'folder:{root}', 'test', batch_size=2, image_size=4, train=False)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        data.get_dataset(f'folder:{tmp_path}/nope', 'train', batch_size=2, image_size=4, train=False)


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing ops and registries.


def test_preprocess_ops():
    image = tf.reshape(tf.range(20 * 30 * 3, dtype=tf.float32) % 256, [20, 30, 3])
    ex = {'image': image, 'label': tf.constant(1)}
    seed = tf.constant([1, 2], tf.int32)
    out = preprocess.build('inception_crop|flip|value_range(0, 1)', image_size=(8, 6), train=True)(ex, seed)
    assert out['image'].shape == (8, 6, 3) and float(tf.reduce_max(out['image'])) <= 1.0
    again = preprocess.build('inception_crop|flip|value_range(0, 1)', image_size=(8, 6), train=True)(ex, seed)
    np.testing.assert_array_equal(out['image'].numpy(), again['image'].numpy())
    # resize_crop in eval: short side 20 -> 16/0.8 = 20 (no resize), central 16x16 crop.
    crop = preprocess.build('resize_crop(crop_pct=0.8)', image_size=(16, 16), train=False)(ex)
    np.testing.assert_allclose(crop['image'].numpy(), image[2:18, 7:23].numpy(), atol=1e-4)
    vr = preprocess.build('value_range', image_size=(20, 30), train=False, config={'value_range': (-1, 1)})(ex)
    np.testing.assert_allclose(vr['image'].numpy(), image.numpy() / 127.5 - 1, atol=1e-6)
    assert [c.name for c in preprocess.parse('a|b(1, x=(2, 3))')] == ['a', 'b']
    assert preprocess.parse('b(1, x=(2, 3))')[0].kwargs == {'x': (2, 3)}
    with pytest.raises(ValueError, match='Did you mean: inception_crop'):
        preprocess.build('inception_crops', image_size=(8, 8), train=True)
    with pytest.raises(ValueError, match='evaluation'):
        preprocess.build('inception_crop', image_size=(8, 8), train=False)
    with pytest.raises(ValueError, match='shape'):
        data.get_dataset('digits', 'test', data_config={'eval_pp': 'value_range'}, batch_size=4, image_size=8,
                         train=False)


def test_register_dataset_plugs_in():
    name = 'vit_jax_test_squares'
    if name not in datasets_lib._DATASETS:

        @data.register_dataset(name, flip=False)
        def squares(split):
            n = {'train': 10, 'test': 4}[split]
            images = np.stack([np.full((5, 5, 3), 10 * i, np.uint8) for i in range(n)])
            return tf.data.Dataset.from_tensor_slices({'image': images, 'label': np.arange(n) % 2}), 2, n

    assert name in data.list_datasets() and 'digits' in data.list_datasets()
    ds = data.get_dataset(name, 'test', data_config={'value_range': (0, 255)}, batch_size=3, image_size=5,
                          train=False)
    assert ds.num_classes == 2 and ds.num_batches == 2
    imgs = np.concatenate([b['image'][b['mask']] for b in ds])
    np.testing.assert_allclose(imgs[:, 0, 0, 0], [0, 10, 20, 30])
    assert data.get_dataset(name, 'train', batch_size=4, image_size=5, train=True).config['flip'] is False


def test_batch_ops_plug_in():
    if 'vit_jax_test_batch_noise' not in preprocess.list_ops():

        @preprocess.register('vit_jax_test_batch_noise', random=True, batch=True)
        def noise(batch, ctx, scale=1.0):
            batch['image'] = batch['image'] + scale * tf.random.stateless_uniform(tf.shape(batch['image']),
                                                                                  ctx.seed)
            return batch

    kw = dict(data_config={'train_pp': 'resize', 'train_batch_pp': 'vit_jax_test_batch_noise(0.5)'},
              batch_size=8, image_size=8, train=True, seed=2)
    full = _take(data.get_dataset('digits', 'train', **kw), 3)
    assert full[0]['image'].max() > 1.0  # The noise was added after value_range.
    _assert_batches_equal(full[2:], _take(data.get_dataset('digits', 'train', start_step=2, **kw), 1))
    with pytest.raises(ValueError, match='batch ops'):
        data.get_dataset('digits', 'train', data_config={'train_pp': 'vit_jax_test_batch_noise'}, batch_size=8,
                         image_size=8, train=True)
