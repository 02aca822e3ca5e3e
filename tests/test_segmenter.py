"""Segmenter: parameter counts, decoders, padding, position-embedding resizing, sliding-window and multi-scale."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import check_posemb_resized_like_torch, init_model

from vit_jax import models
from vit_jax.models import layers, segmenter

# Exact counts of this implementation at 512 px with 150 classes (ADE20K), including the encoder's unused 1000-way
# classifier as the official module does. In brackets: the spec's [computed] counts of the official code (the
# README's rounded figures in parentheses).
SEG_COUNTS = {
    'Seg-T-Mask/16': 6_906_388,  # [6.91M] (README 7M)
    'Seg-S-Mask/16': 26_418_964,  # [26.42M] (27M)
    'Seg-B-Mask/16': 103_266_580,  # [103.27M] (106M)
    'Seg-B/8': 89_235_838,  # [89.24M] (89M), linear decoder
    'Seg-L-Mask/16': 333_669_652,  # [333.67M] (334M)
}


@pytest.mark.parametrize('name', sorted(SEG_COUNTS))
def test_param_counts(name):
    assert models.count_params(name) == SEG_COUNTS[name]


def test_paper_headline_counts():
    assert round(models.count_params('Seg-B-Mask/16') / 1e6, 1) == 103.3
    assert round(models.count_params('Seg-L-Mask/16') / 1e6, 1) == 333.7
    assert round(models.count_params('Seg-L-Mask/16', image_size=640) / 1e6, 2) == 334.26  # ADE20K at 640 px.
    assert models.count_params('Seg-B-Mask/16', backbone_classes=0) == SEG_COUNTS['Seg-B-Mask/16'] - 769_000


@pytest.fixture(scope='module')
def tiny():
    return init_model('Seg-testing', jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3)), seed=1)


def test_mask_transformer_structure(tiny):
    model, v, x = tiny
    p = v['params']
    dec = p['decoder']
    d, k = model.hidden_size, model.num_classes
    assert dec['cls_emb'].shape == (1, k, d)
    assert dec['proj_patch'].shape == (d, d) and dec['proj_classes'].shape == (d, d)
    assert dec['mask_norm']['scale'].shape == (k,)  # LayerNorm over the classes.
    assert set(dec['blocks']) == {'encoderblock_0', 'encoderblock_1'}  # Two decoder blocks.
    assert 'embedding' in p and 'Transformer' in p and 'cls' in p  # ViT release names: checkpoints load directly.
    logits, out = jax.jit(model.apply)(v, x)
    assert logits.shape == (2, 32, 32, k) and out['decoder/masks'].shape == (2, 8, 8, k)
    # The masks are LayerNorm-ed cosine similarities: with the initial LN (scale 1, bias 0), zero mean over classes.
    np.testing.assert_allclose(np.asarray(out['decoder/masks']).mean(-1), 0.0, atol=1e-5)


def test_decoder_attends_over_patches_then_classes(tiny):
    import flax.linen as nn

    model, v, x = tiny
    captured = {}

    def interceptor(next_fun, args, kwargs, context):
        if (isinstance(context.module, layers.Encoder) and context.module.name == 'blocks'
                and context.method_name == '__call__'):
            captured['tokens'] = args[0] if args else kwargs['x']
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        model.apply(v, x)  # Not jitted: the interceptor keeps a concrete intermediate.
    tokens = captured['tokens']
    assert tokens.shape == (2, 64 + model.num_classes, model.hidden_size)
    # The last K tokens are the class embeddings (identical across the batch), after the 64 patch tokens.
    np.testing.assert_allclose(tokens[:, 64:], np.broadcast_to(v['params']['decoder']['cls_emb'], tokens[:, 64:].shape))


def test_linear_decoder_and_padding():
    m = models.get_model('Seg-testing', decoder='linear')
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 30, 27, 3))
    v = jax.jit(m.init)(jax.random.PRNGKey(1), x)
    assert set(v['params']['decoder']) == {'kernel', 'bias'}
    logits, out = jax.jit(m.apply)(v, x)
    assert logits.shape == (1, 30, 27, 11)
    # Zero padding to the patch multiple, prediction cropped back: equal to the padded input's crop.
    padded = jnp.pad(x, ((0, 0), (0, 2), (0, 1), (0, 0)))
    full, _ = jax.jit(m.apply)(v, padded)
    np.testing.assert_allclose(logits, full[:, :30, :27], atol=1e-5)


def test_position_embedding_resized_like_torch():
    pe, got = check_posemb_resized_like_torch(num_prefix_tokens=1)
    np.testing.assert_allclose(got[0, 0], pe[0, 0])  # The class token keeps its embedding.


def test_window_anchors_final_flush():
    assert segmenter.window_anchors(48, 32, 16) == [0, 16]
    assert segmenter.window_anchors(40, 32, 16) == [0, 8]
    assert segmenter.window_anchors(100, 32, 32) == [0, 32, 64, 68]
    assert segmenter.window_anchors(32, 32, 16) == [0]


def test_sliding_window_equals_single_pass_when_the_window_covers_the_image(tiny):
    model, v, _ = tiny
    fn = jax.jit(lambda w: model.apply(v, w)[0])
    x = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype(np.float32)
    single = np.asarray(fn(x))
    for arr in (x, jnp.asarray(x)):
        got = segmenter.sliding_window_logits(fn, arr, 32, 16)
        np.testing.assert_allclose(np.asarray(got), single, atol=1e-6)


def test_sliding_window_on_a_larger_image(tiny):
    # A per-pixel model: the merged windows must reproduce its single pass on the whole larger image exactly.
    w = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    pointwise = lambda t: t @ w  # noqa: E731
    x = np.random.default_rng(2).normal(size=(2, 48, 40, 3)).astype(np.float32)
    for arr in (x, jnp.asarray(x)):
        got = segmenter.sliding_window_logits(pointwise, arr, 32, 16, window_batch=3)
        np.testing.assert_allclose(np.asarray(got), x @ w, atol=1e-5)
    # A real model: the per-pixel average of the window logits, computed here by hand.
    model, v, _ = tiny
    fn = jax.jit(lambda t: model.apply(v, t)[0])
    got = segmenter.sliding_window_logits(fn, x, 32, 16)
    total, count = np.zeros((2, 48, 40, 11)), np.zeros((48, 40, 1))
    for i in (0, 16):
        for j in (0, 8):
            total[:, i:i + 32, j:j + 32] += np.asarray(fn(x[:, i:i + 32, j:j + 32]))
            count[i:i + 32, j:j + 32] += 1
    np.testing.assert_allclose(got, total / count, atol=1e-5)
    # Images smaller than the window are upsampled to cover it, and the logits resized back.
    small = segmenter.sliding_window_logits(pointwise, x[:, :20, :24], 32, 16)
    assert small.shape == (2, 20, 24, 5)


def test_multiscale_flip_inference():
    w = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    pointwise = lambda t: t @ w  # noqa: E731
    x = np.random.default_rng(2).normal(size=(1, 32, 32, 3)).astype(np.float32)
    probs = segmenter.inference(pointwise, x, window=32, stride=32)
    ref = np.asarray(jax.nn.softmax(x @ w, -1))
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    # A flip-equivariant model: flipping adds nothing; softmax maps are averaged over the views.
    np.testing.assert_allclose(segmenter.inference(pointwise, x, window=32, stride=32, flip=True), ref, atol=1e-6)
    ms = segmenter.inference(pointwise, x, window=16, stride=8, scales=(0.5, 1.0, 1.5), flip=True)
    assert ms.shape == (1, 32, 32, 4)
    np.testing.assert_allclose(ms.sum(-1), 1.0, atol=1e-5)
    jit_ms = jax.jit(lambda t: segmenter.inference(pointwise, t, window=16, stride=8, scales=(0.5, 1.0, 1.5),
                                                   flip=True))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(jit_ms), ms, atol=1e-5)


def test_train_mode_uses_dropout_and_drop_path(tiny):
    _, v, x = tiny  # Same parameters; rates are module options.
    m = models.get_model('Seg-testing', drop_path_rate=0.5, decoder_dropout=0.3)
    train = jax.jit(lambda v, x, r: m.apply(v, x, train=True, rngs={'dropout': r})[0])
    a = train(v, x, jax.random.PRNGKey(2))
    b = train(v, x, jax.random.PRNGKey(3))
    assert not np.allclose(a, b)
    e = jax.jit(lambda v, x: m.apply(v, x)[0])
    np.testing.assert_array_equal(e(v, x), e(v, x))


def test_encoder_initialises_from_a_vit_checkpoint(tmp_path, tiny):
    from vit_jax import checkpoint
    from vit_jax.models.vit import VisionTransformer

    model, v, _ = tiny
    vit = VisionTransformer(num_classes=10, image_size=16, patch_size=4, hidden_size=64, mlp_dim=128, num_heads=2,
                            num_layers=2, norm_eps=1e-5, activation='gelu_exact')
    vit_params = jax.jit(vit.init)(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 3)))['params']
    path = str(tmp_path / 'vit.npz')
    checkpoint.save_npz(path, vit_params)
    params = checkpoint.load_pretrained(jax.device_get(v['params']), path, dont_load=('decoder/.*', 'head/.*'))
    np.testing.assert_array_equal(params['Transformer']['encoderblock_1']['MlpBlock_3']['Dense_0']['kernel'],
                                  vit_params['Transformer']['encoderblock_1']['MlpBlock_3']['Dense_0']['kernel'])
    # The 4x4 grid of the 16-px checkpoint is resampled to the 8x8 grid of the 32-px model.
    assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 65, 64)
    np.testing.assert_array_equal(params['decoder']['cls_emb'], v['params']['decoder']['cls_emb'])
