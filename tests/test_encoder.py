"""The one `layers.Encoder`: hooks, per-layer arguments, scan segments and their parameter layouts, and for every
family built on it: looped parameters -> `checkpoint.load_pretrained` into the `scan=True` model -> the same outputs
(and gradients), and back to the looped layout unchanged."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_trees_equal as _assert_same_tree

from vit_jax import checkpoint, models
from vit_jax.models import beit, layers


def _perturb(tree, seed=0, positive=False):
    """Every leaf plus noise, so that zero-initialised weights (heads, tables, time embeddings) matter too."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    new = [np.asarray(a) + 0.1 * np.asarray(jax.random.normal(k, a.shape)) for a, k in zip(leaves, keys)]
    if positive:
        new = [np.abs(a) + 0.5 for a in new]
    return jax.tree_util.tree_unflatten(treedef, new)


def _flat(tree):
    return checkpoint.flatten(tree)


# name, overrides, input shape, the scanned block scopes expected under `Transformer`.
FAMILIES = [
    ('ViT-testing', dict(num_layers=3, num_classes=5), (2, 32, 32, 3), ['encoderblock']),
    ('BEiT-testing', dict(num_layers=3, rel_pos_bias='shared', abs_posemb=True), (2, 16, 16, 3), ['encoderblock']),
    ('BEiT-testing', dict(num_layers=3, rel_pos_bias='per_layer', classifier='gap'), (2, 16, 16, 3),
     ['encoderblock', 'encoderblock_rel_pos_bias']),
    ('TimeSformer-testing', dict(num_layers=3, num_frames=2, num_classes=5, attention_type='space_only'),
     (2, 2, 32, 32, 3), ['encoderblock']),
    ('TimeSformer-testing', dict(num_layers=3, num_frames=2, num_classes=5, attention_type='joint_space_time'),
     (2, 2, 32, 32, 3), ['encoderblock']),
    # Factorised blocks: block 0's fc layers are initialised differently, so layer 0 is its own segment.
    ('TimeSformer-testing', dict(num_layers=3, num_frames=2, num_classes=5), (2, 2, 32, 32, 3),
     ['encoderblock_0-0', 'encoderblock_1-2']),
    # DTN blocks 0-1 on the patches, then the class token joins and LayerNorm blocks follow.
    ('DTN-ViT-S', dict(num_layers=3, local_up_to_layer=2, hidden_size=32, num_heads=2, image_size=32, patch_size=8,
                       num_classes=5), (2, 32, 32, 3), ['encoderblock_0-1', 'encoderblock_2-2']),
    ('DHVT-T-CIFAR/4', dict(num_layers=3, hidden_size=32, num_heads=2, num_classes=5), (2, 16, 16, 3),
     ['encoderblock']),
    ('CCT-7/3x2', dict(num_layers=3, hidden_size=16, num_heads=2), (2, 32, 32, 3), ['encoderblock']),
    ('CLIP-testing', dict(num_layers=3), (2, 16, 16, 3), ['encoderblock']),
    ('Seg-testing', dict(num_layers=3, decoder='mask_transformer'), (2, 32, 32, 3), ['encoderblock']),
]


@pytest.mark.parametrize('name, kw, shape, scanned', FAMILIES,
                         ids=[f'{f[0]}-{f[1].get("attention_type", f[1].get("rel_pos_bias", ""))}' for f in FAMILIES])
def test_loop_params_load_into_the_scanned_model_and_back(tmp_path, name, kw, shape, scanned):
    x = jax.random.uniform(jax.random.PRNGKey(1), shape, minval=-1.0, maxval=1.0)
    loop, scan = models.get_model(name, **kw), models.get_model(name, scan=True, **kw)
    v = jax.jit(loop.init)(jax.random.PRNGKey(0), x)
    vs_init = jax.jit(scan.init)(jax.random.PRNGKey(0), x)
    assert sorted(k for k in vs_init['params']['Transformer'] if k.startswith('encoderblock')) == sorted(scanned)
    params = _perturb(v['params'])
    state = {c: _perturb(t, positive=True) for c, t in v.items() if c != 'params'}  # DHVT's BatchNorm statistics.
    scan_params = checkpoint.load_pretrained(vs_init['params'], params)
    scan_state = {}
    if state:
        path = str(tmp_path / 'loop.npz')
        checkpoint.save_npz(path, params, model_state=state)
        scan_state = checkpoint.load_pretrained_model_state({c: vs_init[c] for c in state}, path)
        scan_params = checkpoint.load_pretrained(vs_init['params'], path)
    y, out = jax.jit(loop.apply)({'params': params, **state}, x)
    ys, outs = jax.jit(scan.apply)({'params': scan_params, **scan_state}, x)
    np.testing.assert_allclose(ys, y, atol=2e-5, rtol=2e-5)
    blocks = sorted(k for k in out if k.startswith('encoder/block_'))
    assert len(blocks) == 3 and blocks == sorted(k for k in outs if k.startswith('encoder/block_'))
    for k in blocks:
        np.testing.assert_allclose(outs[k], out[k], atol=2e-5, rtol=2e-5)
    # And back: the scanned parameters (and statistics) into the looped model give the original ones exactly.
    _assert_same_tree(checkpoint.load_pretrained(v['params'], scan_params), params)
    for c in state:
        back = checkpoint.unflatten(checkpoint._scan_to_loop(_flat(scan_state[c]), {}))
        _assert_same_tree(back, state[c])


# Encoder-decoder families: name, overrides, input shape, call keywords (built from x), the scanned scopes expected at
# the top level of the parameters (the decoders keep their release names at the model's top level).
DECODERS = [
    ('MILAN-testing', dict(decoder='mae', num_layers=3, decoder_depth=2), (2, 16, 16, 3), 'ids', ['decoder_blocks']),
    ('MILAN-testing', dict(decoder='prompt', num_layers=3, decoder_depth=3), (2, 16, 16, 3), 'ids',
     ['decoder_block']),
    ('QueryOTR-testing', dict(num_layers=3, decoder_layers=3), (2, 32, 32, 3), None, ['decoder']),
]


@pytest.mark.parametrize('name, kw, shape, call, scanned', DECODERS, ids=['milan-mae', 'milan-prompt', 'queryotr'])
def test_encoder_decoder_families_scan_encoder_and_decoder(name, kw, shape, call, scanned):
    """MILAN's MAE and prompting decoders, QueryOTR's cross-attention decoder (blocks reading the Encoder's
    `context`): looped weights -> scanned model -> same outputs, decoder blocks included, and back exactly."""
    loop, scan = models.get_model(name, **kw), models.get_model(name, scan=True, **kw)
    x = jax.random.uniform(jax.random.PRNGKey(1), shape, minval=-1.0, maxval=1.0)
    n = (shape[1] // 4) ** 2
    call_kw = {'ids_shuffle': jnp.stack([jax.random.permutation(jax.random.PRNGKey(i), n) for i in range(2)])
               } if call == 'ids' else {}
    v = jax.jit(lambda k: loop.init(k, x, **call_kw))(jax.random.PRNGKey(0))
    params = _perturb(v['params'])
    scan_init = jax.jit(lambda k: scan.init(k, x, **call_kw))(jax.random.PRNGKey(0))['params']
    assert 'encoderblock' in scan_init['Transformer']
    assert [k for k in scanned if k in scan_init] == scanned
    assert not any(k.startswith(('decoder_block_', 'decoder_0')) for k in scan_init)
    scan_params = checkpoint.load_pretrained(scan_init, params)
    y, out = jax.jit(lambda p: loop.apply({'params': p}, x, **call_kw))(params)
    ys, outs = jax.jit(lambda p: scan.apply({'params': p}, x, **call_kw))(scan_params)
    np.testing.assert_allclose(ys, y, atol=2e-5, rtol=2e-5)
    for k in (k for k in out if 'block_' in k):
        np.testing.assert_allclose(outs[k], out[k], atol=2e-5, rtol=2e-5, err_msg=k)
    _assert_same_tree(checkpoint.load_pretrained(v['params'], scan_params), params)


@pytest.mark.parametrize('remat', [pytest.param(None, marks=pytest.mark.slow), 'nothing_saveable',
                                   pytest.param('dots_saveable', marks=pytest.mark.slow)])
def test_scan_and_remat_give_the_loop_gradients(remat):
    """BEiT with per-layer relative-position tables (a scanned bias and a scanned block) under each remat policy."""
    kw = dict(num_layers=3, rel_pos_bias='per_layer')
    loop = models.get_model('BEiT-testing', **kw)
    scan = models.get_model('BEiT-testing', scan=True, remat_policy=remat, **kw)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3), minval=-1.0, maxval=1.0)
    params = _perturb(jax.jit(loop.init)(jax.random.PRNGKey(0), x)['params'])
    scan_params = checkpoint.load_pretrained(jax.jit(scan.init)(jax.random.PRNGKey(0), x)['params'], params)

    def loss(model):
        return lambda p: jnp.sum(model.apply({'params': p}, x)[0] ** 2)

    g = jax.jit(jax.grad(loss(loop)))(params)
    gs = jax.jit(jax.grad(loss(scan)))(scan_params)
    gs = checkpoint.unflatten(layers.unscan_params(_flat(gs)))
    fg, fgs = _flat(g), _flat(gs)
    assert sorted(fg) == sorted(fgs)
    for k in fg:
        np.testing.assert_allclose(fgs[k], fg[k], atol=1e-4, rtol=1e-4, err_msg=k)


def test_beit_init_helpers_work_on_scanned_layers():
    kw = dict(num_layers=3, rel_pos_bias='shared')
    x = jnp.zeros((1, 16, 16, 3))
    loop = _perturb(models.get_model('BEiT-testing', **kw).init(jax.random.PRNGKey(0), x)['params'])
    scanned_init = models.get_model('BEiT-testing', scan=True, **kw).init(jax.random.PRNGKey(0), x)['params']
    scanned = checkpoint.load_pretrained(scanned_init, loop)
    for fn in (beit.rescale_init, beit.shared_to_per_layer):
        want = fn(loop)
        got = checkpoint.unflatten(layers.unscan_params(_flat(fn(scanned))))
        fw, fg = _flat(want), _flat(got)
        assert sorted(fw) == sorted(fg)
        for k in fw:
            np.testing.assert_allclose(np.asarray(fg[k]), np.asarray(fw[k]), rtol=1e-6, err_msg=k)
    assert 'encoderblock_rel_pos_bias' in beit.shared_to_per_layer(scanned)['Transformer']


# ----------------------------------------------------------------------------------------------------------------
# The Encoder's hooks and arguments on a toy block.
# ----------------------------------------------------------------------------------------------------------------
class _Scale(nn.Module):
    """A toy block: x * w + i (w a parameter, i the per-layer `offset`)."""

    offset: float = 0.0
    drop_path_rate: float = 0.0

    @nn.compact
    def __call__(self, x, train=False):
        w = self.param('w', nn.initializers.ones, (x.shape[-1],))
        self.sow('intermediates', 'rate', jnp.asarray(self.drop_path_rate))
        return x * w + self.offset


def test_hooks_per_layer_arguments_and_segments():
    def embed(enc, x):
        return x + enc.param('bias', nn.initializers.constant(10.0), (x.shape[-1],))

    hooks = {0: embed, 2: lambda enc, x: x * 2, 3: lambda enc, x: x - 1}
    kw = dict(num_layers=3, num_heads=4, mlp_dim=0, block_cls=_Scale, final_norm=False,
              layer_kwargs=lambda i: {'offset': 1.0 if i < 2 else 5.0}, drop_path_rate=(0.1, 0.2, 0.3))
    x = jnp.ones((1, 2, 3))
    for scan in (False, True):
        enc = layers.Encoder(scan=scan, **kw)
        v = enc.init(jax.random.PRNGKey(0), x, hooks=hooks)
        (y, out), inter = enc.apply(v, x, hooks=hooks, mutable=['intermediates'])
        # ((1 + 10) + 1 + 1) * 2 + 5 - 1 (undeclared Encoder fields such as num_heads are not passed)
        np.testing.assert_allclose(y, 30.0)
        np.testing.assert_allclose(out['block_01'], 13.0)
        assert v['params']['bias'].shape == (3,)  # A hook's parameter lands in the encoder's own scope.
        names = sorted(k for k in v['params'] if k != 'bias')
        assert names == (['encoderblock_0-1', 'encoderblock_2-2'] if scan else
                         ['encoderblock_0', 'encoderblock_1', 'encoderblock_2'])
        rates = [np.ravel(inter['intermediates'][n]['block']['rate'][0]) if scan else
                 np.ravel(inter['intermediates'][n]['rate'][0]) for n in names]
        np.testing.assert_allclose(np.concatenate(rates), [0.1, 0.2, 0.3], rtol=1e-6)
    assert layers.Encoder(**kw).segments([1]) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match='before layers 0..3'):
        layers.Encoder(**kw).init(jax.random.PRNGKey(0), x, hooks={4: embed})


def test_position_embedding_hook_and_classifier_head():
    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            x, _ = layers.Encoder(num_layers=1, num_heads=2, mlp_dim=8, name='Transformer')(
                x, hooks={0: layers.position_embedding('learn')})
            return layers.classifier_head(x[:, 0], 3, {}, kernel_init=nn.initializers.ones)

    v = Tiny().init(jax.random.PRNGKey(0), jnp.ones((1, 5, 4)))
    assert v['params']['Transformer']['posembed_input']['pos_embedding'].shape == (1, 5, 4)
    assert {'encoderblock_0', 'encoder_norm'} <= set(v['params']['Transformer'])
    logits, out = Tiny().apply(v, jnp.ones((1, 5, 4)))
    assert logits.dtype == jnp.float32 and logits.shape == (1, 3)
    np.testing.assert_allclose(logits, out['pre_logits'].sum(-1, keepdims=True) * np.ones((1, 3)), rtol=1e-5)
    with pytest.raises(ValueError, match='Unknown position embedding'):
        layers.position_embedding('learned')


def test_drop_path_rates():
    np.testing.assert_allclose(layers.drop_path_rates(0.3, 4), [0.0, 0.1, 0.2, 0.3])
    np.testing.assert_allclose(layers.drop_path_rates(0.3, 1), [0.3])
    np.testing.assert_allclose(layers.drop_path_rates((0.0, 0.5), 2), [0.0, 0.5])
    with pytest.raises(ValueError, match='2 layers'):
        layers.drop_path_rates((0.1,), 2)


# ----------------------------------------------------------------------------------------------------------------
# The layout functions on names alone.
# ----------------------------------------------------------------------------------------------------------------
def test_layouts_convert_segments_biases_and_registered_names():
    a = lambda *s: np.arange(np.prod(s), dtype=np.float32).reshape(s)  # noqa: E731
    loop = {
        'cls': a(1, 1, 2),
        'Transformer/encoder_norm/scale': a(2),
        **{f'Transformer/encoderblock_{i}/LayerNorm_0/scale': a(2) + i for i in range(4)},
        **{f'Transformer/encoderblock_{i}_rel_pos_bias/table': a(3, 2) - i for i in range(4)},
        **{f'stage_1_block_{i}/w': a(2) * i for i in range(2)},
    }
    like = {
        'cls': a(1, 1, 2),
        'Transformer/encoder_norm/scale': a(2),
        'Transformer/encoderblock_0-2/block/LayerNorm_0/scale': a(3, 2),
        'Transformer/encoderblock_3-3/block/LayerNorm_0/scale': a(1, 2),
        'Transformer/encoderblock_0-2_rel_pos_bias/table': a(3, 3, 2),
        'Transformer/encoderblock_3-3_rel_pos_bias/table': a(1, 3, 2),
        'stage_1_block/block/w': a(2, 2),
    }
    layers.register_layer_names(block_name=r'stage_\d+_block')
    scanned = layers.scan_params_like(loop, like)
    assert sorted(scanned) == sorted(like)
    np.testing.assert_array_equal(scanned['Transformer/encoderblock_0-2_rel_pos_bias/table'][2], loop[
        'Transformer/encoderblock_2_rel_pos_bias/table'])
    np.testing.assert_array_equal(scanned['stage_1_block/block/w'][1], loop['stage_1_block_1/w'])
    assert all(layers.is_scanned_key(k) for k in like if k.startswith(('Transformer/encoderblock', 'stage')))
    back = layers.unscan_params(scanned)
    assert sorted(back) == sorted(loop)
    for k in loop:
        np.testing.assert_array_equal(back[k], loop[k])
    # Another segmentation of the same layers converts through the per-layer layout.
    whole = {'Transformer/encoderblock/block/LayerNorm_0/scale': a(4, 2)}
    np.testing.assert_array_equal(layers.scan_params_like(scanned, whole)[
        'Transformer/encoderblock/block/LayerNorm_0/scale'][3], loop['Transformer/encoderblock_3/LayerNorm_0/scale'])
    # A gap in the per-layer numbering cannot be stacked.
    gap = {k.replace('encoderblock_3/', 'encoderblock_5/'): v for k, v in loop.items()}
    with pytest.raises(ValueError, match=r'blocks \[0, 1, 2, 5\]'):
        layers.scan_params_like(gap, whole)
    # Names that are not Encoder layers stay as they are.
    assert layers.unscan_params({'decoder_block_0/x': 1, 'encoderblocks/x': 2}) == {'decoder_block_0/x': 1,
                                                                                  'encoderblocks/x': 2}


def test_timesformer_init_from_image_vit_fills_scanned_layers():
    from vit_jax.models import timesformer

    x = jnp.zeros((1, 2, 32, 32, 3))
    kw = dict(num_layers=3, num_frames=2, num_classes=5)
    image = _perturb(models.get_model('ViT-testing', hidden_size=64, mlp_dim=128, patch_size=8, num_layers=3).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))['params'])
    loop = models.get_model('TimeSformer-testing', **kw).init(jax.random.PRNGKey(0), x)['params']
    scanned = models.get_model('TimeSformer-testing', scan=True, **kw).init(jax.random.PRNGKey(0), x)['params']
    want = timesformer.init_from_image_vit(loop, image)
    got = timesformer.init_from_image_vit(scanned, image)
    assert sorted(got['Transformer']) == ['encoder_norm', 'encoderblock_0-0', 'encoderblock_1-2', 'posembed_input',
                                          'time_embedding']
    got_loop = checkpoint.unflatten(layers.unscan_params(_flat(got)))
    for k, v in _flat(want).items():  # Everything the image model provides (the head and fc layers keep their init).
        if not k.startswith('head') and '_fc/' not in k:
            np.testing.assert_array_equal(_flat(got_loop)[k], v, err_msg=k)


def test_encoder_layer_of_a_name():
    assert layers.encoder_layer('Transformer/encoderblock_3/MlpBlock_3/Dense_0/kernel') == (3, False)
    assert layers.encoder_layer('Transformer/encoderblock_3_rel_pos_bias/relative_position_bias_table') == (3, False)
    assert layers.encoder_layer('Transformer/encoderblock/block/LayerNorm_0/scale') == (0, True)
    assert layers.encoder_layer('Transformer/encoderblock_rel_pos_bias/relative_position_bias_table') == (0, True)
    assert layers.encoder_layer('Transformer/encoderblock_10-11/block/LayerNorm_0/scale') == (10, True)
    assert layers.encoder_layer('Transformer/rel_pos_bias/relative_position_bias_table') is None
    assert layers.encoder_layer('head/kernel') is None
