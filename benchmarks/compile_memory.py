r"""Compile time (scan over layers vs unrolled) and peak memory vs rematerialisation policy of a train step.

    python -m benchmarks.compile_memory scan --model ViT-L/16 --batch 1
    python -m benchmarks.compile_memory remat --model ViT-B/16 --batch 64 --time-batch 4

`scan`: `.lower().compile()` time of the full train step (forward, backward, AdamW) of the registered model with
`scan=False` (unrolled blocks) and `scan=True` (one scanned block), compile only.
`remat`: for each policy (`remat_policy` of the encoder blocks: none, and jax.checkpoint_policies names),
`compiled.memory_analysis()` temp and argument bytes of the train step at `--batch` (compile only), and, with
`--time-batch N`, the median step time at batch N (the step time at the big batch is too slow on a 2-core CPU).
Results go to `--out` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any, Optional

POLICIES = (None, 'nothing_saveable', 'dots_with_no_batch_dims_saveable', 'dots_saveable')


def _train_step_fn(model: Any):
    import jax
    import jax.numpy as jnp
    import optax

    tx = optax.adamw(1e-4)

    def step(params, opt_state, images, labels):
        def loss_fn(p):
            logits, _ = model.apply({'params': p}, images, train=True, rngs={'dropout': jax.random.PRNGKey(0)})
            return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, tx


def _abstract_args(model: Any, batch: int):
    import jax
    import jax.numpy as jnp

    from vit_jax import models

    _, tx = _train_step_fn(model)
    params = models.init_shapes(model, 1)['params']
    opt_state = jax.eval_shape(tx.init, params)
    images = jax.ShapeDtypeStruct(models.input_shape(model, batch), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return params, opt_state, images, labels


def compile_train_step(model: Any, batch: int):
    """(compiled train step, seconds to lower + compile) from abstract shapes only."""
    import jax

    step, _ = _train_step_fn(model)
    args = _abstract_args(model, batch)
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def scan_vs_unrolled(name: str, batch: int = 1) -> dict:
    """Compile times of the train step with and without scan over layers."""
    from vit_jax import models

    out = {'model': name, 'batch': batch}
    for scan in (False, True):
        _, secs = compile_train_step(models.get_model(name, scan=scan), batch)
        out['scan' if scan else 'unrolled'] = {'compile_s': secs}
    out['speedup'] = out['unrolled']['compile_s'] / out['scan']['compile_s']
    return out


def remat_curve(name: str, batch: int = 64, time_batch: int = 0, reps: int = 3,
                policies: tuple[Optional[str], ...] = POLICIES, scan: bool = True) -> dict:
    """Memory (compile-time analysis) and optionally step time of the train step per remat policy.

    With `scan=False` (unrolled blocks) XLA:CPU's memory analysis showed the same temp bytes for every policy (the
    rematerialised blocks are scheduled like the plain ones), so the curve is measured on the scanned encoder.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from vit_jax import models

    out = {'model': name, 'batch': batch, 'time_batch': time_batch, 'scan': scan, 'policies': []}
    for policy in policies:
        model = models.get_model(name, remat_policy=policy, scan=scan)
        compiled, secs = compile_train_step(model, batch)
        mem = compiled.memory_analysis()
        row = {'policy': policy or 'none (no remat)', 'compile_s': secs, 'temp_bytes': int(mem.temp_size_in_bytes),
               'argument_bytes': int(mem.argument_size_in_bytes),
               'temp_plus_argument_bytes': int(mem.temp_size_in_bytes + mem.argument_size_in_bytes)}
        if time_batch:
            step, tx = _train_step_fn(model)
            variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros(models.input_shape(model, 1)))
            params = variables['params']
            opt_state = tx.init(params)
            images = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, models.input_shape(model, time_batch)),
                                 jnp.float32)
            labels = jnp.zeros((time_batch,), jnp.int32)
            fn = jax.jit(step).lower(params, opt_state, images, labels).compile()
            fn(params, opt_state, images, labels)[2].block_until_ready()
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn(params, opt_state, images, labels)[2].block_until_ready()
                times.append(time.perf_counter() - t0)
            row['step_s_at_time_batch'] = statistics.median(times)
        out['policies'].append(row)
    return out


def main(argv: Optional[list[str]] = None) -> dict:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('what', choices=['scan', 'remat'])
    p.add_argument('--model', default=None, help='Registered model (default ViT-L/16 for scan, ViT-B/16 for remat).')
    p.add_argument('--batch', type=int, default=None, help='Batch of the compiled step (default 1 / 64).')
    p.add_argument('--time-batch', type=int, default=0, help='remat: also time the step at this batch (0: no).')
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--unrolled', action='store_true', help='remat: unrolled blocks instead of scan over layers.')
    p.add_argument('--out', default=None)
    args = p.parse_args(argv)
    if args.what == 'scan':
        r = scan_vs_unrolled(args.model or 'ViT-L/16', args.batch or 1)
        print(f"{r['model']} train step, batch {r['batch']}: compile unrolled {r['unrolled']['compile_s']:.1f} s, "
              f"scan {r['scan']['compile_s']:.1f} s ({r['speedup']:.1f}x)")
    else:
        r = remat_curve(args.model or 'ViT-B/16', args.batch or 64, args.time_batch, args.reps, scan=not args.unrolled)
        print(f"{r['model']} train step, batch {r['batch']}, scan={r['scan']} (step time at batch "
              f"{r['time_batch'] or '-'}):")
        for row in r['policies']:
            t = row.get('step_s_at_time_batch')
            print(f"  {row['policy']:<34} temp {row['temp_bytes'] / 2**30:6.2f} GiB  temp+args "
                  f"{row['temp_plus_argument_bytes'] / 2**30:6.2f} GiB  compile {row['compile_s']:5.1f} s"
                  + (f'  step {t:.2f} s' if t else ''))
    r['command'] = 'python -m benchmarks.compile_memory ' + ' '.join(argv if argv is not None else os.sys.argv[1:])
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(r, f, indent=1)
    return r


if __name__ == '__main__':
    main()
