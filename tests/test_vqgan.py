"""PeCo tokenizer (VQGAN): shapes and entry points, straight-through quantisation and the VQ losses, PatchGAN,
perceptual features through a frozen net (gradients reach the input, not the net), and a tiny tokenizer that
learns on the built-in digits (reconstruction loss falls, codebook used)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import init_model, uniform_images

from vit_jax import models
from vit_jax.models import vqgan
from vit_jax.objectives import frozen


def test_registry_and_peco_shape():
    m = models.get_model('PeCo-VQGAN-f16')
    assert m.downsampling == 16 and m.num_codes == 8192 and m.code_dim == 256
    shapes = models.init_shapes(m)
    assert shapes['params']['quantize']['embedding'].shape == (8192, 256)
    # Exact count of this implementation (taming f16 encoder/decoder, ch 128, mults 1,1,2,2,4; no paper figure).
    assert models.count_params('PeCo-VQGAN-f16') == 73_976_707


@pytest.fixture(scope='module')
def tiny():
    return init_model('VQGAN-testing', uniform_images((2, 16, 16, 3)))


def test_encode_decode_consistent(tiny):
    m, v, x = tiny
    y, out = jax.jit(m.apply)(v, x)
    assert y.shape == x.shape and out['codes'].shape == (2, 4, 4) and out['codes'].dtype == jnp.int32
    codes = jax.jit(lambda v, x: m.apply(v, x, method=m.encode))(v, x)
    np.testing.assert_array_equal(codes, out['codes'])
    rec = jax.jit(lambda v, c: m.apply(v, c, method=m.decode_codes))(v, codes)
    np.testing.assert_allclose(rec, y, atol=1e-4)
    assert 1.0 <= float(out['perplexity']) <= 64.0 and 0 < float(out['usage']) <= 1


def test_straight_through_and_vq_losses():
    q = vqgan.VectorQuantizer(num_codes=8, code_dim=4)
    z = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 3, 4))
    v = jax.jit(q.init)(jax.random.PRNGKey(0), z)
    cb = v['params']['embedding']
    z_q, codes, stats = jax.jit(q.apply)(v, z)
    # Nearest codeword, and the forward value is the codeword.
    d = ((z.reshape(-1, 1, 4) - cb[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(codes.reshape(-1), np.argmin(d, 1))
    np.testing.assert_allclose(z_q.reshape(-1, 4), cb[codes.reshape(-1)], atol=1e-6)
    # Straight-through: d z_q / d z is the identity.
    g = jax.jit(jax.grad(lambda z: jnp.sum(q.apply(v, z)[0] * 3.0)))(z)
    np.testing.assert_allclose(g, 3.0 * np.ones_like(z), atol=1e-6)
    want = np.mean((np.asarray(z).reshape(-1, 4) - np.asarray(cb)[codes.reshape(-1)]) ** 2)
    np.testing.assert_allclose(stats['codebook_loss'], want, rtol=1e-5)
    np.testing.assert_allclose(stats['commitment_loss'], want, rtol=1e-5)
    # The codebook term moves only the codebook, the commitment term only the encoder side.
    gz = jax.jit(jax.grad(lambda z: q.apply(v, z)[2]['codebook_loss']))(z)
    assert float(jnp.abs(gz).max()) == 0.0
    gcb = jax.jit(jax.grad(lambda p: q.apply({'params': p}, z)[2]['commitment_loss']))(v['params'])
    assert float(jnp.abs(gcb['embedding']).max()) == 0.0


def test_patchgan_shapes():
    d = vqgan.PatchGAN(ndf=8, n_layers=2, norm='group')
    x = jnp.zeros((2, 32, 32, 3))
    v = jax.jit(d.init)(jax.random.PRNGKey(0), x)
    assert jax.jit(d.apply)(v, x).shape == (2, 6, 6, 1)  # 32 -> 16 -> 8 -> 7 -> 6 (pix2pix's 70x70 at 256).


def test_perceptual_loss_frozen_net_gradients():
    net = frozen.load_frozen(dict(model='ViT-testing', overrides=dict(num_classes=0, image_size=16)), 'perceptual net')
    assert net.frozen_random
    x = uniform_images((2, 16, 16, 3))
    y = x + 0.1
    variables = jax.tree_util.tree_map(jnp.asarray, net.variables)

    def f(y, variables):
        return frozen.perceptual_loss(net, variables, x, y, (0, 1))

    val, (gy, gv) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(y, variables)
    assert float(val) > 0 and float(jnp.abs(gy).max()) > 0  # Gradients reach the reconstruction ...
    assert all(float(jnp.abs(t).max()) == 0 for t in jax.tree_util.tree_leaves(gv))  # ... not the frozen net.
    assert float(jax.jit(f)(x, variables)) == 0.0


@pytest.mark.slow
def test_tiny_tokenizer_learns(tmp_path):
    from vit_jax import config_utils, train

    c = config_utils.load('configs/peco_tokenizer.py:digits_tiny')
    c.log_every = 25
    train.train_and_evaluate(c, str(tmp_path))
    rows = [json.loads(line) for line in open(os.path.join(tmp_path, 'metrics.jsonl'))]
    rows = [r for r in rows if 'train/rec_loss' in r]
    first, last = rows[0], rows[-1]
    # Measured (150 steps, batch 64): rec_loss 0.578 -> 0.230, perplexity 42 of 64 codes, batch usage 0.97.
    assert last['train/rec_loss'] < 0.6 * first['train/rec_loss']
    assert last['train/perplexity'] > 16 and last['train/usage'] > 0.5 and last['train/live_codes'] > 0.5
    assert 'train/perceptual_loss_random_features' in last  # A stand-in is named as one.
    assert np.isfinite(last['train/d_loss']) and np.isfinite(last['train/g_loss'])
