"""official:dtn (wqshao126/DTN `vit_norm_mix.py`) -> DTNViT: layout, refusals, and parity with a PyTorch forward
written from the official code (DTN from `normkit/norms/dtn.py`, restated in tests/test_dtn.py)."""

import jax
import numpy as np
import pytest
from _porting_common import RandomStateDict

from vit_jax import models
from vit_jax.porting import registry

torch = pytest.importorskip('torch')
F = torch.nn.functional

# A small, unusual config: 20-d, 4 heads (DTN groups), grid 4x4, 3 blocks, DTN in blocks 0-1, MLP ratio 1.5.
D, H, DEPTH, LOCAL, MLP, P, IMG, NC = 20, 4, 3, 2, 30, 8, 32, 7


def _official_sd(seed=0, norm='dtn', qkv_bias=False, pos=True):
    sd = RandomStateDict(seed)
    sd.conv('patch_embed.proj', D, 3, P, scale=0.1)
    sd.add('cls_token', (1, 1, D))
    sd.ln('norm', D)
    sd.linear('head', NC, D)
    if pos:
        sd.add('pos_embed', (1, (IMG // P) ** 2, D))
    for i in range(DEPTH):
        p = f'blocks.{i}'
        for n in ('norm1', 'norm2'):
            sd.ln(f'{p}.{n}', D)
            if i < LOCAL and norm != 'layer':
                if norm != 'dtn_var':
                    sd.add(f'{p}.{n}.mean_norm_weight', (H,), scale=1.0)
                sd.add(f'{p}.{n}.var_norm_weight', (H,), scale=1.0)
                sd.linear(f'{p}.{n}.pos_proj', H, 3)
        sd.attention(f'{p}.attn', D, qkv_bias)
        sd.mlp(f'{p}.mlp', D, MLP)
    return sd


def _model(norm='dtn', **kw):
    kw = dict(dict(local_up_to_layer=LOCAL), **kw)
    return models.get_model('DTN-ViT-T*', image_size=IMG, patch_size=P, hidden_size=D, num_heads=H,
                            num_layers=DEPTH, mlp_ratio=MLP / D, num_classes=NC, norm=norm, drop_path_rate=0.0, **kw)


def _torch_forward(sd, x, norm='dtn'):
    """The official vit_norm_mix forward (eval), restated with torch.nn.functional."""
    from _helpers import torch_dtn as _torch_dtn

    t = {k: torch.from_numpy(v) for k, v in sd.items()}
    x = F.conv2d(x, t['patch_embed.proj.weight'], t['patch_embed.proj.bias'], stride=P).flatten(2).transpose(1, 2)
    if 'pos_embed' in t:
        x = x + t['pos_embed']
    side = IMG // P

    def nrm(p, y):
        if f'{p}.var_norm_weight' in t:
            mw = t.get(f'{p}.mean_norm_weight', torch.zeros(H))
            return _torch_dtn(y, t[f'{p}.weight'], t[f'{p}.bias'], mw, t[f'{p}.var_norm_weight'],
                              t[f'{p}.pos_proj.weight'], t[f'{p}.pos_proj.bias'], H, side, 1,
                              only_var=f'{p}.mean_norm_weight' not in t)
        return F.layer_norm(y, (D,), t[f'{p}.weight'], t[f'{p}.bias'], eps=1e-5)

    for i in range(DEPTH):
        p = f'blocks.{i}'
        if i == LOCAL:
            x = torch.cat([t['cls_token'].expand(x.shape[0], -1, -1), x], 1)
        b, n, _ = x.shape
        y = nrm(f'{p}.norm1', x)
        qkv = F.linear(y, t[f'{p}.attn.qkv.weight'], t.get(f'{p}.attn.qkv.bias'))
        q, k, v = qkv.reshape(b, n, 3, H, D // H).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (D // H) ** -0.5).softmax(-1)
        y = (a @ v).transpose(1, 2).reshape(b, n, D)
        x = x + F.linear(y, t[f'{p}.attn.proj.weight'], t[f'{p}.attn.proj.bias'])
        y = F.gelu(F.linear(nrm(f'{p}.norm2', x), t[f'{p}.mlp.fc1.weight'], t[f'{p}.mlp.fc1.bias']))
        x = x + F.linear(y, t[f'{p}.mlp.fc2.weight'], t[f'{p}.mlp.fc2.bias'])
    x = F.layer_norm(x, (D,), t['norm.weight'], t['norm.bias'], eps=1e-5)
    return F.linear(x[:, 0], t['head.weight'], t['head.bias'])


@pytest.mark.parametrize('norm,qkv_bias', [('dtn', False), ('dtn_var', True), ('layernorm', False)])
def test_official_dtn_converts_and_matches_official_forward(norm, qkv_bias):
    sd = _official_sd(norm='layer' if norm == 'layernorm' else norm, qkv_bias=qkv_bias)
    model = _model(norm, qkv_bias=qkv_bias)
    variables = registry.from_official('dtn', sd, model)  # Every key consumed, every variable present, shapes equal.
    x = np.random.RandomState(1).randn(2, IMG, IMG, 3).astype(np.float32)
    logits, _ = jax.jit(model.apply)(variables, x)
    with torch.no_grad():
        want = _torch_forward(sd, torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    assert np.abs(np.asarray(logits) - want).max() < 1e-4 * max(1.0, np.abs(want).max())


def test_wrapped_checkpoint_and_no_posemb():
    sd = _official_sd(pos=False)
    variables = registry.from_official('dtn', {'model': {f'module.{k}': v for k, v in sd.items()}},
                                       _model(posemb=False))
    assert 'posembed_input' not in variables['params']['Transformer']


def test_refusals_name_the_problem():
    sd = _official_sd()
    with pytest.raises(registry.ConversionError, match='blocks.0.norm1 is a DTN'):
        registry.from_official('dtn', sd, _model('layernorm'))
    with pytest.raises(registry.ConversionError, match='mean_norm_weight'):
        registry.from_official('dtn', sd, _model('dtn_var'))
    with pytest.raises(registry.ConversionError, match='local_up_to_layer'):
        registry.from_official('dtn', sd, _model(local_up_to_layer=1))
    with pytest.raises(registry.ConversionError, match='qkv_bias=False'):
        registry.from_official('dtn', sd, _model(qkv_bias=True))
    extra = dict(sd, **{'blocks.0.norm1.running_mean': np.zeros(D, np.float32)})
    with pytest.raises(registry.ConversionError, match='running_mean'):
        registry.from_official('dtn', extra, _model())
