"""BEiT backbone: parity with HuggingFace BeitModel / BeitForMaskedImageModeling / BeitForImageClassification
(random weights, float32), the relative-position index, masking before position information, parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import convert, models
from vit_jax.models import beit

# Exact counts of this implementation as fine-tuned (1000-way head, per-layer relative bias, mean pooling +
# fc_norm). The BEiT paper reports 86M (base) and 307M (large); timm's beit_{base,large}_patch16_224 have
# 86,530,984 and 304,430,568: the difference is exactly the inert zero key bias of every layer (see beit.py) plus
# the mask token (12 x 768 + 768 and 24 x 1024 + 1024).
PINNED = {
    'BEiT-B/16': 86_540_968,  # BEiT paper: 86M
    'BEiT-L/16': 304_456_168,  # BEiT paper: 307M
}


@pytest.mark.parametrize('name', sorted(PINNED))
def test_param_counts(name):
    assert models.count_params(name, classifier='gap', rel_pos_bias='per_layer') == PINNED[name]


def _randomise(m, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.ndim > 1 else 0.5))


def _hf(cls, shared, abs_pos, mean_pool, layer_scale=0.1, num_labels=7):
    import transformers

    cfg = transformers.BeitConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, image_size=24,
        patch_size=4, vocab_size=37, use_relative_position_bias=not shared, use_shared_relative_position_bias=shared,
        use_absolute_position_embeddings=abs_pos, use_mask_token=True, use_mean_pooling=mean_pool,
        layer_scale_init_value=layer_scale, num_labels=num_labels, drop_path_rate=0.0, layer_norm_eps=1e-6,
        attn_implementation='eager')
    m = getattr(transformers, cls)(cfg).eval()
    _randomise(m)
    return m


def _inputs(seed=0, b=2, n=36):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(b, 24, 24, 3)).astype(np.float32)
    mask = rng.random((b, n)) < 0.4
    return images, mask


@pytest.mark.parametrize('shared,abs_pos,mean_pool', [(True, False, True), (False, True, False)])
def test_parity_beit_model(shared, abs_pos, mean_pool):
    import torch

    hf = _hf('BeitModel', shared, abs_pos, mean_pool)
    model, variables = convert.from_transformers(hf)
    images, mask = _inputs()
    with torch.no_grad():
        ref = hf(torch.from_numpy(images.transpose(0, 3, 1, 2)), bool_masked_pos=torch.from_numpy(mask))
    _, out = jax.jit(lambda v, x, m: model.apply(v, x, mask=m))(variables, jnp.asarray(images), jnp.asarray(mask))
    d1 = np.abs(np.asarray(out['encoded']) - ref.last_hidden_state.numpy()).max()
    d2 = np.abs(np.asarray(out['pre_logits']) - ref.pooler_output.numpy()).max()
    assert d1 <= 1e-4 and d2 <= 1e-4, (d1, d2)


def test_parity_masked_image_modeling():
    import torch

    hf = _hf('BeitForMaskedImageModeling', True, False, True)
    model, variables = convert.from_transformers(hf)
    assert model.vocab_size == 37 and model.rel_pos_bias == 'shared'
    images, mask = _inputs(1)
    with torch.no_grad():
        ref = hf(torch.from_numpy(images.transpose(0, 3, 1, 2)), bool_masked_pos=torch.from_numpy(mask)).logits
    _, out = jax.jit(lambda v, x, m: model.apply(v, x, mask=m))(variables, jnp.asarray(images), jnp.asarray(mask))
    diff = np.abs(np.asarray(out['mim_logits']) - ref.numpy()).max()
    assert diff <= 1e-4, diff


def test_parity_image_classification_per_layer_bias():
    import torch

    hf = _hf('BeitForImageClassification', False, False, True)
    model, variables = convert.from_transformers(hf)
    assert model.classifier == 'gap' and model.rel_pos_bias == 'per_layer'
    images, _ = _inputs(2)
    with torch.no_grad():
        ref = hf(torch.from_numpy(images.transpose(0, 3, 1, 2))).logits
    logits, _ = jax.jit(model.apply)(variables, jnp.asarray(images))
    diff = np.abs(np.asarray(logits) - ref.numpy()).max()
    assert diff <= 1e-4, diff


def test_relative_position_index_matches_hf():
    from transformers.models.beit.modeling_beit import BeitRelativePositionBias

    for grid in ((3, 3), (2, 5)):
        ref = BeitRelativePositionBias.generate_relative_position_index(grid).numpy()
        np.testing.assert_array_equal(beit.relative_position_index(grid), ref)


def test_mask_token_before_position_information():
    # With a shared relative bias only, two masked positions differ through the bias; with no position information
    # at all they would be identical. Masking must happen before absolute position embeddings too.
    model = models.get_model('BEiT-testing', num_classes=0, rel_pos_bias='none', abs_posemb=True, drop_path_rate=0.0)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 16, 16, 3)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    mask = jnp.ones((1, 16), bool)
    apply = jax.jit(lambda v, x, m: model.apply(v, x, mask=m))
    _, out = apply(variables, x, mask)
    tok = np.asarray(out['encoded'][0, 1:])
    assert np.abs(tok[0] - tok[5]).max() > 1e-4  # Positions still distinguish fully masked tokens.
    _, out2 = apply(variables, x * 0 + 3.0, mask)  # The image is invisible when everything is masked.
    np.testing.assert_allclose(np.asarray(out2['encoded']), np.asarray(out['encoded']), atol=1e-5)
    model = models.get_model('BEiT-testing', num_classes=0, rel_pos_bias='none', abs_posemb=False, layer_scale=None,
                             drop_path_rate=0.0)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    _, out = jax.jit(lambda v, x, m: model.apply(v, x, mask=m))(variables, x, mask)
    tok = np.asarray(out['encoded'][0, 1:])
    np.testing.assert_allclose(tok[0], tok[5], atol=1e-5)  # No position information: masked tokens coincide.


def test_mim_head_shapes_and_rescale_init():
    model = models.get_model('BEiT-testing', vocab_size=50, num_classes=0)
    x = jnp.zeros((2, 16, 16, 3))
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    logits, out = jax.jit(lambda v, x, m: model.apply(v, x, mask=m))(variables, x, jnp.zeros((2, 16), bool))
    assert out['mim_logits'].shape == (2, 16, 50) and out['encoded'].shape == (2, 17, 32)
    p = beit.rescale_init(variables['params'])
    k0 = variables['params']['Transformer']['encoderblock_1']['MlpBlock_3']['Dense_1']['kernel']
    np.testing.assert_allclose(p['Transformer']['encoderblock_1']['MlpBlock_3']['Dense_1']['kernel'],
                               k0 / 2.0, rtol=1e-6)


def test_resample_rel_pos_table():
    t = np.random.default_rng(0).normal(size=((2 * 4 - 1) ** 2 + 3, 2)).astype(np.float32)
    same = beit.resample_rel_pos_table(t, (4, 4), (4, 4))
    np.testing.assert_array_equal(same, t)
    new = beit.resample_rel_pos_table(t, (4, 4), (6, 6))
    assert new.shape == ((2 * 6 - 1) ** 2 + 3, 2)
    np.testing.assert_array_equal(new[-3:], t[-3:])
    with pytest.raises(ValueError, match='not one of a 5x5 grid'):
        beit.resample_rel_pos_table(t, (5, 5), (6, 6))


def test_offsets_spread_is_beits_geometric_rule():
    # 224 -> 384 at patch 16: offsets -13..13 spread to reach +-23, the nearest ones kept one apart.
    x = beit._offsets_spread(14, 24)
    assert x.shape == (27,) and x[13] == 0.0 and x[14] == 1.0
    np.testing.assert_array_equal(x, -x[::-1])
    gaps = np.diff(x[13:])
    q = gaps[1] / gaps[0]
    np.testing.assert_allclose(gaps[1:] / gaps[:-1], q, rtol=1e-9)  # Geometric: each gap q times the last.
    assert 1.01 < q < 1.5 and abs(x[-1] - 23.0) < 1e-4
    np.testing.assert_array_equal(beit._offsets_spread(1, 3), [0.0])


def test_resample_rel_pos_table_is_the_bicubic_interpolating_spline():
    import scipy.interpolate

    rng = np.random.default_rng(0)
    old, new = (6, 5), (9, 7)  # Non-square: each axis spread on its own.
    ys, xs = beit._offsets_spread(old[0], new[0]), beit._offsets_spread(old[1], new[1])
    ty, tx = np.arange(1 - new[0], new[0]), np.arange(1 - new[1], new[1])
    # (a) Random tables: the tensor-product cubic spline with FITPACK's interpolating knots (s=0), which is what
    # scipy's removed interp2d(kind='cubic') built for the unilm loaders, read at the new integer offsets.
    t = rng.normal(size=(len(ys) * len(xs) + 3, 3)).astype(np.float32)
    got = beit.resample_rel_pos_table(t, old, new)
    sub = t[:-3].reshape(len(ys), len(xs), 3).astype(np.float64)
    want = np.stack([scipy.interpolate.RectBivariateSpline(ys, xs, sub[..., h], kx=3, ky=3, s=0)(ty, tx)
                     for h in range(3)], -1)
    np.testing.assert_allclose(got[:-3].reshape(want.shape), want, atol=1e-5)
    # (b) A cubic in the offsets is reproduced exactly: the values at the spread old offsets give the cubic's
    # values at the new integer ones.
    f = lambda y, x: 0.5 + 0.1 * y - 0.02 * x * y + 1e-3 * y ** 3 - 2e-3 * x ** 2  # noqa: E731
    t = np.concatenate([f(ys[:, None], xs[None]).reshape(-1, 1), [[7.0], [8.0], [9.0]]]).astype(np.float32)
    got = beit.resample_rel_pos_table(t, old, new)
    np.testing.assert_allclose(got[:-3, 0], f(ty[:, None], tx[None]).reshape(-1), atol=1e-5)
    np.testing.assert_array_equal(got[-3:, 0], [7.0, 8.0, 9.0])


@pytest.mark.parametrize('scan', [False, True])
def test_load_pretrained_expands_the_shared_table_and_resamples_it(scan):
    """BEiT pretraining -> fine-tuning at another resolution (the unilm loaders' two rules): the shared table goes
    into every layer's, resampled from the 4x4 to the 6x6 patch grid; everything else loads as it is."""
    from vit_jax import checkpoint

    pre = models.get_model('BEiT-testing', rel_pos_bias='shared', num_classes=0, vocab_size=50, classifier='gap')
    v = jax.jit(pre.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    flat = checkpoint.flatten(v['params'])
    key = 'Transformer/rel_pos_bias/relative_position_bias_table'
    flat[key] = np.random.default_rng(1).normal(size=flat[key].shape).astype(np.float32)
    ft = models.get_model('BEiT-testing', rel_pos_bias='per_layer', image_size=24, num_classes=10, classifier='gap',
                          scan=scan)
    init = jax.jit(ft.init)(jax.random.PRNGKey(1), jnp.zeros((1, 24, 24, 3)))['params']
    with pytest.raises(checkpoint.CheckpointMismatchError, match='mim_head'):
        checkpoint.load_pretrained(init, flat, dont_load=('head/.*',))
    params = checkpoint.load_pretrained(init, flat, dont_load=('head/.*', 'mim_.*'))
    got = models.layers.unscan_params(checkpoint.flatten(params))
    want = beit.resample_rel_pos_table(flat[key], (4, 4), (6, 6))
    for i in range(2):
        np.testing.assert_array_equal(got[f'Transformer/encoderblock_{i}_rel_pos_bias/relative_position_bias_table'],
                                      want)
        np.testing.assert_array_equal(got[f'Transformer/encoderblock_{i}/LayerNorm_0/scale'],
                                      flat[f'Transformer/encoderblock_{i}/LayerNorm_0/scale'])
    assert key not in got
    jax.jit(ft.apply)({'params': params}, jnp.zeros((1, 24, 24, 3)))


def test_shared_to_per_layer():
    shared = models.get_model('BEiT-testing', rel_pos_bias='shared')
    per_layer = models.get_model('BEiT-testing', rel_pos_bias='per_layer')
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 16, 16, 3)), jnp.float32)
    v = jax.jit(shared.init)(jax.random.PRNGKey(0), x)
    table = v['params']['Transformer']['rel_pos_bias']['relative_position_bias_table']
    params = jax.tree_util.tree_map(lambda a: a, v['params'])
    params['Transformer'] = dict(params['Transformer'])
    params['Transformer']['rel_pos_bias'] = {'relative_position_bias_table': table + jnp.arange(table.size).reshape(
        table.shape) * 0.01}
    _, a = jax.jit(shared.apply)({'params': params}, x)
    _, b = jax.jit(per_layer.apply)({'params': beit.shared_to_per_layer(params)}, x)
    np.testing.assert_allclose(np.asarray(a['encoded']), np.asarray(b['encoded']), atol=1e-6)


def test_load_pretrained_names_a_table_it_cannot_resample():
    from vit_jax import checkpoint

    model = models.get_model('BEiT-testing', rel_pos_bias='shared')
    init = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))['params']
    flat = checkpoint.flatten(init)
    key = 'Transformer/rel_pos_bias/relative_position_bias_table'
    flat[key] = np.zeros(((2 * 4 - 1) * (2 * 5 - 1) + 3, 2), np.float32)  # A 4x5 grid's table.
    with pytest.raises(checkpoint.CheckpointMismatchError, match='not resampled.*pass old_grid/new_grid'):
        checkpoint.load_pretrained(init, flat)
    params = checkpoint.load_pretrained(init, flat, old_grid=(4, 5), new_grid=(4, 4))
    assert params['Transformer']['rel_pos_bias']['relative_position_bias_table'].shape == (52, 2)


def test_head_init_std():
    """BEiT fine-tuning's head: trunc_normal(0.02) x init_scale 0.001, i.e. N(0, 2e-5^2) (`head_init_std`)."""
    model = models.get_model('BEiT-testing', num_classes=64, hidden_size=64, mlp_dim=64, head_init_std=2e-5)
    head = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))['params']['head']
    assert 1.7e-5 < np.std(np.asarray(head['kernel'])) < 2.3e-5 and not np.any(np.asarray(head['bias']))

