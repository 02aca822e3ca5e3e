"""HuggingFace / timm ViT -> vit_jax: numerical parity (random weights, no hub), the convert CLI and its errors."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from vit_jax import checkpoint, convert, models  # noqa: E402

TOL = 1e-4


def _randomize(module, seed=0, std=0.2):
    """Every parameter random (LayerNorm scales around 1), so a swapped or transposed weight cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            p.copy_(1.0 + noise if name.endswith('layernorm_before.weight') or name.endswith(
                'layernorm_after.weight') or name.endswith('layernorm.weight') else noise)
    return module.eval()


def _hf_config(**kw):
    base = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80, image_size=32,
                patch_size=8, num_labels=7)
    base.update(kw)
    return transformers.ViTConfig(**base)


def _images(shape, seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, shape).astype(np.float32)


def _torch_in(x):
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


# Three classification configurations: non-default patch; non-square image + non-square patch + tanh GELU + no
# qkv bias + eps 1e-6; default patch 16 at 48x32 with exact GELU.
CLS_CONFIGS = [
    dict(image_size=32, patch_size=8),
    dict(image_size=(24, 40), patch_size=(8, 4), hidden_act='gelu_new', qkv_bias=False, layer_norm_eps=1e-6),
    dict(image_size=(48, 32), patch_size=16, num_hidden_layers=3, intermediate_size=96),
]


@pytest.mark.parametrize('cfg', CLS_CONFIGS, ids=['patch8', 'nonsquare_tanh_noqkvbias', 'patch16_48x32'])
def test_vit_for_image_classification_parity(cfg):
    hf = _randomize(transformers.ViTForImageClassification(_hf_config(**cfg)))
    model, variables = convert.from_transformers(hf)
    h, w = cfg['image_size'] if isinstance(cfg['image_size'], tuple) else (cfg['image_size'],) * 2
    x = _images((3, h, w, 3))
    with torch.no_grad():
        ref = hf(_torch_in(x)).logits.numpy()
    got, out = model.apply(variables, jnp.asarray(x))
    assert np.abs(ref).max() > 0.5  # Non-trivial logits.
    assert float(np.abs(np.asarray(got) - ref).max()) <= TOL
    assert model.activation == {'gelu': 'gelu_exact', 'gelu_new': 'gelu_tanh'}[cfg.get('hidden_act', 'gelu')]
    assert model.norm_eps == cfg.get('layer_norm_eps', 1e-12)
    assert model.qkv_bias == cfg.get('qkv_bias', True)
    assert model.num_classes == 7


def test_vit_model_with_pooler_parity():
    hf = _randomize(transformers.ViTModel(_hf_config(pooler_output_size=24, image_size=(32, 48))))
    model, variables = convert.from_transformers(hf)
    assert model.num_classes is None and model.representation_size == 24
    x = _images((2, 32, 48, 3), seed=1)
    with torch.no_grad():
        ref = hf(_torch_in(x))
    _, out = model.apply(variables, jnp.asarray(x))
    assert float(np.abs(np.asarray(out['encoded']) - ref.last_hidden_state.numpy()).max()) <= TOL
    assert float(np.abs(np.asarray(out['pre_logits']) - ref.pooler_output.numpy()).max()) <= TOL


def test_vit_model_without_pooler_parity():
    hf = _randomize(transformers.ViTModel(_hf_config(), add_pooling_layer=False))
    model, variables = convert.from_transformers(hf)
    assert model.representation_size is None and 'pre_logits' not in variables['params']
    x = _images((2, 32, 32, 3), seed=2)
    with torch.no_grad():
        ref = hf(_torch_in(x)).last_hidden_state.numpy()
    _, out = model.apply(variables, jnp.asarray(x))
    assert float(np.abs(np.asarray(out['encoded']) - ref).max()) <= TOL


def test_transformers_4x_key_names_convert_the_same():
    hf = _randomize(transformers.ViTForImageClassification(_hf_config()))
    sd = hf.state_dict()
    v4 = {}
    for k, v in sd.items():
        k4 = (k.replace('vit.layers.', 'vit.encoder.layer.')
              .replace('.attention.q_proj.', '.attention.attention.query.')
              .replace('.attention.k_proj.', '.attention.attention.key.')
              .replace('.attention.v_proj.', '.attention.attention.value.')
              .replace('.attention.o_proj.', '.attention.output.dense.').replace('.mlp.fc1.', '.intermediate.dense.')
              .replace('.mlp.fc2.', '.output.dense.'))
        v4[k4] = v
    assert 'vit.encoder.layer.1.attention.attention.query.weight' in v4
    _, a = convert.vit_from_hf_state_dict(hf.config, sd)
    _, b = convert.vit_from_hf_state_dict(hf.config, v4)
    fa, fb = checkpoint.flatten(a['params']), checkpoint.flatten(b['params'])
    assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


def _timm_state_dict(hf, *, no_embed_class=False):
    """The timm `VisionTransformer` layout of a HF ViTForImageClassification's weights (fused qkv)."""
    sd = {k[len('vit.'):] if k.startswith('vit.') else k: v.detach().clone() for k, v in hf.state_dict().items()}
    out = {'cls_token': sd['embeddings.cls_token'], 'pos_embed': sd['embeddings.position_embeddings'],
           'patch_embed.proj.weight': sd['embeddings.patch_embeddings.projection.weight'],
           'patch_embed.proj.bias': sd['embeddings.patch_embeddings.projection.bias'],
           'norm.weight': sd['layernorm.weight'], 'norm.bias': sd['layernorm.bias'],
           'head.weight': sd['classifier.weight'], 'head.bias': sd['classifier.bias']}
    if no_embed_class:
        out['pos_embed'] = out['pos_embed'][:, 1:]
    for i in range(hf.config.num_hidden_layers):
        s, t = f'layers.{i}', f'blocks.{i}'
        out[f'{t}.norm1.weight'], out[f'{t}.norm1.bias'] = sd[f'{s}.layernorm_before.weight'], sd[
            f'{s}.layernorm_before.bias']
        out[f'{t}.norm2.weight'], out[f'{t}.norm2.bias'] = sd[f'{s}.layernorm_after.weight'], sd[
            f'{s}.layernorm_after.bias']
        out[f'{t}.attn.qkv.weight'] = torch.cat([sd[f'{s}.attention.{n}_proj.weight'] for n in 'qkv'])
        out[f'{t}.attn.qkv.bias'] = torch.cat([sd[f'{s}.attention.{n}_proj.bias'] for n in 'qkv'])
        out[f'{t}.attn.proj.weight'], out[f'{t}.attn.proj.bias'] = sd[f'{s}.attention.o_proj.weight'], sd[
            f'{s}.attention.o_proj.bias']
        for a, b in (('fc1', 'fc1'), ('fc2', 'fc2')):
            out[f'{t}.mlp.{a}.weight'], out[f'{t}.mlp.{a}.bias'] = sd[f'{s}.mlp.{b}.weight'], sd[f'{s}.mlp.{b}.bias']
    return out


def test_timm_state_dict_parity():
    # timm's ViT: exact GELU, LayerNorm eps 1e-6: the same function as this HF config.
    hf = _randomize(transformers.ViTForImageClassification(_hf_config(hidden_size=192, num_attention_heads=3,
                                                                      intermediate_size=64, layer_norm_eps=1e-6)))
    x = _images((2, 32, 32, 3), seed=3)
    with torch.no_grad():
        ref = hf(_torch_in(x)).logits.numpy()
    model, variables = convert.vit_from_timm_state_dict(_timm_state_dict(hf))  # Heads: 3 for width 192.
    assert (model.num_heads, model.grid_size, model.activation) == (3, (4, 4), 'gelu_exact')
    got, _ = model.apply(variables, jnp.asarray(x))
    assert float(np.abs(np.asarray(got) - ref).max()) <= TOL
    # pos_embed without the class token's row (timm no_embed_class): the same function with a zero row.
    with torch.no_grad():
        hf.vit.embeddings.position_embeddings[:, 0] = 0.0
        ref0 = hf(_torch_in(x)).logits.numpy()
    model, variables = convert.vit_from_timm_state_dict(_timm_state_dict(hf, no_embed_class=True))
    got0, _ = model.apply(variables, jnp.asarray(x))
    assert float(np.abs(np.asarray(got0) - ref0).max()) <= TOL


def test_timm_errors():
    hf = _randomize(transformers.ViTForImageClassification(_hf_config()))  # Width 48: not a standard width.
    sd = _timm_state_dict(hf)
    with pytest.raises(ValueError, match='pass num_heads'):
        convert.vit_from_timm_state_dict(sd)
    with pytest.raises(ValueError, match='does not divide'):
        convert.vit_from_timm_state_dict(sd, num_heads=5)
    with pytest.raises(ValueError, match="'ls1'|ls1"):
        convert.vit_from_timm_state_dict({**sd, 'blocks.0.ls1.gamma': torch.ones(48)}, num_heads=4)
    with pytest.raises(ValueError, match='reg_token'):
        convert.vit_from_timm_state_dict({**sd, 'reg_token': torch.zeros(1, 4, 48)}, num_heads=4)
    with pytest.raises(ValueError, match='Unconverted timm'):
        convert.vit_from_timm_state_dict({**sd, 'blocks.0.attn.extra.weight': torch.zeros(2)}, num_heads=4)
    with pytest.raises(ValueError, match='not a square grid'):
        convert.vit_from_timm_state_dict({**sd, 'pos_embed': torch.zeros(1, 1 + 12, 48)}, num_heads=4)
    model, _ = convert.vit_from_timm_state_dict({**sd, 'pos_embed': torch.zeros(1, 1 + 12, 48)}, num_heads=4,
                                                image_size=(24, 32))
    assert model.grid_size == (3, 4)
    with pytest.raises(ValueError, match='Not a timm ViT'):
        convert.vit_from_timm_state_dict({'foo.weight': torch.zeros(2)})


def test_hf_errors():
    with pytest.raises(ValueError, match='No converter for HuggingFace Linear; supported: .*ViTModel'):
        convert.from_transformers(torch.nn.Linear(2, 2))
    hf = transformers.ViTForImageClassification(_hf_config())
    sd = hf.state_dict()
    with pytest.raises(ValueError, match='Unconverted HuggingFace'):
        convert.vit_from_hf_state_dict(hf.config, {**sd, 'vit.layers.0.attention.q_norm.weight': torch.ones(12)})
    with pytest.raises(ValueError, match='num_hidden_layers=3'):
        convert.vit_from_hf_state_dict(_hf_config(num_hidden_layers=3), sd)
    with pytest.raises(ValueError, match='patches'):
        convert.vit_from_hf_state_dict(_hf_config(image_size=48), sd)
    with pytest.raises(ValueError, match='pooler_act'):
        convert.from_transformers(transformers.ViTModel(_hf_config(pooler_act='relu')))
    with pytest.raises(ValueError, match='activation'):
        convert.from_transformers(transformers.ViTForImageClassification(_hf_config(hidden_act='mish')))


def test_model_overrides_rebuild_the_converted_model():
    hf = transformers.ViTForImageClassification(_hf_config(**CLS_CONFIGS[1]))
    model, _ = convert.from_transformers(hf)
    cfg = convert.model_overrides(model)
    rebuilt = models.get_model(cfg.pop('name'), **cfg)
    for f in ('image_size', 'patch_size', 'hidden_size', 'mlp_dim', 'num_heads', 'num_layers', 'activation',
              'norm_eps', 'qkv_bias', 'num_classes', 'representation_size'):
        assert convert._norm_value(getattr(rebuilt, f)) == convert._norm_value(getattr(model, f)), f


# ----------------------------------------------------------------------------------------------------------------
# The CLI.
# ----------------------------------------------------------------------------------------------------------------
def _logits_from_npz(path, model_cfg, x):
    cfg = dict(model_cfg)
    model = models.get_model(cfg.pop('name'), **cfg)
    params = checkpoint.load_npz(path)
    return np.asarray(model.apply({'params': params}, jnp.asarray(x))[0])


def test_cli_transformers_safetensors_and_bin(tmp_path, capsys):
    hf = _randomize(transformers.ViTForImageClassification(_hf_config(**CLS_CONFIGS[1])), seed=4)
    hf.save_pretrained(tmp_path / 'hf')  # config.json + model.safetensors.
    x = _images((2, 24, 40, 3), seed=5)
    with torch.no_grad():
        ref = hf(_torch_in(x)).logits.numpy()
    out = str(tmp_path / 'vit.npz')
    assert convert.main(['--from=transformers', str(tmp_path / 'hf'), '--out', out]) == 0
    printed = capsys.readouterr().out
    assert '--config.init_from.path=' in printed and '--config.model.activation=gelu_tanh' in printed
    model_cfg = convert.model_overrides(convert.from_transformers(hf)[0])
    assert float(np.abs(_logits_from_npz(out, model_cfg, x) - ref).max()) <= TOL
    # A pytorch_model.bin (read with torch.load(weights_only=True)) with the config next to it.
    (tmp_path / 'bin').mkdir()
    torch.save(hf.state_dict(), tmp_path / 'bin' / 'pytorch_model.bin')
    os.replace(tmp_path / 'hf' / 'config.json', tmp_path / 'bin' / 'config.json')
    out2 = str(tmp_path / 'vit2.npz')
    assert convert.main(['--from=transformers', str(tmp_path / 'bin' / 'pytorch_model.bin'), '--out', out2]) == 0
    assert float(np.abs(_logits_from_npz(out2, model_cfg, x) - ref).max()) <= TOL


def test_cli_timm(tmp_path):
    hf = _randomize(transformers.ViTForImageClassification(_hf_config(hidden_size=192, num_attention_heads=3,
                                                                      intermediate_size=64, layer_norm_eps=1e-6)))
    torch.save({'model': _timm_state_dict(hf)}, tmp_path / 'timm.pth')  # Nested under 'model' (training ckpts).
    out = str(tmp_path / 'timm.npz')
    assert convert.main(['--from=timm', str(tmp_path / 'timm.pth'), '--out', out]) == 0
    x = _images((2, 32, 32, 3), seed=6)
    with torch.no_grad():
        ref = hf(_torch_in(x)).logits.numpy()
    model_cfg = convert.model_overrides(convert.vit_from_timm_state_dict(_timm_state_dict(hf))[0])
    assert float(np.abs(_logits_from_npz(out, model_cfg, x) - ref).max()) <= TOL


class _Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned > /dev/null',))


def test_cli_errors(tmp_path, capsys):
    assert convert.main(['--from=timm', str(tmp_path / 'missing.pth'), '--out', str(tmp_path / 'o.npz')]) == 1
    assert 'No checkpoint file' in capsys.readouterr().err
    assert convert.main(['--from=timm', str(tmp_path / 'x.pth'), '--out', str(tmp_path / 'o.bin')]) == 2
    # Arbitrary pickled objects are refused (torch.load(weights_only=True)), nothing is executed.
    torch.save({'model': _Evil()}, tmp_path / 'evil.pth')
    assert convert.main(['--from=timm', str(tmp_path / 'evil.pth'), '--out', str(tmp_path / 'o.npz')]) == 1
    assert 'weights_only' in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'o.npz')
    (tmp_path / 'bad.safetensors').write_bytes(b'not safetensors')
    assert convert.main(['--from=timm', str(tmp_path / 'bad.safetensors'), '--out', str(tmp_path / 'o.npz')]) == 1
    assert 'safetensors' in capsys.readouterr().err
    # A HF weights file without config.json.
    (tmp_path / 'lonely').mkdir()
    torch.save({'a': torch.zeros(1)}, tmp_path / 'lonely' / 'pytorch_model.bin')
    assert convert.main(['--from=transformers', str(tmp_path / 'lonely'), '--out', str(tmp_path / 'o.npz')]) == 1
    assert 'config.json' in capsys.readouterr().err
    (tmp_path / 'nodir').mkdir()
    with open(tmp_path / 'nodir' / 'config.json', 'w') as f:
        json.dump({'model_type': 'vit'}, f)
    assert convert.main(['--from=transformers', str(tmp_path / 'nodir'), '--out', str(tmp_path / 'o.npz')]) == 1
    assert 'model.safetensors' in capsys.readouterr().err


def test_more_errors(tmp_path, capsys):
    sd = transformers.ViTForImageClassification(_hf_config()).state_dict()
    with pytest.raises(ValueError, match='head_dim'):
        convert.vit_from_hf_state_dict(_hf_config(head_dim=16), sd)
    with pytest.raises(ValueError, match='num_channels'):
        convert.vit_from_hf_state_dict(_hf_config(num_channels=1), sd)
    torch.save([torch.zeros(2)], tmp_path / 'list.pt')  # Loadable, but not a state dict.
    assert convert.main(['--from=timm', str(tmp_path / 'list.pt'), '--out', str(tmp_path / 'o.npz')]) == 1
    assert 'does not hold a state dict' in capsys.readouterr().err
    assert convert.main(['--from=keras', 'x', '--out', str(tmp_path / 'o.npz')]) == 2
    assert "--from must be 'transformers', 'timm' or 'official:<family>'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--from must be 'transformers', 'timm' or 'official:<family>'"):
        convert.convert_file('keras', 'x', str(tmp_path / 'o.npz'))


@pytest.mark.slow  # ~20-30 s on 2 cores.
def test_command_line_timm_safetensors(tmp_path):
    """`python -m vit_jax.convert` on a .safetensors timm file (read without torch)."""
    import subprocess
    import sys

    from safetensors.torch import save_file

    hf = _randomize(transformers.ViTForImageClassification(_hf_config(hidden_size=192, num_attention_heads=3,
                                                                      intermediate_size=64, layer_norm_eps=1e-6)))
    save_file({k: v.contiguous() for k, v in _timm_state_dict(hf).items()}, str(tmp_path / 'vit.safetensors'))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, '-m', 'vit_jax.convert', '--from=timm', str(tmp_path / 'vit.safetensors'),
                           '--out', str(tmp_path / 'vit.npz')], cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "'name': 'ViT-Ti/8'" in proc.stdout and '--config.model.activation=gelu_exact' in proc.stdout
    x = _images((2, 32, 32, 3), seed=7)
    with torch.no_grad():
        ref = hf(_torch_in(x)).logits.numpy()
    model_cfg = convert.model_overrides(convert.vit_from_timm_state_dict(_timm_state_dict(hf))[0])
    assert float(np.abs(_logits_from_npz(str(tmp_path / 'vit.npz'), model_cfg, x) - ref).max()) <= TOL
