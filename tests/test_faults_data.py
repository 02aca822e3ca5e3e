"""Faults in checkpoints, image folders and predict (issue 22): each case is handled, named in a warning, and safe.

Checkpoints: incomplete or foreign step directories are ignored with a warning (the latest complete step is
restored); a damaged step is set aside (renamed, never deleted) so the retrained step is saved again; flipped
bytes in a checkpoint's data are caught by the checksum manifest and the previous good step is used.
Image folders: directory symlinks never repeat or relabel images; non-UTF-8 names, empty class folders and
unreadable sub-directories are reported, not fatal. One decode path (EXIF orientation applied) for training,
evaluation and predict. Predict streams its inputs and names permission errors.
"""

import glob
import logging
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import checkpoint, train
from vit_jax.objectives.base import TrainState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))
from test_train import tiny_config  # noqa: E402


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
