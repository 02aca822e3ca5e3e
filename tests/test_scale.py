"""Scale-out on one machine: 8 simulated CPU devices (data parallel, FSDP, both), checkpoints restored under
other layouts, and two processes training together through jax.distributed.

Each configuration runs in its own Python process because the device count is fixed when JAX starts.
Tolerance: float32 reductions run in a different order across layouts, so losses and parameters agree to 1e-5
(relative 1e-4), not bit for bit.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from _helpers import run_worker

from vit_jax import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(out, tag, process=0):
    with open(os.path.join(out, f'{tag}.{process}.json')) as f:
        return json.load(f)


def assert_params_close(a, b):
    fa, fb = checkpoint.flatten(checkpoint.load_npz(a)), checkpoint.flatten(checkpoint.load_npz(b))
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_allclose(fa[k], fb[k], atol=1e-5, rtol=1e-4, err_msg=k)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp('scale')
    wd = lambda name: str(out / name)  # noqa: E731
    # Reference: one device, 6 steps straight through; and the same run stopped after 3 steps.
    run_worker(out, [dict(tag='single', mesh={'data': -1}, workdir=wd('single'), steps=6)], devices=1)
    # Eight devices, three layouts; the FSDP run stops at step 3 (its checkpoint is restored below).
    run_worker(out, [
        dict(tag='dp8', mesh={'data': 8}, workdir=wd('dp8'), steps=6),
        dict(tag='fsdp8', mesh={'data': 1, 'fsdp': 8}, workdir=wd('fsdp8'), steps=6),
        dict(tag='dp2fsdp4', mesh={'data': 2, 'fsdp': 4}, workdir=wd('dp2fsdp4'), steps=6),
        dict(tag='fsdp8_half', mesh={'fsdp': 8, 'data': 1}, workdir=wd('resharded'), steps=6, stop_at=3),
    ], devices=8)
    return out


@pytest.mark.slow  # Eight simulated devices, four layouts: ~3-6 min on 2 cores.
@pytest.mark.parametrize('tag', ['dp8', 'fsdp8', 'dp2fsdp4'])
def test_layouts_match_single_device(runs, tag):
    ref, got = load(runs, 'single'), load(runs, tag)
    assert got['devices'] == 8 and ref['devices'] == 1
    np.testing.assert_allclose(got['losses'], ref['losses'], atol=1e-5, rtol=1e-4)
    assert_params_close(runs / 'single.npz', runs / f'{tag}.npz')


@pytest.mark.slow  # Shares the 8-device runs above.
def test_fsdp_really_shards_parameters(runs):
    specs = load(runs, 'fsdp8')['specs']
    sharded = [k for k, v in specs.items() if 'fsdp' in v]
    assert any('MlpBlock_3/Dense_0/kernel' in k for k in sharded), specs
    assert any('embedding/kernel' in k for k in sharded), specs
    assert all('fsdp' not in v for v in load(runs, 'dp8')['specs'].values())  # Pure data parallel: replicated.


@pytest.mark.slow  # ~1-2 min per layout.
@pytest.mark.parametrize('devices,mesh', [(1, {'data': -1}), (4, {'data': 2, 'fsdp': 2})])
def test_checkpoint_restores_under_another_layout(runs, tmp_path, devices, mesh):
    """A checkpoint written with FSDP over 8 devices resumes on 1 device and on 4 (8 -> 1, 8 -> 4)."""
    import shutil

    workdir = tmp_path / 'wd'
    shutil.copytree(runs / 'resharded', workdir)
    run_worker(tmp_path, [dict(tag='resumed', mesh=mesh, workdir=str(workdir), steps=6)], devices=devices)
    res = load(tmp_path, 'resumed')
    assert res['devices'] == devices and res['step'] == 6
    assert_params_close(runs / 'single.npz', tmp_path / 'resumed.npz')


def _free_port():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


@pytest.mark.slow  # Two JAX processes: ~1-2 min.
def test_two_processes_train_together(tmp_path):
    """Two local processes (jax.distributed over CPU) share one global batch, agree on the loss, save once."""
    port = _free_port()
    workdir = str(tmp_path / 'wd')
    jobs = [dict(tag='mh', mesh={'data': -1}, workdir=workdir, steps=4)]
    procs = [run_worker(tmp_path, jobs, devices=1, distributed=(port, rank, 2), wait=False) for rank in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-5000:]
    r0, r1 = load(tmp_path, 'mh', 0), load(tmp_path, 'mh', 1)
    assert r0['processes'] == 2 and r0['devices'] == 2
    assert r0['losses'] == r1['losses'] and len(r0['losses']) == 4
    assert r0['losses'][-1] < r0['losses'][0]
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())
    assert steps == [4]
    params = checkpoint.load_params(workdir)  # One checkpoint, readable as a whole.
    assert 'Transformer' in params


def test_batch_not_divisible_by_devices_fails_before_compiling():
    code = ('import sys; sys.path.insert(0, "tests"); from scale_worker import tiny_config; '
            'from vit_jax import config_utils\n'
            'c = tiny_config(1); c.batch_size = 12\n'
            'try:\n    config_utils.validate(c)\nexcept ValueError as e:\n    print("ERR", e)\n')
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8')
    r = subprocess.run([sys.executable, '-c', code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert 'ERR batch_size=12 is not divisible by the 8 devices' in r.stdout, r.stdout + r.stderr
