r"""One-command accelerator benchmark: the ViT train step in bfloat16, images/s, step time, peak memory and MFU.

    python -m benchmarks.gpu                                   # ViT-B/16 and ViT-L/16, cuDNN vs XLA attention
    python -m benchmarks.gpu --models ViT-B/16 --batch 256 --attention cudnn,xla --scan 0,1 --remat none,dots \
        --out benchmarks/results/gpu.json

Each setting builds the registered model (`models.get_model(name, dtype=..., attention_impl=..., scan=...,
remat_policy=...)`, 224 px, 1000 classes), an AdamW optimizer through `vit_jax.optim.make` (as the trainer: global
norm clipping, decoupled weight decay, `mu_dtype` as given), a softmax cross-entropy on random labels, and jits one
update (`donate` of the state, like `train.py`). It then times `--steps` updates after `--warmup` (each step waits
for its result), and reports:

- images/s and the median step time;
- model FLOPs per step from XLA's cost analysis of the compiled step, and MFU = FLOPs / step time / the device's
  peak dense bfloat16 FLOP/s (`PEAK_TFLOPS`, from the vendors' data sheets; `--peak-tflops` overrides);
- peak device memory (`device.memory_stats()['peak_bytes_in_use']` where the runtime reports it, else XLA's
  `memory_analysis()` of the step: arguments + temporaries);
- compile time.

No timing is asserted anywhere; `tests/test_benchmarks.py` runs `--smoke` (a tiny ViT on the CPU) to keep the
script working. Figures with date and device go in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from typing import Any

# Peak dense bfloat16 TFLOP/s by `device_kind` substring (vendor data sheets, without sparsity). Order matters: the
# first match wins.
PEAK_TFLOPS = (
    ('H200', 989.0),
    ('H100 PCIe', 756.0),
    ('H100', 989.0),  # SXM / NVL.
    ('A100', 312.0),
    ('L40S', 362.0),
    ('L4', 121.0),
    ('A10G', 70.0),
    ('TPU v5p', 459.0),
    ('TPU v5 lite', 197.0),
    ('TPU v5e', 197.0),
    ('TPU v4', 275.0),
    ('TPU v6', 918.0),
)


def device_peak_tflops(device_kind: str) -> float | None:
    for key, peak in PEAK_TFLOPS:
        if key.lower() in device_kind.lower():
            return peak
    return None


def _parse_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(',') if x.strip()]


def bench_one(name: str, *, batch: int, res: int, dtype: str, attention: str, scan: bool, remat: str | None,
              steps: int, warmup: int, mu_dtype: str | None, peak_tflops: float | None,
              model_overrides: dict | None = None) -> dict[str, Any]:
    """Builds, compiles and times one train-step setting; returns its figures."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from vit_jax import config_utils, models, optim

    model = models.get_model(name, num_classes=1000, image_size=res, dtype=dtype, attention_impl=attention,
                             scan=scan, remat_policy=remat, **(model_overrides or {}))
    cfg = config_utils.base_config()
    cfg.optimizer = dict(cfg.optimizer, name='adamw', weight_decay=0.05, wd_mask='no_bias_norm', grad_clip_norm=1.0,
                         mu_dtype=mu_dtype)
    cfg.lr = dict(base=1e-3, warmup_steps=10, decay='cosine', end=0.0)
    shape = models.input_shape(model, batch)
    rng = jax.random.PRNGKey(0)
    params = jax.jit(lambda r: model.init(r, jnp.zeros((1,) + shape[1:], jnp.float32), train=False)['params'])(rng)
    tx, _ = optim.make(cfg, params, 1000)
    opt_state = jax.jit(tx.init)(params)
    images = jax.random.normal(jax.random.PRNGKey(1), shape, jnp.float32)
    labels = jax.random.randint(jax.random.PRNGKey(2), (batch,), 0, 1000)

    def step(params, opt_state, images, labels, rng):
        def loss_fn(p):
            logits, _ = model.apply({'params': p}, images, train=True, rngs={'dropout': rng})
            return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, images, labels, rng).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float((cost or {}).get('flops', 0.0))
    mem = compiled.memory_analysis()
    xla_bytes = None
    if mem is not None:
        xla_bytes = int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                        - mem.alias_size_in_bytes)
    times = []
    loss = None
    for i in range(warmup + steps):
        t = time.perf_counter()
        params, opt_state, loss = compiled(params, opt_state, images, labels, jax.random.fold_in(rng, i))
        loss.block_until_ready()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    device = jax.devices()[0]
    stats = {}
    try:
        stats = device.memory_stats() or {}
    except Exception:  # Not every runtime reports memory statistics (the CPU's does not).
        stats = {}
    peak = device_peak_tflops(device.device_kind) if peak_tflops is None else peak_tflops
    achieved = flops / step_s if step_s > 0 else 0.0
    return {
        'model': name, 'batch': batch, 'res': res, 'dtype': str(jnp.dtype(model.dtype).name), 'attention': attention,
        'attention_resolved': _resolved(attention, model), 'scan': scan, 'remat': remat, 'mu_dtype': mu_dtype,
        'images_per_s': batch / step_s, 'step_s': step_s, 'step_times_s': times, 'compile_s': compile_s,
        'flops_per_step': flops, 'tflops_per_s': achieved / 1e12, 'peak_tflops': peak,
        'mfu': (achieved / (peak * 1e12)) if peak else None,
        'peak_memory_bytes': stats.get('peak_bytes_in_use'), 'xla_memory_bytes': xla_bytes,
        'final_loss': float(np.asarray(loss)), 'device': device.device_kind, 'platform': device.platform,
    }


def _resolved(attention: str, model: Any) -> str:
    from vit_jax.models import layers

    try:
        return layers.resolve_attention_impl(attention, dtype=model.dtype,
                                             head_dim=model.hidden_size // model.num_heads)
    except ValueError as e:
        return f'error: {e}'


def format_table(rows: list[dict]) -> str:
    head = ('| model | batch | dtype | attention | scan | remat | img/s | step ms | TFLOP/step | TFLOP/s | MFU | '
            'peak mem GB | compile s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    lines = [head]
    for r in rows:
        if 'error' in r:
            lines.append(f"| {r['model']} | {r['batch']} | | {r['attention']} | {r['scan']} | {r['remat']} | "
                         f"error: {r['error'][:80]} |||||||")
            continue
        mem = r['peak_memory_bytes'] or r['xla_memory_bytes'] or 0
        mfu = f"{100 * r['mfu']:.1f}%" if r['mfu'] is not None else 'n/a'
        lines.append(f"| {r['model']} | {r['batch']} | {r['dtype']} | {r['attention_resolved']} | {r['scan']} | "
                     f"{r['remat']} | {r['images_per_s']:.1f} | {1e3 * r['step_s']:.1f} | "
                     f"{r['flops_per_step'] / 1e12:.2f} | {r['tflops_per_s']:.1f} | {mfu} | {mem / 1e9:.1f} | "
                     f"{r['compile_s']:.1f} |")
    return '\n'.join(lines)


DEFAULT_BATCH = {'ViT-B/16': 256, 'ViT-L/16': 128}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog='python -m benchmarks.gpu', description=__doc__.split('\n\n')[0])
    p.add_argument('--models', default='ViT-B/16,ViT-L/16')
    p.add_argument('--batch', type=int, default=None, help='Global batch (default: 256 for B/16, 128 for L/16).')
    p.add_argument('--res', type=int, default=224)
    p.add_argument('--dtype', default='bfloat16', help="Compute dtype ('bfloat16', 'float32', 'auto').")
    p.add_argument('--attention', default='cudnn,xla', help="Comma list of attention_impl values to compare.")
    p.add_argument('--scan', default='0', help='Comma list of 0/1.')
    p.add_argument('--remat', default='none', help="Comma list: 'none' (no remat) or jax.checkpoint_policies names.")
    p.add_argument('--mu-dtype', default='bfloat16', help="AdamW first-moment dtype ('' for the parameters').")
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--peak-tflops', type=float, default=None, help='Override the device peak (TFLOP/s).')
    p.add_argument('--out', default=None, help='Append the results to this JSON file.')
    p.add_argument('--smoke', action='store_true', help='A tiny ViT, 2 steps: checks the script runs (CPU is fine).')
    args = p.parse_args(argv)

    import jax

    overrides = None
    if args.smoke:
        args.models, args.res, args.steps, args.warmup = 'ViT-testing', 32, 2, 1
        args.batch = args.batch or 4
        args.dtype = args.dtype if args.dtype != 'bfloat16' else 'float32'
        if jax.default_backend() != 'gpu':
            args.attention = ','.join(a for a in _parse_list(args.attention) if a != 'cudnn') or 'xla'
    rows = []
    for name in _parse_list(args.models):
        for attention in _parse_list(args.attention):
            for scan in _parse_list(args.scan):
                for remat in _parse_list(args.remat):
                    kw = dict(batch=args.batch or DEFAULT_BATCH.get(name, 64), res=args.res, dtype=args.dtype,
                              attention=attention, scan=bool(int(scan)), remat=None if remat == 'none' else remat,
                              steps=args.steps, warmup=args.warmup, mu_dtype=args.mu_dtype or None,
                              peak_tflops=args.peak_tflops, model_overrides=overrides)
                    try:
                        r = bench_one(name, **kw)
                    except Exception as e:  # One failing setting (e.g. out of memory) must not lose the others.
                        r = {'model': name, **{k: kw[k] for k in ('batch', 'attention', 'scan', 'remat')},
                             'error': f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'}
                    r['date'] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
                    r['command'] = 'python -m benchmarks.gpu ' + ' '.join(argv if argv is not None else sys.argv[1:])
                    r['jax'] = jax.__version__
                    rows.append(r)
                    print(format_table([r]).split('\n')[-1], flush=True)
    print(format_table(rows))
    if args.out:
        old = []
        if os.path.exists(args.out):
            with open(args.out) as f:
                old = json.load(f)
        with open(args.out, 'w') as f:
            json.dump(old + rows, f, indent=1)
    return rows


if __name__ == '__main__':
    main()
