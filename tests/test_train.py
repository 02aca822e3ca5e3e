"""The trainer end to end: real training on the built-in digits, resume after SIGKILL, outputs, errors."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from _helpers import tiny_config

from vit_jax import checkpoint, config_utils, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_metrics(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def test_training_lowers_loss_and_learns_digits(tmp_path):
    """A real run on real data: the loss falls and held-out accuracy is far above chance (10%)."""
    result = train.train_and_evaluate(tiny_config(200), str(tmp_path))
    rows = [r for r in read_metrics(tmp_path) if 'train/loss' in r]
    assert rows[-1]['train/loss'] < 0.6 * rows[0]['train/loss']
    # A 2-layer, 32-wide ViT after 200 steps; the full quickstart reaches 0.98 (README).
    assert result['val/accuracy'] >= 0.80
    assert result['val/num_examples'] == 360  # The whole fixed test split, each example exactly once.
    assert os.path.exists(os.path.join(tmp_path, 'config.json'))
    assert os.path.isdir(result['checkpoint'])
    # The checkpoint's params load back (as an init_from source) and equal the final state.
    params = checkpoint.load_params(str(tmp_path))
    final = jax.device_get(result['state'].params)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(final)):
        np.testing.assert_array_equal(a, b)


def test_gradient_accumulation_matches_full_batch(tmp_path):
    c1, c2 = tiny_config(3), tiny_config(3)
    c1.evals = {}
    c2.evals = {}
    c2.optimizer.accum_steps = 4
    r1 = train.train_and_evaluate(c1, str(tmp_path / 'a'))
    r2 = train.train_and_evaluate(c2, str(tmp_path / 'b'))
    for a, b in zip(jax.tree_util.tree_leaves(r1['state'].params), jax.tree_util.tree_leaves(r2['state'].params)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def _run_cli(workdir, *extra, wait=True):
    cmd = [sys.executable, '-m', 'vit_jax.main', f'--config={ROOT}/configs/quickstart.py:tiny',
           f'--workdir={workdir}', '--config.tensorboard=False', *extra]
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)


def test_kill_and_resume_reproduces_uninterrupted_run(tmp_path):
    """SIGKILL after the first checkpoint; the same command resumes and ends with identical parameters."""
    # 150 steps: long enough after the first checkpoint that the kill lands mid-run on a quiet machine too.
    settings = ('--config.total_steps=150', '--config.checkpoint_every=10', '--config.log_every=5',
                '--config.model.num_layers=1', '--config.model.hidden_size=32', '--config.model.mlp_dim=64')
    full = _run_cli(tmp_path / 'full', *settings)
    assert full.returncode == 0, full.stdout + full.stderr

    proc = _run_cli(tmp_path / 'killed', *settings, wait=False)
    ckpt_dir = tmp_path / 'killed' / 'checkpoints'
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpt_dir.exists() and any(
            d.isdigit() and int(d) >= 10 for d in os.listdir(ckpt_dir))):
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()]
    assert steps and max(steps) < 150, 'the run must be killed before it finished'

    resumed = _run_cli(tmp_path / 'killed', *settings)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert 'Resuming from' in resumed.stdout
    a = checkpoint.load_params(str(tmp_path / 'full'))
    b = checkpoint.load_params(str(tmp_path / 'killed'))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
    final_full = [r for r in read_metrics(tmp_path / 'full') if 'val/accuracy' in r][-1]
    final_resumed = [r for r in read_metrics(tmp_path / 'killed') if 'val/accuracy' in r][-1]
    assert final_full['val/accuracy'] == final_resumed['val/accuracy']


def test_cli_unknown_config_key_lists_close_matches(tmp_path):
    r = _run_cli(tmp_path, '--config.batch_sise=8')
    assert r.returncode == 2
    assert "Unknown config key 'batch_sise'" in r.stderr and 'batch_size' in r.stderr


def test_override_parsing_and_errors():
    c = config_utils.load(os.path.join(ROOT, 'configs/quickstart.py'))
    config_utils.override(c, 'optimizer.weight_decay', '0.1')
    config_utils.override(c, 'model.hidden_size', '64')
    config_utils.override(c, 'lr.base', '1e-3')
    assert c.optimizer.weight_decay == 0.1 and c.model.hidden_size == 64 and c.lr.base == 1e-3
    with pytest.raises(config_utils.ConfigError, match="Did you mean: momentum"):
        config_utils.override(c, 'optimizer.momentun', '0.1')
    with pytest.raises(config_utils.ConfigError, match='expects a number'):
        config_utils.override(c, 'total_steps', 'many')


def test_unknown_model_name_fails_before_compiling():
    c = tiny_config()
    c.model.name = 'ViT-Q/16'
    with pytest.raises(ValueError, match='Unknown model .*Registered models'):
        config_utils.validate(c)


def test_unprepared_tfds_dataset_says_how_to_prepare(tmp_path):
    from vit_jax import data

    c = tiny_config()
    c.dataset = 'cifar10'
    c.data.data_dir = str(tmp_path / 'empty')
    with pytest.raises(data.DatasetNotPreparedError) as e:
        train.train_and_evaluate(c, str(tmp_path / 'wd'))
    msg = str(e.value)
    assert 'cifar10' in msg and 'download_and_prepare' in msg.replace('tfds build', 'download_and_prepare')
    assert 'digits' in msg
