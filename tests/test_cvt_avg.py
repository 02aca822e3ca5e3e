"""CvT `qkv_method='avg'`, the official `QKV_PROJ_METHOD: avg` (microsoft/CvT `lib/models/cls_cvt.py`, `Attention`):
q through the 'linear' (identity) projection, k and v through `nn.AvgPool2d(kernel_size, padding, stride,
ceil_mode=True)` (default count_include_pad=True), the class token bypassing both; no parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vit_jax import models
from vit_jax.models import cvt, layers


@pytest.mark.parametrize('h,w,k,s,p', [
    (56, 56, 3, 2, 1), (28, 28, 3, 2, 1), (14, 14, 3, 2, 1), (7, 10, 3, 2, 1), (9, 5, 3, 2, 1), (8, 8, 3, 1, 1),
    (7, 7, 2, 2, 0), (10, 11, 4, 3, 1), (5, 6, 3, 2, 0), (1, 3, 3, 2, 1)])
def test_avg_pool_matches_torch_ceil_mode(h, w, k, s, p):
    x = np.random.default_rng(h * 100 + w).normal(size=(2, h, w, 5)).astype(np.float32)
    ref = torch.nn.AvgPool2d(kernel_size=k, stride=s, padding=p, ceil_mode=True)(
        torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(cvt.avg_pool_torch_ceil(jnp.asarray(x), k, s, p))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-6)


def _official_avg_attention(x, h, w, heads, params, kernel=3, stride_kv=2, padding_kv=1, with_cls=True):
    """The official Attention.forward with method='avg' in torch (weights given as torch Linear layouts)."""
    t = torch.from_numpy(x)
    if with_cls:
        cls, t = torch.split(t, [1, h * w], 1)
    b, _, c = t.shape
    fmap = t.transpose(1, 2).reshape(b, c, h, w)
    pool = torch.nn.AvgPool2d(kernel_size=kernel, padding=padding_kv, stride=stride_kv, ceil_mode=True)
    q = t  # conv_proj_q is None ('linear' for avg): 'b c h w -> b (h w) c'.
    k = pool(fmap).flatten(2).transpose(1, 2)
    v = pool(fmap).flatten(2).transpose(1, 2)
    if with_cls:
        q, k, v = (torch.cat((cls, y), dim=1) for y in (q, k, v))

    def lin(y, name):
        return y @ torch.from_numpy(params[name + '.weight']).T + torch.from_numpy(params[name + '.bias'])

    def split(y):
        return y.reshape(b, y.shape[1], heads, c // heads).permute(0, 2, 1, 3)

    q, k, v = split(lin(q, 'proj_q')), split(lin(k, 'proj_k')), split(lin(v, 'proj_v'))
    attn = torch.softmax(torch.einsum('bhlk,bhtk->bhlt', q, k) * c**-0.5, dim=-1)  # scale = dim_out ** -0.5
    y = torch.einsum('bhlt,bhtv->bhlv', attn, v).permute(0, 2, 1, 3).reshape(b, -1, c)
    return lin(y, 'proj').numpy()


@pytest.mark.parametrize('with_cls', [True, False])
def test_attention_matches_official_avg_method(with_cls):
    h, w, d, heads = 7, 6, 12, 3
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, int(with_cls) + h * w, d)).astype(np.float32)
    tp = {f'{n}.{t}': (0.3 * rng.normal(size=(d, d) if t == 'weight' else (d,))).astype(np.float32)
          for n in ('proj_q', 'proj_k', 'proj_v', 'proj') for t in ('weight', 'bias')}
    attn = layers.MultiHeadAttention(
        num_heads=heads, scale=d**-0.5,
        qkv_transform=lambda name: cvt.ConvProjection(grid=(h, w), num_prefix=int(with_cls), method='avg', name=name))
    v = attn.init(jax.random.PRNGKey(0), jnp.asarray(x))
    assert set(v) == {'params'} and 'qkv_transform' not in v['params']  # No parameters, no batch statistics.
    hd = d // heads
    params = {name: {'kernel': tp[f'{t}.weight'].T.reshape(d, heads, hd), 'bias': tp[f'{t}.bias'].reshape(heads, hd)}
              for name, t in (('query', 'proj_q'), ('key', 'proj_k'), ('value', 'proj_v'))}
    params['out'] = {'kernel': tp['proj.weight'].T.reshape(heads, hd, d), 'bias': tp['proj.bias']}
    got = np.asarray(attn.apply({'params': params}, jnp.asarray(x)))
    ref = _official_avg_attention(x, h, w, heads, tp, with_cls=with_cls)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_cvt13_avg_model():
    base, avg = models.count_params('CvT-13'), models.count_params('CvT-13', qkv_method='avg')
    # The avg method drops each block's three depthwise 3x3 convs (9 D) and BatchNorm scale/bias (2 D): 33 D.
    assert base - avg == 33 * (1 * 64 + 2 * 192 + 10 * 384)
    model = models.get_model('CvT-13', qkv_method='avg', num_classes=10, depths=(1, 1, 1), embed_dims=(16, 32, 48),
                             num_heads=(1, 2, 3))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 64, 64, 3)), jnp.float32)
    v = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    assert 'batch_stats' not in v
    (logits, out), state = jax.jit(lambda v, x: model.apply(v, x, mutable=['intermediates']))(v, x)
    assert logits.shape == (1, 10) and np.all(np.isfinite(np.asarray(logits)))
    weights = state['intermediates']
    # Stage grids 16, 8, 4 at 64 px; the ceil-mode pooling gives 9x9, 5x5, 3x3 keys (the conv would give 8, 4, 2);
    # the last stage's class token is a query and a key.
    tq_tk = [weights[f'stage_{i}_block_0']['MultiHeadDotProductAttention_1']['attention_weights'][0].shape[-2:]
             for i in range(3)]
    assert tq_tk == [(256, 81), (64, 25), (17, 10)]
