"""T2T-ViT: parameter counts, shapes, soft split, Performer constants and parity with a PyTorch restatement."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import convert, models
from vit_jax.models import t2t

# Trainable parameters (the 'params' collection) of this implementation. The README / paper figures also count
# the frozen sinusoid table ((N + 1) x D) and, for Performer models, the two frozen 32 x 64 random-feature
# matrices: adding them gives 4.31M / 5.89M / 6.94M / 21.55M / 39.18M / 64.11M, i.e. the README's 4.3M / 5.9M /
# 6.9M / 21.5M / 39.2M / 64.1M. T2T-ViT_t-* have no random features and no kqv bias (384 fewer).
PINNED = {
    'T2T-ViT-7': 4_255_694,  # README 4.3M (paper table 1: depth 8, 4.2M; the code uses depth 7)
    'T2T-ViT-10': 5_834_702,  # README 5.9M
    'T2T-ViT-12': 6_887_374,  # README 6.9M (paper 6.8M)
    'T2T-ViT-14': 21_465_806,  # README / paper 21.5M
    'T2T-ViT-19': 39_085_070,  # README / paper 39.2M
    'T2T-ViT-24': 64_000_974,  # README / paper 64.1M
    'T2T-ViT_t-14': 21_465_422,  # README 21.5M
    'T2T-ViT_t-19': 39_084_686,  # README 39.2M
    'T2T-ViT_t-24': 64_000_590,  # README 64.1M
}
FROZEN_PERFORMER = 2 * 32 * 64


def _eval_shape(model, size):
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda images: model.init_with_output(jax.random.PRNGKey(0), images), x)


@pytest.mark.parametrize('name', sorted(PINNED))
def test_param_counts_and_shapes_224(name):
    # scan=True traces one block per stack (fast); the parameter count is the same as the unrolled model's.
    model = models.get_model(name, scan=True)
    (logits, out), variables = _eval_shape(model, 224)
    n = sum(math.prod(v.shape) for v in jax.tree_util.tree_leaves(variables['params']))
    assert n == PINNED[name]
    frozen = sum(math.prod(v.shape) for v in jax.tree_util.tree_leaves(variables.get('constants', {})))
    d = model.hidden_size
    assert frozen == (FROZEN_PERFORMER if model.tokens_type == 'performer' else 0)
    readme = n + frozen + 197 * d  # + the sinusoid table, as the README counts it.
    assert round(readme / 1e6, 1) == {'7': 4.3, '10': 5.9, '12': 6.9, '14': 21.5, '19': 39.2,
                                      '24': 64.1}[name.split('-')[-1]]
    assert logits.shape == (2, 1000)
    assert out['t2t/split_0'].shape == (2, 56 * 56, 147)
    assert out['t2t/split_1'].shape == (2, 28 * 28, 576)
    assert out['stem'].shape == (2, 196, d)
    assert out['tokens_2d'].shape == (2, 14, 14, d)


@pytest.mark.parametrize('name', ['T2T-ViT-7', 'T2T-ViT-14', 'T2T-ViT_t-24'])
def test_shapes_384(name):
    model = models.get_model(name, num_classes=10, image_size=384, scan=True)
    (logits, out), variables = _eval_shape(model, 384)
    assert logits.shape == (2, 10)
    assert out['stem'].shape == (2, 24 * 24, model.hidden_size)  # 384 -> 96 -> 48 -> 24.
    assert sum(math.prod(v.shape) for v in jax.tree_util.tree_leaves(variables['params'])) == PINNED[name] - (
        1000 - 10) * (model.hidden_size + 1)


def test_count_params_unrolled():
    a = models.count_params('T2T-ViT-7')
    assert a == PINNED['T2T-ViT-7']


def test_soft_split_matches_torch_unfold():
    torch = pytest.importorskip('torch')
    x = np.random.RandomState(0).randn(2, 13, 11, 5).astype(np.float32)
    for k, s, p in ((7, 4, 2), (3, 2, 1)):
        ours = t2t.soft_split(jnp.asarray(x), k, s, p)
        ref = torch.nn.Unfold(k, stride=s, padding=p)(torch.from_numpy(x.transpose(0, 3, 1, 2)))  # [B, C*k*k, L]
        b, h, w, c = ours.shape
        np.testing.assert_allclose(np.asarray(ours).reshape(b, h * w, c), ref.numpy().transpose(0, 2, 1), atol=1e-6)


def _tiny(tokens_type='performer', **kw):
    return models.get_model('T2T-ViT-7', num_classes=5, image_size=32, tokens_type=tokens_type, token_dim=16,
                            hidden_size=32, num_layers=2, num_heads=2, mlp_ratio=2.0, **kw)


@pytest.mark.slow  # ~30-50 s on 2 cores.
def test_performer_constants():
    model = _tiny()
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    assert 'w' not in str(jax.tree_util.tree_structure(variables['params']))
    w = variables['constants']['tokens_to_token']['attention1']['w']
    assert w.shape == (8, 16)  # m = token_dim * 0.5.
    np.testing.assert_allclose(w @ w.T, 8 * np.eye(8), atol=1e-4)  # Orthogonal rows times sqrt(m).
    # Train mode: dropout active, constants untouched (they are never mutable).
    fwd = jax.jit(lambda v, r: model.apply(v, x + 1.0, train=True, rngs={'dropout': r})[0])
    assert not np.allclose(fwd(variables, jax.random.PRNGKey(1)), fwd(variables, jax.random.PRNGKey(2)))
    # A model of another resolution reuses the variables (the sinusoid table is rebuilt, not stored).
    logits, out = jax.jit(model.apply)(variables, jnp.zeros((1, 48, 64, 3)))
    assert logits.shape == (1, 5) and out['tokens_2d'].shape == (1, 3, 4, 32)


def test_performer_features_fixed_seed():
    # The frozen features come from a fixed seed by default: a run initialised from another run's params alone (the
    # trainer's init_from loads 'params') rebuilds exactly the features the weights were trained with.
    x = jnp.ones((1, 4, 27))
    w = lambda layer, k: layer.init(jax.random.PRNGKey(k), x)['constants']['w']  # noqa: E731
    np.testing.assert_array_equal(w(t2t.TokenPerformer(16), 0), w(t2t.TokenPerformer(16), 1))
    assert not np.allclose(w(t2t.TokenPerformer(16, seed=None), 0), w(t2t.TokenPerformer(16, seed=None), 1))


# ----------------------------------------------------------------------------------------------------------------
# Parity with a restatement of the official PyTorch code (yitu-opensource/T2T-ViT models/*.py).
# ----------------------------------------------------------------------------------------------------------------
def _torch_t2t(tokens_type, img=32, token_dim=16, dim=32, depth=2, heads=2, mlp_ratio=2.0, num_classes=5,
               qk_scale=None):
    import torch
    from torch import nn

    class Mlp(nn.Module):
        def __init__(self, d, hidden, out=None):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, out or d)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class Attention(nn.Module):
        def __init__(self, d, num_heads, in_dim=None, qkv_bias=False, qk_scale=None):
            super().__init__()
            self.num_heads, self.in_dim = num_heads, in_dim
            self.scale = qk_scale or (d // num_heads) ** -0.5
            self.qkv = nn.Linear(d, (in_dim or d) * 3, bias=qkv_bias)
            self.proj = nn.Linear(in_dim or d, in_dim or d)

        def forward(self, x):
            b, n, c = x.shape
            if self.in_dim is None:  # Backbone attention.
                qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
                q, k, v = qkv[0], qkv[1], qkv[2]
                attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
                return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.in_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.in_dim))
            return v.squeeze(1) + x

    class TokenTransformer(nn.Module):
        def __init__(self, d, in_dim):
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(d), Attention(d, 1, in_dim=in_dim)
            self.norm2, self.mlp = nn.LayerNorm(in_dim), Mlp(in_dim, in_dim, in_dim)

        def forward(self, x):
            x = self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class TokenPerformer(nn.Module):
        def __init__(self, d, in_dim, kernel_ratio=0.5):
            super().__init__()
            self.emb = in_dim
            self.kqv, self.proj = nn.Linear(d, 3 * in_dim), nn.Linear(in_dim, in_dim)
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(in_dim)
            self.mlp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, in_dim), nn.Dropout(0.1))
            self.m = int(in_dim * kernel_ratio)
            self.w = nn.Parameter(nn.init.orthogonal_(torch.randn(self.m, in_dim)) * math.sqrt(self.m),
                                  requires_grad=False)

        def prm_exp(self, x):
            xd = (x * x).sum(dim=-1, keepdim=True).repeat(1, 1, self.m) / 2
            return torch.exp(torch.einsum('bti,mi->btm', x.float(), self.w) - xd) / math.sqrt(self.m)

        def forward(self, x):
            k, q, v = torch.split(self.kqv(self.norm1(x)), self.emb, dim=-1)
            kp, qp = self.prm_exp(k), self.prm_exp(q)
            dd = torch.einsum('bti,bi->bt', qp, kp.sum(dim=1)).unsqueeze(dim=2)
            kptv = torch.einsum('bin,bim->bnm', v.float(), kp)
            y = torch.einsum('bti,bni->btn', qp, kptv) / (dd.repeat(1, 1, self.emb) + 1e-8)
            y = v + self.proj(y)
            return y + self.mlp(self.norm2(y))

    class T2TModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.soft_split0 = nn.Unfold(kernel_size=(7, 7), stride=(4, 4), padding=(2, 2))
            self.soft_split1 = nn.Unfold(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
            self.soft_split2 = nn.Unfold(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
            layer = TokenPerformer if tokens_type == 'performer' else TokenTransformer
            self.attention1 = layer(3 * 7 * 7, token_dim)
            self.attention2 = layer(token_dim * 3 * 3, token_dim)
            self.project = nn.Linear(token_dim * 3 * 3, dim)

        def forward(self, x):
            x = self.attention1(self.soft_split0(x).transpose(1, 2))
            b, hw, c = x.shape
            x = x.transpose(1, 2).reshape(b, c, int(np.sqrt(hw)), int(np.sqrt(hw)))
            x = self.attention2(self.soft_split1(x).transpose(1, 2))
            b, hw, c = x.shape
            x = x.transpose(1, 2).reshape(b, c, int(np.sqrt(hw)), int(np.sqrt(hw)))
            return self.project(self.soft_split2(x).transpose(1, 2))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, qk_scale=qk_scale)
            self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, int(dim * mlp_ratio))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    def sinusoid(n_position, d_hid):
        table = np.array([[pos / np.power(10000, 2 * (j // 2) / d_hid) for j in range(d_hid)]
                          for pos in range(n_position)])
        table[:, 0::2] = np.sin(table[:, 0::2])
        table[:, 1::2] = np.cos(table[:, 1::2])
        return torch.FloatTensor(table).unsqueeze(0)

    class T2TViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens_to_token = T2TModule()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos_embed = nn.Parameter(sinusoid((img // 16) ** 2 + 1, dim), requires_grad=False)
            self.blocks = nn.ModuleList([Block() for _ in range(depth)])
            self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

        def forward(self, x):
            x = self.tokens_to_token(x)
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.norm(x)[:, 0])

    return T2TViT()


def _randomize(module, seed=0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith('.w') or name == 'pos_embed':
                continue
            noise = torch.randn(t.shape, generator=gen) * 0.2
            t.copy_(1.0 + noise if (name.endswith('weight') and t.ndim == 1) else t + noise)
    return module.eval()


@pytest.mark.parametrize('tokens_type', ['performer', 'transformer'])
@pytest.mark.parametrize('scale', ['head_dim', 'embed_dim'])
def test_parity_with_official_pytorch(tokens_type, scale):
    torch = pytest.importorskip('torch')
    torch.manual_seed(0)
    ref_model = _randomize(_torch_t2t(tokens_type, qk_scale=32**-0.5 if scale == 'embed_dim' else None))
    images = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    model = _tiny(tokens_type, attention_scale=scale)
    variables = convert.from_official('t2t', ref_model.state_dict(), model)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.asarray(images))
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(variables)
    logits, _ = jax.jit(model.apply)(variables, jnp.asarray(images))
    assert np.abs(np.asarray(logits) - ref).max() <= 1e-4, np.abs(np.asarray(logits) - ref).max()
