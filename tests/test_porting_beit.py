"""official:beit (microsoft/unilm `beit/modeling_pretrain.py`, `modeling_finetune.py`; PeCo's layout) -> BEiT.

Random state dicts with the official key names and shapes (small unusual configs), converted with every key consumed;
the same weights renamed to HuggingFace's layout and loaded (strictly) into `transformers` BeitForImageClassification /
BeitForMaskedImageModeling, an independent implementation: logits compared."""

import jax
import numpy as np
import pytest
from _helpers import unilm_block
from _porting_common import RandomStateDict

from vit_jax import models
from vit_jax.models import beit
from vit_jax.porting import registry

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

IMG, P, D, H, L, MLP, NC, VOCAB = 20, 4, 24, 3, 2, 40, 5, 11
GRID = (IMG // P, IMG // P)
NUM_REL = (2 * GRID[0] - 1) * (2 * GRID[1] - 1) + 3


def _unilm_sd(*, rel, abs_pos, gamma, head, seed=0):
    """head: 'mean' (fc_norm + head), 'token' (norm + head) or 'mim' (mask_token, norm + lm_head)."""
    sd = RandomStateDict(seed)
    sd.conv('patch_embed.proj', D, 3, P)
    sd.add('cls_token', (1, 1, D))
    index = beit.relative_position_index(GRID).astype(np.int64)
    if abs_pos:
        sd.add('pos_embed', (1, 1 + GRID[0] * GRID[1], D))
    if rel == 'shared':
        sd.add('rel_pos_bias.relative_position_bias_table', (NUM_REL, H))
        sd['rel_pos_bias.relative_position_index'] = index
    for i in range(L):
        unilm_block(sd, f'blocks.{i}', D, MLP, rel_pos=((NUM_REL, H), index) if rel == 'per_layer' else None,
                    gamma=gamma)
    sd.ln('fc_norm' if head == 'mean' else 'norm', D)
    if head == 'mim':
        sd.add('mask_token', (1, 1, D))
        sd.linear('lm_head', VOCAB, D)
    else:
        sd.linear('head', NC, D)
    return sd


def _to_hf(sd, head):
    """unilm names -> transformers BEiT names (the qkv matrix split; no key bias in either)."""
    out = {}
    for k, v in sd.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        if k.endswith('relative_position_index'):
            continue
        if k.startswith('blocks.'):
            _, i, rest = k.split('.', 2)
            p = f'beit.layers.{i}'
            if rest == 'attn.qkv.weight':
                for j, n in enumerate('qkv'):
                    out[f'{p}.attention.{n}_proj.weight'] = t[j * D:(j + 1) * D]
                continue
            rest = {'attn.q_bias': 'attention.q_proj.bias', 'attn.v_bias': 'attention.v_proj.bias',
                    'attn.proj.weight': 'attention.o_proj.weight', 'attn.proj.bias': 'attention.o_proj.bias',
                    'attn.relative_position_bias_table': 'relative_position_bias.relative_position_bias_table',
                    'gamma_1': 'lambda_1', 'gamma_2': 'lambda_2'}.get(rest, rest)
            rest = rest.replace('norm1.', 'layernorm_before.').replace('norm2.', 'layernorm_after.')
            out[f'{p}.{rest}'] = t
            continue
        name = {'cls_token': 'beit.embeddings.cls_token', 'mask_token': 'beit.embeddings.mask_token',
                'pos_embed': 'beit.embeddings.position_embeddings',
                'patch_embed.proj.weight': 'beit.embeddings.patch_embeddings.projection.weight',
                'patch_embed.proj.bias': 'beit.embeddings.patch_embeddings.projection.bias',
                'rel_pos_bias.relative_position_bias_table':
                    'beit.shared_position_bias.relative_position_bias_table',
                'head.weight': 'classifier.weight', 'head.bias': 'classifier.bias'}.get(k, k)
        if k.startswith('fc_norm.'):
            name = 'beit.pooler.' + k.replace('fc_norm.', 'layernorm.')
        elif k.startswith('norm.'):
            name = k.replace('norm.', 'layernorm.' if head == 'mim' else 'beit.layernorm.')
        out[name] = t
    return out


def _hf(sd, *, rel, abs_pos, gamma, head):
    cfg = transformers.BeitConfig(
        image_size=IMG, patch_size=P, hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
        intermediate_size=MLP, hidden_act='gelu', layer_norm_eps=1e-6, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, drop_path_rate=0.0, use_absolute_position_embeddings=abs_pos,
        use_relative_position_bias=rel == 'per_layer', use_shared_relative_position_bias=rel == 'shared',
        layer_scale_init_value=0.1 if gamma else 0.0, use_mean_pooling=head != 'token', use_mask_token=head == 'mim',
        num_labels=NC, vocab_size=VOCAB)
    # MIM: HuggingFace's BeitModel norm is then the identity; its MIM head's own `layernorm` is unilm's `norm`.
    cls = transformers.BeitForMaskedImageModeling if head == 'mim' else transformers.BeitForImageClassification
    net = cls(cfg).eval()
    missing, unexpected = net.load_state_dict(_to_hf(sd, head), strict=False)
    assert not unexpected and not [k for k in missing if 'relative_position_index' not in k], (missing, unexpected)
    return net


CASES = {
    # Fine-tuned as released (BEiT / PeCo ImageNet): per-layer tables, layer scale, mean pooling + fc_norm.
    'finetuned_per_layer_mean': dict(rel='per_layer', abs_pos=False, gamma=True, head='mean'),
    # Fine-tuned with a shared table, absolute positions, no layer scale, class-token classifier.
    'finetuned_shared_token': dict(rel='shared', abs_pos=True, gamma=False, head='token'),
    # Pre-training (VisionTransformerForMaskedImageModeling): shared table, layer scale, mask token, LM head.
    'pretrain_mim': dict(rel='shared', abs_pos=False, gamma=True, head='mim'),
}


def _model(rel, abs_pos, gamma, head):
    kw = dict(image_size=IMG, patch_size=P, hidden_size=D, mlp_dim=MLP, num_heads=H, num_layers=L,
              rel_pos_bias=rel, abs_posemb=abs_pos, layer_scale=0.1 if gamma else None, drop_path_rate=0.0)
    if head == 'mim':
        kw.update(num_classes=0, vocab_size=VOCAB, use_mask_token=True, final_norm=False)
    else:
        kw.update(num_classes=NC, use_mask_token=False, classifier='gap' if head == 'mean' else 'token')
    return models.get_model('BEiT-testing', **kw)


@pytest.mark.parametrize('case', sorted(CASES))
def test_unilm_layout_converts_and_matches_transformers(case):
    opts = CASES[case]
    sd = _unilm_sd(**opts)
    model = _model(**opts)
    variables = registry.from_official('beit', {'model': sd}, model)
    x = np.random.RandomState(1).randn(2, IMG, IMG, 3).astype(np.float32)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2))
    net = _hf(sd, **opts)
    if opts['head'] == 'mim':
        mask = np.random.RandomState(2).rand(2, GRID[0] * GRID[1]) < 0.4
        _, out = jax.jit(lambda v, x, m: model.apply(v, x, mask=m))(variables, x, mask)
        got = np.asarray(out['mim_logits'])
        with torch.no_grad():
            want = net(xt, bool_masked_pos=torch.from_numpy(mask)).logits.numpy()
    else:
        got = np.asarray(jax.jit(model.apply)(variables, x)[0])
        with torch.no_grad():
            want = net(xt).logits.numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5 * max(1.0, np.abs(want).max()), rtol=0)


def test_refusals_name_the_problem():
    opts = CASES['finetuned_per_layer_mean']
    sd = _unilm_sd(**opts)
    with pytest.raises(registry.ConversionError, match="rel_pos_bias='per_layer'"):
        registry.from_official('beit', sd, _model(**dict(opts, rel='shared')))
    with pytest.raises(registry.ConversionError, match='layer_scale'):
        registry.from_official('beit', sd, _model(**dict(opts, gamma=False)))
    with pytest.raises(registry.ConversionError, match='fc_norm'):
        registry.from_official('beit', sd, _model(**dict(opts, head='token')))
    both = dict(sd, **{'rel_pos_bias.relative_position_bias_table': sd['blocks.0.attn.relative_position_bias_table']})
    with pytest.raises(registry.ConversionError, match='both'):
        registry.from_official('beit', both, _model(**opts))
    mim = _unilm_sd(**CASES['pretrain_mim'])
    with pytest.raises(registry.ConversionError, match='vocab_size=11, final_norm=False'):
        registry.from_official('beit', mim, _model(**dict(CASES['pretrain_mim'], head='token')))
