"""Faults in checkpoints, image folders and predict (issue 22): each case is handled, named in a warning, and safe.

Checkpoints: incomplete or foreign step directories are ignored with a warning (the latest complete step is
restored); a damaged step is set aside (renamed, never deleted) so the retrained step is saved again; flipped
bytes in a checkpoint's data are caught by the checksum manifest and the previous good step is used.
Image folders: directory symlinks never repeat or relabel images; non-UTF-8 names, empty class folders and
unreadable sub-directories are reported, not fatal. One decode path (EXIF orientation applied) for training,
evaluation and predict. Predict streams its inputs and names permission errors.
"""

import glob
import io
import logging
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vit_jax import checkpoint, data, predict, train
from vit_jax.objectives.base import TrainState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))
from _helpers import tiny_config  # noqa: E402


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints.
# ----------------------------------------------------------------------------------------------------------------
def _state(v):
    return TrainState(step=jnp.asarray(v, jnp.int32), params={'w': jnp.arange(20000, dtype=jnp.float32) * v},
                      opt_state={}, model_state={}, rng=jax.random.PRNGKey(0), ema_params=None)


def _write_steps(workdir, steps=(50, 60)):
    mngr = checkpoint.Manager(str(workdir), keep=5)
    for s in steps:
        mngr.save(s, _state(s), force=True)
    mngr.close()
    return os.path.join(str(workdir), 'checkpoints')


def _messages(caplog):
    return '\n'.join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def _truncate_all(step_dir):
    """Truncates every file of a step to half its size (a crash while copying, a full disk)."""
    for p in glob.glob(os.path.join(step_dir, '**'), recursive=True):
        if os.path.isfile(p) and not p.endswith('.json'):
            with open(p, 'r+b') as f:
                f.truncate(os.path.getsize(p) // 2)


def _flip_data_byte(step_dir):
    """Flips one byte in the middle of the largest file of a step (the array data), keeping its size."""
    files = [p for p in glob.glob(os.path.join(step_dir, '**'), recursive=True) if os.path.isfile(p)]
    path = max(files, key=os.path.getsize)
    with open(path, 'r+b') as f:
        f.seek(os.path.getsize(path) // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    return path


def test_incomplete_and_foreign_step_directories_are_ignored_with_a_warning(tmp_path, caplog):
    ckpt_dir = _write_steps(tmp_path / 'wd')
    os.makedirs(os.path.join(ckpt_dir, '70'))  # An empty step directory (e.g. a crash in mkdir).
    shutil.copytree(os.path.join(ckpt_dir, '60'), os.path.join(ckpt_dir, '80'))
    shutil.rmtree(os.path.join(ckpt_dir, '80', 'default'))  # A step without its item.
    os.makedirs(os.path.join(ckpt_dir, 'notes'))  # Foreign.
    with caplog.at_level(logging.WARNING):
        mngr = checkpoint.Manager(str(tmp_path / 'wd'), keep=5)
        state, step = mngr.restore(_state(0))
        mngr.close()
    assert step == 60
    np.testing.assert_array_equal(np.asarray(state.params['w']), np.arange(20000, dtype=np.float32) * 60)
    msg = _messages(caplog)
    for name in ('70', '80', 'notes'):
        assert os.path.join(ckpt_dir, name) in msg, msg
    assert 'incomplete' in msg
    # Nothing was deleted: the incomplete directories were renamed aside.
    assert any(d.startswith('70.incomplete-') for d in os.listdir(ckpt_dir))
    assert any(d.startswith('80.incomplete-') for d in os.listdir(ckpt_dir))
    assert os.path.isdir(os.path.join(ckpt_dir, 'notes'))
    # Loading for inference (read-only: nothing renamed) also picks the latest complete step.
    os.makedirs(os.path.join(ckpt_dir, '90'))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert checkpoint.find_checkpoint_step(str(tmp_path / 'wd')) == os.path.join(ckpt_dir, '60')
        np.testing.assert_array_equal(checkpoint.load_params(str(tmp_path / 'wd'))['w'], np.arange(20000) * 60.0)
    assert '90' in _messages(caplog) and os.path.isdir(os.path.join(ckpt_dir, '90'))


def test_flipped_bytes_in_a_checkpoint_are_detected_and_the_previous_step_used(tmp_path, caplog):
    ckpt_dir = _write_steps(tmp_path / 'wd')
    _flip_data_byte(os.path.join(ckpt_dir, '60'))
    # Read-only loading (predict, load_params): the damaged step is named and the previous one used.
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(checkpoint.load_params(str(tmp_path / 'wd'))['w'], np.arange(20000) * 50.0)
    assert os.path.join(ckpt_dir, '60') in _messages(caplog) and 'checksum' in _messages(caplog)
    assert os.path.isfile(os.path.join(ckpt_dir, '60', checkpoint.CHECKSUMS_FILE))
    with pytest.raises(ValueError, match='checksum'):  # A step named explicitly is never replaced by another.
        checkpoint.load_params(os.path.join(ckpt_dir, '60'))
    # Resuming: the same, and the damaged step is set aside (renamed, not deleted).
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        mngr = checkpoint.Manager(str(tmp_path / 'wd'), keep=5)
        state, step = mngr.restore(_state(0))
    assert step == 50 and mngr.latest_step() == 50
    np.testing.assert_array_equal(np.asarray(state.params['w']), np.arange(20000, dtype=np.float32) * 50)
    assert 'step 60' in _messages(caplog)
    assert [d for d in os.listdir(ckpt_dir) if d.startswith('60.corrupt-')]
    # The step can be written again.
    assert mngr.save(60, _state(60), force=True)
    mngr.close()
    np.testing.assert_array_equal(checkpoint.load_params(str(tmp_path / 'wd'))['w'], np.arange(20000) * 60.0)


def test_checkpoints_without_a_manifest_still_load(tmp_path):
    ckpt_dir = _write_steps(tmp_path / 'wd', steps=(5,))
    os.remove(os.path.join(ckpt_dir, '5', checkpoint.CHECKSUMS_FILE))  # As written before manifests existed.
    np.testing.assert_array_equal(checkpoint.load_params(str(tmp_path / 'wd'))['w'], np.arange(20000) * 5.0)
    mngr = checkpoint.Manager(str(tmp_path / 'wd'))
    assert mngr.restore(_state(0))[1] == 5
    mngr.close()


def test_a_model_mismatch_sets_nothing_aside(tmp_path):
    """A checkpoint that does not fit the model is not damage: no directory is renamed."""
    ckpt_dir = _write_steps(tmp_path / 'wd')
    other = TrainState(step=jnp.asarray(0), params={'w': jnp.zeros(7)}, opt_state={}, model_state={},
                       rng=jax.random.PRNGKey(0), ema_params=None)
    mngr = checkpoint.Manager(str(tmp_path / 'wd'))
    with pytest.raises(RuntimeError, match='could be restored'):
        mngr.restore(other)
    mngr.close()
    assert sorted(os.listdir(ckpt_dir)) == ['50', '60']


def test_a_damaged_step_is_set_aside_so_it_can_be_saved_again(tmp_path, caplog):
    ckpt_dir = _write_steps(tmp_path / 'wd')
    _truncate_all(os.path.join(ckpt_dir, '60'))
    with caplog.at_level(logging.WARNING):
        mngr = checkpoint.Manager(str(tmp_path / 'wd'), keep=5)
        assert mngr.restore(_state(0))[1] == 50
    assert mngr.latest_step() == 50  # So the trainer saves step 60 again when it gets there.
    aside = [d for d in os.listdir(ckpt_dir) if d.startswith('60.corrupt-')]
    assert len(aside) == 1 and os.listdir(os.path.join(ckpt_dir, aside[0]))  # Renamed with its files, not deleted.
    assert 'step 60' in _messages(caplog) and aside[0] in _messages(caplog)
    assert mngr.save(60, _state(61), force=True)
    mngr.close()
    np.testing.assert_array_equal(checkpoint.load_params(str(tmp_path / 'wd'))['w'], np.arange(20000) * 61.0)


@pytest.mark.slow
def test_damaged_final_checkpoint_is_set_aside_and_saved_again(tmp_path, caplog):
    """Rerunning a finished run whose final checkpoint was damaged retrains that step and really saves it."""
    c = tiny_config(4)
    c.log_every = 2
    c.checkpoint_every = 2
    c.evals = {}
    train.train_and_evaluate(c, str(tmp_path))
    ckpt_dir = os.path.join(str(tmp_path), 'checkpoints')
    _truncate_all(os.path.join(ckpt_dir, '4'))
    with caplog.at_level(logging.WARNING):
        result = train.train_and_evaluate(c, str(tmp_path))
    assert result['step'] == 4 and result['checkpoint'] == os.path.join(ckpt_dir, '4')
    assert 'step 4' in _messages(caplog)
    assert [d for d in os.listdir(ckpt_dir) if d.startswith('4.corrupt-')]
    got = checkpoint.load_params(str(tmp_path))  # What predict loads: the retrained weights, verified.
    want = jax.device_get(result['state'].params)
    for k, v in checkpoint.flatten(want).items():
        np.testing.assert_array_equal(checkpoint.flatten(got)[k], np.asarray(v), err_msg=k)


# ----------------------------------------------------------------------------------------------------------------
# Image folders.
# ----------------------------------------------------------------------------------------------------------------
def _png(path, value=0, size=(4, 4)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


def _listing(root, split='train', **cfg):
    """{relative path: class name} of the examples an image folder gives for a split."""
    from vit_jax.data import datasets

    src = datasets.folder(split, arg=str(root), data_config={'check_images': True, **cfg})
    out = {}
    for ex in src.dataset.as_numpy_iterator():
        rel = os.path.relpath(ex['image_path'].decode(), str(root))
        assert rel not in out, f'{rel} listed twice'
        out[rel] = src.class_names[int(ex['label'])]
    return out


def test_directory_symlinks_never_repeat_or_relabel_images(tmp_path, caplog):
    root, ext = tmp_path / 'images', tmp_path / 'elsewhere'
    _png(root / 'train' / 'cat' / 'a.png')
    _png(root / 'train' / 'cat' / 'sub' / 'b.png')
    _png(root / 'train' / 'dog' / 'c.png')
    _png(ext / 'more_cats' / 'd.png')
    _png(ext / 'birds' / 'e.png')
    os.symlink('.', root / 'train' / 'cat' / 'loop')  # A cycle.
    os.symlink('..', root / 'train' / 'cat' / 'sub' / 'up')  # Back up to the class directory.
    os.symlink('../..', root / 'train' / 'dog' / 'top')  # Up to train/: every class's images.
    os.symlink(root / 'train' / 'cat' / 'sub', root / 'train' / 'dog' / 'cats')  # Into another class.
    os.symlink(ext / 'more_cats', root / 'train' / 'cat' / 'more')  # Out of the tree: read once.
    os.symlink(ext / 'more_cats', root / 'train' / 'dog' / 'more_again')  # The same directory again.
    os.symlink(ext / 'birds', root / 'train' / 'bird')  # A class directory that is a link: a normal class.
    with caplog.at_level(logging.WARNING):
        got = _listing(root)
    assert got == {'train/bird/e.png': 'bird', 'train/cat/a.png': 'cat', 'train/cat/sub/b.png': 'cat',
                   'train/cat/more/d.png': 'cat', 'train/dog/c.png': 'dog'}
    msg = _messages(caplog)
    for link in ('cat/loop', 'cat/sub/up', 'dog/top', 'dog/cats', 'dog/more_again'):
        assert link in msg, (link, msg)
    assert 'cat/more' in msg  # The link that was followed is named too.


def _touch_bytes_name(directory, name: bytes, content: bytes):
    path = os.path.join(os.fsencode(str(directory)), name)
    with open(path, 'wb') as f:
        f.write(content)
    return path


def test_non_utf8_file_names_are_skipped_and_named(tmp_path, caplog):
    root = tmp_path / 'images'
    _png(root / 'train' / 'cat' / 'a.png')
    _png(root / 'train' / 'dog' / 'b.png')
    png = (root / 'train' / 'cat' / 'a.png').read_bytes()
    _touch_bytes_name(root / 'train' / 'cat', b'caf\xe9.png', png)  # Latin-1, not UTF-8.
    os.makedirs(os.path.join(os.fsencode(str(root / 'train')), b'd\xf6g'))  # A class directory too.
    _touch_bytes_name(os.path.join(os.fsencode(str(root / 'train')), b'd\xf6g').decode('utf-8', 'surrogateescape'),
                      b'x.png', png)
    with caplog.at_level(logging.WARNING):
        got = _listing(root)
    assert got == {'train/cat/a.png': 'cat', 'train/dog/b.png': 'dog'}
    msg = _messages(caplog)
    assert repr(b'caf\xe9.png')[2:-1] in msg and repr(b'd\xf6g')[2:-1] in msg, msg
    assert 'UTF-8' in msg


def test_empty_class_folders_are_not_classes(tmp_path, caplog):
    root = tmp_path / 'images'
    _png(root / 'train' / 'cat' / 'a.png')
    _png(root / 'train' / 'dog' / 'b.png')
    (root / 'train' / 'empty').mkdir()
    (root / 'train' / 'notes_only').mkdir()
    (root / 'train' / 'notes_only' / 'readme.txt').write_text('no images here')
    _png(root / 'test' / 'dog' / 'c.png')
    (root / 'test' / 'empty').mkdir()
    with caplog.at_level(logging.WARNING):
        got = _listing(root)
        assert _listing(root, 'test') == {'test/dog/c.png': 'dog'}
    assert got == {'train/cat/a.png': 'cat', 'train/dog/b.png': 'dog'}
    assert str(root / 'train' / 'empty') in _messages(caplog)
    assert str(root / 'train' / 'notes_only') in _messages(caplog)
    from vit_jax.data import datasets

    assert datasets.folder('train', arg=str(root), data_config={}).class_names == ['cat', 'dog']


def test_unreadable_sub_directories_are_reported(tmp_path, caplog, monkeypatch):
    # Tests run as root here, so chmod cannot make a directory unreadable: os.scandir raises for it instead.
    root = tmp_path / 'images'
    _png(root / 'train' / 'cat' / 'a.png')
    _png(root / 'train' / 'cat' / 'locked' / 'b.png')
    _png(root / 'train' / 'dog' / 'c.png')
    locked = str(root / 'train' / 'cat' / 'locked')
    real_scandir = os.scandir

    def scandir(path='.'):
        if os.fsdecode(path).rstrip('/') == locked:
            raise PermissionError(13, 'Permission denied', locked)
        return real_scandir(path)

    monkeypatch.setattr(os, 'scandir', scandir)
    with caplog.at_level(logging.WARNING):
        got = _listing(root)
    assert got == {'train/cat/a.png': 'cat', 'train/dog/c.png': 'dog'}
    assert locked in _messages(caplog) and 'ermission denied' in _messages(caplog)


def test_flat_and_dense_folders_survive_links_and_non_utf8_names(tmp_path, caplog):
    """Beyond the issue: the class-less image folders (outpainting) and dense (segmentation) folders."""
    from vit_jax.data import dense, outpainting

    flat = tmp_path / 'flat'
    _png(flat / 'train' / 'a.png')
    _png(flat / 'train' / 'sub' / 'b.png')
    os.symlink('..', flat / 'train' / 'sub' / 'up')
    os.symlink('.', flat / 'train' / 'loop')
    _touch_bytes_name(flat / 'train', b'\xff.png', (flat / 'train' / 'a.png').read_bytes())
    with caplog.at_level(logging.WARNING):
        src = outpainting.flat_folder('train', arg=str(flat), data_config={})
    paths = sorted(os.path.relpath(ex['image_path'].decode(), str(flat)) for ex in src.dataset.as_numpy_iterator())
    assert paths == ['train/a.png', 'train/sub/b.png']
    assert 'sub/up' in _messages(caplog) and 'loop' in _messages(caplog) and r'\xff.png' in _messages(caplog)
    root = tmp_path / 'dense'
    _png(root / 'train' / 'images' / 'x.png')
    _png(root / 'train' / 'labels' / 'x.png')
    _touch_bytes_name(root / 'train' / 'images', b'\xe9.png', (root / 'train' / 'images' / 'x.png').read_bytes())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        src = dense.dense_folder('train', arg=str(root), data_config={'num_classes': 2})
    assert src.num_examples == 1 and r'\xe9.png' in _messages(caplog)


# ----------------------------------------------------------------------------------------------------------------
# One decode path: EXIF orientation in training, evaluation and predict.
# ----------------------------------------------------------------------------------------------------------------
def _exif_jpeg(path, pixels, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, 'JPEG', quality=95, subsampling=0, exif=exif.tobytes())


def _upright_scene():
    """A smooth 24x16 (h x w) picture whose halves differ, so a turned or mirrored copy is far from it."""
    y, x = np.mgrid[0:24, 0:16]
    return np.stack([y * 10, x * 15, np.where(y < 12, 40, 220)], -1).astype(np.uint8)


def test_exif_orientation_is_applied_in_training_evaluation_and_predict(tmp_path):
    from PIL import ImageOps

    from vit_jax.data import preprocess

    up = _upright_scene()
    root = tmp_path / 'images'
    stored = {}  # What a camera writes for each orientation: pixels that the orientation turns upright.
    for o in (1, 3, 6, 8):
        im = Image.fromarray(up)
        inverse = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
                   8: Image.Transpose.ROTATE_270}[o]
        px = np.asarray(im.transpose(inverse) if inverse else im)
        stored[o] = px
        _exif_jpeg(str(root / 'train' / f'o{o}' / 'x.jpg'), px, o)
        assert np.asarray(ImageOps.exif_transpose(Image.open(root / 'train' / f'o{o}' / 'x.jpg'))).shape == up.shape
    cfg = {'value_range': (0, 255), 'eval_pp': 'resize'}
    for train_mode in (False, True):
        kw = dict(data_config={**cfg, 'train_pp': 'resize', 'flip': False}, batch_size=4, image_size=(24, 16),
                  train=train_mode, seed=0)
        batch = next(iter(data.get_dataset(f'folder:{root}', 'train', **kw)))
        for img, label in zip(batch['image'], batch['label']):
            o = (1, 3, 6, 8)[int(label)]
            diff = np.abs(img - up.astype(np.float32))
            assert diff.mean() <= 4, (train_mode, o, diff.mean())  # Upright (JPEG-close), not turned.
            pred = predict.read_image(str(root / 'train' / f'o{o}' / 'x.jpg'))
            assert pred.shape == up.shape
            assert np.abs(pred.astype(np.float32) - img).mean() <= 2, (train_mode, o)
    # The orientation parser agrees with PIL's on every value, for JPEG and PNG, little- and big-endian.
    for o in range(1, 9):
        for fmt in ('JPEG', 'PNG'):
            exif = Image.Exif()
            exif[0x0112] = o
            b = io.BytesIO()
            Image.fromarray(stored[1]).save(b, fmt, exif=exif.tobytes())
            assert int(preprocess.exif_orientation(b.getvalue())) == o, (fmt, o)
            pil = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(b.getvalue()))).convert('RGB'))
            ours = preprocess.decode_image(b.getvalue(), 3, orient=True).numpy()
            assert ours.shape == pil.shape and np.abs(ours.astype(int) - pil).mean() <= (0 if fmt == 'PNG' else 3)
    big_endian = (b'Exif\0\0MM\0\x2a\0\0\0\x08\0\x01' + b'\x01\x12\0\x03\0\0\0\x01\0\x06\0\0' + b'\0\0\0\0')
    b = io.BytesIO()
    Image.fromarray(stored[1]).save(b, 'JPEG', exif=big_endian)
    assert int(preprocess.exif_orientation(b.getvalue())) == 6
    for junk in (b'', b'\xff\xd8', b'\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM', b'GIF89a', b.getvalue()[:30]):
        assert int(preprocess.exif_orientation(junk)) == 1
    # Dense datasets keep the stored pixels (their targets are aligned with them).
    from vit_jax.data import datasets

    assert datasets.find_builtin('dense_folder:/x')[0].defaults['exif_orientation'] is False
