"""Helpers several test modules share (so that no test module imports another); tests/conftest.py also offers
tiny_config, run_worker and torch_dtn as fixtures, and tests/scale_worker.py (a script) imports it too. Not a test
module itself (no test_ prefix).

    from _helpers import tiny_config   # or take the `tiny_config` fixture
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, 'tests', 'scale_worker.py')


def quickstart_config(**model):
    """configs/quickstart.py with the `model` fields given set (in that order): the base of the tiny test runs."""
    from vit_jax import config_utils

    c = config_utils.load(os.path.join(ROOT, 'configs/quickstart.py'))
    for k, v in model.items():
        c.model[k] = v
    return c


def short_run(c, *, batch_size, steps, log_every):
    """Sets `c` to a short test run: `steps` steps at `batch_size`, a log line every `log_every` steps, and no
    intermediate evaluations, no checkpoints, no TensorBoard. Returns `c`."""
    c.batch_size = batch_size
    c.total_steps = steps
    c.log_every = log_every
    c.eval_every = 0
    c.checkpoint_every = 0
    c.tensorboard = False
    return c


def tiny_config(steps=120):
    """A very small ViT on 8x8 digits that trains in well under a minute on 2 CPU cores."""
    c = quickstart_config(hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2)
    short_run(c, batch_size=64, steps=steps, log_every=20)
    c.lr.warmup_steps = 10
    c.lr.base = 3e-3
    return c


def uniform_images(shape, seed=0):
    """A float32 jax array of `shape` uniform in [-1, 1) from numpy's `default_rng(seed)`: a batch of test images."""
    import jax.numpy as jnp
    import numpy as np

    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


def init_model(name, x, seed=0, **kw):
    """`(model, variables, x)`: `models.get_model(name, **kw)` initialised (jitted) on the batch `x` with
    PRNGKey(seed); the tiny-model fixtures of the family test modules."""
    import jax

    from vit_jax import models

    model = models.get_model(name, **kw)
    return model, jax.jit(model.init)(jax.random.PRNGKey(seed), x), x


def assert_trees_equal(a, b):
    """Two parameter trees with the same flattened names, values (exactly) and dtypes."""
    import numpy as np

    from vit_jax import checkpoint

    fa, fb = checkpoint.flatten(a), checkpoint.flatten(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)
        assert np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype, k


def check_posemb_resized_like_torch(num_prefix_tokens):
    """`layers.AddPositionEmbs` stored at an 8x8 grid, used at 12x10: the grid rows equal PyTorch's bilinear
    `interpolate` (as rstrudel/segmenter's `resize_pos_embed`). Returns the stored and the resized tables (numpy) for
    the caller's checks of the `num_prefix_tokens` leading rows."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from vit_jax.models import layers

    n = num_prefix_tokens
    pe_mod = layers.AddPositionEmbs(stored_grid=(8, 8), grid=(12, 10), num_prefix_tokens=n)
    x = jnp.zeros((1, n + 120, 16))
    v = jax.jit(pe_mod.init)(jax.random.PRNGKey(0), x)
    pe = np.asarray(v['params']['pos_embedding'])
    assert pe.shape == (1, n + 64, 16)
    got = np.asarray(pe_mod.apply(v, x))
    grid = torch.tensor(pe[0, n:]).reshape(1, 8, 8, 16).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=(12, 10), mode='bilinear').permute(0, 2, 3, 1).reshape(120, 16)
    np.testing.assert_allclose(got[0, n:], ref.numpy(), atol=1e-6)
    return pe, got


def unilm_block(sd, prefix, d, d_ff, *, rel_pos=None, gamma=False):
    """One microsoft/unilm BEiT `Block` (`beit/modeling_finetune.py`; QueryOTR's `models/VIT.py` encoder block is the
    same) into the `_porting_common.RandomStateDict` `sd`, in the official order: norm1, attn.{qkv (no bias), q_bias,
    v_bias, [relative_position_bias_table, relative_position_index], proj}, norm2, mlp.{fc1, fc2}, [gamma_1, gamma_2].

    `rel_pos`: `(table_shape, index)` of a per-layer relative position bias; `gamma`: layer scale (around 1).
    """
    sd.ln(f'{prefix}.norm1', d)
    sd.linear(f'{prefix}.attn.qkv', 3 * d, d, bias=False)
    sd.add(f'{prefix}.attn.q_bias', (d,))
    sd.add(f'{prefix}.attn.v_bias', (d,))
    if rel_pos is not None:
        table_shape, index = rel_pos
        sd.add(f'{prefix}.attn.relative_position_bias_table', table_shape)
        sd[f'{prefix}.attn.relative_position_index'] = index
    sd.linear(f'{prefix}.attn.proj', d, d)
    sd.ln(f'{prefix}.norm2', d)
    sd.mlp(f'{prefix}.mlp', d, d_ff)
    if gamma:
        sd[f'{prefix}.gamma_1'], sd[f'{prefix}.gamma_2'] = 1 + sd.r(d), 1 + sd.r(d)


def run_worker(out, jobs, devices=1, distributed=None, wait=True):
    """Runs tests/scale_worker.py on `jobs` with `devices` simulated CPU devices (a Popen when not `wait`)."""
    env = dict(os.environ)
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    env.pop('VIT_JAX_DISTRIBUTED', None)
    cmd = [sys.executable, WORKER, str(out), json.dumps(jobs)]
    if distributed:
        cmd += ['--distributed', *map(str, distributed)]
    if not wait:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


def torch_dtn(x, weight, bias, mean_w, var_w, pos_w, pos_b, heads, side, pool, eps=1e-5, only_var=False):
    """DTN restated in PyTorch after the official `models/normkit/norms/dtn.py` (torch tensors in and out)."""
    import torch

    b, t, c = x.shape
    g = x.reshape(b, t, heads, -1)
    x = (g / torch.sqrt((g * g).mean(3, keepdim=True) + eps)).reshape(b, t, c)
    ps = side // pool
    ind = torch.arange(ps).view(1, -1) - torch.arange(ps).view(-1, 1)
    rel = torch.stack([ind.repeat(ps, ps),
                       ind.repeat_interleave(ps, 0).repeat_interleave(ps, 1)], -1).float()
    rel = torch.cat([rel, (rel ** 2).sum(-1, keepdim=True)], -1)[None]
    score = torch.nn.functional.linear(rel, pos_w, pos_b).permute(0, 3, 1, 2).softmax(dim=-2)
    mean_ln, var_ln = x.mean(2), x.var(2)
    xi = x.view(b, side, side, c).permute(0, 3, 1, 2)
    if pool > 1:
        xi = torch.nn.functional.avg_pool2d(xi, pool)
    xi = xi.reshape(b, heads, c // heads, -1)
    m = xi @ score
    v = (xi * xi) @ score - m * m

    def up(s):
        if pool == 1:
            return s
        s = s.view(b, heads, c // heads, ps, ps).unsqueeze(-1).repeat(1, 1, 1, 1, 1, pool * pool)
        s = s.view(b, heads, c // heads, ps, ps, pool, pool).permute(0, 1, 2, 3, 5, 4, 6)
        return s.reshape(b, heads, c // heads, -1)

    m, v = up(m), up(v)
    mw, vw = torch.sigmoid(mean_w).view(1, heads, 1, 1), torch.sigmoid(var_w).view(1, heads, 1, 1)
    v = ((1 - vw) * v + vw * var_ln.view(b, 1, 1, -1)).view(b, c, -1).permute(0, 2, 1)
    if only_var:
        y = (x - mean_ln.view(b, t, 1)) / torch.sqrt(v + eps)
    else:
        m = ((1 - mw) * m + mw * mean_ln.view(b, 1, 1, -1)).view(b, c, t).permute(0, 2, 1)
        y = (x - m) / torch.sqrt(v + eps)
    return y * weight + bias
