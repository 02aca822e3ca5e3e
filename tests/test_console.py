"""What a user sees and what a run records: a quiet console, one-line config errors, clean records on resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from vit_jax import config_utils, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Library log lines: absl/glog prefixes (I1205 21:44:24.18 ...), TF's C++ preamble and notices, the libtpu probe.
NOISE = re.compile(r'^[IWEF]\d{4} |InitializeLog|oneDNN|libtpu|orbax|checkpoint_manager|Traceback')


def _cli(workdir, *extra, config='configs/quickstart.py:tiny', wait=True):
    cmd = [sys.executable, '-m', 'vit_jax.main', f'--config={ROOT}/{config}', f'--workdir={workdir}', *extra]
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    for k in ('TF_CPP_MIN_LOG_LEVEL', 'GLOG_minloglevel', 'GRPC_VERBOSITY'):  # What a fresh shell has.
        env.pop(k, None)
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)


def test_quiet_console_ends_with_the_result(tmp_path):
    """The quickstart (tiny form) prints its own lines only, and its last line is the result."""
    r = _cli(tmp_path / 'wd', '--config.model.num_layers=1', '--config.model.hidden_size=32',
             '--config.model.mlp_dim=64')
    assert r.returncode == 0, r.stdout + r.stderr
    lines = (r.stdout + r.stderr).splitlines()
    assert len(lines) <= 40, '\n'.join(lines)
    assert not [ln for ln in lines if NOISE.search(ln)], '\n'.join(lines)
    out = r.stdout.splitlines()
    assert out[0].startswith('ViT-Ti/16: ') and 'parameters' in out[0] and '20 steps' in out[0]
    assert any(ln.startswith('step 10/20 |') and 'ETA' in ln for ln in out)
    assert any(ln.startswith('[eval] step 20: val/accuracy') for ln in out)
    assert any(ln.startswith('Checkpoint: ') for ln in out) and any(ln.startswith('Metrics: ') for ln in out)
    assert re.match(r'Done at step 20 in \d+m\d\ds: val/accuracy 0\.\d{4}', out[-1]), out[-1]
    # The tiny config's warm-up (50 steps) is longer than its run (20): one plain warning line says so.
    warn = [ln for ln in r.stderr.splitlines() if 'warmup_steps' in ln]
    assert len(warn) == 1 and warn[0].startswith('Warning: lr.warmup_steps=50 is not shorter than total_steps=20')


@pytest.mark.slow
def test_verbose_brings_library_logging_back(tmp_path):
    r = _cli(tmp_path / 'wd', '--verbose', '--config.total_steps=2', '--config.log_every=1',
             '--config.checkpoint_every=0', '--config.model.num_layers=1', '--config.model.hidden_size=32',
             '--config.model.mlp_dim=64', '--config.lr.warmup_steps=1')
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r'^I\d{4} .*checkpoint', r.stderr, re.M), r.stderr[-2000:]
    assert r.stdout.splitlines()[-1].startswith('Done at step 2 in')


@pytest.mark.parametrize('override,expected', [
    ('--config.model.hidden_sise=64', "has no option 'hidden_sise' (did you mean hidden_size?)"),
    pytest.param('--config.optimizer.name=adamww', "optimizer.name='adamww' is not an optimizer. Did you mean 'adamw'",
                 marks=pytest.mark.slow),  # The same path as the model option; in-process: test_config_errors_...
])
def test_cli_config_typos_are_one_line(tmp_path, override, expected):
    """The command line prints the error in one line (no traceback) and exits with status 2 before training."""
    r = _cli(tmp_path / 'wd', override)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('Config error: ') and expected in lines[0], r.stderr
    assert not os.path.exists(tmp_path / 'wd' / 'checkpoints')


def _tiny():
    return config_utils.load(os.path.join(ROOT, 'configs/quickstart.py'))


@pytest.mark.parametrize('key,value,expected', [
    ('model.hidden_sise', 64, "config.model: ViT-Ti/16 (VisionTransformer) has no option 'hidden_sise'"),
    ('model.num_clases', 10, "has no option 'num_clases' (did you mean num_classes"),
    ('optimizer.name', 'adamww', "optimizer.name='adamww' is not an optimizer. Did you mean 'adamw'"),
    ('optimizer.name', 'rmsprop', 'Choices: sgd, adam, adamw, lamb, lars.'),
    ('lr.decay', 'cosin', 'cosin'),
    ('lr.warmup', 5, 'lr.warmup'),
    ('lr.warmup_steps', -1, 'lr.warmup_steps'),
    ('optimizer.wd_mask', '(kernel', "optimizer.wd_mask='(kernel' is not a valid regex"),
    ('optimizer.accumulator_dtype', 'bfloat', "optimizer.accumulator_dtype='bfloat' is not a dtype"),
])
def test_config_errors_name_the_key(key, value, expected):
    c = _tiny()
    node = c
    *parents, last = key.split('.')
    for p in parents:
        node = node[p]
    with node.unlocked():
        node[last] = value
    with pytest.raises(config_utils.ConfigError) as e:
        config_utils.validate(c)
    msg = str(e.value)
    assert expected in msg and '\n' not in msg, msg


def test_schedule_warnings():
    c = _tiny()
    assert config_utils.schedule_warnings(c) == []  # The quickstart: 50 of 1000 steps warm up.
    c.total_steps = 40
    (w,) = config_utils.schedule_warnings(c)
    assert w.startswith('lr.warmup_steps=50 is not shorter than total_steps=40') and 'peaks at 0.0016' in w
    c.total_steps = 80
    assert 'more than half' in config_utils.schedule_warnings(c)[0]
    c.total_steps, c.lr.end = 1000, 0.1
    assert 'rises' in config_utils.schedule_warnings(c)[0]


def _rows(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def _scalars(workdir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(workdir, 'tensorboard'))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_metric_writer_drops_rows_after_the_restored_step(tmp_path):
    """A restart at step 4 after rows up to 7 (and a line cut off by the kill): each step once, in both records."""
    wd = str(tmp_path)
    w = train.MetricWriter(wd, resume_step=0)
    for s in range(1, 8):
        w.write(s, {'train/loss': 10.0 - s})
    w.write(4, {'val/accuracy': 0.5})
    w.close()
    with open(os.path.join(wd, 'metrics.jsonl'), 'a') as f:
        f.write('{"step": 8, "train/lo')  # Killed mid-write.
    time.sleep(1.1)  # Event file names carry the time in seconds: the restart's file sorts after the first.
    w = train.MetricWriter(wd, resume_step=4)
    for s in range(5, 9):
        w.write(s, {'train/loss': 100.0 + s})
    w.close()
    rows = _rows(wd)
    assert [r['step'] for r in rows] == [1, 2, 3, 4, 4, 5, 6, 7, 8]
    assert [r['train/loss'] for r in rows if r['step'] > 4] == [105.0, 106.0, 107.0, 108.0]
    assert _scalars(wd, 'train/loss') == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 6.0), (5, 105.0), (6, 106.0),
                                          (7, 107.0), (8, 108.0)]
    assert _scalars(wd, 'val/accuracy') == [(4, 0.5)]
    # A finished run started again evaluates its last step again: the old evaluation row gives way.
    time.sleep(1.1)
    w = train.MetricWriter(wd, resume_step=8, rerun_evals=True)
    w.write(8, {'val/accuracy': 0.75})
    w.close()
    assert [(r['step'], sorted(r)) for r in _rows(wd)][-2:] == [(8, ['step', 'train/loss']),
                                                               (8, ['step', 'val/accuracy'])]
    assert _scalars(wd, 'val/accuracy') == [(4, 0.5), (8, 0.75)]
    assert _scalars(wd, 'train/loss')[-1] == (8, 108.0)


@pytest.mark.slow
def test_kill_and_resume_records_each_step_once(tmp_path):
    """SIGKILL after rows past the last checkpoint were written; the resumed run's records hold each step once."""
    wd = tmp_path / 'wd'
    settings = ('--config.total_steps=40', '--config.checkpoint_every=20', '--config.log_every=2',
                '--config.model.num_layers=1', '--config.model.hidden_size=32', '--config.model.mlp_dim=64',
                '--config.lr.warmup_steps=5')
    proc = _cli(wd, *settings, wait=False)
    deadline = time.time() + 300
    ckpt_dir, seen = wd / 'checkpoints', 0
    while time.time() < deadline and proc.poll() is None:
        if (ckpt_dir / '20').exists() and (wd / 'metrics.jsonl').exists():
            seen = max([r['step'] for r in _rows(wd) if r.get('train/loss') is not None] + [0])
            # Kill once both records hold a row past the checkpoint: a row's TensorBoard event is written after its
            # JSON line, so a kill right after JSON row 22 (seen under load) can leave TensorBoard at 20; JSON row 24
            # means event 22 was written and flushed.
            if seen >= 24:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
    assert steps == [20] and seen > 20, (steps, seen)  # Rows after the last checkpoint exist.
    before = _scalars(wd, 'train/loss')
    assert max(s for s, _ in before) > 20

    r = _cli(wd, *settings)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'Resuming from' in r.stdout
    train_steps = [row['step'] for row in _rows(wd) if 'train/loss' in row]
    assert train_steps == list(range(2, 41, 2))
    tb = _scalars(wd, 'train/loss')
    assert [s for s, _ in tb] == list(range(2, 41, 2))
    # Steps up to the checkpoint keep the first run's values; the rest are the resumed run's.
    assert [v for s, v in tb if s <= 20] == [v for s, v in before if s <= 20]
    assert [s for s, _ in _scalars(wd, 'val/accuracy')] == [40]
