"""QueryOTR model: shapes and centre copy, parameter count, the JAX deformable convolution against a loop reference,
the Patch Smoothing Module against a hand-computed overlap average, the QEM's double write of the encoder tokens,
and the multi-scale PatchGAN / DiffAugment."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import models
from vit_jax.models import patchgan
from vit_jax.models import queryotr as qo
from vit_jax.porting import queryotr as porting_qo


def narrow_paper_geometry(**kw):
    """The paper's geometry (128 -> 192, 16 px patches, 224 encoder grid, overlap 8) at a small width and depth."""
    return models.get_model('QueryOTR', hidden_size=32, mlp_dim=64, num_heads=2, num_layers=1, decoder_layers=1,
                            decoder_heads=2, decoder_mlp_dim=64, qem_blocks=1, **kw)


def test_paper_model_shapes_and_param_count():
    model = models.get_model('QueryOTR')
    x = jax.ShapeDtypeStruct((2, 128, 128, 3), jnp.float32)
    full, out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), jnp.zeros(x.shape))[0])
    assert full.shape == (2, 192, 192, 3)
    assert out['encoder'].shape == (2, 64, 768)  # Only the 8x8 inner patches are encoded.
    assert out['queries'].shape == (2, 144, 768)  # 12x12 output query grid.
    assert out['decoder/block_03'].shape == (2, 80, 768)  # The 80 outer queries go through the 4 decoder blocks.
    # The paper gives no parameter count. This is the official TransGen's 214,009,984 minus its unused encoder
    # classifier head (769,000) plus one zero-effect key bias per attention (20 x 768: the official attention has
    # q and v biases only; a key bias shifts each query's logits by a constant, which softmax ignores).
    assert models.count_params('QueryOTR') == 213_256_344
    assert 214_009_984 - 769_000 + 20 * 768 == 213_256_344


@pytest.mark.slow
def test_paper_model_forward():
    """The full-size model (213M parameters) on [1, 128, 128, 3]: [1, 192, 192, 3] with the input as its centre."""
    model = models.get_model('QueryOTR')
    x = jax.random.uniform(jax.random.PRNGKey(0), (1, 128, 128, 3))
    variables = jax.jit(model.init)(jax.random.PRNGKey(1), x)
    full, out = jax.jit(model.apply)(variables, x)
    assert full.shape == (1, 192, 192, 3) and np.isfinite(np.asarray(full)).all()
    np.testing.assert_array_equal(np.asarray(full[:, 32:160, 32:160]), np.asarray(x))


def test_forward_centre_equals_input_and_noise():
    model = narrow_paper_geometry()
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 128, 128, 3))
    variables = jax.jit(model.init)(jax.random.PRNGKey(1), x)
    apply = jax.jit(model.apply)
    full, out = apply(variables, x)
    assert full.shape == (2, 192, 192, 3)
    np.testing.assert_array_equal(np.asarray(full[:, 32:160, 32:160]), np.asarray(x))  # Exactly the input.
    assert np.isfinite(np.asarray(full)).all()
    mask = np.asarray(out['outer_mask'])[0, ..., 0]
    assert mask.sum() == 192 * 192 - 128 * 128 and mask[32:160, 32:160].sum() == 0
    # Outside the centre the output is the PSM prediction mapped back from the normalised space.
    np.testing.assert_array_equal(np.asarray(full)[:, mask > 0], np.asarray(out['prediction'])[:, mask > 0])
    # No rng: the fixed noise seed (deterministic); a 'noise' rng changes the outer ring only.
    full2, _ = apply(variables, x)
    np.testing.assert_array_equal(np.asarray(full), np.asarray(full2))
    full3, _ = jax.jit(lambda v, a, k: model.apply(v, a, rngs={'noise': k}))(variables, x, jax.random.PRNGKey(5))
    assert np.abs(np.asarray(full3 - full))[:, mask > 0].max() > 0
    np.testing.assert_array_equal(np.asarray(full3[:, 32:160, 32:160]), np.asarray(x))


def test_bad_inputs_give_clear_errors():
    model = narrow_paper_geometry()
    with pytest.raises(ValueError, match='known centre at 128x128'):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 192, 192, 3))))
    with pytest.raises(ValueError, match='multiple of patch_size'):
        bad = narrow_paper_geometry(output_size=200)
        jax.eval_shape(lambda: bad.init(jax.random.PRNGKey(0), jnp.zeros((1, 128, 128, 3))))


@pytest.mark.slow  # ~30-50 s on 2 cores.
def test_qem_writes_encoder_tokens_twice():
    """After the final LN the inner queries are overwritten by the raw encoder tokens, then `embed` is applied."""
    model = models.get_model('QueryOTR-testing')
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.PRNGKey(1), x)
    _, out = jax.jit(model.apply)(variables, x)
    embed = variables['params']['qem']['embed']
    want = out['encoder'] @ embed['kernel'] + embed['bias']
    inner = np.flatnonzero(~model.outer_grid_mask().reshape(-1))
    np.testing.assert_allclose(np.asarray(out['queries'][:, inner]), np.asarray(want), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Deformable convolution.
# ----------------------------------------------------------------------------------------------------------------
def deform_conv_loop(x, offset, mask, kernel, padding):
    """A direct loop restatement of torchvision's deform_conv2d (stride 1), numpy, float64."""
    b, h, w, c = x.shape
    kh, kw, _, cout = kernel.shape
    ho, wo = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    out = np.zeros((b, ho, wo, cout))

    def sample(img, y, xx):
        if y <= -1 or y >= h or xx <= -1 or xx >= w:
            return np.zeros(c)
        y0, x0 = int(np.floor(y)), int(np.floor(xx))
        ly, lx = y - y0, xx - x0
        v = np.zeros(c)
        for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
            for x1, wx in ((x0, 1 - lx), (x0 + 1, lx)):
                if 0 <= yy < h and 0 <= x1 < w:
                    v += wy * wx * img[yy, x1]
        return v

    for n in range(b):
        for i in range(ho):
            for j in range(wo):
                acc = np.zeros(cout)
                for u in range(kh):
                    for v in range(kw):
                        k = u * kw + v
                        y = i - padding + u + offset[n, i, j, 2 * k]
                        xx = j - padding + v + offset[n, i, j, 2 * k + 1]
                        val = sample(x[n], y, xx) * (mask[n, i, j, k] if mask is not None else 1.0)
                        acc += val @ kernel[u, v]
                out[n, i, j] = acc
    return out


def test_deform_conv_matches_loop_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 6, 3))
    kernel = rng.normal(size=(3, 3, 3, 4))
    offset = rng.normal(scale=1.5, size=(2, 5, 6, 18))  # Many samples fall partly or fully outside the image.
    mask = rng.uniform(size=(2, 5, 6, 9))
    got = qo.deform_conv2d(jnp.asarray(x, jnp.float32), jnp.asarray(offset, jnp.float32),
                           jnp.asarray(mask, jnp.float32), jnp.asarray(kernel, jnp.float32), padding=1)
    want = deform_conv_loop(x, offset, mask, kernel, 1)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_deform_conv_zero_offsets_is_a_conv_and_offsets_get_gradients():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, 6, 6, 4)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)
    conv = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    zeros = jnp.zeros((1, 6, 6, 18))
    np.testing.assert_allclose(np.asarray(qo.deform_conv2d(x, zeros, None, kernel)), np.asarray(conv), atol=1e-4)
    # An integer offset of (+1, 0) everywhere samples the row below: equal to the conv of the image shifted up.
    shift = jnp.tile(jnp.asarray([1.0, 0.0]), (1, 6, 6, 9))
    shifted = jnp.pad(x[:, 1:], ((0, 0), (0, 1), (0, 0), (0, 0)))
    want = jax.lax.conv_general_dilated(shifted, kernel, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    got = np.asarray(qo.deform_conv2d(x, shift, None, kernel))
    # Row 0 differs: its top taps sample image row 0 where the shifted image's conv sees zero padding.
    np.testing.assert_allclose(got[:, 1:], np.asarray(want)[:, 1:], atol=1e-4)
    g = jax.grad(lambda o: jnp.sum(qo.deform_conv2d(x, o, None, kernel) ** 2))(zeros + 0.3)
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0


def test_deform_module_starts_as_half_a_plain_conv():
    """Zero-initialised offset/mask conv: offsets 0 and mask sigmoid(0) = 0.5."""
    m = qo.DeformConv(5)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 6, 6, 4))
    v = m.init(jax.random.PRNGKey(1), x)
    conv = jax.lax.conv_general_dilated(x, v['params']['kernel'], (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    np.testing.assert_allclose(np.asarray(m.apply(v, x)), 0.5 * np.asarray(conv), atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Patch Smoothing Module.
# ----------------------------------------------------------------------------------------------------------------
def test_psm_equals_hand_computed_overlap_average():
    """4x4 token grid (inner 2x2), 2 px cells, 1 px overlap: 4x4 patches averaged where outer patches overlap."""
    g, p, o, c, d = 4, 2, 1, 3, 5
    k = p + 2 * o
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(2, g, g, d)).astype(np.float32)
    outer = np.ones((g, g), bool)
    outer[1:3, 1:3] = False
    psm = qo.PatchSmoothing(patch_size=p, overlap=o, out_channels=c)
    variables = psm.init(jax.random.PRNGKey(0), jnp.asarray(tokens), outer)
    kernel = rng.normal(size=(d, k, k, c)).astype(np.float32)
    bias = rng.normal(size=(k, k, c)).astype(np.float32)
    got = np.asarray(psm.apply({'params': {'kernel': kernel, 'bias': bias}}, jnp.asarray(tokens), outer))
    assert got.shape == (2, g * p, g * p, c)
    # Hand computation (the official loop version): paste each outer patch on a padded canvas, count, average.
    canvas = np.zeros((2, g * p + 2 * o, g * p + 2 * o, c))
    count = np.zeros((g * p + 2 * o, g * p + 2 * o))
    for i in range(g):
        for j in range(g):
            if not outer[i, j]:
                continue
            patch = np.einsum('bd,duvc->buvc', tokens[:, i, j], kernel) + bias
            canvas[:, i * p:i * p + k, j * p:j * p + k] += patch
            count[i * p:i * p + k, j * p:j * p + k] += 1
    want = np.where(count[None, ..., None] > 0, canvas / np.maximum(count, 1)[None, ..., None], 0.0)
    want = want[:, o:o + g * p, o:o + g * p]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Spot checks: the corner pixel is covered by one patch only; the pixel (1, 1) by the patches of tokens (0, 0),
    # (0, 1), (1, 0) (outer) and (1, 1) (inner, not counted), so it is the average of three.
    p00 = np.einsum('bd,duvc->buvc', tokens[:, 0, 0], kernel) + bias
    np.testing.assert_allclose(got[:, 0, 0], p00[:, o, o], rtol=1e-5)
    pa = (p00[:, o + 1, o + 1] + (np.einsum('bd,duvc->buvc', tokens[:, 0, 1], kernel) + bias)[:, o + 1, o + 1 - p]
          + (np.einsum('bd,duvc->buvc', tokens[:, 1, 0], kernel) + bias)[:, o + 1 - p, o + 1]) / 3
    np.testing.assert_allclose(got[:, 1, 1], pa, rtol=1e-5, atol=1e-6)
    assert np.all(got[:, 3:5, 3:5] == 0)  # Only the inner patch covers the very centre: nothing there.
    del variables


def test_psm_coverage_of_the_paper_geometry():
    """192 px, 16 px cells, 8 px overlap: the outer ring is covered by 1, 2 or 4 outer patches."""
    outer = np.ones((12, 12), bool)
    outer[2:10, 2:10] = False
    cov = qo.psm_coverage(12, outer, 16, 8)
    assert cov.shape == (192, 192)
    assert cov[0, 0] == 1 and cov[0, 8] == 2 and cov[8, 8] == 4
    assert cov[40:152, 40:152].max() == 0  # The centre (minus the 8 px the ring's patches overlap into).
    assert cov[32:40, 32:160].min() >= 1  # Outer patches reach 8 px into the centre.


# ----------------------------------------------------------------------------------------------------------------
# Discriminator and DiffAugment.
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # ~30-50 s on 2 cores.
def test_multiscale_patchgan_shapes_and_spectral_norm():
    d = patchgan.MultiScalePatchGAN()  # QueryOTR: 2 scales x 4 layers, 64 channels.
    x = jnp.zeros((1, 192, 192, 3))
    shapes = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), x))
    outs = jax.eval_shape(lambda v: d.apply(v, x), shapes)
    assert [o.shape for o in outs] == [(1, 11, 11, 1), (1, 5, 5, 1)]
    small = patchgan.MultiScalePatchGAN(ndf=4, n_layers=3)
    xs = jax.random.normal(jax.random.PRNGKey(0), (2, 48, 48, 3))
    v = small.init(jax.random.PRNGKey(1), xs)
    assert 'batch_stats' in v  # The spectral norm's power-iteration state.
    outs, upd = small.apply(v, xs, update_stats=True, mutable=['batch_stats'])
    assert [o.shape for o in outs] == [(2, 5, 5, 1), (2, 2, 2, 1)]
    # One power iteration per call with update_stats: sigma converges to the kernel's top singular value.
    step = jax.jit(lambda v: small.apply(v, xs, update_stats=True, mutable=['batch_stats'])[1])
    stats = upd['batch_stats']
    for _ in range(30):
        stats = step({'params': v['params'], 'batch_stats': stats})['batch_stats']
    w = np.asarray(v['params']['scale_0']['conv_1']['kernel']).reshape(-1, 8)
    np.testing.assert_allclose(float(stats['scale_0']['sn_1']['conv_1/kernel/sigma']),
                               np.linalg.svd(w, compute_uv=False)[0], rtol=1e-3)


def test_hinge_losses():
    real = [jnp.asarray([2.0, 0.5]), jnp.asarray([-1.0])]
    fake = [jnp.asarray([-2.0, 0.0]), jnp.asarray([0.5])]
    # Scale 0: relu(1 - real) = [0, 0.5] -> 0.25; relu(1 + fake) = [0, 1] -> 0.5. Scale 1: 2 + 1.5.
    np.testing.assert_allclose(float(patchgan.hinge_d_loss(real, fake)), 0.25 + 0.5 + 2.0 + 1.5)
    np.testing.assert_allclose(float(patchgan.hinge_g_loss(fake)), 1.0 - 0.5)


@pytest.mark.slow  # ~15-25 s on 2 cores.
def test_diffaugment():
    x = jax.random.uniform(jax.random.PRNGKey(0), (8, 16, 16, 3))
    y = patchgan.diff_augment(x, jax.random.PRNGKey(1))
    assert y.shape == x.shape and np.isfinite(np.asarray(y)).all()
    assert patchgan.diff_augment(x, jax.random.PRNGKey(1), '') is x
    # Cutout zeroes an 8x8 square (clipped at the borders): between 16 and 64 pixels per image.
    z = np.asarray(patchgan.rand_cutout(jnp.ones((8, 16, 16, 1)), jax.random.PRNGKey(2)))[..., 0]
    zeros = (z == 0).sum(axis=(1, 2))
    assert zeros.min() >= 16 and zeros.max() <= 64
    # Translation moves content by at most 2 px and fills with zeros; it is differentiable w.r.t. the image.
    t = np.asarray(patchgan.rand_translation(x, jax.random.PRNGKey(3)))
    ok = [any(np.allclose(t[i], np.roll(np.pad(x[i], ((2, 2), (2, 2), (0, 0))), (dy, dx), (0, 1))[2:-2, 2:-2])
              for dy in range(-2, 3) for dx in range(-2, 3)) for i in range(8)]
    assert all(ok)
    g = jax.grad(lambda a: jnp.sum(patchgan.diff_augment(a, jax.random.PRNGKey(4))))(x)
    assert np.isfinite(np.asarray(g)).all()


# ----------------------------------------------------------------------------------------------------------------
# Official checkpoints.
# ----------------------------------------------------------------------------------------------------------------
def to_official_state_dict(params, prefix='transformer_encoder.'):
    """The inverse layout, written independently: flax params -> the official TransGen state-dict keys."""
    sd = {}
    a = lambda x: np.asarray(x)  # noqa: E731

    def lin(k, p):
        sd[f'{k}.weight'], sd[f'{k}.bias'] = a(p['kernel']).T, a(p['bias'])

    def ln(k, p):
        sd[f'{k}.weight'], sd[f'{k}.bias'] = a(p['scale']), a(p['bias'])

    def conv(k, p):
        sd[f'{k}.weight'] = a(p['kernel']).transpose(3, 2, 0, 1)
        if 'bias' in p:
            sd[f'{k}.bias'] = a(p['bias'])

    def attn(k, p, cross=False):
        d = a(p['query']['kernel']).shape[0]
        q, kk, v = (a(p[n]['kernel']).reshape(d, -1).T for n in ('query', 'key', 'value'))
        if cross:
            sd[f'{k}.q.weight'], sd[f'{k}.kv.weight'] = q, np.concatenate([kk, v])
        else:
            sd[f'{k}.qkv.weight'] = np.concatenate([q, kk, v])
        sd[f'{k}.q_bias'], sd[f'{k}.v_bias'] = a(p['query']['bias']).reshape(-1), a(p['value']['bias']).reshape(-1)
        o = a(p['out']['kernel'])
        sd[f'{k}.proj.weight'], sd[f'{k}.proj.bias'] = o.reshape(-1, o.shape[-1]).T, a(p['out']['bias'])

    conv(f'{prefix}patch_embed.proj', params['embedding'])
    tr = params['Transformer']
    for i in range(len([k for k in tr if k.startswith('encoderblock_')])):
        b, p = f'{prefix}blocks.{i}', tr[f'encoderblock_{i}']
        ln(f'{b}.norm1', p['LayerNorm_0'])
        attn(f'{b}.attn', p['MultiHeadDotProductAttention_1'])
        ln(f'{b}.norm2', p['LayerNorm_2'])
        lin(f'{b}.mlp.fc1', p['MlpBlock_3']['Dense_0'])
        lin(f'{b}.mlp.fc2', p['MlpBlock_3']['Dense_1'])
    ln(f'{prefix}norm', tr['encoder_norm'])
    sd[f'{prefix}head.weight'] = np.zeros((1000, 1))  # The official encoder's unused classifier: ignored.
    q = params['qem']
    for i, j in ((0, 0), (1, 3), (2, 6)):
        lin(f'qem.noise_mlp.{j}', q[f'noise_fc_{i}'])
    for i, j in ((0, 1), (1, 4)):
        ln(f'qem.noise_mlp.{j}', q[f'noise_ln_{i}'])
    for i in range(len([k for k in q if k.startswith('block_')])):
        b, p = f'qem.res_blocks.{i}', q[f'block_{i}']
        ln(f'{b}.norm1', p['norm1'])
        ln(f'{b}.norm2', p['norm2'])
        conv(f'{b}.conv1', p['conv1'])
        conv(f'{b}.conv2', {'kernel': p['conv2']['kernel']})
        conv(f'{b}.conv2.conv_offset_mask', p['conv2']['conv_offset_mask'])
    ln('qem.norm', q['norm'])
    lin('qem.embed', q['embed'])
    for i in range(len([k for k in params if k.startswith('decoder_')])):
        b, p = f'transformer_decoder.{i}', params[f'decoder_{i}']
        for n in ('norm1', 'norm2', 'norm3'):
            ln(f'{b}.{n}', p[n])
        attn(f'{b}.attn', p['attn'])
        attn(f'{b}.cross_attn', p['cross_attn'], cross=True)
        lin(f'{b}.mlp.fc1', p['mlp']['Dense_0'])
        lin(f'{b}.mlp.fc2', p['mlp']['Dense_1'])
    sd['psm.proj.weight'] = a(params['psm']['kernel']).transpose(0, 3, 1, 2)
    sd['psm.bias'] = a(params['psm']['bias']).transpose(2, 0, 1)[None]
    return sd


def shapes_to_zeros(shapes):
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def test_official_state_dict_round_trip():
    model = models.get_model('QueryOTR-testing', decoder_layers=2, qem_blocks=2)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))['params']
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:  # The official attention has no key bias.
        if 'key' in jax.tree_util.keystr(path) and 'bias' in jax.tree_util.keystr(path):
            leaf[...] = 0.0
    back = porting_qo.params_from_state_dict(to_official_state_dict(params), num_heads=2, decoder_heads=2)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    # An MAE-pytorch encoder checkpoint: 'encoder.*' keys only (its decoder is ignored).
    mae = {k.replace('transformer_encoder.', 'encoder.'): v for k, v in to_official_state_dict(params).items()
           if k.startswith('transformer_encoder.')}
    mae['decoder.blocks.0.norm1.weight'] = np.zeros(3)
    enc = porting_qo.params_from_state_dict(mae, num_heads=2)
    assert sorted(enc) == ['Transformer', 'embedding']
    # It initialises the encoder through config.init_from (the paper's MAE init), the rest keeps its init.
    from vit_jax import checkpoint

    merged = checkpoint.load_pretrained(shapes_to_zeros(shapes), enc, dont_load=('qem/.*', 'decoder_.*', 'psm/.*'))
    np.testing.assert_array_equal(merged['embedding']['kernel'], params['embedding']['kernel'])
    assert not np.any(merged['psm']['kernel'])
    with pytest.raises(ValueError, match='Unconverted'):
        porting_qo.params_from_state_dict({**mae, 'encoder.extra.weight': np.zeros(1)}, num_heads=2)
