"""checkpoint: release .npz files (names, GroupNorm), load_pretrained (errors, dont_load, posemb), Orbax workdirs."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from _helpers import assert_trees_equal

from vit_jax import checkpoint, models
from vit_jax.models import layers


def _init(name='ViT-testing', seed=0, **kw):
    model = models.get_model(name, **kw)
    x = jnp.zeros(models.input_shape(model, 1))
    return model, jax.tree_util.tree_map(np.asarray, model.init(jax.random.PRNGKey(seed), x)['params'])


def _flat(tree):
    return checkpoint.flatten(tree)


@pytest.fixture(scope='module')
def tiny():
    return _init(num_classes=10)


# ----------------------------------------------------------------------------------------------------------------
# .npz files.
# ----------------------------------------------------------------------------------------------------------------
def test_npz_round_trip_is_exact(tiny, tmp_path):
    _, params = tiny
    params = dict(params, extra={'ints': np.arange(5, dtype=np.int32), 'f64': np.linspace(0, 1, 3)})
    path = str(tmp_path / 'p.npz')
    checkpoint.save_npz(path, params)
    assert_trees_equal(checkpoint.load_npz(path), params)
    # The file holds flat '/'-joined release names.
    with np.load(path, allow_pickle=False) as f:
        assert 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel' in f.files
        assert 'Transformer/posembed_input/pos_embedding' in f.files and 'cls' in f.files


def test_npz_bfloat16_saved_as_exact_float32(tmp_path):
    x = jnp.asarray([1.5, -2.25, 3.0e-3], jnp.bfloat16)
    checkpoint.save_npz(str(tmp_path / 'b.npz'), {'a': {'w': x}})
    got = checkpoint.load_npz(str(tmp_path / 'b.npz'))['a']['w']
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.asarray(x, np.float32))


def test_npz_errors(tmp_path):
    with pytest.raises(ValueError, match='.npz'):
        checkpoint.save_npz(str(tmp_path / 'p.bin'), {'a': np.zeros(2)})
    with pytest.raises(ValueError, match='empty'):
        checkpoint.save_npz(str(tmp_path / 'p.npz'), {})
    with pytest.raises(FileNotFoundError, match='No parameter file'):
        checkpoint.load_npz(str(tmp_path / 'missing.npz'))
    with pytest.raises(IsADirectoryError):
        checkpoint.load_npz(str(tmp_path))
    # Object arrays need unpickling: refused.
    np.savez(tmp_path / 'obj.npz', a=np.array([{'x': 1}], dtype=object))
    with pytest.raises(ValueError, match='pickled'):
        checkpoint.load_npz(str(tmp_path / 'obj.npz'))
    # A pickle / random bytes / a single .npy array are not parameter files.
    (tmp_path / 'junk.npz').write_bytes(b'\x80\x04not really a zip file at all')
    with pytest.raises(ValueError, match='not a plain .npz|could not be read'):
        checkpoint.load_npz(str(tmp_path / 'junk.npz'))
    np.save(tmp_path / 'single.npy', np.zeros(3))
    with pytest.raises(ValueError, match='single array'):
        checkpoint.load_npz(str(tmp_path / 'single.npy'))
    np.savez(tmp_path / 'empty.npz')
    with pytest.raises(ValueError, match='no parameters'):
        checkpoint.load_npz(str(tmp_path / 'empty.npz'))


def _to_linen(flat):
    """The linen per-class numbering of the release's blocks (LayerNorm_0/1, MHDPA_0, MlpBlock_0)."""
    ren = {'LayerNorm_2': 'LayerNorm_1', 'MultiHeadDotProductAttention_1': 'MultiHeadDotProductAttention_0',
           'MlpBlock_3': 'MlpBlock_0'}
    out = {}
    for k, v in flat.items():
        parts = k.split('/')
        for i, p in enumerate(parts):
            if i > 0 and parts[i - 1].startswith('encoderblock'):
                parts[i] = ren.get(p, p)
        out['/'.join(parts)] = v
    return out


def test_release_and_linen_names_load_the_same(tiny, tmp_path):
    _, params = tiny
    flat = _flat(params)
    linen = _to_linen(flat)
    assert 'Transformer/encoderblock_1/MlpBlock_0/Dense_1/kernel' in linen
    assert 'Transformer/encoderblock_1/LayerNorm_1/scale' in linen
    np.savez(tmp_path / 'linen.npz', **linen)
    np.savez(tmp_path / 'release.npz', **flat)
    assert_trees_equal(checkpoint.load_npz(str(tmp_path / 'linen.npz')), params)
    assert_trees_equal(checkpoint.load_npz(str(tmp_path / 'release.npz')), params)
    # load_pretrained accepts the linen-named tree directly too.
    assert_trees_equal(checkpoint.load_pretrained(params, checkpoint.unflatten(linen)), params)


def test_map_head_names_are_not_renamed():
    _, params = _init(num_classes=3, classifier='map')
    flat = _flat(params)
    assert any(k.startswith('MAPHead_0/MultiHeadDotProductAttention_0/') for k in flat)
    assert checkpoint.normalise_keys(flat).keys() == flat.keys()


@pytest.mark.slow  # ~30-55 s on 2 cores.
def test_big_vision_scanned_layout_loads_into_loop_and_scan_models(tiny):
    model, params = tiny
    flat = _flat(params)
    # big_vision: linen names, blocks stacked under `encoderblock/<module>` (no `block` scope).
    bv = {}
    for k, v in _to_linen(flat).items():
        m = re.match(r'Transformer/encoderblock_(\d+)/(.*)', k)
        if m:
            bv.setdefault('Transformer/encoderblock/' + m.group(2), {})[int(m.group(1))] = v
        else:
            bv[k] = v
    bv = {k: np.stack([v[i] for i in sorted(v)]) if isinstance(v, dict) else v for k, v in bv.items()}
    assert_trees_equal(checkpoint.load_pretrained(params, bv), params)
    scan_model, scan_params = _init(num_classes=10, scan=True)
    loaded = checkpoint.load_pretrained(scan_params, bv)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    np.testing.assert_allclose(scan_model.apply({'params': loaded}, x)[0], model.apply({'params': params}, x)[0],
                               atol=1e-5)
    # And back: a scanned checkpoint into the loop model.
    assert_trees_equal(checkpoint.load_pretrained(params, loaded), params)


def test_hybrid_groupnorm_with_singleton_axes_is_squeezed(tmp_path):
    _, params = _init('R+ViT-Ti/16', num_classes=4, image_size=64, hidden_size=32, mlp_dim=64, num_heads=2,
                      num_layers=1)
    flat = _flat(params)
    gn = [k for k in flat if re.search(r'(^|/)gn[^/]*/(scale|bias)$', k)]
    assert gn, sorted(flat)
    old = {k: (v.reshape(1, 1, 1, -1) if k in gn else v) for k, v in flat.items()}
    np.savez(tmp_path / 'hybrid.npz', **old)
    assert_trees_equal(checkpoint.load_npz(str(tmp_path / 'hybrid.npz')), params)


# ----------------------------------------------------------------------------------------------------------------
# load_pretrained.
# ----------------------------------------------------------------------------------------------------------------
def test_dont_load_keeps_init_and_loads_the_rest(tiny, tmp_path):
    _, src = tiny
    checkpoint.save_npz(str(tmp_path / 'src.npz'), src)
    _, init = _init(num_classes=5, seed=7)  # Another head width.
    init['head']['bias'] = init['head']['bias'] + 0.5  # Recognisable init values.
    got = checkpoint.load_pretrained(init, str(tmp_path / 'src.npz'), dont_load=('head/.*',))
    np.testing.assert_array_equal(got['head']['kernel'], init['head']['kernel'])
    np.testing.assert_array_equal(got['head']['bias'], init['head']['bias'])
    for k, v in _flat(got).items():
        if not k.startswith('head/'):
            np.testing.assert_array_equal(v, _flat(src)[k], err_msg=k)
    # A checkpoint entry the model lacks (pre_logits) is fine when dont_load names it, an error otherwise.
    src_rep = dict(src, pre_logits={'kernel': np.ones((32, 32), np.float32), 'bias': np.zeros(32, np.float32)})
    checkpoint.load_pretrained(init, src_rep, dont_load=('head/.*', 'pre_logits/.*'))
    with pytest.raises(checkpoint.CheckpointMismatchError, match='pre_logits/kernel'):
        checkpoint.load_pretrained(init, src_rep, dont_load=('head/.*',))


def test_mismatch_error_lists_every_key(tiny):
    _, src = tiny
    _, wide = _init(num_classes=10, hidden_size=48, mlp_dim=64, num_heads=2)  # Every width differs.
    with pytest.raises(checkpoint.CheckpointMismatchError) as e:
        checkpoint.load_pretrained(wide, src)
    expected = sorted(k for k, v in _flat(wide).items() if _flat(src)[k].shape != v.shape)
    assert sorted(k.split(':')[0] for k in e.value.mismatched) == expected
    assert len(expected) > 20  # More than any truncation would show.
    for k in expected:
        assert k in str(e.value)
    # Missing and unexpected keys: a 3-layer model vs a 2-layer checkpoint, plus foreign entries.
    _, deep = _init(num_classes=10, num_layers=3)
    foreign = dict(src, foo={'a': np.zeros(1)}, bar=np.zeros(2))
    with pytest.raises(checkpoint.CheckpointMismatchError) as e:
        checkpoint.load_pretrained(deep, foreign)
    missing = sorted(k for k in _flat(deep) if k.startswith('Transformer/encoderblock_2/'))
    assert sorted(e.value.missing) == missing and len(missing) == 16
    assert sorted(e.value.unexpected) == ['bar', 'foo/a']
    assert e.value.mismatched == []
    for k in missing + ['foo/a', 'bar']:
        assert k in str(e.value)
    assert 'dont_load' in str(e.value)


def test_posemb_resampled_with_class_token(tiny):
    _, src = tiny  # 8x8 grid + cls.
    _, init = _init(num_classes=10, image_size=48)  # 12x12 grid + cls.
    got = checkpoint.load_pretrained(init, src)['Transformer']['posembed_input']['pos_embedding']
    pe = src['Transformer']['posembed_input']['pos_embedding']
    assert got.shape == (1, 145, 32)
    np.testing.assert_array_equal(got[:, 0], pe[:, 0])  # The class token's embedding is kept.
    want = scipy.ndimage.zoom(pe[0, 1:].reshape(8, 8, 32), (12 / 8, 12 / 8, 1), order=1)
    np.testing.assert_allclose(got[0, 1:].reshape(12, 12, 32), want, rtol=1e-6, atol=1e-7)


def test_posemb_resampled_without_class_token():
    _, src = _init(num_classes=10, classifier='gap')  # 8x8 grid, no prefix.
    _, init = _init(num_classes=10, classifier='gap', image_size=16)  # 4x4.
    got = checkpoint.load_pretrained(init, src)['Transformer']['posembed_input']['pos_embedding']
    pe = src['Transformer']['posembed_input']['pos_embedding']
    want = scipy.ndimage.zoom(pe[0].reshape(8, 8, 32), (0.5, 0.5, 1), order=1)
    np.testing.assert_allclose(got[0].reshape(4, 4, 32), want, rtol=1e-6, atol=1e-7)


def test_posemb_non_square_grids(tiny):
    _, src = tiny  # 8x8 + cls.
    _, init = _init(num_classes=10, image_size=(48, 32))  # 12x8 + cls.
    pe = src['Transformer']['posembed_input']['pos_embedding']
    # Square -> non-square needs the model's grid (96 tokens could be 12x8, 8x12, 16x6 ...).
    with pytest.raises(checkpoint.CheckpointMismatchError, match='new_grid'):
        checkpoint.load_pretrained(init, src)
    got = checkpoint.load_pretrained(init, src, new_grid=(12, 8))['Transformer']['posembed_input']['pos_embedding']
    want = layers.resample_posemb(pe, 97, num_prefix_tokens=1, old_hw=(8, 8), new_hw=(12, 8))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got[0, 1:].reshape(12, 8, 32),
                               scipy.ndimage.zoom(pe[0, 1:].reshape(8, 8, 32), (1.5, 1.0, 1), order=1), atol=1e-7)
    # Non-square -> non-square: the old grid follows from the new one's aspect ratio (12x8 = 3:2 -> 6x4).
    small_pe = layers.resample_posemb(pe, 25, num_prefix_tokens=1, old_hw=(8, 8), new_hw=(6, 4))
    small = dict(src, Transformer=dict(src['Transformer'], posembed_input={'pos_embedding': small_pe}))
    got2 = checkpoint.load_pretrained(init, small, new_grid=(12, 8))['Transformer']['posembed_input']['pos_embedding']
    spe = small['Transformer']['posembed_input']['pos_embedding']
    np.testing.assert_array_equal(got2, layers.resample_posemb(spe, 97, num_prefix_tokens=1, old_hw=(6, 4),
                                                               new_hw=(12, 8)))
    # An explicit old grid that disagrees with the aspect-ratio guess wins (4x6 source).
    got3 = checkpoint.load_pretrained(init, small, old_grid=(4, 6), new_grid=(12, 8))
    np.testing.assert_array_equal(got3['Transformer']['posembed_input']['pos_embedding'],
                                  layers.resample_posemb(spe, 97, num_prefix_tokens=1, old_hw=(4, 6), new_hw=(12, 8)))


def test_posemb_grid_inference_rules():
    assert checkpoint.posemb_grids(197, 577) == (1, (14, 14), (24, 24))
    assert checkpoint.posemb_grids(196, 576) == (0, (14, 14), (24, 24))
    assert checkpoint.posemb_grids(197, 1 + 24 * 32, new_grid=(24, 32)) == (1, (14, 14), (24, 32))
    assert checkpoint.posemb_grids(1 + 12 * 16, 1 + 24 * 32, new_grid=(24, 32)) == (1, (12, 16), (24, 32))
    assert checkpoint.posemb_grids(1 + 12 * 16, 1 + 24 * 32, old_grid=(12, 16)) == (1, (12, 16), (24, 32))
    with pytest.raises(ValueError, match='old_grid'):
        checkpoint.posemb_grids(1 + 12 * 16, 1 + 24 * 32)


def test_posemb_resampling_can_be_disabled(tiny):
    _, src = tiny
    _, init = _init(num_classes=10, image_size=48)
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r'pos_embedding: checkpoint \(1, 65, 32\)'):
        checkpoint.load_pretrained(init, src, resample_posemb=False)


def test_loaded_params_keep_init_dtype_and_structure(tiny):
    _, src = tiny
    src16 = jax.tree_util.tree_map(lambda a: a.astype(np.float16), src)
    got = checkpoint.load_pretrained(src, src16)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(src)
    assert all(a.dtype == np.float32 for a in jax.tree_util.tree_leaves(got))


# ----------------------------------------------------------------------------------------------------------------
# Orbax checkpoints (the layout vit_jax.train writes) and subtrees.
# ----------------------------------------------------------------------------------------------------------------
def _write_run(workdir, params, model_cfg, ema=False, step=3):
    from vit_jax.objectives.base import TrainState

    state = TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state={}, model_state={},
                       rng=jax.random.PRNGKey(0),
                       ema_params=jax.tree_util.tree_map(lambda a: a + 1, params) if ema else None)
    mngr = checkpoint.Manager(str(workdir), keep=2)
    mngr.save(step, state, force=True)
    mngr.close()
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
        json.dump({'model': model_cfg}, f)


def test_orbax_workdir_params_subtrees_and_errors(tiny, tmp_path):
    _, params = tiny
    wd = tmp_path / 'run'
    _write_run(wd, params, {'name': 'ViT-testing', 'num_classes': 10}, ema=True)
    for p in (wd, wd / 'checkpoints', wd / 'checkpoints' / '3'):
        assert_trees_equal(checkpoint.load_params(str(p)), params)
    ema = checkpoint.load_params(f'{wd}:ema_params')
    np.testing.assert_array_equal(ema['cls'], params['cls'] + 1)
    np.testing.assert_array_equal(checkpoint.load_params(f'{wd}:Transformer/encoder_norm')['scale'],
                                  params['Transformer']['encoder_norm']['scale'])
    np.testing.assert_array_equal(checkpoint.load_params(f'{wd}:params/head')['kernel'], params['head']['kernel'])
    inf_params, inf_state = checkpoint.load_for_inference(str(wd))  # EMA preferred for inference.
    np.testing.assert_array_equal(inf_params['cls'], params['cls'] + 1)
    with pytest.raises(KeyError, match='no subtree'):
        checkpoint.load_params(f'{wd}:nope')
    with pytest.raises(FileNotFoundError, match='No checkpoint'):
        checkpoint.load_params(str(tmp_path / 'nowhere'))
    (tmp_path / 'emptydir').mkdir()
    with pytest.raises(FileNotFoundError, match='No Orbax checkpoint'):
        checkpoint.load_params(str(tmp_path / 'emptydir'))
    wd2 = tmp_path / 'run2'
    _write_run(wd2, params, {'name': 'ViT-testing'}, ema=False)
    with pytest.raises(ValueError, match='ema_params'):
        checkpoint.load_params(f'{wd2}:ema_params')
    # .npz subtrees.
    checkpoint.save_npz(str(tmp_path / 'two.npz'), {'img': params, 'txt': {'w': np.zeros(3)}})
    assert_trees_equal(checkpoint.load_params(f'{tmp_path}/two.npz:img'), params)
    with pytest.raises(KeyError, match='img, txt'):
        checkpoint.load_params(f'{tmp_path}/two.npz:image')


def test_load_pretrained_from_workdir_uses_its_grid(tmp_path):
    # A non-square run (12x8 grid) fine-tuned at another non-square size: the old grid comes from config.json.
    _, params = _init(num_classes=10, image_size=(48, 32))
    wd = tmp_path / 'run'
    _write_run(wd, params, {'name': 'ViT-testing', 'num_classes': 10, 'image_size': [48, 32]})
    pe = params['Transformer']['posembed_input']['pos_embedding']
    _, init = _init(num_classes=3, image_size=(64, 48))  # 16x12: 3:4, so no aspect-ratio guess could give 12x8.
    got = checkpoint.load_pretrained(init, str(wd), dont_load=('head/.*',), new_grid=(16, 12))
    np.testing.assert_array_equal(got['Transformer']['posembed_input']['pos_embedding'],
                                  layers.resample_posemb(pe, 193, num_prefix_tokens=1, old_hw=(12, 8), new_hw=(16, 12)))
    np.testing.assert_array_equal(got['embedding']['kernel'], params['embedding']['kernel'])
    # The same token count on another grid (12x8 -> 8x12) is resampled too, not copied.
    _, init = _init(num_classes=3, image_size=(32, 48))
    got = checkpoint.load_pretrained(init, str(wd), dont_load=('head/.*',), new_grid=(8, 12))
    np.testing.assert_array_equal(got['Transformer']['posembed_input']['pos_embedding'],
                                  layers.resample_posemb(pe, 97, num_prefix_tokens=1, old_hw=(12, 8), new_hw=(8, 12)))


def test_more_error_paths(tiny, tmp_path):
    _, params = tiny
    with pytest.raises(TypeError, match='not a numeric array'):
        checkpoint.save_npz(str(tmp_path / 'o.npz'), {'a': object()})
    checkpoint.save_npz(str(tmp_path / 'p.npz'), params)
    with pytest.raises(ValueError, match='single array'):
        checkpoint.load_params(f'{tmp_path}/p.npz:cls')
    # A damaged Orbax step directory.
    bad = tmp_path / 'run' / 'checkpoints' / '7' / 'default'
    bad.mkdir(parents=True)
    (bad / 'garbage').write_text('x')
    with pytest.raises(ValueError, match='could not be restored'):
        checkpoint.load_params(str(tmp_path / 'run'))
    # Per-layer blocks that cannot be stacked for a scanned model (a gap in the numbering).
    _, scan_params = _init(num_classes=10, scan=True)
    flat = _flat(params)
    gap = {k.replace('encoderblock_1/', 'encoderblock_2/'): v for k, v in flat.items()}
    with pytest.raises(ValueError, match=r'blocks \[0, 2\]'):
        checkpoint.load_pretrained(scan_params, gap)
    assert checkpoint.model_grid(object()) is None
    assert checkpoint.workdir_model_config(str(tmp_path / 'nowhere')) is None
