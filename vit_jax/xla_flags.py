"""XLA:CPU options that speed vit_jax up on x86 CPUs (measured in benchmarks/README.md).

XLA reads `XLA_FLAGS` once, when the first JAX backend starts, so `use_cpu_presets()` must run before any JAX
computation (import-time JAX calls included). The flags used here exist in jax/jaxlib 0.10.2 (XLA's
`debug_options_flags.cc`):

- `--xla_cpu_use_onednn=true`: "Call oneDNN thunks for matmul and convolution fusions in the CPU backend".
- `--xla_cpu_experimental_onednn_fusion_type=dot`: the library-rewriter fusion types handed to oneDNN ("dot",
  "eltwise", "reduce"; empty by default). Without it the dots of a ViT go to XNNPACK/YNNPACK (`ynn_fusion` in the
  profile), which on the 2-core AVX-512 machine of benchmarks/README.md ran the ViT-B/16 MLP matmuls at roughly
  half of PyTorch's oneDNN sgemm throughput.

Numerics: only the matmul library changes (float32 accumulation either way); results differ by float32 round-off.

Why 'onednn' is opt-in (jaxlib 0.10.2; benchmarks/README.md "The CPU train step"):
- XLA fuses `dot(a, W1) + dot(b, W2)` into one oneDNN partition that oneDNN cannot compile ("partition compile
  failed", then SIGILL). That sum is the input gradient of any tensor read by several Dense layers. vit_jax's
  self-attention computes q/k/v with one matmul (`layers.MultiHeadAttention._fused_qkv`), so ViT train steps run
  (tests/test_xla_flags.py), but other graphs still contain the pattern (e.g. cross-attention, CvT's projections).
- The oneDNN runtime intermittently aborts at interpreter exit (`object_pool.h: Check failed: available_.size() ==
  num_created_`; about 1 process in 8 here), after the program's work is done, which fails the exit status.
- The gain is modest: ViT-S/16 train step (batch 16) 3.16 s vs 3.35 s with XLA's default dots.
"""

from __future__ import annotations

import os

PRESETS: dict[str, tuple[str, ...]] = {
    'default': (),  # XLA's own choices (YNNPACK / XNNPACK dots on x86 in jax 0.10.2).
    'onednn': ('--xla_cpu_use_onednn=true', '--xla_cpu_experimental_onednn_fusion_type=dot'),
}


def backend_started() -> bool:
    """Whether a JAX backend is already initialised (then XLA_FLAGS changes have no effect)."""
    try:
        from jax._src import xla_bridge

        return bool(getattr(xla_bridge, '_backends', {}))
    except Exception:  # noqa: BLE001 - private API; assume not started.
        return False


def use_cpu_presets(preset: str = 'onednn') -> list[str]:
    """Appends the flags of `preset` to `XLA_FLAGS` (flags the user already set win); returns the flags added.

    Raises:
      ValueError: for an unknown preset.
      RuntimeError: when a JAX backend already started (the flags would be silently ignored).
    """
    if preset not in PRESETS:
        raise ValueError(f'Unknown XLA preset {preset!r}; choose one of {sorted(PRESETS)}.')
    if not PRESETS[preset]:
        return []
    if backend_started():
        raise RuntimeError('use_cpu_presets() must run before the first JAX computation: XLA reads XLA_FLAGS when '
                           'the backend starts. Call it at the top of your program, or set XLA_FLAGS in the shell: '
                           f'XLA_FLAGS="{" ".join(PRESETS[preset])}".')
    current = os.environ.get('XLA_FLAGS', '')
    set_names = {f.split('=')[0] for f in current.split()}
    added = [f for f in PRESETS[preset] if f.split('=')[0] not in set_names]
    os.environ['XLA_FLAGS'] = ' '.join([current, *added]).strip()
    return added
