"""Faults on the trainer side (issue 22): non-finite updates, multi-process preemption and dead or stuck peers, the
final checkpoint and the evaluators' settings, saves on a checkpoint step, the workdir lock, config mistakes, a
changed model on resume, and strict-JSON metrics.

The data-side faults (symlinks, damaged or foreign checkpoints, EXIF, predict) are in the data helpers' tests.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import checkpoint, config_utils, lock, train
from vit_jax.objectives.base import TrainState, guard_nonfinite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))
from _helpers import tiny_config  # noqa: E402


def _steps(workdir):
    d = os.path.join(workdir, 'checkpoints')
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _finite_checkpoint(workdir, step):
    mngr = checkpoint.Manager(str(workdir))
    try:
        import orbax.checkpoint as ocp

        tree = mngr._mngr.restore(step, args=ocp.args.StandardRestore())
    finally:
        mngr.close()
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
    return all(np.all(np.isfinite(x)) for x in leaves if x.dtype.kind == 'f')


def _strict_json_rows(path):
    def refuse(name):
        raise AssertionError(f'metrics.jsonl holds a bare {name}')

    with open(path) as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


# ---- Item 1: non-finite updates ----------------------------------------------------------------------------------


def test_guard_rejects_a_nonfinite_update_or_new_state():
    """The one guard of every train step (base, outpainting, vqgan): finite loss and gradients are not enough."""
    old = TrainState(step=jnp.array(3), params={'w': jnp.ones(2)}, opt_state=({'mu': jnp.zeros(2)}, jnp.array(1)),
                     model_state={}, rng=jax.random.PRNGKey(0), ema_params={'w': jnp.ones(2)}, extra={'d': jnp.ones(1)})
    new = old.replace(step=old.step + 1, params={'w': jnp.array([2.0, jnp.nan])},
                      opt_state=({'mu': jnp.ones(2)}, jnp.array(2)), ema_params={'w': jnp.full(2, 1.5)})
    kept, finite = guard_nonfinite(old, new, jnp.float32(0.5), {'g': jnp.ones(2)})
    assert not bool(finite) and int(kept.step) == 4
    for a, b in zip(jax.tree_util.tree_leaves((kept.params, kept.opt_state, kept.ema_params, kept.extra)),
                    jax.tree_util.tree_leaves((old.params, old.opt_state, old.ema_params, old.extra))):
        np.testing.assert_array_equal(a, b)
    # A non-finite optimizer update (the new parameters may still look finite) is rejected too.
    _, finite = guard_nonfinite(old, old.replace(step=old.step + 1), jnp.float32(0.5), {'u': jnp.array([jnp.inf])})
    assert not bool(finite)
    applied, finite = guard_nonfinite(old, new.replace(params={'w': jnp.full(2, 2.0)}), jnp.float32(0.5))
    assert bool(finite) and float(applied.params['w'][0]) == 2.0


def test_nonfinite_adam_update_stops_without_saving_it(tmp_path):
    """optimizer.eps=0 (the issue's reproduction): finite loss and gradients, NaN Adam update (0/0 where a gradient
    is exactly zero) at step 1. Before the fix the step-2 checkpoint held NaN weights and was called good."""
    c = tiny_config(3)
    c.evals = {}
    c.log_every = 3
    c.checkpoint_every = 2
    c.optimizer.eps = 0.0
    with pytest.raises(FloatingPointError, match=r'Non-finite l2_updates at step 1') as e:
        train.train_and_evaluate(c, str(tmp_path))
    assert 'There is no last good checkpoint' in str(e.value)
    assert _steps(tmp_path) == []


def test_nonfinite_update_after_good_checkpoints_keeps_them_and_names_the_last(tmp_path):
    """A non-finite update at step 5 (NaN learning rate: finite loss and gradients): no save after it, so
    keep_checkpoints=2 still holds the good steps 2 and 4, and the error names step 4."""
    c = tiny_config(4)
    c.evals = {}
    c.log_every = 4
    c.checkpoint_every = 2
    c.keep_checkpoints = 2
    c.lr.warmup_steps = 0
    train.train_and_evaluate(c, str(tmp_path))  # Good checkpoints at 2 and 4.
    c.total_steps = 12
    c.lr.base = float('nan')
    with pytest.raises(FloatingPointError, match=r'Non-finite .*l2_updates.* at step 5') as e:
        train.train_and_evaluate(c, str(tmp_path))
    assert f'last good checkpoint is {tmp_path}/checkpoints/4 (step 4)' in str(e.value)
    assert _steps(tmp_path) == [2, 4]
    assert all(_finite_checkpoint(tmp_path, s) for s in (2, 4))


def test_nonfinite_updates_skipped_never_applied_and_metrics_stay_json(tmp_path):
    c = tiny_config(4)
    c.evals = {}
    c.log_every = 2
    c.checkpoint_every = 2
    c.optimizer.eps = 0.0
    c.on_nonfinite = 'skip'
    result = train.train_and_evaluate(c, str(tmp_path))
    assert result['history'][-1]['skipped_updates'] == 4
    assert _steps(tmp_path) == [2, 4] and all(_finite_checkpoint(tmp_path, s) for s in (2, 4))
    params = jax.device_get(result['state'].params)
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(params))
    rows = _strict_json_rows(tmp_path / 'metrics.jsonl')  # Non-finite figures are written as null.
    assert rows[0]['train/l2_updates'] is None and rows[0]['train/skipped_updates'] == 2


# ---- Items 3 and 7: the final checkpoint, evaluator settings, saves on a checkpoint step -----------------------


def test_stop_at_step_on_a_checkpoint_step_returns_cleanly(tmp_path):
    """The periodic and the forced save hit the same step: one checkpoint, no StepAlreadyExistsError."""
    c = tiny_config(6)
    c.evals = {}
    c.log_every = 2
    c.checkpoint_every = 2
    c.stop_at_step = 4
    result = train.train_and_evaluate(c, str(tmp_path))
    assert result['preempted'] and result['step'] == 4
    assert _steps(tmp_path) == [2, 4]


def test_final_checkpoint_is_written_before_the_final_evaluation(tmp_path, monkeypatch):
    from vit_jax.evaluators import classification

    def broken(self, state):
        raise RuntimeError('evaluation failed')

    monkeypatch.setattr(classification.Classification, 'run', broken)
    c = tiny_config(3)
    c.log_every = 3
    with pytest.raises(RuntimeError, match='evaluation failed'):
        train.train_and_evaluate(c, str(tmp_path))
    assert _steps(tmp_path) == [3]


def test_eval_split_typo_fails_before_step_0(tmp_path):
    c = tiny_config(3)
    c.evals.val.split = 'tset'
    with pytest.raises(config_utils.ConfigError, match=r"config.evals.val .*split 'tset'"):
        train.train_and_evaluate(c, str(tmp_path))
    assert not (tmp_path / 'metrics.jsonl').exists() and _steps(tmp_path) == []


def test_eval_batch_size_must_divide_over_devices():
    from vit_jax.evaluators.base import Context
    from vit_jax.evaluators.classification import Classification

    c = tiny_config(3)
    c.eval_batch_size = 12
    ctx = Context(config=c, model=None, objective=None, mesh=types.SimpleNamespace(size=8), image_size=(8, 8),
                  make_dataset=lambda *a, **k: None)
    with pytest.raises(config_utils.ConfigError, match='eval batch size 12 does not divide over the 8 devices'):
        Classification('val', c.evals.val, ctx).check()
    c.eval_batch_size = 16
    Classification('val', c.evals.val, ctx).check()


# ---- Config mistakes caught up front (items 10 and the low ones) ----------------------------------------------


@pytest.mark.parametrize('key,value,match', [
    ('keep_checkpoints', 0, 'keep_checkpoints must be a positive integer'),
    ('on_nonfinite', 'skp', "on_nonfinite must be 'stop' or 'skip'"),
    ('mesh', {'data': 0}, 'mesh.data=0: each mesh axis size must be a positive integer, or -1'),
    ('mesh', {'data': -1, 'fsdp': -2}, 'mesh.fsdp=-2'),
    ('lr', {'base': 1e-3, 'warmup_steps': 1, 'decay': 'cosin', 'end': 0.0}, "lr.decay must be 'cosine'"),
    ('peer_timeout_seconds', -1, 'peer_timeout_seconds must be a non-negative number'),
])
def test_config_mistakes_are_one_line_errors(key, value, match):
    c = tiny_config()
    with c.unlocked():
        c[key] = value
    with pytest.raises(config_utils.ConfigError, match=match):
        config_utils.validate(c)


def test_cli_config_mistake_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'vit_jax.main', f'--config={ROOT}/configs/quickstart.py:tiny',
                        f'--workdir={tmp_path}', '--config.mesh.data=0'], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert 'mesh.data=0' in r.stderr


# ---- Resume with a changed model -------------------------------------------------------------------------------


def test_resume_with_a_changed_model_is_a_clear_error(tmp_path):
    c = tiny_config(2)
    c.evals = {}
    c.log_every = 2
    train.train_and_evaluate(c, str(tmp_path))
    c.model.hidden_size = 48
    c.total_steps = 4
    with pytest.raises(train.ResumeMismatchError) as e:
        train.train_and_evaluate(c, str(tmp_path))
    msg = str(e.value)
    assert '\n' not in msg and 'strict' not in msg and 'written for another model' in msg
    assert 'in the checkpoint, (48,) in this config' in msg or ', 48) in this config' in msg, msg
    c.model.hidden_size = 32
    c.model.num_layers = 3
    with pytest.raises(train.ResumeMismatchError, match=r'parameter\(s\) not in the checkpoint, e.g. '
                                                        r'Transformer/encoderblock_2'):
        train.train_and_evaluate(c, str(tmp_path))
    # The command line: one `Error:` line, no Orbax advice, no "Event loop is closed" tracebacks (the quickstart's
    # model is 128 wide, the checkpoint's 32).
    r = subprocess.run([sys.executable, '-m', 'vit_jax.main', f'--config={ROOT}/configs/quickstart.py:tiny',
                        f'--workdir={tmp_path}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert 'Error: Cannot resume from' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert 'strict' not in r.stderr and 'Event loop is closed' not in r.stderr


# ---- Item 9: the workdir lock ----------------------------------------------------------------------------------


def _write_lock(workdir, **fields):
    os.makedirs(workdir, exist_ok=True)
    rec = dict(host=socket.gethostname(), pid=os.getpid(), started=time.time(), heartbeat=time.time())
    rec.update(fields)
    with open(os.path.join(workdir, lock.LOCK_NAME), 'w') as f:
        json.dump(rec, f)


def test_workdir_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, caplog):
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
    try:
        _write_lock(tmp_path, pid=sleeper.pid)  # A live run on this host.
        with pytest.raises(lock.WorkdirBusyError, match=f'in use by another run .*pid {sleeper.pid}'):
            train.train_and_evaluate(tiny_config(1), str(tmp_path))
    finally:
        sleeper.kill()
        sleeper.wait()
    # The holder died (its pid is gone): the lock is stale and taken over with a warning.
    c = tiny_config(1)
    c.evals = {}
    with caplog.at_level('WARNING'):
        result = train.train_and_evaluate(c, str(tmp_path))
    assert result['step'] == 1
    assert any('stale lock' in r.getMessage() and 'not running' in r.getMessage() for r in caplog.records)
    assert not (tmp_path / lock.LOCK_NAME).exists()  # Released at the end.


def test_workdir_lock_heartbeat_and_staleness(tmp_path, caplog):
    # Another host (its pid cannot be checked): stale only when its heartbeat is old.
    _write_lock(tmp_path, host='another-host', pid=1, heartbeat=time.time())
    with pytest.raises(lock.WorkdirBusyError):
        lock.WorkdirLock(str(tmp_path), stale_after=60).acquire()
    _write_lock(tmp_path, host='another-host', pid=1, heartbeat=time.time() - 120)
    with caplog.at_level('WARNING'):
        held = lock.WorkdirLock(str(tmp_path), stale_after=60).acquire()
    assert any('heartbeat is 12' in r.getMessage() for r in caplog.records)
    # The same process cannot run twice on one workdir; the holder's heartbeat advances.
    with pytest.raises(lock.WorkdirBusyError, match='in this process'):
        lock.WorkdirLock(str(tmp_path), stale_after=60).acquire()
    held.release()
    with lock.WorkdirLock(str(tmp_path), stale_after=0.4) as held:
        first = lock.read(held.path)['heartbeat']
        time.sleep(0.5)
        assert lock.read(held.path)['heartbeat'] > first
    assert lock.read(held.path) is None


# ---- Item 2: two jax.distributed processes ---------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def _start_pair(tmp_path, config):
    from _helpers import run_worker

    port = _free_port()
    workdir = tmp_path / 'wd'
    jobs = [dict(tag='mh', mesh={'data': -1}, workdir=str(workdir), steps=100000, config=config)]
    procs = [run_worker(tmp_path, jobs, devices=1, distributed=(port, rank, 2), wait=False) for rank in range(2)]
    metrics = workdir / 'metrics.jsonl'
    deadline = time.time() + 600
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('\n') >= 3):
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.5)
    return procs, workdir


@pytest.mark.slow  # Two JAX processes: ~1-2 min on 2 cores.
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
    procs, workdir = _start_pair(tmp_path, dict(checkpoint_every=0))
    assert all(p.poll() is None for p in procs), [p.communicate()[0][-3000:] for p in procs]
    procs[1].send_signal(signal.SIGTERM)  # Preemption reaches the processes at different moments.
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-4000:]
    r0, r1 = [json.load(open(tmp_path / f'mh.{i}.json')) for i in range(2)]
    assert r0['step'] == r1['step'] and 3 <= r0['step'] < 100000
    assert _steps(workdir) == [r0['step']]
    assert 'Preempted at step' in outs[0]


@pytest.mark.slow  # Two JAX processes, one stopped with SIGSTOP: ~1-2 min.
def test_a_stuck_peer_ends_the_job_with_a_clear_error(tmp_path):
    procs, workdir = _start_pair(tmp_path, dict(checkpoint_every=0, peer_timeout_seconds=15))
    assert all(p.poll() is None for p in procs), [p.communicate()[0][-3000:] for p in procs]
    procs[1].send_signal(signal.SIGSTOP)  # Alive (its heartbeats may even go on) but making no progress.
    try:
        out = procs[0].communicate(timeout=240)[0]  # Bounded: peer_timeout_seconds, not forever.
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode != 0
    assert 'No progress for 15 s' in out and 'another process is dead or stuck' in out, out[-3000:]
