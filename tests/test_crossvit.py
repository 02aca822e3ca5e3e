"""CrossViT: parameter counts, shapes, torch-compatible bicubic resize and parity with a PyTorch restatement."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import convert, models
from vit_jax.models import crossvit

# Exact integers of this implementation (= the official code's modules). For 9 / 15 / 18 and the dagger models
# they equal an independent count of the official code (8,553,296 / 27,528,464 / 43,271,408 / 8,776,592 /
# 28,209,008 / 44,266,976) and round to paper table 2. For Ti / S / B the code has 0.1-0.3M more than the table:
# the table's figures are exactly what one gets without the two position embeddings (test_paper_ti_s_b_counts).
PINNED = {
    'CrossViT-Ti': 7_014_800,  # paper 6.9M
    'CrossViT-S': 26_856_272,  # paper 26.7M
    'CrossViT-B': 105_025_232,  # paper 104.7M
    'CrossViT-9': 8_553_296,  # paper 8.6M
    'CrossViT-15': 27_528_464,  # paper 27.4M
    'CrossViT-18': 43_271_408,  # paper 43.3M
    'CrossViT-9\u2020': 8_776_592,  # paper 8.8M
    'CrossViT-15\u2020': 28_209_008,  # paper 28.2M
    'CrossViT-18\u2020': 44_266_976,  # paper 44.3M
}
PAPER_M = {'CrossViT-Ti': 6.9, 'CrossViT-S': 26.7, 'CrossViT-B': 104.7}


def _eval_shape(model, size):
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda images: model.init_with_output(jax.random.PRNGKey(0), images), x)


def _count(tree):
    return sum(math.prod(v.shape) for v in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize('name', sorted(PINNED))
def test_param_counts_and_shapes_224(name):
    model = models.get_model(name)
    (logits, out), variables = _eval_shape(model, 224)
    assert _count(variables['params']) == PINNED[name]
    d_s, d_l = model.embed_dims
    assert model.sizes == ((240, 240), (224, 224))
    assert logits.shape == (2, 1000)
    assert out['stem_0'].shape == (2, 400, d_s)  # 240 / 12 = 20 -> 400 tokens.
    assert out['stem_1'].shape == (2, 196, d_l)  # 224 / 16 = 14 -> 196 tokens.
    assert out['encoder/block_02/branch_0'].shape == (2, 401, d_s)
    assert out['pre_logits'].shape == (2, d_s + d_l)
    assert out['logits_0'].shape == out['logits_1'].shape == (2, 1000)


@pytest.mark.parametrize('name', sorted(PAPER_M))
def test_paper_ti_s_b_counts(name):
    # The paper's Ti / S / B figures are the code's count without the two position embeddings (401 x D_S and
    # 197 x D_L): 6.94M, 26.70M, 104.72M.
    d_s, d_l = models.get_model(name).embed_dims
    assert round((PINNED[name] - 401 * d_s - 197 * d_l) / 1e6, 1) == PAPER_M[name]


@pytest.mark.parametrize('name,paper', [('CrossViT-15\u2020', 28.5), ('CrossViT-18\u2020', 44.6)])
def test_shapes_384(name, paper):
    model = models.get_model(name, image_size=384)
    assert model.sizes == ((408, 408), (384, 384))  # The official img_size=[408, 384].
    (logits, out), variables = _eval_shape(model, 384)
    assert logits.shape == (2, 1000)
    assert out['stem_0'].shape[1] == 34 * 34 and out['stem_1'].shape[1] == 24 * 24
    assert round(_count(variables['params']) / 1e6, 1) == paper  # Paper: 28.5M / 44.6M at 384.


def test_aliases():
    assert models.get_entry('CrossViT-18-dagger').name == 'CrossViT-18\u2020'
    assert models.get_entry('crossvit_s').name == 'CrossViT-S'
    assert set(PINNED) <= set(models.list_models('crossvit'))


def test_bicubic_matches_torch():
    torch = pytest.importorskip('torch')
    x = np.random.RandomState(0).randn(2, 14, 16, 3).astype(np.float32)
    for size in ((15, 17), (20, 30), (9, 7), (14, 16)):
        ours = crossvit.resize_bicubic(jnp.asarray(x), size)
        ref = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=size, mode='bicubic',
                                              align_corners=False)
        np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)
    # Rows sum to one (a constant image stays constant), also at 224 -> 240.
    np.testing.assert_allclose(crossvit.bicubic_matrix(224, 240).sum(1), 1.0, atol=1e-6)


def test_wrong_size_is_a_clear_error():
    model = _tiny()
    with pytest.raises(ValueError, match='image_size'):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 48, 48, 3)))


# ----------------------------------------------------------------------------------------------------------------
# Parity with a restatement of the official PyTorch code (IBM/CrossViT models/crossvit.py, timm 0.4 blocks).
# ----------------------------------------------------------------------------------------------------------------
_TINY = dict(image_size=32, branch_sizes=(36, 32), embed_dims=(16, 32), num_heads=(2, 4), depths=(1, 2),
             mlp_ratios=(2.0, 3.0), num_encoders=2, num_classes=5)


def _tiny(**kw):
    return models.get_model('CrossViT-S', **{**_TINY, **kw})


def _torch_crossvit(multi_conv, img_size=(36, 32), patch_size=(12, 16), embed_dim=(16, 32), depth=((1, 2, 0),) * 2,
                    num_heads=(2, 4), mlp_ratio=(2.0, 3.0, 1.0), num_classes=5, eps=1e-6):
    import torch
    from torch import nn

    norm_layer = lambda d: nn.LayerNorm(d, eps=eps)  # noqa: E731

    class Mlp(nn.Module):
        def __init__(self, d, hidden):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class Attention(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.heads, self.scale = heads, (d // heads) ** -0.5
            self.qkv, self.proj = nn.Linear(d, 3 * d, bias=True), nn.Linear(d, d)

        def forward(self, x):
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            attn = ((qkv[0] @ qkv[1].transpose(-2, -1)) * self.scale).softmax(dim=-1)
            return self.proj((attn @ qkv[2]).transpose(1, 2).reshape(b, n, c))

    class Block(nn.Module):
        def __init__(self, d, heads, ratio):
            super().__init__()
            self.norm1, self.attn = norm_layer(d), Attention(d, heads)
            self.norm2, self.mlp = norm_layer(d), Mlp(d, int(d * ratio))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class CrossAttention(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.heads, self.scale = heads, (d // heads) ** -0.5
            self.wq, self.wk, self.wv = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
            self.proj = nn.Linear(d, d)

        def forward(self, x):
            b, n, c = x.shape
            h = self.heads
            q = self.wq(x[:, 0:1]).reshape(b, 1, h, c // h).permute(0, 2, 1, 3)
            k = self.wk(x).reshape(b, n, h, c // h).permute(0, 2, 1, 3)
            v = self.wv(x).reshape(b, n, h, c // h).permute(0, 2, 1, 3)
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            return self.proj((attn @ v).transpose(1, 2).reshape(b, 1, c))

    class CrossAttentionBlock(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.norm1, self.attn = norm_layer(d), CrossAttention(d, heads)

        def forward(self, x):
            return x[:, 0:1] + self.attn(self.norm1(x))

    class MultiScaleBlock(nn.Module):
        def __init__(self, dim, depth, heads):
            super().__init__()
            nb = len(dim)
            self.nb = nb
            self.blocks = nn.ModuleList([nn.Sequential(*[Block(dim[d], heads[d], mlp_ratio[d])
                                                         for _ in range(depth[d])]) for d in range(nb)])
            self.projs = nn.ModuleList([nn.Sequential(norm_layer(dim[d]), nn.GELU(), nn.Linear(dim[d],
                                                                                               dim[(d + 1) % nb]))
                                        for d in range(nb)])
            self.fusion = nn.ModuleList([CrossAttentionBlock(dim[(d + 1) % nb], heads[(d + 1) % nb])
                                         for d in range(nb)])
            self.revert_projs = nn.ModuleList([nn.Sequential(norm_layer(dim[(d + 1) % nb]), nn.GELU(),
                                                             nn.Linear(dim[(d + 1) % nb], dim[d])) for d in range(nb)])

        def forward(self, x):
            outs_b = [blk(x_) for x_, blk in zip(x, self.blocks)]
            proj_cls = [proj(x[:, 0:1]) for x, proj in zip(outs_b, self.projs)]
            outs = []
            for i in range(self.nb):
                tmp = torch.cat((proj_cls[i], outs_b[(i + 1) % self.nb][:, 1:]), dim=1)
                tmp = self.fusion[i](tmp)
                outs.append(torch.cat((self.revert_projs[i](tmp[:, 0:1]), outs_b[i][:, 1:]), dim=1))
            return outs

    class PatchEmbed(nn.Module):
        def __init__(self, p, d):
            super().__init__()
            if not multi_conv:
                self.proj = nn.Conv2d(3, d, kernel_size=p, stride=p)
            elif p == 12:
                self.proj = nn.Sequential(nn.Conv2d(3, d // 4, 7, 4, 3), nn.ReLU(), nn.Conv2d(d // 4, d // 2, 3, 3, 0),
                                          nn.ReLU(), nn.Conv2d(d // 2, d, 3, 1, 1))
            else:
                self.proj = nn.Sequential(nn.Conv2d(3, d // 4, 7, 4, 3), nn.ReLU(), nn.Conv2d(d // 4, d // 2, 3, 2, 1),
                                          nn.ReLU(), nn.Conv2d(d // 2, d, 3, 2, 1))

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)

    class CrossViT(nn.Module):
        def __init__(self):
            super().__init__()
            nb = len(patch_size)
            num_patches = [(s // p) ** 2 for s, p in zip(img_size, patch_size)]
            self.patch_embed = nn.ModuleList([PatchEmbed(p, d) for p, d in zip(patch_size, embed_dim)])
            self.pos_embed = nn.ParameterList([nn.Parameter(torch.zeros(1, 1 + num_patches[i], embed_dim[i]))
                                               for i in range(nb)])
            self.cls_token = nn.ParameterList([nn.Parameter(torch.zeros(1, 1, embed_dim[i])) for i in range(nb)])
            self.blocks = nn.ModuleList([MultiScaleBlock(embed_dim, cfg, num_heads) for cfg in depth])
            self.norm = nn.ModuleList([norm_layer(embed_dim[i]) for i in range(nb)])
            self.head = nn.ModuleList([nn.Linear(embed_dim[i], num_classes) for i in range(nb)])

        def forward(self, x):
            h = x.shape[2]
            xs = []
            for i in range(len(patch_size)):
                x_ = torch.nn.functional.interpolate(x, size=(img_size[i], img_size[i]), mode='bicubic') \
                    if h != img_size[i] else x
                tmp = self.patch_embed[i](x_)
                tmp = torch.cat((self.cls_token[i].expand(x.shape[0], -1, -1), tmp), dim=1) + self.pos_embed[i]
                xs.append(tmp)
            for blk in self.blocks:
                xs = blk(xs)
            xs = [self.norm[i](x)[:, 0] for i, x in enumerate(xs)]
            return torch.mean(torch.stack([self.head[i](x) for i, x in enumerate(xs)], dim=0), dim=0)

    return CrossViT()


def _randomize(module, seed=0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            noise = torch.randn(t.shape, generator=gen) * 0.2
            t.copy_(1.0 + noise if (name.endswith('weight') and t.ndim == 1) else t + noise)
    return module.eval()


@pytest.mark.parametrize('multi_conv', [False, True])
def test_parity_with_official_pytorch(multi_conv):
    torch = pytest.importorskip('torch')
    torch.manual_seed(0)
    ref_model = _randomize(_torch_crossvit(multi_conv))
    images = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    model = _tiny(multi_conv=multi_conv)
    variables = convert.from_official('crossvit', ref_model.state_dict(), model)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.asarray(images))
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(variables)
    logits, out = jax.jit(model.apply)(variables, jnp.asarray(images))
    assert np.abs(np.asarray(logits) - ref).max() <= 1e-4, np.abs(np.asarray(logits) - ref).max()
    np.testing.assert_allclose(logits, (out['logits_0'] + out['logits_1']) / 2, atol=1e-6)


def test_train_mode_stochastic_depth():
    model = _tiny(drop_path_rate=0.5)
    x = jnp.asarray(np.random.RandomState(0).randn(4, 32, 32, 3).astype(np.float32))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    rs = np.random.RandomState(1)
    variables = jax.tree_util.tree_map(lambda s: 0.1 * rs.randn(*s.shape).astype(np.float32), shapes)
    fwd = jax.jit(lambda r: model.apply(variables, x, train=True, rngs={'dropout': r})[0])
    assert not np.allclose(fwd(jax.random.PRNGKey(1)), fwd(jax.random.PRNGKey(2)))
