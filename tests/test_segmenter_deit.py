"""Segmenter's DeiT-distilled encoders (Seg-B\u2020/16, Seg-B\u2020-Mask/16) as rstrudel/segmenter: the distillation
token after the class token (`segm/model/vit.py`, `distilled=True`), a position embedding of N + 2 rows, the unused
`head_dist`, and both extra tokens dropped before the decoder (`segm/model/segmenter.py`: `x[:, 1 + distilled:]`)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import check_posemb_resized_like_torch

from vit_jax import models
from vit_jax.models.vit import VisionTransformer


def _official_count(d=768, depth=12, p=16, image=512, n_cls=150, mask=False, distilled=True, backbone_cls=1000):
    """Parameters of the official modules, from their definitions (segm/model/{vit,blocks,decoder}.py)."""
    n = (image // p) ** 2
    extra = 1 + distilled
    # One Block: norm1, norm2, attn.qkv, attn.proj, mlp.fc1, mlp.fc2.
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    enc = (3 * p * p * d + d) + d * extra + (n + extra) * d + depth * block + 2 * d  # patch conv, tokens, pos, norm
    enc += (1 + distilled) * (d * backbone_cls + backbone_cls)  # head (+ head_dist), unused for segmentation
    if not mask:
        return enc + d * n_cls + n_cls  # DecoderLinear.head
    dec = (d * d + d) + n_cls * d + 2 * block + 2 * d + 2 * d * d + 2 * n_cls  # proj_dec, cls_emb, 2 blocks,
    return enc + dec                                                          # decoder_norm, proj_*, mask_norm


def test_counts_against_the_official_modules():
    assert models.count_params('Seg-B\u2020/16') == _official_count() == 88_089_446
    assert models.count_params('Seg-B\u2020-Mask/16') == _official_count(mask=True) == 104_037_116
    # The non-distilled formula reproduces the pinned ViT-backbone counts, so the formula is the official one.
    assert models.count_params('Seg-B/16') == _official_count(distilled=False)
    assert models.count_params('Seg-B-Mask/16') == _official_count(distilled=False, mask=True) == 103_266_580
    # README "Segmenter models with DeiT backbone": 87M / 106M (the README's B-Mask/16 figure is 106M too, against
    # 103.3M counted); the specs' count of the official Seg-B\u2020/16 is 88.1M.
    assert round(models.count_params('Seg-B\u2020/16') / 1e6, 1) == 88.1


def test_names_and_aliases():
    assert {'Seg-B\u2020/16', 'Seg-B\u2020-Mask/16'} <= set(models.list_models('segmenter'))
    assert models.get_entry('Seg-B-dist/16').name == 'Seg-B\u2020/16'
    assert models.get_entry('Seg-B-dist-Mask/16').name == 'Seg-B\u2020-Mask/16'
    assert models.get_entry('Seg-B-dist-Mask_16').name == 'Seg-B\u2020-Mask/16'
    m = models.get_model('Seg-B\u2020-Mask/16')
    assert m.distilled and m.decoder == 'mask_transformer' and (m.hidden_size, m.num_layers, m.patch_size) == (
        768, 12, 16)


@pytest.mark.parametrize('decoder', ['linear', 'mask_transformer'])
def test_dist_token_dropped_before_the_decoder(decoder):
    m = models.get_model('Seg-testing', distilled=True, decoder=decoder, backbone_classes=7)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    v = jax.jit(m.init)(jax.random.PRNGKey(1), x)
    p = v['params']
    assert p['dist_token'].shape == (1, 1, 64) and p['cls'].shape == (1, 1, 64)
    assert p['Transformer']['posembed_input']['pos_embedding'].shape == (1, 2 + 64, 64)
    assert set(p['head_dist']) == {'kernel', 'bias'} and p['head_dist']['kernel'].shape == (64, 7)
    seen = {}

    def interceptor(next_fun, args, kwargs, context):
        if context.module.name == 'decoder' and context.method_name == '__call__':
            seen['tokens'] = args[0]
        return next_fun(*args, **kwargs)

    def run(v, x):
        with nn.intercept_methods(interceptor):
            logits, out = m.apply(v, x)
        return logits, out, seen['tokens']

    logits, out, tokens = jax.jit(run)(v, x)
    assert logits.shape == (2, 32, 32, 11)
    encoded = np.asarray(out['encoded'])
    assert encoded.shape == (2, 2 + 64, 64)
    np.testing.assert_array_equal(np.asarray(tokens), encoded[:, 2:])
    # The encoder is exactly a DeiT (ViT with distill_token) with the same parameters.
    vit = VisionTransformer(num_classes=7, image_size=32, patch_size=4, hidden_size=64, mlp_dim=128, num_heads=2,
                            num_layers=2, norm_eps=1e-5, activation='gelu_exact', distill_token=True)
    enc_params = {k: p[k] for k in ('embedding', 'cls', 'dist_token', 'Transformer', 'head', 'head_dist')}
    _, vout = jax.jit(vit.apply)({'params': enc_params}, x)
    np.testing.assert_allclose(np.asarray(vout['encoded']), encoded, atol=1e-5)


def test_two_prefix_rows_kept_when_resizing_like_the_official_code():
    """segm/model/utils.py resize_pos_embed with num_extra_tokens = 2: both rows kept, grid resized bilinearly."""
    pe, got = check_posemb_resized_like_torch(num_prefix_tokens=2)
    np.testing.assert_array_equal(got[0, :2], pe[0, :2])
    # End to end: a distilled Segmenter on a non-square input of another size.
    m = models.get_model('Seg-testing', distilled=True, decoder='linear')
    xs = jax.random.normal(jax.random.PRNGKey(0), (1, 40, 48, 3))
    vs = jax.jit(m.init)(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)))
    logits, out = jax.jit(m.apply)(vs, xs)
    assert logits.shape == (1, 40, 48, 11) and out['encoded'].shape == (1, 2 + 120, 64)
