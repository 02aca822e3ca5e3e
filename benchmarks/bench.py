r"""Benchmark: vit_jax vs an independent PyTorch implementation (HuggingFace `transformers`), side by side.

    python -m benchmarks.bench --model ViT-B/16 --batch 8 --res 224 --dtype float32 --out benchmarks/results/x.json

For a named model it builds the HuggingFace PyTorch model from a config (random weights, no downloads), converts it
with `vit_jax.convert.from_transformers` (the same architecture and the same weights; the logits are checked to agree),
then times, in one process:

- inference (forward, no gradients) and a full training step (forward, backward, AdamW update; loss = mean of the
  squared model output, the same for both frameworks);
- warm-up runs first, then `--reps` repetitions that INTERLEAVE jax and torch (the order alternates every
  repetition), so load from other processes hits both alike; medians are reported;
- vit_jax compile time (`jax.jit(f).lower(...).compile()`), model FLOPs from XLA's cost analysis of the compiled
  function, achieved FLOP/s (those FLOPs / median time, for both frameworks: same model, same FLOPs) and that as a
  fraction of the machine's measured matmul peak (a 2048^3 float32 matmul, best of jax and torch, in the same run);
- memory: JAX from `compiled.memory_analysis()`: temp bytes (activations, gradients, workspace: the table's
  "jax tmp MB") and argument + output + temp - alias bytes (the JSON's `jax_memory_bytes`); torch: the peak of
  the bytes its CPU allocator holds above the starting level during one call, from `torch.profiler`
  (`profile_memory=True`; allocations and frees in time order), i.e. without the parameters and optimizer state
  that exist before the call: the counterpart of JAX's temp bytes.

Results are printed as a table and written as JSON to `--out`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

# ----------------------------------------------------------------------------------------------------------------
# Model zoo: a HuggingFace config per benchmark name (sizes of the papers' variants).
# ----------------------------------------------------------------------------------------------------------------
_VIT = {'Ti': (192, 3, 768, 12), 'S': (384, 6, 1536, 12), 'B': (768, 12, 3072, 12), 'L': (1024, 16, 4096, 24)}


def _vit(size: str, patch: int = 16) -> Callable[[int], Any]:
    def build(res: int):
        import transformers

        d, h, m, n = _VIT[size]
        return transformers.ViTForImageClassification(transformers.ViTConfig(
            hidden_size=d, num_attention_heads=h, intermediate_size=m, num_hidden_layers=n, image_size=res,
            patch_size=patch, num_labels=1000))
    return build


def _vit_testing(res: int):
    import transformers

    return transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=2, image_size=res, patch_size=4,
        num_labels=10))


def _cvt(depth: tuple[int, int, int]) -> Callable[[int], Any]:
    def build(res: int):
        import transformers

        return transformers.CvtForImageClassification(transformers.CvtConfig(
            embed_dim=[64, 192, 384], num_heads=[1, 3, 6], depth=list(depth), num_labels=1000))
    return build


def _dpt_hybrid(res: int):
    import transformers

    # Intel/dpt-hybrid-midas's architecture: BiT-R50 stages (3, 4, 9) + ViT-B/16 on the 1/16 map.
    bit = dict(global_padding='same', layer_type='bottleneck', depths=[3, 4, 9],
               out_features=['stage1', 'stage2', 'stage3'], embedding_dynamic_padding=True)
    return transformers.DPTForDepthEstimation(transformers.DPTConfig(
        is_hybrid=True, backbone_config=bit, image_size=res, neck_hidden_sizes=[256, 512, 768, 768],
        backbone_featmap_shape=[1, 1024, res // 16, res // 16], reassemble_factors=[1, 1, 1, 0.5],
        backbone_out_indices=[2, 5, 8, 11]))


def _timesformer(res: int):
    import transformers

    return transformers.TimesformerForVideoClassification(transformers.TimesformerConfig(
        image_size=res, num_frames=8, num_labels=400))


def _beit(res: int):
    import transformers

    return transformers.BeitForImageClassification(transformers.BeitConfig(
        image_size=res, use_relative_position_bias=True, num_labels=1000))


# name: (builder(res) -> HF torch model, default resolution, kind)
MODELS: dict[str, tuple[Callable[[int], Any], int, str]] = {
    'ViT-testing': (_vit_testing, 32, 'image'),
    'ViT-Ti/16': (_vit('Ti'), 224, 'image'),
    'ViT-S/16': (_vit('S'), 224, 'image'),
    'ViT-B/16': (_vit('B'), 224, 'image'),
    'ViT-B/32': (_vit('B', 32), 224, 'image'),
    'ViT-L/16': (_vit('L'), 224, 'image'),
    'CvT-13': (_cvt((1, 2, 10)), 224, 'image'),
    'CvT-21': (_cvt((1, 4, 16)), 224, 'image'),
    'DPT-Hybrid': (_dpt_hybrid, 384, 'image'),
    'TimeSformer': (_timesformer, 224, 'video'),
    'BEiT-B/16': (_beit, 224, 'image'),
}


# ----------------------------------------------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------------------------------------------
def torch_peak_alloc_bytes(fn: Callable[[], Any]) -> int:
    """Peak of the bytes torch's CPU allocator holds above the starting level while `fn` runs.

    From `torch.profiler` with `profile_memory=True`: allocations (each op's self memory) and frees ('[memory]'
    events) in time order; the peak of their running sum. Parameters and optimizer state that exist before the call
    are not included (compare with JAX's temp bytes).
    """
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        cur += e.cpu_memory_usage if e.name == '[memory]' else e.self_cpu_memory_usage
        peak = max(peak, cur)
    return int(peak)


def _time(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int) -> dict[str, list[float]]:
    """Times each function `reps` times, alternating between them (the order flips every repetition)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = {n: [] for n in names}
    for r in range(reps):
        for n in (names if r % 2 == 0 else names[::-1]):
            times[n].append(_time(fns[n]))
    return times


def matmul_peak(n: int = 2048, reps: int = 5) -> dict[str, float]:
    """Measured float32 matmul FLOP/s (n x n x n) of jax and torch on this machine."""
    import jax
    import numpy as np
    import torch

    a = np.random.RandomState(0).randn(n, n).astype(np.float32)
    aj = jax.device_put(a)
    at = torch.from_numpy(a)
    f = jax.jit(lambda x, y: x @ y).lower(aj, aj).compile()
    times = interleaved({'jax': lambda: f(aj, aj).block_until_ready(), 'torch': lambda: torch.matmul(at, at)},
                        reps=reps, warmup=1)
    flops = 2.0 * n**3
    out = {k: flops / min(v) for k, v in times.items()}
    out['peak'] = max(out.values())
    return out


# ----------------------------------------------------------------------------------------------------------------
# The benchmark.
# ----------------------------------------------------------------------------------------------------------------
def run(model_name: str, batch: int, res: int | None = None, dtype: str = 'float32', reps: int = 5, warmup: int = 1,
        modes: tuple[str, ...] = ('inference', 'train'), threads: int | None = None,
        check_parity: bool = True, peak_n: int = 2048, flush_denormal: bool = True) -> dict:
    """Runs the benchmark; returns the result dict (see `main` for the printed table)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch

    from vit_jax import convert

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    # Denormal arithmetic is slow on x86; flushing them keeps the torch timings free of that artefact.
    flush_denormal = bool(flush_denormal and torch.set_flush_denormal(True))
    if model_name not in MODELS:
        raise ValueError(f'Unknown benchmark model {model_name!r}; choose one of {sorted(MODELS)}.')
    build, default_res, kind = MODELS[model_name]
    res = res or default_res
    torch.manual_seed(0)
    hf = build(res)
    jmodel, variables = convert.from_transformers(hf.eval())
    compute_dtype = jnp.dtype(dtype)
    if compute_dtype != jnp.float32:
        if not hasattr(jmodel, 'dtype'):
            raise ValueError(f'{type(jmodel).__name__} has no dtype field.')
        jmodel = jmodel.clone(dtype=compute_dtype)
    variables = jax.device_put(variables)
    params = variables['params']
    state = {k: v for k, v in variables.items() if k != 'params'}

    rng = np.random.RandomState(0)
    if kind == 'video':
        frames = hf.config.num_frames
        x = rng.uniform(-1, 1, (batch, frames, res, res, 3)).astype(np.float32)
        xt = torch.from_numpy(x.transpose(0, 1, 4, 2, 3).copy())
    else:
        x = rng.uniform(-1, 1, (batch, res, res, 3)).astype(np.float32)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    xj = jax.device_put(x)
    torch_dtype = getattr(torch, dtype)

    def torch_out(m, inp):
        o = m(pixel_values=inp)
        return o.predicted_depth if hasattr(o, 'predicted_depth') else o.logits

    result: dict[str, Any] = {
        'model': model_name, 'torch_class': type(hf).__name__, 'jax_class': type(jmodel).__name__,
        'batch': batch, 'res': res, 'dtype': dtype, 'reps': reps, 'warmup': warmup,
        'params': int(sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))),
        'torch_threads': torch.get_num_threads(), 'cpu_count': os.cpu_count(), 'torch_flush_denormal': flush_denormal,
        'xla_flags': os.environ.get('XLA_FLAGS', ''), 'jax_backend': jax.default_backend(),
        'jax_version': jax.__version__, 'torch_version': torch.__version__,
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'machine': platform.processor() or platform.machine(), 'loadavg_start': os.getloadavg(),
    }
    result['matmul'] = matmul_peak(peak_n)
    result['matmul']['n'] = peak_n
    peak = result['matmul']['peak']

    def jax_fwd(v, inp):
        return jmodel.apply(v, inp, train=False)[0]

    for mode in modes:
        if mode == 'inference':
            t0 = time.perf_counter()
            compiled = jax.jit(jax_fwd).lower(variables, xj).compile()
            compile_s = time.perf_counter() - t0
            if check_parity and dtype == 'float32':  # Same architecture, same weights: the outputs must agree.
                with torch.no_grad():
                    ref = torch_out(hf.eval(), xt).float().numpy()
                got = np.asarray(compiled(variables, xj))
                result['parity_max_abs_diff'] = float(np.abs(got - ref).max())
                result['parity_output_scale'] = float(np.abs(ref).max())
            hf_m = hf.eval().to(torch_dtype)
            xt_m = xt.to(torch_dtype)

            def jax_call():
                compiled(variables, xj).block_until_ready()

            def torch_call():
                with torch.no_grad():
                    torch_out(hf_m, xt_m)
        elif mode == 'train':
            tx = optax.adamw(1e-4)
            opt_state = jax.device_put(tx.init(params))
            mutable = [k for k in state if k == 'batch_stats']

            def train_step(p, o, s, inp):
                def loss_fn(p):
                    rngs = {'dropout': jax.random.PRNGKey(0)}  # Stochastic depth where the config has it (CvT).
                    if mutable:
                        (y, _), new_s = jmodel.apply({'params': p, **s}, inp, train=True, mutable=mutable, rngs=rngs)
                    else:
                        y, _ = jmodel.apply({'params': p, **s}, inp, train=True, rngs=rngs)
                        new_s = {}
                    return jnp.mean(jnp.square(y.astype(jnp.float32))), new_s

                (loss, new_s), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
                updates, o = tx.update(g, o, p)
                return optax.apply_updates(p, updates), o, {**s, **new_s}, loss

            t0 = time.perf_counter()
            compiled = jax.jit(train_step, donate_argnums=(0, 1, 2)).lower(params, opt_state, state, xj).compile()
            compile_s = time.perf_counter() - t0
            carry = [jax.tree_util.tree_map(jnp.copy, params), opt_state, jax.tree_util.tree_map(jnp.copy, state)]

            def jax_call():
                carry[0], carry[1], carry[2], loss = compiled(carry[0], carry[1], carry[2], xj)
                loss.block_until_ready()

            hf_m = hf.train().to(torch_dtype)
            xt_m = xt.to(torch_dtype)
            topt = torch.optim.AdamW(hf_m.parameters(), lr=1e-4)

            def torch_call():
                topt.zero_grad(set_to_none=True)
                y = torch_out(hf_m, xt_m)
                loss = y.float().square().mean()
                loss.backward()
                topt.step()
        else:
            raise ValueError(f"Unknown mode {mode!r}; use 'inference' and/or 'train'.")

        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get('flops', 0.0)) if cost else 0.0
        mem = compiled.memory_analysis()
        jax_mem = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                   - mem.alias_size_in_bytes) if mem is not None else -1
        times = interleaved({'jax': jax_call, 'torch': torch_call}, reps=reps, warmup=warmup)
        torch_mem = torch_peak_alloc_bytes(torch_call)
        tj, tt = statistics.median(times['jax']), statistics.median(times['torch'])
        n_items = batch
        result[mode] = {
            'jax_s': tj, 'torch_s': tt, 'jax_times_s': times['jax'], 'torch_times_s': times['torch'],
            'batch': batch, 'jax_images_per_s': n_items / tj, 'torch_images_per_s': n_items / tt, 'ratio': tt / tj,
            'compile_s': compile_s, 'flops': flops, 'jax_flops_per_s': flops / tj, 'torch_flops_per_s': flops / tt,
            'jax_fraction_of_peak': flops / tj / peak, 'torch_fraction_of_peak': flops / tt / peak,
            'jax_memory_bytes': int(jax_mem),
            'jax_temp_bytes': int(mem.temp_size_in_bytes) if mem is not None else -1,
            'jax_argument_bytes': int(mem.argument_size_in_bytes) if mem is not None else -1,
            'torch_peak_alloc_bytes': int(torch_mem),
        }
    result['loadavg_end'] = os.getloadavg()
    return result


def format_table(r: dict) -> str:
    """A human-readable summary of one result dict."""
    flags = r.get('xla_flags_by_mode') or {'all modes': r['xla_flags']}
    lines = [f"{r['model']} res={r['res']} dtype={r['dtype']} torch threads={r['torch_threads']} "
             f"XLA_FLAGS: {flags}",
             f"matmul peak ({r['matmul'].get('n', 2048)}^3 f32): jax {r['matmul']['jax'] / 1e9:.1f} GFLOP/s, torch "
             f"{r['matmul']['torch'] / 1e9:.1f} GFLOP/s",
             ]
    if 'parity_max_abs_diff' in r:
        lines.append(f"parity: max|jax - torch| = {r['parity_max_abs_diff']:.2e} (output scale "
                     f"{r['parity_output_scale']:.2e})")
    lines.append(f"{'mode':<10} {'batch':>5} {'jax img/s':>10} {'torch img/s':>12} {'ratio':>6} {'compile s':>10} "
                 f"{'GFLOP':>8} {'jax GF/s':>9} {'%peak':>6} {'jax tmp MB':>10} {'torch MB':>9}")
    for mode in ('inference', 'train'):
        if mode not in r:
            continue
        m = r[mode]
        lines.append(f"{mode:<10} {m['batch']:>5} {m['jax_images_per_s']:>10.2f} {m['torch_images_per_s']:>12.2f} "
                     f"{m['ratio']:>6.2f} "
                     f"{m['compile_s']:>10.1f} {m['flops'] / 1e9:>8.1f} {m['jax_flops_per_s'] / 1e9:>9.1f} "
                     f"{100 * m['jax_fraction_of_peak']:>5.0f}% {m['jax_temp_bytes'] / 2**20:>10.0f} "
                     f"{m['torch_peak_alloc_bytes'] / 2**20:>9.0f}")
    return '\n'.join(lines)


# The XLA preset each mode runs under with --xla-preset=auto. oneDNN dots (vit_jax.xla_flags 'onednn') speed up the
# plain ViTs' forward and train step. jaxlib 0.10.2's oneDNN fusion cannot compile `dot + dot` (the backward of an
# input read by several Dense layers: "partition compile failed", then SIGILL); MultiHeadAttention's one fused q/k/v
# matmul removes that pattern from the ViT train step (tests/test_xla_flags.py). The oneDNN forward crashed for
# CvT-13 (convolutional projections), so every other model keeps XLA's default dots.
AUTO_PRESETS = {'inference': 'onednn', 'train': 'onednn'}
ONEDNN_OK = ('ViT-testing', 'ViT-Ti/16', 'ViT-S/16', 'ViT-B/16', 'ViT-B/32', 'ViT-L/16')


def auto_preset(model: str, mode: str) -> str:
    """The XLA preset of `mode` under --xla-preset=auto (oneDNN only where it is known to run)."""
    return AUTO_PRESETS[mode] if model in ONEDNN_OK else 'default'



def _run_mode_in_subprocess(argv: list[str], mode: str, preset: str) -> dict:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'r.json')
        cmd = [sys.executable, '-m', 'benchmarks.bench', *argv, '--modes', mode, '--xla-preset', preset, '--out', out,
               '--quiet']
        proc = subprocess.run(cmd, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if not os.path.exists(out):
            raise subprocess.CalledProcessError(proc.returncode, cmd)
        if proc.returncode != 0:
            # jaxlib 0.10.2's oneDNN runtime sometimes aborts at interpreter exit ("object_pool.h: Check failed:
            # available_.size() == num_created_"), after the results were written; they are complete.
            print(f'warning: the {mode} run exited with status {proc.returncode} after writing its results.',
                  file=sys.stderr)
        with open(out) as f:
            return json.load(f)[-1]


def _strip(argv: list[str], *names: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in names:
            skip = True
            continue
        if any(a.startswith(n + '=') for n in names):
            continue
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point; returns the result dict."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--model', default='ViT-B/16', choices=sorted(MODELS))
    p.add_argument('--batch', type=int, default=8, help='Batch size of both modes (see --train-batch).')
    p.add_argument('--train-batch', type=int, default=None, help='Batch size of the train step (default --batch).')
    p.add_argument('--res', type=int, default=None, help="Resolution (default: the model's).")
    p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                   help='Compute dtype (vit_jax: parameters stay float32; torch: the whole model is cast).')
    p.add_argument('--reps', type=int, default=5, help='Timed repetitions per framework (interleaved).')
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--modes', default='inference,train')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: os.cpu_count()).')
    p.add_argument('--xla-preset', default='auto', choices=['auto', 'default', 'onednn'],
                   help="XLA:CPU flags (vit_jax.xla_flags). 'auto': each mode in its own process with "
                        f'{AUTO_PRESETS}.')
    p.add_argument('--peak-size', type=int, default=2048, help='n of the n^3 float32 matmul that measures the peak.')
    p.add_argument('--no-flush-denormal', action='store_true', help='Leave torch.set_flush_denormal alone.')
    p.add_argument('--no-parity', action='store_true', help='Skip the logits agreement check.')
    p.add_argument('--out', default=None, help='JSON file for the results (appends to a list if it exists).')
    p.add_argument('--quiet', action='store_true', help='Do not print the table.')
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(',') if m.strip())
    results: dict[str, Any] = {}
    if args.xla_preset == 'auto':
        base = _strip(argv, '--modes', '--xla-preset', '--out')
        base = [a for a in base if a != '--quiet']
        for mode in modes:
            r = _run_mode_in_subprocess(base, mode, auto_preset(args.model, mode))
            if not results:
                results = r
                results['xla_flags_by_mode'] = {}
            else:
                results[mode] = r[mode]
                for k in ('train_batch', 'parity_max_abs_diff', 'parity_output_scale'):
                    if k in r:
                        results[k] = r[k]
                results['loadavg_end'] = r['loadavg_end']
            results['xla_flags_by_mode'][mode] = r['xla_flags']
        results['xla_preset'] = 'auto'
    else:
        from vit_jax import xla_flags

        if not xla_flags.backend_started():
            xla_flags.use_cpu_presets(args.xla_preset)
        tb = args.train_batch or args.batch
        extra = dict(peak_n=args.peak_size, flush_denormal=not args.no_flush_denormal)
        if 'inference' in modes and 'train' in modes and tb == args.batch:  # One model build for both modes.
            results = run(args.model, args.batch, args.res, args.dtype, args.reps, args.warmup, ('inference', 'train'),
                          args.threads, check_parity=not args.no_parity, **extra)
        else:
            if 'inference' in modes:
                results = run(args.model, args.batch, args.res, args.dtype, args.reps, args.warmup, ('inference',),
                              args.threads, check_parity=not args.no_parity, **extra)
            if 'train' in modes:
                r = run(args.model, tb, args.res, args.dtype, args.reps, args.warmup, ('train',), args.threads,
                        check_parity=False, **extra)
                if results:
                    results['train'] = r['train']
                    results['loadavg_end'] = r['loadavg_end']
                else:
                    results = r
        if 'train' in modes:
            results['train_batch'] = tb
        results['xla_preset'] = args.xla_preset
    results['command'] = 'python -m benchmarks.bench ' + ' '.join(argv)
    if not args.quiet:
        print(format_table(results))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        existing = []
        if os.path.exists(args.out):
            with open(args.out) as f:
                existing = json.load(f)
            existing = existing if isinstance(existing, list) else [existing]
        with open(args.out, 'w') as f:
            json.dump(existing + [results], f, indent=1)
    return results


if __name__ == '__main__':
    main()
