"""Dynamic Token Normalization: LayerNorm / InstanceNorm limits, parity with a PyTorch restatement of the official
normaliser, the local initialisation, the drop-in `norm='dtn'`, and the paper's ConViT-style models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import torch_dtn as _torch_dtn

from vit_jax import models
from vit_jax.models import dtn

B, H, C = 2, 4, 32


def _x(t, seed=0, c=C):
    return jnp.asarray(np.random.RandomState(seed).randn(B, t, c).astype(np.float32) * 2 + 0.5)


def _prescale(x, h, eps):
    g = x.reshape(*x.shape[:-1], h, -1)
    return (g / jnp.sqrt(jnp.mean(g * g, -1, keepdims=True) + eps)).reshape(x.shape)


def _with(params, **kw):
    p = jax.tree_util.tree_map(lambda a: a, params)
    p['params'].update(kw)
    return p


@pytest.mark.parametrize('unbiased', [False, True])
def test_intra_token_gates_equal_layernorm_of_prescaled_input(unbiased):
    x = _x(49)
    norm = dtn.DTN(num_heads=H, eps=1e-5, unbiased_var=unbiased)
    v = jax.jit(norm.init)(jax.random.PRNGKey(0), x)
    rng = np.random.RandomState(1)
    scale, bias = rng.randn(C).astype(np.float32), rng.randn(C).astype(np.float32)
    # Gates forced to pure intra-token statistics: sigmoid(30) == 1 in float32.
    v = _with(v, mean_norm_weight=jnp.full((H,), 30.0), var_norm_weight=jnp.full((H,), 30.0),
              scale=jnp.asarray(scale), bias=jnp.asarray(bias))
    got = jax.jit(norm.apply)(v, x)
    xs = _prescale(x, H, 1e-5)
    if unbiased:  # Bessel: (x - m) / sqrt(C/(C-1) var + eps) = sqrt((C-1)/C) LN_{eps (C-1)/C}(x).
        ln = nn.LayerNorm(epsilon=1e-5 * (C - 1) / C, use_scale=False, use_bias=False)
        want = np.sqrt((C - 1) / C) * ln.apply({}, xs) * scale + bias
    else:
        ln = nn.LayerNorm(epsilon=1e-5)
        want = ln.apply({'params': {'scale': scale, 'bias': bias}}, xs)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_inter_token_gates_with_uniform_positions_equal_instance_norm():
    x = _x(36)
    norm = dtn.DTN(num_heads=H, eps=1e-5)
    v = jax.jit(norm.init)(jax.random.PRNGKey(0), x)
    v = _with(v, mean_norm_weight=jnp.full((H,), -30.0), var_norm_weight=jnp.full((H,), -30.0),
              pos_proj={'kernel': jnp.zeros((3, H)), 'bias': jnp.zeros((H,))})
    xs = _prescale(x, H, 1e-5)
    want = (xs - xs.mean(1, keepdims=True)) / jnp.sqrt(xs.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(jax.jit(norm.apply)(v, x), want, atol=2e-4)


def test_local_init_centres_each_head_at_its_offset():
    norm = dtn.DTN(num_heads=9)
    v = jax.jit(norm.init)(jax.random.PRNGKey(0), _x(49, c=36))
    logits = jnp.asarray(dtn.relative_positions(7, 7)) @ v['params']['pos_proj']['kernel']
    target = 3 * 7 + 3  # The centre token; its most attended source for head h1 + 3 h2 is offset (h1 - 1, h2 - 1).
    for h1 in range(3):
        for h2 in range(3):
            src = int(jnp.argmax(logits[:, target, h1 + 3 * h2]))
            dy, dx = 3 - src // 7, 3 - src % 7  # target - source
            assert (dy, dx) == (h1 - 1, h2 - 1)


def test_drop_in_on_the_shared_encoder():
    # ViT-testing (2 blocks, 2 heads) with DTN in every norm (5 of them): 6 extra parameters per head each.
    assert models.count_params('ViT-testing', norm='dtn') - models.count_params('ViT-testing') == 5 * 6 * 2
    model = models.get_model('ViT-testing', norm='dtn', num_classes=3)  # 64 patch tokens + the class token.
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    v = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    assert v['params']['Transformer']['encoderblock_0']['LayerNorm_0']['var_norm_weight'].shape == (2,)
    logits, _ = jax.jit(model.apply)(v, x)
    assert logits.shape == (2, 3) and np.isfinite(logits).all()


def test_vit_s16_with_dtn():
    # 25 norms (2 per block + encoder_norm), 6 heads: 25 * 6 * 6 parameters more than ViT-S/16's 22_050_664.
    assert models.count_params('ViT-S/16', norm='dtn') == 22_050_664 + 25 * 6 * 6


def test_class_token_gets_intra_token_statistics():
    x = _x(1 + 16)
    norm = dtn.DTN(num_heads=H)
    v = jax.jit(norm.init)(jax.random.PRNGKey(0), x)
    y = jax.jit(norm.apply)(v, x)
    xs = _prescale(x[:, :1], H, 1e-5)
    want = (xs - xs.mean(-1, keepdims=True)) / jnp.sqrt(xs.var(-1, ddof=1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y[:, :1], want, atol=1e-5)
    # The grid part equals DTN on the patch tokens alone.
    np.testing.assert_allclose(y[:, 1:], jax.jit(norm.apply)(v, x[:, 1:]), atol=1e-5)


def test_unknown_grid_errors_clearly():
    with pytest.raises(ValueError, match='grid'):
        dtn.DTN(num_heads=H).init(jax.random.PRNGKey(0), _x(45))


# ----------------------------------------------------------------------------------------------------------------
# Parity with a PyTorch restatement of the official `models/normkit/norms/dtn.py`.
# ----------------------------------------------------------------------------------------------------------------
torch = pytest.importorskip('torch')


@pytest.mark.parametrize('side,pool,only_var', [(7, 1, False), (8, 2, False), (6, 1, True)])
def test_parity_with_official_formulation(side, pool, only_var):
    x = _x(side * side, seed=3)
    norm = dtn.DTN(num_heads=H, pool_grid=side // pool if pool > 1 else None, only_var=only_var)
    v = jax.jit(norm.init)(jax.random.PRNGKey(0), x)
    rng = np.random.RandomState(2)
    p = {k: rng.randn(*a.shape).astype(np.float32) for k, a in
         [('scale', v['params']['scale']), ('bias', v['params']['bias']), ('mw', np.zeros(H)), ('vw', np.zeros(H)),
          ('k', np.zeros((3, H))), ('kb', np.zeros(H))]}
    p['k'] *= 0.3
    params = {'scale': p['scale'], 'bias': p['bias'], 'var_norm_weight': p['vw'],
              'pos_proj': {'kernel': p['k'], 'bias': p['kb']}}
    if not only_var:
        params['mean_norm_weight'] = p['mw']
    got = jax.jit(norm.apply)({'params': jax.tree_util.tree_map(jnp.asarray, params)}, x)
    t = {k: torch.from_numpy(a) for k, a in p.items()}
    want = _torch_dtn(torch.from_numpy(np.array(x)), t['scale'], t['bias'], t['mw'], t['vw'], t['k'].T.contiguous(),
                      t['kb'], H, side, pool, only_var=only_var).numpy()
    assert np.abs(np.asarray(got) - want).max() <= 1e-4


# ----------------------------------------------------------------------------------------------------------------
# The ConViT-style models of the paper.
# ----------------------------------------------------------------------------------------------------------------
PINNED = {
    'DTN-ViT-T*': 5_710_792,  # README: 5.7M (ViT-T*, DTN)
    'DTN-ViT-S': 22_037_176,  # README: 22.1M ("ViT-S*" 384-d, 6 heads; see dtn.py); 22_036_456 with LN
    'DTN-ViT-S*': 27_777_952,  # code: vit_norm_s_star, 432-d, 9 heads (no published count)
    'DTN-ViT-B': 86_540_680,  # code: vit_norm_b (no published count)
    'DTN-ViT-B*': 86_541_160,  # README: 86.5M
}


@pytest.mark.parametrize('name', sorted(PINNED))
def test_dtn_vit_counts(name):
    assert models.count_params(name) == PINNED[name]


def test_dtn_vit_layout_and_forward():
    model = models.get_model('DTN-ViT-T*', image_size=32, patch_size=8, hidden_size=16, num_layers=3,
                             local_up_to_layer=2, num_classes=5)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    v = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    t = v['params']['Transformer']
    assert 'var_norm_weight' in t['encoderblock_1']['LayerNorm_2']
    assert 'var_norm_weight' not in t['encoderblock_2']['LayerNorm_0']  # Late blocks: LayerNorm.
    assert t['posembed_input']['pos_embedding'].shape == (1, 16, 16)  # Patches only.
    logits, out = jax.jit(model.apply)(v, x)
    assert logits.shape == (2, 5)
    assert out['encoder/block_01'].shape == (2, 16, 16) and out['encoder/block_02'].shape == (2, 17, 16)
