"""CrossViT with more than one cross-attention layer per fusion, and the stochastic-depth schedule, against the
official semantics (IBM/CrossViT `models/crossvit.py`), restated here in numpy:

- `MultiScaleBlock.fusion[i]` is `nn.Sequential(CrossAttentionBlock x L_code)` (one bare block when L_code = 0) on
  `cat(projs[i](cls_i), outs_b[j][:, 1:])`; `CrossAttentionBlock.forward` returns `x[:, 0:1] + attn(norm1(x))`,
  only the class token, so blocks 2.. see that one token. Then `revert_projs[i]` on `tmp[:, 0:1]`.
- `VisionTransformer.__init__`: `total_depth = sum(x[-2:])` over the depth configs, `dpr = linspace(0, rate,
  total_depth)`, per encoder `curr_depth = max(cfg[:-1]) + cfg[-1]`, slice `dpr[ptr:ptr + curr_depth]`; branch
  block i gets `drop_path[i]`, every fusion block `drop_path[-1]`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from vit_jax import models
from vit_jax.models import crossvit

EPS = 1e-6


def _ln(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * p['scale'] + p['bias']


def _gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _dense(x, p):
    return x @ p['kernel'] + p['bias']


def _heads_in(x, p):  # [B, N, D] -> [B, H, N, hd] with kernel [D, H, hd].
    return np.einsum('bnd,dhk->bhnk', x, p['kernel']) + p['bias'][None, :, None, :]


def _attend(q_in, kv_in, p):
    q, k, v = _heads_in(q_in, p['query']), _heads_in(kv_in, p['key']), _heads_in(kv_in, p['value'])
    s = q @ k.transpose(0, 1, 3, 2) * q.shape[-1] ** -0.5
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    return np.einsum('bhnk,hkd->bnd', a @ v, p['out']['kernel']) + p['out']['bias']


def _vit_block(x, p):  # timm Block: x + attn(norm1(x)); x + mlp(norm2(x)).
    h = _ln(x, p['LayerNorm_0'])
    x = x + _attend(h, h, p['MultiHeadDotProductAttention_1'])
    h = _ln(x, p['LayerNorm_2'])
    return x + _dense(_gelu(_dense(h, p['MlpBlock_3']['Dense_0'])), p['MlpBlock_3']['Dense_1'])


def _cross_block(x, p):  # Official CrossAttentionBlock (has_mlp=False): returns the class token only.
    h = _ln(x, p['norm1'])
    return x[:, 0:1] + _attend(h[:, 0:1], h, p['attn'])


def _proj(x, p):  # nn.Sequential(LayerNorm, GELU, Linear).
    return _dense(_gelu(_ln(x, p['norm'])), p['dense'])


def _official_multiscale_block(xs, p, depths, fusion_depth, reattach=False):
    """The official MultiScaleBlock.forward. `reattach=True` is the earlier, wrong reading (the other branch's patch
    tokens re-attached before every fusion layer), kept to show the test tells the two apart."""
    nb = len(xs)
    outs_b = []
    for b, x in enumerate(xs):
        for j in range(depths[b]):
            x = _vit_block(x, p[f'branch{b}_block_{j}'])
        outs_b.append(x)
    proj_cls = [_proj(x[:, 0:1], p[f'proj_{i}']) for i, x in enumerate(outs_b)]
    outs = []
    for i in range(nb):
        j = (i + 1) % nb
        names = [f'fusion_{i}'] if fusion_depth == 1 else [f'fusion_{i}_{layer}' for layer in range(fusion_depth)]
        tmp = np.concatenate([proj_cls[i], outs_b[j][:, 1:]], axis=1)
        for name in names:  # nn.Sequential.
            if reattach and tmp.shape[1] == 1:
                tmp = np.concatenate([tmp, outs_b[j][:, 1:]], axis=1)
            tmp = _cross_block(tmp, p[name])
        outs.append(np.concatenate([_proj(tmp[:, 0:1], p[f'revert_proj_{i}']), outs_b[i][:, 1:]], axis=1))
    return outs


@pytest.mark.parametrize('fusion_depth', [1, 2, 3])
def test_fusion_matches_official_sequential(fusion_depth):
    depths = (1, 2)
    block = crossvit.MultiScaleBlock(dims=(8, 12), depths=depths, num_heads=(2, 3), mlp_ratios=(2.0, 3.0),
                                     fusion_depth=fusion_depth)
    rng = np.random.default_rng(fusion_depth)
    xs = [rng.normal(size=(2, 5, 8)).astype(np.float32), rng.normal(size=(2, 4, 12)).astype(np.float32)]
    shapes = jax.eval_shape(block.init, jax.random.PRNGKey(0), [jnp.asarray(x) for x in xs])
    # Every parameter random (LayerNorm scales around 1), so no term can hide.
    params = jax.tree_util.tree_map_with_path(
        lambda path, s: ((1.0 if path[-1].key == 'scale' else 0.0) + 0.3 * rng.normal(size=s.shape)).astype(
            np.float32), shapes['params'])
    if fusion_depth == 1:  # The released models' names stay as they were.
        assert {'fusion_0', 'fusion_1'} <= set(params) and not any(k.startswith('fusion_0_') for k in params)
    else:
        assert {f'fusion_{i}_{layer}' for i in range(2) for layer in range(fusion_depth)} <= set(params)
    got = jax.jit(block.apply)({'params': params}, [jnp.asarray(x) for x in xs])
    p64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    ref = _official_multiscale_block([x.astype(np.float64) for x in xs], p64, depths, fusion_depth)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(np.asarray(g), r, atol=2e-5, rtol=2e-5)
    if fusion_depth > 1:  # The earlier reading differs by far more than the tolerance.
        wrong = _official_multiscale_block([x.astype(np.float64) for x in xs], p64, depths, fusion_depth,
                                           reattach=True)
        assert max(np.abs(w[:, 0] - r[:, 0]).max() for w, r in zip(wrong, ref)) > 1e-2


def _official_dpr(depth_cfgs, rate):
    """IBM/CrossViT VisionTransformer.__init__, written out: per encoder (branch-block rates, fusion rate)."""
    total_depth = sum(sum(cfg[-2:]) for cfg in depth_cfgs)
    dpr = [float(x) for x in np.linspace(0, rate, total_depth)]
    ptr, out = 0, []
    for cfg in depth_cfgs:
        curr = max(cfg[:-1]) + cfg[-1]
        dpr_ = dpr[ptr:ptr + curr]
        ptr += curr
        branch = [[dpr_[i] for i in range(cfg[b])] for b in range(len(cfg) - 1)]
        out.append((branch, dpr_[-1]))
    return out


@pytest.mark.parametrize('depths,fusion_depth,l_code', [((1, 4), 1, 0), ((1, 2), 2, 2), ((2, 3), 3, 3)])
def test_drop_path_schedule_matches_official(depths, fusion_depth, l_code):
    """The rates the model's blocks are built with (recorded from the modules) equal the official ones; the project's
    fusion_depth 1 is the released models' L_code = 0 (one bare CrossAttentionBlock), fusion_depth L > 1 is
    L_code = L (a Sequential of L)."""
    k, rate = 3, 0.3
    model = models.get_model('CrossViT-S', image_size=32, branch_sizes=(36, 32), embed_dims=(8, 12),
                             num_heads=(2, 3), depths=depths, mlp_ratios=(2.0, 2.0), num_encoders=k, num_classes=3,
                             fusion_depth=fusion_depth, drop_path_rate=rate)
    seen = {}

    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name == '__call__' and isinstance(mod, (models.layers.Encoder1DBlock,
                                                                   crossvit.CrossAttentionBlock)):
            seen[mod.path] = float(mod.drop_path_rate)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    official = _official_dpr([(*depths, l_code)] * k, rate)
    expect = {}
    for e, (branch, fusion) in enumerate(official):
        for b, rates in enumerate(branch):
            for j, r in enumerate(rates):
                expect[(f'blocks_{e}', f'branch{b}_block_{j}')] = r
        for i in range(2):
            for layer in range(fusion_depth):
                expect[(f'blocks_{e}', f'fusion_{i}' + (f'_{layer}' if fusion_depth > 1 else ''))] = fusion
    assert set(seen) == set(expect)
    for key in expect:
        assert seen[key] == pytest.approx(expect[key], abs=1e-7), key
    assert max(expect.values()) == pytest.approx(rate)


def test_drop_path_schedule_undefined_configs():
    # A first branch deeper than the last runs past the official ramp (an IndexError there): a clear error here.
    with pytest.raises(ValueError, match='drop-path'):
        crossvit.official_drop_path_rates((4, 1), 1, 3, 0.1)
    assert crossvit.official_drop_path_rates((4, 1), 1, 3, 0.0) == ((0.0,) * 4,) * 3
    with pytest.raises(ValueError, match='fusion_depth'):
        crossvit.official_drop_path_rates((1, 4), 0, 3, 0.1)


# ----------------------------------------------------------------------------------------------------------------
# End to end: an official-layout checkpoint with two cross-attention layers per fusion (depth=[[1, 2, 2]] * 2, so
# `fusion.{b}` is an nn.Sequential and its keys are `fusion.{b}.{layer}`) converts and gives the official logits.
# ----------------------------------------------------------------------------------------------------------------
_DIMS, _HEADS, _DEPTHS, _RATIOS, _K, _L, _CLASSES = (16, 32), (2, 4), (1, 2), (2.0, 3.0), 2, 2, 5
_SIZES, _PATCHES = (36, 32), (12, 16)


def _official_state_dict(fusion_layers, seed=0):
    """Random weights under IBM/CrossViT's names for VisionTransformer(img_size=[36, 32], patch_size=[12, 16],
    depth=[[1, 2, L_code]] * 2); `fusion_layers=None` stores one bare block (L_code = 0, the released models)."""
    rng = np.random.default_rng(seed)
    sd = {}

    def add(name, *shape, base=0.0):
        sd[name] = (base + 0.2 * rng.normal(size=shape)).astype(np.float32)

    def linear(name, out_dim, in_dim):
        add(f'{name}.weight', out_dim, in_dim)
        add(f'{name}.bias', out_dim)

    def norm(name, d):
        add(f'{name}.weight', d, base=1.0)
        add(f'{name}.bias', d)

    for b in range(2):
        d, p = _DIMS[b], _PATCHES[b]
        add(f'patch_embed.{b}.proj.weight', d, 3, p, p)
        add(f'patch_embed.{b}.proj.bias', d)
        add(f'cls_token.{b}', 1, 1, d)
        add(f'pos_embed.{b}', 1, 1 + (_SIZES[b] // p) ** 2, d)
        norm(f'norm.{b}', d)
        linear(f'head.{b}', _CLASSES, d)
    for k in range(_K):
        for b in range(2):
            d, o = _DIMS[b], _DIMS[1 - b]
            for j in range(_DEPTHS[b]):
                q = f'blocks.{k}.blocks.{b}.{j}'
                norm(f'{q}.norm1', d)
                linear(f'{q}.attn.qkv', 3 * d, d)
                linear(f'{q}.attn.proj', d, d)
                norm(f'{q}.norm2', d)
                linear(f'{q}.mlp.fc1', int(d * _RATIOS[b]), d)
                linear(f'{q}.mlp.fc2', d, int(d * _RATIOS[b]))
            norm(f'blocks.{k}.projs.{b}.0', d)
            linear(f'blocks.{k}.projs.{b}.2', o, d)
            names = ([f'blocks.{k}.fusion.{b}'] if fusion_layers is None
                     else [f'blocks.{k}.fusion.{b}.{layer}' for layer in range(fusion_layers)])
            for f in names:
                norm(f'{f}.norm1', o)
                for n in ('wq', 'wk', 'wv', 'proj'):
                    linear(f'{f}.attn.{n}', o, o)
            norm(f'blocks.{k}.revert_projs.{b}.0', o)
            linear(f'blocks.{k}.revert_projs.{b}.2', d, o)
    return sd


def _official_logits(sd, images, fusion_layers):
    """The official VisionTransformer.forward with torch functional ops on the state dict (eps 1e-6, exact GELU)."""
    import torch
    import torch.nn.functional as F

    w = {k: torch.from_numpy(v) for k, v in sd.items()}
    ln = lambda x, n: F.layer_norm(x, x.shape[-1:], w[f'{n}.weight'], w[f'{n}.bias'], eps=1e-6)  # noqa: E731
    lin = lambda x, n: F.linear(x, w[f'{n}.weight'], w[f'{n}.bias'])  # noqa: E731

    def heads_split(t, h):
        b, n, c = t.shape
        return t.reshape(b, n, h, c // h).permute(0, 2, 1, 3)

    def block(x, n, h):
        b, t, c = x.shape
        qkv = lin(ln(x, f'{n}.norm1'), f'{n}.attn.qkv').reshape(b, t, 3, h, c // h).permute(2, 0, 3, 1, 4)
        a = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (c // h) ** -0.5).softmax(-1)
        x = x + lin((a @ qkv[2]).transpose(1, 2).reshape(b, t, c), f'{n}.attn.proj')
        return x + lin(F.gelu(lin(ln(x, f'{n}.norm2'), f'{n}.mlp.fc1')), f'{n}.mlp.fc2')

    def cross(x, n, h):  # CrossAttentionBlock(has_mlp=False): returns the class token only.
        y = ln(x, f'{n}.norm1')
        c = x.shape[-1]
        q = heads_split(lin(y[:, 0:1], f'{n}.attn.wq'), h)
        k, v = heads_split(lin(y, f'{n}.attn.wk'), h), heads_split(lin(y, f'{n}.attn.wv'), h)
        a = ((q @ k.transpose(-2, -1)) * (c // h) ** -0.5).softmax(-1)
        return x[:, 0:1] + lin((a @ v).transpose(1, 2).reshape(x.shape[0], 1, c), f'{n}.attn.proj')

    def proj(x, n):
        return lin(F.gelu(ln(x, f'{n}.0')), f'{n}.2')

    x = torch.from_numpy(images.transpose(0, 3, 1, 2))
    xs = []
    for b in range(2):
        xb = F.interpolate(x, size=(_SIZES[b],) * 2, mode='bicubic') if x.shape[2] != _SIZES[b] else x
        t = F.conv2d(xb, w[f'patch_embed.{b}.proj.weight'], w[f'patch_embed.{b}.proj.bias'], stride=_PATCHES[b])
        t = torch.cat((w[f'cls_token.{b}'].expand(x.shape[0], -1, -1), t.flatten(2).transpose(1, 2)), dim=1)
        xs.append(t + w[f'pos_embed.{b}'])
    for k in range(_K):
        outs_b = []
        for b in range(2):
            t = xs[b]
            for j in range(_DEPTHS[b]):
                t = block(t, f'blocks.{k}.blocks.{b}.{j}', _HEADS[b])
            outs_b.append(t)
        proj_cls = [proj(outs_b[b][:, 0:1], f'blocks.{k}.projs.{b}') for b in range(2)]
        xs = []
        for i in range(2):
            tmp = torch.cat((proj_cls[i], outs_b[1 - i][:, 1:]), dim=1)
            names = ([f'blocks.{k}.fusion.{i}'] if fusion_layers is None
                     else [f'blocks.{k}.fusion.{i}.{layer}' for layer in range(fusion_layers)])
            for n in names:  # nn.Sequential.
                tmp = cross(tmp, n, _HEADS[1 - i])
            xs.append(torch.cat((proj(tmp[:, 0:1], f'blocks.{k}.revert_projs.{i}'), outs_b[i][:, 1:]), dim=1))
    logits = [lin(ln(xs[b], f'norm.{b}')[:, 0], f'head.{b}') for b in range(2)]
    return torch.stack(logits).mean(0).numpy()


def _model(fusion_depth):
    return models.get_model('CrossViT-S', image_size=32, branch_sizes=_SIZES, embed_dims=_DIMS, num_heads=_HEADS,
                            depths=_DEPTHS, mlp_ratios=_RATIOS, num_encoders=_K, num_classes=_CLASSES,
                            fusion_depth=fusion_depth)


@pytest.mark.parametrize('fusion_layers', [None, 2])
def test_official_checkpoint_converts_and_matches(fusion_layers):
    pytest.importorskip('torch')
    from vit_jax import convert

    sd = _official_state_dict(fusion_layers)
    model = _model(fusion_layers or 1)
    variables = convert.from_official('crossvit', dict(sd), model)  # Every key consumed, shapes checked.
    images = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)
    logits, _ = jax.jit(model.apply)(variables, jnp.asarray(images))
    ref = _official_logits(sd, images, fusion_layers)
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4)


def test_fusion_depth_mismatch_is_refused():
    from vit_jax import convert
    from vit_jax.porting import registry

    with pytest.raises(registry.ConversionError, match='fusion'):  # A 2-layer fusion into a 1-layer model.
        convert.from_official('crossvit', _official_state_dict(2), _model(1))
    with pytest.raises(registry.ConversionError, match='fusion_depth=1'):  # A single block into a 2-layer model.
        convert.from_official('crossvit', _official_state_dict(None), _model(2))
