"""The two 2-D sin-cos position-table conventions, pinned against the official formulas written out here in numpy
(not by calling vit_jax), and MILAN using MAE's table in its encoder and decoder as zejiangh/MILAN does.

- MAE (facebookresearch/mae `util/pos_embed.py`, copied unchanged into zejiangh/MILAN `util/pos_embed.py` and used
  by `models_milan.py` for `pos_embed` and `decoder_pos_embed`): `get_2d_sincos_pos_embed(D, g, cls_token=True)`.
- big_vision (google-research/big_vision `models/vit.py` `posemb_sincos_2d`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import models
from vit_jax.models import layers


def _mae_1d(d, pos):
    """MAE `get_1d_sincos_pos_embed_from_grid(d, pos)`: omega = 1 / 10000**(arange(d/2) / (d/2)); [sin, cos]."""
    omega = np.arange(d // 2, dtype=np.float64)
    omega /= d / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum('m,d->md', pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def _mae_2d(d, h, w, cls_token=True):
    """MAE `get_2d_sincos_pos_embed` (written there for h == w): grid = meshgrid(grid_w, grid_h), so grid[0] is the
    column index; its first half ('emb_h' in the code) is computed from grid[0], the second from grid[1]."""
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), axis=0)
    grid = grid.reshape([2, 1, h, w])
    emb = np.concatenate([_mae_1d(d // 2, grid[0]), _mae_1d(d // 2, grid[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, d]), emb], axis=0)
    return emb


def _big_vision_2d(d, h, w):
    """big_vision `posemb_sincos_2d(h, w, d)`: omega = 1 / 10000**(arange(d/4) / (d/4 - 1)); [sin x, cos x, sin y,
    cos y] with y, x = mgrid[:h, :w]."""
    y, x = np.mgrid[:h, :w]
    omega = 1.0 / 10000.0 ** (np.arange(d // 4) / (d // 4 - 1))
    y = np.einsum('m,d->md', y.flatten(), omega)
    x = np.einsum('m,d->md', x.flatten(), omega)
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)


# (D, h, w): ViT-B at 224/16, MAE's decoder width, and a small odd case (D/4 = 3, a non-square 3x5 grid).
CASES = [(768, 14, 14), (512, 14, 14), (12, 3, 5)]


@pytest.mark.parametrize('d,h,w', CASES)
def test_mae_convention_matches_official_formula(d, h, w):
    ref = _mae_2d(d, h, w)
    np.testing.assert_array_equal(ref[0], 0.0)  # The class-token row is zeros: vit_jax adds no position to cls.
    got = layers.posemb_sincos_2d(h, w, d, convention='mae')
    assert got.shape == (1, h * w, d) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], ref[1:], atol=1e-6, rtol=0)


@pytest.mark.parametrize('d,h,w', CASES)
def test_big_vision_convention_matches_official_formula(d, h, w):
    got = layers.posemb_sincos_2d(h, w, d, convention='big_vision')
    np.testing.assert_allclose(got[0], _big_vision_2d(d, h, w), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(layers.posemb_sincos_2d(h, w, d), got)  # big_vision is the default.


def test_conventions_differ_and_bad_convention():
    diff = np.abs(layers.posemb_sincos_2d(14, 14, 768, convention='mae') - layers.posemb_sincos_2d(14, 14, 768))
    assert 0.02 < diff.max() < 0.03  # The divergence the independent check found (0.025 at D = 768).
    with pytest.raises(ValueError, match='convention'):
        layers.posemb_sincos_2d(2, 2, 8, convention='moco')


def _record_inputs(fn, names):
    """Runs fn() and records the positional inputs of the submodules whose name is in `names`."""
    seen = {}

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == '__call__' and context.module.name in names:
            seen.setdefault(context.module.name, args)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        fn()
    return seen


def test_milan_encoder_and_decoder_use_mae_table():
    """With a zero patch embedding, zero decoder_embed and zero mask token, the encoder's patch tokens and the
    decoder's visible prompts and mask-token queries are exactly the position tables: MAE's, as zejiangh/MILAN."""
    m = models.get_model('MILAN-testing', image_size=16, patch_size=4, hidden_size=32, mlp_dim=64, num_heads=4,
                         num_layers=1, decoder_dim=16, decoder_depth=1, decoder_heads=2, target_dim=8)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 3)), jnp.float32)
    v = m.init(jax.random.PRNGKey(0), x)
    params = dict(v['params'])
    zero = lambda t: jax.tree_util.tree_map(jnp.zeros_like, t)  # noqa: E731
    for k in ('embedding', 'decoder_embed', 'mask_token'):
        params[k] = zero(params[k])
    ids = jnp.asarray(np.random.default_rng(1).permutation(16))[None]
    keep = m.num_keep
    seen = _record_inputs(lambda: m.apply({'params': params}, x, ids_shuffle=ids),
                          {'encoderblock_0', 'decoder_block_0'})
    enc_ref = _mae_2d(32, 4, 4)  # [1 + N, D] with the zero cls row.
    dec_ref = _mae_2d(16, 4, 4)
    enc_in = np.asarray(seen['encoderblock_0'][0])[0]  # [1 + keep, 32]: cls, then the visible patches.
    np.testing.assert_allclose(enc_in[1:], enc_ref[1:][np.asarray(ids[0, :keep])], atol=1e-6)
    queries, _, prompts = seen['decoder_block_0']  # The block is called as (queries, train, prompts).
    queries, prompts = np.asarray(queries)[0], np.asarray(prompts)[0]
    np.testing.assert_allclose(queries, dec_ref[1:][np.asarray(ids[0, keep:])], atol=1e-6)
    np.testing.assert_allclose(prompts[1:], dec_ref[1:][np.asarray(ids[0, :keep])], atol=1e-6)
    # Not big_vision's table: it differs by more than the tolerance at these widths.
    assert np.abs(enc_in[1:] - _big_vision_2d(32, 4, 4)[np.asarray(ids[0, :keep])]).max() > 1e-3


def test_vit_sincos2d_mae_option():
    """ViT(posemb='sincos2d_mae') (MILAN fine-tuning) adds MAE's table; 'sincos2d' keeps big_vision's."""
    x = jnp.zeros((1, 16, 16, 3), jnp.float32)
    for posemb, ref in (('sincos2d_mae', _mae_2d(32, 4, 4)[1:]), ('sincos2d', _big_vision_2d(32, 4, 4))):
        vit = models.get_model('ViT-testing', image_size=16, patch_size=4, hidden_size=32, mlp_dim=64, num_heads=4,
                               num_layers=1, posemb=posemb, num_classes=0)
        v = vit.init(jax.random.PRNGKey(0), x)
        params = dict(v['params'])
        params['embedding'] = jax.tree_util.tree_map(jnp.zeros_like, params['embedding'])
        seen = _record_inputs(lambda: vit.apply({'params': params}, x), {'encoderblock_0'})
        tokens = np.asarray(seen['encoderblock_0'][0])[0]
        np.testing.assert_allclose(tokens[-16:], ref, atol=1e-6)
