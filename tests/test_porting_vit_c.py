"""official:vit_c (facebookresearch/pycls `pycls/models/vit.py`) -> ViT_P / ViT_C: a small torch network written
from the official code with its module names (so its `state_dict()` keys are pycls' own), random weights and
BatchNorm statistics, converted with every key consumed, logits compared."""

import jax
import numpy as np
import pytest

from vit_jax import models
from vit_jax.porting import registry

torch = pytest.importorskip('torch')
nn = torch.nn

# Unusual small configs: D=24, 3 heads, MLP 40, 2 blocks, 32x32 inputs.
D, H, MLP, L, IMG, NC = 24, 3, 40, 2, 32, 5
CONV = dict(dims=(8, 12, 16), strides=(2, 2, 2))  # 3x3 convs, then a 1x1 conv to D: total stride 8.


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(D, eps=1e-5)
        self.self_attention = nn.Module()
        self.self_attention.block = nn.MultiheadAttention(D, H, batch_first=False)
        self.ln_2 = nn.LayerNorm(D, eps=1e-5)
        self.mlp_block = nn.Module()
        self.mlp_block.linear_1 = nn.Linear(D, MLP)
        self.mlp_block.linear_2 = nn.Linear(MLP, D)

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.self_attention.block(y, y, y, need_weights=False)[0]
        return x + self.mlp_block.linear_2(nn.functional.gelu(self.mlp_block.linear_1(self.ln_2(x))))


class _PyclsViT(nn.Module):
    """pycls ViT: stem, optional class token, (T, 1, D) position embedding, encoder blocks + ln, head.head_fc."""

    def __init__(self, stem, token):
        super().__init__()
        self.stem = nn.Module()
        if stem == 'patch':
            self.stem.patchify = nn.Conv2d(3, D, 8, stride=8)
            self._stem = [self.stem.patchify]
        else:
            w_in, mods = 3, []
            for i, (w, s) in enumerate(zip(CONV['dims'], CONV['strides'])):
                conv, bn = nn.Conv2d(w_in, w, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(w)
                self.stem.add_module(f'cstem{i}_conv', conv)
                self.stem.add_module(f'cstem{i}_bn', bn)
                mods += [conv, bn, nn.ReLU()]
                w_in = w
            self.stem.cstem_last_conv = nn.Conv2d(w_in, D, 1, bias=True)
            self._stem = mods + [self.stem.cstem_last_conv]
        seq = (IMG // 8) ** 2 + int(token)
        self.class_token = nn.Parameter(torch.zeros(1, 1, D)) if token else None
        self.pos_embedding = nn.Parameter(torch.zeros(seq, 1, D))
        self.encoder = nn.Module()
        for i in range(L):
            self.encoder.add_module(f'block_{i}', _Block())
        self.encoder.ln = nn.LayerNorm(D, eps=1e-5)
        self.head = nn.Module()
        self.head.head_fc = nn.Linear(D, NC)

    def forward(self, x):
        for m in self._stem:
            x = m(x)
        x = x.reshape(x.size(0), x.size(1), -1).permute(2, 0, 1)
        if self.class_token is not None:
            x = torch.cat([self.class_token.expand(-1, x.size(1), -1), x], 0)
        x = x + self.pos_embedding
        for i in range(L):
            x = getattr(self.encoder, f'block_{i}')(x)
        x = self.encoder.ln(x)
        x = x[0] if self.class_token is not None else x.mean(0)
        return self.head.head_fc(x)


def _randomised(stem, token, seed=0):
    torch.manual_seed(seed)
    net = _PyclsViT(stem, token).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in net.state_dict().items():
            if k.endswith('num_batches_tracked'):
                continue
            r = torch.randn(p.shape, generator=g)
            p.copy_(r.abs() + 0.5 if k.endswith('running_var') else r * 0.3)
    return net


def _model(stem, token, **kw):
    common = dict(hidden_size=D, mlp_dim=MLP, num_heads=H, num_layers=L, image_size=IMG, num_classes=NC,
                  classifier='token' if token else 'gap')
    if stem == 'patch':
        return models.get_model('ViTP-1GF', patch_size=8, **common, **kw)
    return models.get_model('ViTC-1GF', conv_channels=CONV['dims'], conv_strides=CONV['strides'], **common, **kw)


@pytest.mark.parametrize('stem,token', [('conv', True), ('patch', False)])
def test_pycls_vit_converts_and_matches(stem, token):
    net = _randomised(stem, token)
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    model = _model(stem, token)
    variables = registry.from_official('vit_c', {'model_state': sd}, model)
    if stem == 'conv':
        assert set(variables['batch_stats']['stem']) == {'bn_0', 'bn_1', 'bn_2'}
    x = np.random.RandomState(1).randn(2, IMG, IMG, 3).astype(np.float32)
    logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(np.asarray(logits), want, atol=2e-5 * max(1.0, np.abs(want).max()), rtol=0)


def test_refusals_name_the_problem():
    sd = {k: v.numpy() for k, v in _randomised('conv', True).state_dict().items()}
    with pytest.raises(registry.ConversionError, match='stem'):
        registry.from_official('vit_c', sd, _model('patch', True))
    with pytest.raises(registry.ConversionError, match="classifier='token'"):
        registry.from_official('vit_c', sd, _model('conv', False))
    with pytest.raises(registry.ConversionError, match='norm_eps=1e-5'):
        registry.from_official('vit_c', sd, _model('conv', True, norm_eps=1e-6))


def test_cli_round_trip_with_batch_stats(tmp_path):
    """`python -m vit_jax.convert --from=official:vit_c` on a `.pyth` ({'model_state': ...}); the `.npz` loads through
    checkpoint.load_pretrained / load_pretrained_model_state (BatchNorm statistics included) and gives the logits."""
    from vit_jax import checkpoint, convert

    net = _randomised('conv', True, seed=3)
    torch.save({'model_state': net.state_dict(), 'epoch': 7}, tmp_path / 'vitc.pyth')
    out = tmp_path / 'vitc.npz'
    flags = dict(hidden_size=D, mlp_dim=MLP, num_heads=H, num_layers=L, image_size=IMG, num_classes=NC,
                 conv_channels='8,12,16', conv_strides='2,2,2')
    rc = convert.main(['--from=official:vit_c', '--model=ViTC-1GF', *[f'--model.{k}={v}' for k, v in flags.items()],
                       str(tmp_path / 'vitc.pyth'), '--out', str(out)])
    assert rc == 0
    model = _model('conv', True)
    x = np.random.RandomState(2).randn(2, IMG, IMG, 3).astype(np.float32)
    init = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), models.init_shapes(model))
    params = checkpoint.load_pretrained(init['params'], str(out))
    state = checkpoint.load_pretrained_model_state({'batch_stats': init['batch_stats']}, str(out))
    logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))({'params': params, **state}, x)
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(np.asarray(logits), want, atol=2e-5 * max(1.0, np.abs(want).max()), rtol=0)
