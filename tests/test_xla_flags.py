"""The opt-in oneDNN preset of vit_jax.xla_flags runs a ViT train step (forward, backward, AdamW) and agrees with
XLA's default dots.

jaxlib 0.10.2's oneDNN dot fusion fails ("partition compile failed", then SIGILL) on `dot(a, W1) + dot(b, W2)`, the
backward of an input read by several Dense layers. MultiHeadAttention computes self-attention's query/key/value with
one matmul on the concatenated kernels, so the ViT backward has no such sum. Each run is a fresh process (XLA reads
XLA_FLAGS once); the child leaves with os._exit because the same oneDNN runtime sometimes aborts at interpreter exit.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from vit_jax import xla_flags

_CHILD = r'''
import os, sys
import jax, jax.numpy as jnp, numpy as np, optax
from vit_jax import models
m = models.get_model('ViT-Ti/16', num_classes=10, num_layers=2, image_size=64)
x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (2, 64, 64, 3)), jnp.float32)
p = jax.jit(lambda x: m.init(jax.random.PRNGKey(0), x, train=False))(x)['params']
p = jax.tree_util.tree_map(lambda a: a + 0.02 * jax.random.normal(jax.random.PRNGKey(1), a.shape), p)
tx = optax.adamw(1e-3)

def step(p, o):
    def loss(p):
        return jnp.mean(jnp.square(m.apply({'params': p}, x, train=True)[0]))
    l, g = jax.value_and_grad(loss)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, l, g

p2, _, l, g = jax.jit(step)(p, tx.init(p))
flat = {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_leaves_with_path(g)}
# The updated parameters are only checked to be finite: Adam's m / sqrt(v) turns round-off in tiny gradients into
# lr-sized steps, so they are no measure of agreement.
finite = all(bool(np.isfinite(np.asarray(v)).all()) for v in jax.tree_util.tree_leaves(p2))
np.savez(sys.argv[1], loss=np.asarray(l), finite=np.asarray(finite), **flat)
sys.stdout.flush()
os._exit(0)
'''


def _run(tmp_path, preset: str) -> dict[str, np.ndarray]:
    out = str(tmp_path / f'{preset}.npz')
    env = dict(os.environ)
    env['XLA_FLAGS'] = ' '.join([env.get('XLA_FLAGS', ''), *xla_flags.PRESETS[preset]]).strip()
    proc = subprocess.run([sys.executable, '-c', _CHILD, out], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f'{preset} train step failed:\n{proc.stderr[-3000:]}'
    with np.load(out) as f:
        return dict(f)


@pytest.mark.skipif(sys.platform != 'linux' or os.uname().machine != 'x86_64', reason='oneDNN preset: x86-64 Linux')
def test_onednn_preset_runs_a_vit_train_step_and_matches_default(tmp_path):
    ref = _run(tmp_path, 'default')
    got = _run(tmp_path, 'onednn')
    assert set(ref) == set(got)
    assert bool(got['finite']) and bool(ref['finite'])
    for k in ref:
        if k.endswith('key/bias'):  # Softmax is invariant to the key bias: its gradient is round-off only.
            continue
        scale = float(np.abs(ref[k]).max()) or 1.0
        np.testing.assert_allclose(got[k], ref[k], atol=2e-5 * scale, rtol=0, err_msg=k)


def test_fused_self_attention_projection_equals_three_dense_general():
    """Same parameter names, initial values and outputs as query/key/value `nn.DenseGeneral`s."""
    import functools

    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from vit_jax.models import layers

    class ThreeProjections(nn.Module):
        @nn.compact
        def __call__(self, x):
            proj = functools.partial(nn.DenseGeneral, features=(4, 12), kernel_init=nn.initializers.xavier_uniform())
            q, k, v = proj(name='query')(x), proj(name='key')(x), proj(name='value')(x)
            o, _ = layers.dot_product_attention(q, k, v, scale=12**-0.5)
            return nn.DenseGeneral(48, axis=(-2, -1), kernel_init=nn.initializers.xavier_uniform(), name='out')(o)

    x = jnp.asarray(np.random.RandomState(0).randn(2, 17, 48), jnp.float32)
    fused = layers.MultiHeadAttention(num_heads=4)
    v, v_ref = fused.init(jax.random.PRNGKey(0), x), ThreeProjections().init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(v_ref)
    for a, b in zip(jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(v_ref)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(fused.apply(v, x), ThreeProjections().apply(v, x), atol=1e-6, rtol=0)
