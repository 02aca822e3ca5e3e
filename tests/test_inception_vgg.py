"""Inception-v3 (torchvision and pytorch-fid variants) and VGG19 in Flax against PyTorch restatements of the
torchvision / pytorch-fid modules (written here: torchvision is not installable in this environment), through the
state-dict converters. Random weights and random BatchNorm statistics; float32; max abs diff <= 1e-4."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vit_jax import convert, models
from vit_jax.models import inception
from vit_jax.porting import inception as porting_inception
from vit_jax.porting import vgg as porting_vgg


# ----------------------------------------------------------------------------------------------------------------
# A PyTorch restatement of torchvision's Inception3 (no aux head) and of pytorch-fid's FID blocks.
# ----------------------------------------------------------------------------------------------------------------
class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class InceptionA(nn.Module):
    def __init__(self, cin, pool_features, fid):
        super().__init__()
        self.fid = fid
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=not self.fid))
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)), b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), d, F.max_pool2d(x, 3, 2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin, c7, fid):
        super().__init__()
        self.fid = fid
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f'branch7x7dbl_{i}')(d)
        bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=not self.fid))
        return torch.cat([self.branch1x1(x), b7, d, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f'branch7x7x3_{i}')(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin, pool):  # pool: 'avg' (torchvision), 'avg_nopad' (FID E_1), 'max' (FID E_2)
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        if self.pool == 'max':
            p = F.max_pool2d(x, 3, 1, 1)
        else:
            p = F.avg_pool2d(x, 3, 1, 1, count_include_pad=self.pool == 'avg')
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(p)], 1)


class Inception3(nn.Module):
    def __init__(self, num_classes=1000, fid=False):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, 32, fid)
        self.Mixed_5c = InceptionA(256, 64, fid)
        self.Mixed_5d = InceptionA(288, 64, fid)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128, fid)
        self.Mixed_6c = InceptionC(768, 160, fid)
        self.Mixed_6d = InceptionC(768, 160, fid)
        self.Mixed_6e = InceptionC(768, 192, fid)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, 'avg_nopad' if fid else 'avg')
        self.Mixed_7c = InceptionE(2048, 'max' if fid else 'avg')
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), 3, 2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, 2)
        for name in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a', 'Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e',
                     'Mixed_7a', 'Mixed_7b', 'Mixed_7c'):
            x = getattr(self, name)(x)
        pool = x.mean((2, 3))
        return pool, self.fc(pool)


def randomize_bn(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return module.eval()


@pytest.fixture(scope='module', params=['fid', 'torchvision'])
def converted(request):
    torch.manual_seed(0)
    fid = request.param == 'fid'
    tm = randomize_bn(Inception3(1008 if fid else 1000, fid=fid))
    sd = dict(tm.state_dict())
    sd['AuxLogits.conv0.conv.weight'] = torch.zeros(128, 768, 1, 1)  # torchvision's aux head: ignored.
    sd['Conv2d_1a_3x3.bn.num_batches_tracked'] = torch.tensor(0)
    model, variables = porting_inception.from_torch_state_dict(sd)
    return tm, model, variables, request.param


def test_converter_reads_every_key_and_infers_the_variant(converted):
    tm, model, variables, kind = converted
    assert model.variant == kind
    n_torch = sum(p.numel() for p in tm.parameters())
    n_flax = sum(np.size(x) for x in jax.tree_util.tree_leaves(variables['params']))
    assert n_flax == n_torch == models.count_params('InceptionV3-FID' if kind == 'fid' else 'InceptionV3')
    # torchvision inception_v3 has 27,161,264 parameters with its auxiliary head (3,326,696 of them).
    assert models.count_params('InceptionV3') == 27_161_264 - 3_326_696
    with pytest.raises(convert.ConversionError, match="unconverted.*'extra.weight'"):
        porting_inception.from_torch_state_dict({**tm.state_dict(), 'extra.weight': torch.zeros(1)})


@pytest.mark.parametrize('name,cls,kw,cin', [
    ('Mixed_5b', inception.InceptionA, dict(pool_features=32), 192),
    ('Mixed_6a', inception.InceptionB, dict(), 288),
    ('Mixed_6b', inception.InceptionC, dict(channels_7x7=128), 768),
    ('Mixed_7a', inception.InceptionD, dict(), 768),
    ('Mixed_7b', inception.InceptionE, dict(pool='avg'), 1280),
    ('Mixed_7c', inception.InceptionE, dict(), 2048),
])
def test_blocks_match_pytorch(converted, name, cls, kw, cin):
    """Each block type, with the converted weights, against the PyTorch block (padding-count and pool variants)."""
    tm, model, variables, kind = converted
    if cls in (inception.InceptionA, inception.InceptionC):
        kw = dict(kw, count_include_pad=kind != 'fid')
    if cls is inception.InceptionE:
        kw = dict(kw, count_include_pad=kind != 'fid')
        if name == 'Mixed_7c':
            kw['pool'] = 'max' if kind == 'fid' else 'avg'
    x = np.random.default_rng(0).normal(size=(2, 7, 7, cin)).astype(np.float32)
    block = cls(**kw)
    sub = {'params': variables['params'][name], 'batch_stats': variables['batch_stats'][name]}
    got = np.asarray(jax.jit(lambda v, a: block.apply(v, a))(sub, jnp.asarray(x)))
    with torch.no_grad():
        want = getattr(tm, name)(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4


def test_stem_matches_pytorch(converted):
    tm, model, variables, _ = converted
    x = np.random.default_rng(1).normal(size=(1, 35, 35, 3)).astype(np.float32)

    def stem(v, a):
        for n, k in (('Conv2d_1a_3x3', dict(features=32, kernel_size=3, strides=2)),
                     ('Conv2d_2a_3x3', dict(features=32, kernel_size=3)),
                     ('Conv2d_2b_3x3', dict(features=64, kernel_size=3, padding=1))):
            a = inception.BasicConv2d(**k).apply({'params': v['params'][n], 'batch_stats': v['batch_stats'][n]}, a)
        return a

    got = np.asarray(jax.jit(stem)(variables, jnp.asarray(x)))
    with torch.no_grad():
        t = torch.from_numpy(x).permute(0, 3, 1, 2)
        want = tm.Conv2d_2b_3x3(tm.Conv2d_2a_3x3(tm.Conv2d_1a_3x3(t))).permute(0, 2, 3, 1).numpy()
    assert np.abs(got - want).max() <= 1e-4


def test_variables_file_round_trip(converted, tmp_path):
    _, model, variables, _ = converted
    path = str(tmp_path / 'inception.npz')
    porting_inception.save_variables(path, variables)
    back = inception.load_variables(path)
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    net = inception.InceptionFeatures(path, variant=model.variant)  # Real weights: not a stand-in.
    assert net.frozen_random is False


@pytest.mark.slow
def test_full_network_matches_pytorch(converted):
    """The whole network at 75x75 (the smallest size): pool3 and logits."""
    tm, model, variables, _ = converted
    x = np.random.default_rng(2).normal(size=(2, 75, 75, 3)).astype(np.float32)
    logits, out = jax.jit(lambda v, a: model.apply(v, a))(variables, jnp.asarray(x))
    with torch.no_grad():
        pool, tl = tm(torch.from_numpy(x).permute(0, 3, 1, 2))
    assert np.abs(np.asarray(out['pool3']) - pool.numpy()).max() <= 1e-4
    assert np.abs(np.asarray(logits) - tl.numpy()).max() <= 1e-4
    bias = np.asarray(variables['params']['fc']['bias'])
    assert np.abs(np.asarray(out['logits_unbiased']) - (tl.numpy() - bias)).max() <= 1e-4


# ----------------------------------------------------------------------------------------------------------------
# VGG.
# ----------------------------------------------------------------------------------------------------------------
def torch_vgg19(divisor):
    cfg = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M']
    feats, c = [], 3
    for v in cfg:
        if v == 'M':
            feats.append(nn.MaxPool2d(2, 2))
        else:
            feats += [nn.Conv2d(c, v // divisor, 3, padding=1), nn.ReLU(inplace=False)]
            c = v // divisor
    m = nn.Module()
    m.features = nn.Sequential(*feats)
    h = 4096 // divisor
    m.classifier = nn.Sequential(nn.Linear(c * 49, h), nn.ReLU(), nn.Dropout(), nn.Linear(h, h), nn.ReLU(),
                                 nn.Dropout(), nn.Linear(h, 10))
    return m.eval()


def test_vgg19_matches_pytorch():
    assert models.count_params('VGG19') == 143_667_240  # torchvision vgg19.
    torch.manual_seed(0)
    tm = torch_vgg19(16)
    model, variables = porting_vgg.from_torch_state_dict(tm.state_dict())
    assert model.width_divisor == 16 and model.num_classes == 10
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    logits, out = jax.jit(lambda v, a: model.apply(v, a))(variables, jnp.asarray(x))
    with torch.no_grad():
        t = torch.from_numpy(x).permute(0, 3, 1, 2)
        feats = {}
        h = t
        for i, layer in enumerate(tm.features):
            h = layer(h)
            feats[i] = h
        pooled = F.adaptive_avg_pool2d(h, 7).flatten(1)
        want_logits = tm.classifier(pooled).numpy()
    for name, i in (('relu1_1', 1), ('relu3_1', 11), ('relu5_1', 29)):
        assert np.abs(np.asarray(out[name]) - feats[i].permute(0, 2, 3, 1).numpy()).max() <= 1e-4, name
    assert np.abs(np.asarray(logits) - want_logits).max() <= 1e-4


def test_vgg_cli_gives_the_perceptual_net_real_weights(tmp_path):
    """A torchvision-layout file -> .npz (features only) -> the objective's frozen perceptual net, not a stand-in."""
    from vit_jax.objectives import frozen

    torch.manual_seed(0)
    pth, npz = str(tmp_path / 'vgg.pth'), str(tmp_path / 'vgg.npz')
    torch.save(torch_vgg19(16).state_dict(), pth)
    assert convert.main(['--from=official:vgg', '--model=VGG19', '--model.num_classes=0', '--model.width_divisor=16',
                         pth, '--out', npz]) == 0
    net = frozen.load_frozen(dict(model='VGG19', overrides=dict(num_classes=0, width_divisor=16), weights=npz),
                             'perceptual net')
    assert net.frozen_random is False
    assert 'fc6' not in net.variables['params'] and net.variables['params']['conv5_4']['kernel'].shape[-1] == 32
