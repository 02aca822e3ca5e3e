"""TimeSformer: parameter counts of the paper's table 1, parity with HuggingFace (random weights, two frame counts),
the factorised schemes against a coordinate-based restatement, and initialisation from an image ViT."""

import collections
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from vit_jax import convert, models
from vit_jax.models import timesformer


def _params(module, *inputs, scale=0.3, seed=0, zeros=False):
    """Parameters of the right structure without compiling an init (random normal * scale, or zeros)."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs)['params']
    rs = np.random.RandomState(seed)
    fill = (lambda s: np.zeros(s.shape, np.float32)) if zeros else (
        lambda s: (rs.randn(*s.shape) * scale).astype(np.float32))
    return jax.tree_util.tree_map(fill, shapes)


# Exact counts of this implementation at 8 x 224 x 224 with a 174-way (SSv2) head; comment: the paper's table 1.
PINNED_174 = {
    'TimeSformer/space_only': 85_932_462,  # 85.9M  (S)
    'TimeSformer/joint_space_time': 85_938_606,  # 85.9M  (ST)
    'TimeSformer/divided_space_time': 121_392_558,  # 121.4M (T+S)
    'TimeSformer/sparse_local_global': 121_392_558,  # 121.4M (L+G)
    'TimeSformer/axial': 156_846_510,  # 156.8M (T+W+H)
}
# With the Kinetics-400 head (no published count; the paper: "essentially identical" for HR and L).
PINNED_K400 = {
    'TimeSformer': 121_566_352,  # 121.57M analytic
    'TimeSformer-HR': 122_024_080,  # 122.02M analytic (785 position tokens, 16 time tokens)
    'TimeSformer-L': 121_633_936,  # 121.63M analytic (96 time tokens)
}


@pytest.mark.parametrize('name', sorted(PINNED_174))
def test_param_counts_table1(name):
    n = models.count_params(name, num_classes=174)
    assert n == PINNED_174[name]
    paper = {'space_only': 85.9, 'joint_space_time': 85.9, 'divided_space_time': 121.4,
             'sparse_local_global': 121.4, 'axial': 156.8}[name.split('/')[1]]
    assert round(n / 1e6, 1) == paper


@pytest.mark.parametrize('name', sorted(PINNED_K400))
def test_param_counts_named(name):
    assert models.count_params(name, num_classes=400) == PINNED_K400[name]


def test_registry_names_and_shapes():
    for abbrev, kind in timesformer.PAPER_NAMES.items():
        assert models.get_model(f'TimeSformer-{abbrev}').attention_type == kind
    hr, large = models.get_model('TimeSformer-HR'), models.get_model('TimeSformer-L')
    assert hr.input_shape(2) == (2, 16, 448, 448, 3) and large.input_shape(1) == (1, 96, 224, 224, 3)
    assert models.input_shape(models.get_model('TimeSformer'), 3) == (3, 8, 224, 224, 3)
    assert models.get_model('TimeSformer').attention_type == 'divided_space_time'


# ----------------------------------------------------------------------------------------------------------------
# HuggingFace parity.
# ----------------------------------------------------------------------------------------------------------------
def _hf_model(attention_type, frames, num_labels=5, image_size=32, cls='TimesformerForVideoClassification'):
    import torch
    import transformers

    torch.manual_seed(frames)
    cfg = transformers.TimesformerConfig(image_size=image_size, patch_size=8, num_frames=frames, hidden_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                         num_labels=num_labels, attention_type=attention_type)
    m = getattr(transformers, cls)(cfg).eval()
    with torch.no_grad():  # Random values everywhere (time embedding and norms too), not the init.
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return m


def _hf_run(m, x):
    import torch

    with torch.no_grad():
        return m(torch.from_numpy(x).permute(0, 1, 4, 2, 3), output_hidden_states=True)


@pytest.mark.parametrize('attention_type,frames', [('divided_space_time', 2), ('divided_space_time', 4),
                                                   ('joint_space_time', 3), ('space_only', 2)])
def test_hf_parity(attention_type, frames):
    m = _hf_model(attention_type, frames)
    x = np.random.RandomState(0).randn(2, frames, 32, 32, 3).astype(np.float32)
    ref = _hf_run(m, x)
    model, variables = convert.from_transformers(m)
    assert model.attention_type == attention_type and model.num_frames == frames
    logits, out = jax.jit(model.apply)(variables, jnp.asarray(x))
    for i in range(2):  # Same token order as the official code / HF between blocks.
        np.testing.assert_allclose(out[f'encoder/block_{i:02d}'], ref.hidden_states[i + 1].numpy(), atol=1e-4)
    if attention_type == 'space_only':
        # HF returns per-frame outputs; the official model averages the tokens over frames before the final norm.
        import torch

        with torch.no_grad():
            h = ref.hidden_states[-1].reshape(2, frames, *ref.hidden_states[-1].shape[1:]).mean(1)
            want = m.classifier(m.timesformer.layernorm(h)[:, 0]).numpy()
    else:
        want = ref.logits.numpy()
    assert logits.shape == want.shape == (2, 5)
    assert np.abs(np.asarray(logits) - want).max() <= 1e-4


def test_hf_parity_backbone_and_resized_embeddings():
    # TimesformerModel (no head), joint scheme, run on fewer frames and a larger frame than configured: both
    # implementations nearest-resize the time and position embeddings (the official runtime rule).
    m = _hf_model('joint_space_time', 4, cls='TimesformerModel')
    x = np.random.RandomState(1).randn(1, 2, 48, 48, 3).astype(np.float32)
    ref = _hf_run(m, x)
    model, variables = convert.from_transformers(m)
    assert not model.num_classes
    _, out = jax.jit(model.apply)(variables, jnp.asarray(x))
    assert np.abs(np.asarray(out['encoded']) - ref.last_hidden_state.numpy()).max() <= 1e-4


# ----------------------------------------------------------------------------------------------------------------
# Factorised schemes against a restatement that groups tokens by their (h, w, t) coordinates.
# ----------------------------------------------------------------------------------------------------------------
def _ln(x, p, eps=1e-6):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p['scale'] + p['bias']


def _mha(x, p):
    q, k, v = (np.einsum('bnd,dhk->bnhk', x, p[n]['kernel']) + p[n]['bias'] for n in ('query', 'key', 'value'))
    logits = np.einsum('bqhk,bnhk->bhqn', q, k) / math.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum('bhqn,bnhk,hkd->bqd', w, v, p['out']['kernel']) + p['out']['bias']


def _mlp(x, p):
    h = x @ p['Dense_0']['kernel'] + p['Dense_0']['bias']
    h = 0.5 * h * (1 + scipy.special.erf(h / math.sqrt(2)))
    return h @ p['Dense_1']['kernel'] + p['Dense_1']['bias']


def _group_key(stage, h, w, t, gh, gw):
    return {'temporal': (h, w), 'spatial': (t,), 'width': (t, h), 'height': (t, w),
            'local': (h // (gh // 2), w // (gw // 2)), 'global': (h % 2, w % 2, t % 2)}[stage]


def _reference_block(x, p, stages, frames, gh, gw):
    coords = [(h, w, t) for h in range(gh) for w in range(gw) for t in range(frames)]  # Token 1 + (h*gw + w)*T + t.
    cls, pt = x[:, :1], x[:, 1:]

    def groups(stage):
        g = collections.defaultdict(list)
        for i, (h, w, t) in enumerate(coords):
            g[_group_key(stage, h, w, t, gh, gw)].append(i)
        return list(g.values())

    for stage in stages[:-1]:
        res = np.zeros_like(pt)
        for idx in groups(stage):
            res[:, idx] = _mha(_ln(pt[:, idx], p[f'{stage}_norm']), p[f'{stage}_attention'])
        pt = pt + res @ p[f'{stage}_fc']['kernel'] + p[f'{stage}_fc']['bias']
    res, cls_res, gs = np.zeros_like(pt), 0.0, groups(stages[-1])
    for idx in gs:
        y = _mha(_ln(np.concatenate([cls, pt[:, idx]], 1), p['LayerNorm_0']), p['MultiHeadDotProductAttention_1'])
        res[:, idx], cls_res = y[:, 1:], cls_res + y[:, :1] / len(gs)
    x = np.concatenate([cls, pt], 1) + np.concatenate([cls_res, res], 1)
    return x + _mlp(_ln(x, p['LayerNorm_2']), p['MlpBlock_3'])


@pytest.mark.parametrize('attention_type', ['divided_space_time', 'sparse_local_global', 'axial'])
def test_factorised_block_matches_coordinate_reference(attention_type):
    frames, gh, gw, d = 4, 4, 6, 16
    stages = timesformer._STAGES[attention_type]
    block = timesformer.FactorisedBlock(stages=stages, grid=(frames, gh, gw), num_heads=2, mlp_dim=32)
    x = np.random.RandomState(0).randn(2, 1 + gh * gw * frames, d).astype(np.float32)
    params = _params(block, x, seed=1)
    got = np.asarray(jax.jit(block.apply)({'params': params}, x))
    want = _reference_block(x.astype(np.float64), jax.tree_util.tree_map(np.float64, params), stages, frames, gh, gw)
    assert np.abs(got - want).max() <= 1e-4


def test_sparse_global_groups_share_parity():
    p = np.arange(2 * 4 * 6 * 4).reshape(2, 4, 6, 4, 1).astype(np.float32)  # (B, gh, gw, T, 1) of token ids
    y, groups = timesformer.to_groups(jnp.asarray(p), 'global')
    assert groups == 8 and y.shape == (16, 12, 1)
    h, w, t = np.unravel_index(np.asarray(y[..., 0]).astype(int) % (4 * 6 * 4), (4, 6, 4))
    for arr in (h % 2, w % 2, t % 2):
        assert (arr == arr[:, :1]).all()
    for stage in ('temporal', 'spatial', 'width', 'height', 'local', 'global'):
        y, _ = timesformer.to_groups(jnp.asarray(p), stage)
        np.testing.assert_array_equal(timesformer.from_groups(y, stage, p.shape), p)


@pytest.mark.parametrize('kind', [k if k == 'divided_space_time' else pytest.param(k, marks=pytest.mark.slow)
                                  for k in timesformer.ATTENTION_TYPES])
def test_every_scheme_trains(kind):
    x = jnp.asarray(np.random.RandomState(0).randn(2, 4, 32, 32, 3), jnp.float32)
    model = models.get_model('TimeSformer-testing', num_frames=4, attention_type=kind, num_classes=3,
                             drop_path_rate=0.2, num_layers=1)
    params = _params(model, x, scale=0.1)
    loss = lambda p: jnp.mean(model.apply({'params': p}, x, train=True,  # noqa: E731
                                          rngs={'dropout': jax.random.PRNGKey(1)})[0] ** 2)
    grads = jax.jit(jax.grad(loss))(params)
    assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
    _, out = jax.eval_shape(model.apply, {'params': params}, x)
    assert out['tokens_3d'].shape == ((2, 1, 4, 4, 64) if kind == 'space_only' else (2, 4, 4, 4, 64))
    assert out['encoder/block_00'].shape == ((8, 17, 64) if kind == 'space_only' else (2, 1 + 16 * 4, 64))


def test_initial_values():
    # The official init: zero time embedding; <stage>_fc zeroed in every block but the first.
    model = models.get_model('TimeSformer-testing', num_frames=2, hidden_size=8, mlp_dim=8, num_heads=1,
                             image_size=8)
    tr = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros(model.input_shape(1)))['params']['Transformer']
    assert tr['time_embedding'].shape == (1, 2, 8) and not np.asarray(tr['time_embedding']).any()
    for fc in ('temporal_fc',):
        assert np.asarray(tr['encoderblock_0'][fc]['kernel']).any()
        assert not np.asarray(tr['encoderblock_1'][fc]['kernel']).any()
        assert not np.asarray(tr['encoderblock_1'][fc]['bias']).any()


def test_clear_errors():
    model = models.get_model('TimeSformer-testing', attention_type='sparse_local_global', num_frames=3)
    with pytest.raises(ValueError, match='even'):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(model.input_shape(1)))
    with pytest.raises(ValueError, match='NTHWC'):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match='attention_type'):
        bad = models.get_model('TimeSformer-testing', attention_type='full')
        jax.eval_shape(bad.init, jax.random.PRNGKey(0), jnp.zeros(bad.input_shape(1)))


# ----------------------------------------------------------------------------------------------------------------
# Initialisation from an image ViT.
# ----------------------------------------------------------------------------------------------------------------
def _image_vit():
    vit = models.get_model('ViT-testing', num_classes=10)
    return vit, _params(vit, jnp.zeros((1, 32, 32, 3)), scale=0.2)


@pytest.mark.parametrize('attention_type', ['divided_space_time', 'space_only'])
def test_init_from_image_vit_static_clip_equals_image_model(attention_type):
    # With zero temporal_fc and time embedding, a clip of one repeated frame gives the image ViT's logits.
    vit, image_params = _image_vit()
    video = timesformer.TimeSformer(num_classes=10, image_size=32, num_frames=3, attention_type=attention_type,
                                    patch_size=4, hidden_size=32, mlp_dim=64, num_heads=2, num_layers=2,
                                    activation='gelu')
    frame = np.random.RandomState(2).randn(2, 32, 32, 3).astype(np.float32)
    clip = np.repeat(frame[:, None], 3, axis=1)
    init = _params(video, clip, zeros=True)  # Zero time embedding and temporal_fc, as the real init.
    params = timesformer.init_from_image_vit(init, image_params, dont_load=())
    blk = params['Transformer']['encoderblock_1']
    if attention_type == 'divided_space_time':
        np.testing.assert_array_equal(blk['temporal_attention']['query']['kernel'],
                                      image_params['Transformer']['encoderblock_1']['MultiHeadDotProductAttention_1']
                                      ['query']['kernel'])
        np.testing.assert_array_equal(blk['temporal_norm']['scale'],
                                      image_params['Transformer']['encoderblock_1']['LayerNorm_0']['scale'])
        assert not blk['temporal_fc']['kernel'].any()  # Kept its initial value.
    want, _ = jax.jit(vit.apply)({'params': image_params}, frame)
    got, _ = jax.jit(video.apply)({'params': params}, clip)
    assert np.abs(np.asarray(got) - np.asarray(want)).max() <= 1e-4


def test_init_from_image_vit_resamples_and_keeps_head():
    _, image_params = _image_vit()
    flat = flax.traverse_util.flatten_dict(image_params, sep='/')  # An .npz-style flat mapping.
    video = timesformer.TimeSformer(num_classes=7, image_size=48, num_frames=4, patch_size=4, hidden_size=32,
                                    mlp_dim=64, num_heads=2, num_layers=2, attention_type='axial')
    init = _params(video, jnp.zeros(video.input_shape(1)), seed=3)
    assert timesformer.is_image_to_video(init, flat) and not timesformer.is_image_to_video(init, init)
    params = timesformer.init_from_image_vit(init, flat)
    pe = params['Transformer']['posembed_input']['pos_embedding']
    src_pe = image_params['Transformer']['posembed_input']['pos_embedding']
    assert pe.shape == (1, 1 + 12 * 12, 32)
    np.testing.assert_array_equal(pe[:, 0], src_pe[:, 0])  # Class-token embedding kept.
    np.testing.assert_array_equal(params['head']['kernel'], init['head']['kernel'])  # Head re-initialised.
    for prefix in ('temporal', 'width'):  # Axial: both extra attentions copied from the spatial one.
        np.testing.assert_array_equal(params['Transformer']['encoderblock_0'][f'{prefix}_attention']['out']['kernel'],
                                      image_params['Transformer']['encoderblock_0']
                                      ['MultiHeadDotProductAttention_1']['out']['kernel'])
    # From a video checkpoint with another frame count: the time embedding is nearest-resampled.
    src = jax.tree_util.tree_map(np.asarray, dict(params))
    src['Transformer'] = dict(src['Transformer'], time_embedding=np.arange(4, dtype=np.float32)[None, :, None]
                              * np.ones((1, 4, 32), np.float32))
    video8 = video.clone(num_frames=8)
    init8 = _params(video8, jnp.zeros(video8.input_shape(1)))
    te = timesformer.init_from_image_vit(init8, src)['Transformer']['time_embedding']
    np.testing.assert_array_equal(te[0, :, 0], [0, 0, 1, 1, 2, 2, 3, 3])
    with pytest.raises(ValueError, match='shape'):
        wide = video.clone(hidden_size=64, mlp_dim=128)
        timesformer.init_from_image_vit(_params(wide, jnp.zeros(video.input_shape(1))), image_params)


def test_trainer_init_hook_uses_the_official_posemb_rule():
    """models.load_pretrained (config.init_from) from a 16-px image ViT into a 32-px TimeSformer: the hook's result
    is init_from_image_vit with the official loader's 1-D nearest position-embedding resize (TimeSformer-HR)."""
    image = models.get_model('ViT-testing', num_classes=5, image_size=16, patch_size=8, hidden_size=64, mlp_dim=128,
                             num_heads=2, num_layers=2)
    src = jax.jit(image.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))['params']
    video = models.get_model('TimeSformer-testing', num_classes=4)
    init = _params(video, jnp.zeros(video.input_shape(1)))
    got = models.load_pretrained(video, init, src, dont_load=('head/.*',))
    want = timesformer.init_from_image_vit(init, src, dont_load=('head/.*',), posemb_resize='nearest_1d')
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
    pe = got['Transformer']['posembed_input']['pos_embedding']
    assert pe.shape == (1, 17, 64)
    assert not np.allclose(pe, timesformer.init_from_image_vit(init, src, dont_load=('head/.*',))[
        'Transformer']['posembed_input']['pos_embedding'])  # The bilinear rule gives other values.

