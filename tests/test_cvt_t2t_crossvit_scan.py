"""CvT, T2T-ViT and CrossViT on `layers.Encoder`: with `scan=True` (and remat) they compute what the per-layer loop
computes, the loop's weights moved into the scanned layout by `checkpoint.load_pretrained` (CvT's BatchNorm
statistics by `load_pretrained_model_state`) and back; parameter names of the loop layout are the official ones."""

import jax
import numpy as np
import pytest

from vit_jax import checkpoint, models

# family: (registered name, small overrides, the scanned stack's name, a loop block's name).
CASES = {
    'cvt': ('CvT-13', dict(image_size=32, embed_dims=(16, 24, 32), num_heads=(1, 2, 2), depths=(1, 2, 3),
                           drop_path_rate=(0.0, 0.1, 0.2)), 'stage_2_block', 'stage_2_block_2'),
    't2t': ('T2T-ViT-7', dict(image_size=32, hidden_size=32, num_heads=2, num_layers=3, token_dim=16),
            'Transformer/encoderblock', 'Transformer/encoderblock_2'),
    'crossvit': ('CrossViT-S', dict(image_size=32, branch_sizes=(36, 32), embed_dims=(16, 24), num_heads=(2, 2),
                                    depths=(1, 2), mlp_ratios=(2.0, 2.0), num_encoders=3, drop_path_rate=0.2),
                 'blocks', 'blocks_2'),
}


def _collections(variables: dict) -> dict:
    return {k: v for k, v in variables.items() if k != 'params'}


def _assert_trees_close(got, want, what):
    flat_got, flat_want = checkpoint.flatten(got), checkpoint.flatten(want)
    assert set(flat_got) == set(flat_want), what
    for k in flat_want:
        np.testing.assert_allclose(np.asarray(flat_got[k]), np.asarray(flat_want[k]), atol=1e-5, rtol=1e-5,
                                   err_msg=f'{what}: {k}')


@pytest.mark.parametrize('family', sorted(CASES))
def test_scan_matches_loop(family, tmp_path):
    name, kw, scanned, looped = CASES[family]
    loop = models.get_model(name, num_classes=5, **kw)
    scan = models.get_model(name, num_classes=5, scan=True, remat_policy='nothing_saveable', **kw)
    x = jax.random.normal(jax.random.PRNGKey(0), models.input_shape(loop, 2))
    v_loop = jax.jit(loop.init)(jax.random.PRNGKey(1), x)
    assert any(k.startswith(f'{looped}/') for k in checkpoint.flatten(v_loop['params']))
    path = str(tmp_path / 'loop.npz')
    checkpoint.save_npz(path, v_loop['params'], _collections(v_loop))

    v_init = jax.jit(scan.init)(jax.random.PRNGKey(2), x)
    flat_init = checkpoint.flatten(v_init['params'])
    assert any(k.startswith(f'{scanned}/block/') for k in flat_init)
    assert not any(k.startswith(f'{looped}/') for k in flat_init)
    v_scan = {'params': checkpoint.load_pretrained(v_init['params'], path),
              **checkpoint.load_pretrained_model_state(_collections(v_init), path)}

    y_loop, out_loop = jax.jit(loop.apply)(v_loop, x)
    y_scan, out_scan = jax.jit(scan.apply)(v_scan, x)
    np.testing.assert_allclose(np.asarray(y_scan), np.asarray(y_loop), atol=1e-5, rtol=1e-5)
    _assert_trees_close(out_scan, out_loop, 'out')  # Every intermediate, per block included.

    if family == 'cvt':  # Training updates the same BatchNorm statistics (no dropout or stochastic depth here).
        no_drop = dict(kw, drop_path_rate=0.0)
        loop, scan = (models.get_model(name, num_classes=5, scan=s, **no_drop) for s in (False, True))

        def train(model, v):  # Under scan the (zero) drop-path rates are traced, so a dropout rng is needed.
            rngs = {'dropout': jax.random.PRNGKey(3)}
            return model.apply(v, x, train=True, mutable=['batch_stats'], rngs=rngs)[1]['batch_stats']

        new_loop = train(loop, v_loop)
        new_scan = checkpoint.load_pretrained(new_loop, train(scan, v_scan))  # In the per-layer layout.
        _assert_trees_close(new_scan, new_loop, 'batch_stats')

    back = checkpoint.load_pretrained(v_loop['params'], v_scan['params'])  # Scanned -> per-layer again.
    _assert_trees_close(back, v_loop['params'], 'params')
