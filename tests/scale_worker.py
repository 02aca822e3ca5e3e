"""Worker for the scale-out tests: runs a short training in its own process (device count set by XLA_FLAGS).

    python tests/scale_worker.py OUT_DIR JOBS_JSON [--distributed PORT RANK N]

A job may carry `config`: top-level config overrides (tests/test_faults_train.py uses it).

Each job trains the tiny config for `steps` under `mesh` in `workdir` (resuming if it holds a checkpoint) and writes
OUT_DIR/<tag>.<process>.json (losses, parameter shardings, devices) and OUT_DIR/<tag>.npz (the final params).
Not a test module itself (no test_ prefix); tests/test_scale.py launches it.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _helpers import quickstart_config, short_run  # noqa: E402  (tests/ is on sys.path: the script's folder.)


def tiny_config(steps: int):
    c = quickstart_config(image_size=8, hidden_size=64, mlp_dim=128, num_layers=2, num_heads=2)
    short_run(c, batch_size=32, steps=steps, log_every=1)
    c.evals = {}
    # SGD with momentum, not Adam: Adam divides each update by the gradient's own scale, so parameters whose gradient
    # is pure float noise (e.g. the attention key bias, to which softmax is invariant) get updates of the size of the
    # learning rate with a random sign, and no two layouts could agree on them.
    c.optimizer.name = 'sgd'
    c.optimizer.momentum = 0.9
    c.lr.base = 0.1
    c.lr.warmup_steps = 1
    # Small enough that FSDP shards the embedding, MLP and attention kernels at the 8-device test size.
    c.sharding_min_size = 256
    return c


def run_job(job: dict, out: str) -> None:
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from vit_jax import checkpoint, train

    c = tiny_config(job.get('steps', 3))
    c.mesh = job['mesh']
    c.stop_at_step = job.get('stop_at', 0)  # Same schedule as the full run, interrupted.
    with c.unlocked():
        c.update(job.get('config', {}))  # Top-level overrides (e.g. checkpoint_every, peer_timeout_seconds).
    result = train.train_and_evaluate(c, job['workdir'])
    state = result['state']
    specs = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
        specs['/'.join(str(getattr(k, 'key', k)) for k in path)] = str(leaf.sharding.spec)
    params = multihost_utils.process_allgather(state.params, tiled=True) if jax.process_count() > 1 else \
        jax.device_get(state.params)
    tag = job['tag']
    if jax.process_index() == 0:
        checkpoint.save_npz(os.path.join(out, f'{tag}.npz'), params)
    with open(os.path.join(out, f'{tag}.{jax.process_index()}.json'), 'w') as f:
        json.dump({'losses': [r['loss'] for r in result['history']], 'specs': specs,
                   'devices': jax.device_count(), 'processes': jax.process_count(), 'step': result['step'],
                   'checkpoint': result['checkpoint'],
                   'param_sum': float(sum(np.sum(np.asarray(x)) for x in jax.tree_util.tree_leaves(params)))}, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('out')
    ap.add_argument('jobs', help='JSON list of {"tag", "mesh", "workdir", "steps"}')
    ap.add_argument('--distributed', nargs=3, default=None, metavar=('PORT', 'RANK', 'N'))
    args = ap.parse_args()
    if args.distributed:
        port, rank, n = args.distributed
        from vit_jax.main import initialize_distributed

        initialize_distributed(f'localhost:{port}', int(n), int(rank))
    os.makedirs(args.out, exist_ok=True)
    for job in json.loads(args.jobs):
        run_job(job, args.out)


if __name__ == '__main__':
    main()
