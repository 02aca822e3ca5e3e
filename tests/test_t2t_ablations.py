"""T2T-ViT-14's CNN-to-ViT ablations (Yuan et al., ICCV 2021, tables 6 and 7) as the official code registers them
(yitu-opensource/T2T-ViT `models/t2t_vit.py`):

- `t2t_vit_14_resnext`: T2T_ViT(tokens_type='performer', embed_dim=384, depth=14, num_heads=32, mlp_ratio=3.)
  -> 'T2T-ViT-ResNeXt' (table 6: 21.5M, 4.8G).
- `t2t_vit_14_wide`: T2T_ViT(tokens_type='performer', embed_dim=768, depth=4, num_heads=12, mlp_ratio=3.)
  -> 'T2T-ViT-d768-4' (table 7: 25.0M, 5.4G; table 6 lists a 'T2T-ViT-Wide' at 25.1M, 5.0G).
"""

import math

import jax
import jax.numpy as jnp
import pytest

from vit_jax import models


def _performer(dim, emb=64):
    """Token_performer(dim, in_dim=64): kqv, proj, norm1, norm2, mlp (two Linear); `w` is frozen (not counted)."""
    return (dim * 3 * emb + 3 * emb) + (emb * emb + emb) + 2 * dim + 2 * emb + 2 * (emb * emb + emb)


def _official_trainable(d, depth, mlp_ratio, num_classes=1000):
    """requires_grad parameters of the official T2T_ViT (the sinusoid pos_embed and Performer `w` are frozen)."""
    t2t = _performer(3 * 7 * 7) + _performer(64 * 3 * 3) + (64 * 9 * d + d)  # attention1, attention2, project
    h = int(d * mlp_ratio)
    block = 2 * 2 * d + 3 * d * d + (d * d + d) + (d * h + h) + (h * d + d)  # norm1/2, qkv (no bias), proj, mlp
    return t2t + d + depth * block + 2 * d + (d * num_classes + num_classes)  # cls_token, blocks, norm, head


CASES = {  # name: (official dims (D, depth, mlp_ratio), heads, the paper's Params (M), official alias)
    'T2T-ViT-ResNeXt': ((384, 14, 3.0), 32, 21.5, 't2t_vit_14_resnext'),
    'T2T-ViT-d768-4': ((768, 4, 3.0), 12, 25.0, 't2t_vit_14_wide'),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_counts_equal_the_official_config(name):
    (d, depth, ratio), heads, paper_m, alias = CASES[name]
    n = models.count_params(name, scan=True)
    assert n == _official_trainable(d, depth, ratio)
    assert round(n / 1e6, 1) == paper_m
    assert models.get_entry(alias).name == name
    m = models.get_model(alias)
    assert (m.hidden_size, m.num_layers, m.num_heads, m.mlp_ratio, m.tokens_type) == (d, depth, heads, ratio,
                                                                                      'performer')


def test_exact_figures_and_structure():
    # The baseline's formula is the pinned T2T-ViT-14 count; ResNeXt only splits the same width into more heads.
    assert _official_trainable(384, 14, 3.0) == models.count_params('T2T-ViT-14', scan=True) == 21_465_806
    assert models.count_params('T2T-ViT-ResNeXt', scan=True) == 21_465_806
    assert models.count_params('T2T-ViT-d768-4', scan=True) == 25_000_910
    assert models.get_entry('T2T-ViT-Wide').name == 'T2T-ViT-d768-4'
    model = models.get_model('T2T-ViT-ResNeXt', num_classes=10)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    attn = shapes['params']['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_1']
    assert attn['query']['kernel'].shape == (384, 32, 12)  # 32 heads of width 12.
    (logits, out) = jax.eval_shape(model.apply, shapes, jnp.zeros((1, 64, 64, 3)))
    assert logits.shape == (1, 10) and out['tokens_2d'].shape == (1, 4, 4, 384)
    wide = models.get_model('T2T-ViT-d768-4', num_classes=10)
    wshapes = jax.eval_shape(wide.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    assert set(wshapes['params']['Transformer']) == {f'encoderblock_{i}' for i in range(4)} | {'encoder_norm'}
    assert math.prod(wshapes['params']['Transformer']['encoderblock_0']['MlpBlock_3']['Dense_0']['kernel'].shape) == (
        768 * 2304)
