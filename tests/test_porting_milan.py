"""official:milan (zejiangh/MILAN) -> MILAN (pre-training: encoder + prompting decoder) and the fine-tuned classifiers
(BEiT built as a plain ViT for --global_pool, ViT for --cls_token): official key names and shapes, every key consumed,
outputs compared with a torch forward written from the official `models_milan.py` / `models_vit.py`."""

import jax
import numpy as np
import pytest
from _porting_common import RandomStateDict

from vit_jax import models
from vit_jax.models import layers
from vit_jax.porting import registry

torch = pytest.importorskip('torch')
F = torch.nn.functional

# Small unusual config: 16x16 images, patch 4 (grid 4x4), encoder 24-d / 3 heads / 2 blocks / MLP 48,
# decoder 16-d / 2 heads / 2 blocks, targets 12-d, 4 of 16 patches visible.
IMG, P, D, H, L, DD, DH, DL, T, NC = 16, 4, 24, 3, 2, 16, 2, 2, 12, 5
N = (IMG // P) ** 2


def _block(sd: RandomStateDict, p, d, kind='qkv'):
    """timm Block (kind 'qkv'), or MILAN's Block_fordecoder ('q_kv': attn.q and attn.kv = [k; v]); MLP ratio 2."""
    if kind == 'qkv':
        sd.vit_block(p, d, 2 * d)
        return
    sd.ln(f'{p}.norm1', d)
    sd.linear(f'{p}.attn.q', d, d)
    sd.linear(f'{p}.attn.kv', 2 * d, d)
    sd.linear(f'{p}.attn.proj', d, d)
    sd.ln(f'{p}.norm2', d)
    sd.mlp(f'{p}.mlp', d, 2 * d)


def _mae_table(d):
    """util/pos_embed.get_2d_sincos_pos_embed(d, grid, cls_token=True), written out in numpy."""
    g = IMG // P
    gw, gh = np.meshgrid(np.arange(g, dtype=np.float64), np.arange(g, dtype=np.float64))

    def one(pos, dim):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum('m,d->md', pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one(gw, d // 2), one(gh, d // 2)], axis=1)
    return np.concatenate([np.zeros((1, d)), emb], 0)[None].astype(np.float32)


def _pretrain_sd(seed=0, decoder='prompt'):
    sd = RandomStateDict(seed)
    sd.conv('patch_embed.proj', D, 3, P)
    sd.add('cls_token', (1, 1, D))
    sd['pos_embed'], sd['decoder_pos_embed'] = _mae_table(D), _mae_table(DD)
    sd.ln('norm', D)
    sd.linear('decoder_embed', DD, D)
    sd.add('mask_token', (1, 1, DD))
    sd.ln('decoder_norm', DD)
    sd.linear('decoder_pred', T, DD)
    for i in range(L):
        _block(sd, f'blocks.{i}', D)
    for i in range(DL):
        _block(sd, f'decoder_blocks.{i}', DD, 'qkv' if decoder == 'mae' else 'q_kv')
    return sd


def _milan(**kw):
    return models.get_model('MILAN-testing', image_size=IMG, patch_size=P, hidden_size=D, mlp_dim=2 * D, num_heads=H,
                            num_layers=L, decoder_dim=DD, decoder_depth=DL, decoder_heads=DH, target_dim=T,
                            decoder_mlp_ratio=2, mask_ratio=0.75, **kw)


# --- torch restatement of the official forward ------------------------------------------------------------------
def _ln(t, p, x):
    return F.layer_norm(x, (x.shape[-1],), t[f'{p}.weight'], t[f'{p}.bias'], eps=1e-6)


def _attn(q, k, v, heads):
    b, nq, d = q.shape
    q, k, v = (y.reshape(b, -1, heads, d // heads).transpose(1, 2) for y in (q, k, v))
    a = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(-1)
    return (a @ v).transpose(1, 2).reshape(b, nq, d)


def _mlp(t, p, x):
    return F.linear(F.gelu(F.linear(x, t[f'{p}.mlp.fc1.weight'], t[f'{p}.mlp.fc1.bias'])),
                    t[f'{p}.mlp.fc2.weight'], t[f'{p}.mlp.fc2.bias'])


def _timm_block(t, p, x, heads):
    y = _ln(t, f'{p}.norm1', x)
    q, k, v = F.linear(y, t[f'{p}.attn.qkv.weight'], t[f'{p}.attn.qkv.bias']).chunk(3, -1)
    x = x + F.linear(_attn(q, k, v, heads), t[f'{p}.attn.proj.weight'], t[f'{p}.attn.proj.bias'])
    return x + _mlp(t, p, _ln(t, f'{p}.norm2', x))


def _gather(x, idx):
    return torch.gather(x, 1, idx.unsqueeze(-1).repeat(1, 1, x.shape[-1]))


def _torch_milan(sd, imgs, ids_shuffle, keep, decoder='prompt'):
    """models_milan.MaskedAutoencoderViT.forward_encoder / forward_decoder for given ids_shuffle."""
    t = {k: torch.from_numpy(v) for k, v in sd.items()}
    ids_restore = torch.argsort(ids_shuffle, 1)
    ids_keep, ids_dump = ids_shuffle[:, :keep], ids_shuffle[:, keep:]
    x = F.conv2d(imgs, t['patch_embed.proj.weight'], t['patch_embed.proj.bias'], stride=P).flatten(2).transpose(1, 2)
    x = _gather(x + t['pos_embed'][:, 1:], ids_keep)
    cls = (t['cls_token'] + t['pos_embed'][:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], 1)
    for i in range(L):
        x = _timm_block(t, f'blocks.{i}', x, H)
    x = F.linear(_ln(t, 'norm', x), t['decoder_embed.weight'], t['decoder_embed.bias'])
    mask_tokens = t['mask_token'].repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = _gather(torch.cat([x[:, 1:], mask_tokens], 1), ids_restore)
    x = torch.cat([x[:, :1], x_], 1) + t['decoder_pos_embed']
    if decoder == 'mae':
        for i in range(DL):
            x = _timm_block(t, f'decoder_blocks.{i}', x, DH)
    else:
        fixed = torch.cat([x[:, :1], _gather(x[:, 1:], ids_keep)], 1)
        x = _gather(x[:, 1:], ids_dump)
        for i in range(DL):
            p = f'decoder_blocks.{i}'
            y = _ln(t, f'{p}.norm1', x)
            full = torch.cat([fixed[:, :1], _gather(torch.cat([fixed[:, 1:], y], 1), ids_restore)], 1)
            k, v = F.linear(full, t[f'{p}.attn.kv.weight'], t[f'{p}.attn.kv.bias']).chunk(2, -1)
            q = F.linear(y, t[f'{p}.attn.q.weight'], t[f'{p}.attn.q.bias'])
            x = x + F.linear(_attn(q, k, v, DH), t[f'{p}.attn.proj.weight'], t[f'{p}.attn.proj.bias'])
            x = x + _mlp(t, p, _ln(t, f'{p}.norm2', x))
        x = torch.cat([fixed[:, :1], _gather(torch.cat([fixed[:, 1:], x], 1), ids_restore)], 1)
    return F.linear(_ln(t, 'decoder_norm', x), t['decoder_pred.weight'], t['decoder_pred.bias'])


@pytest.mark.parametrize('decoder', ['prompt', 'mae'])
def test_pretraining_checkpoint_converts_and_matches(decoder):
    sd = _pretrain_sd(decoder=decoder)
    model = _milan(decoder=decoder)
    variables = registry.from_official('milan', {'model': sd}, model)
    assert model.num_keep == 4
    x = np.random.RandomState(1).randn(2, IMG, IMG, 3).astype(np.float32)
    ids = np.stack([np.random.RandomState(s).permutation(N) for s in (2, 3)]).astype(np.int32)
    pred, _ = jax.jit(lambda v, x, i: model.apply(v, x, ids_shuffle=i))(variables, x, ids)
    with torch.no_grad():
        want = _torch_milan(sd, torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(ids).long(), 4,
                            decoder).numpy()
    assert pred.shape == want.shape == (2, 1 + N, T)
    np.testing.assert_allclose(np.asarray(pred), want, atol=5e-5 * max(1.0, np.abs(want).max()), rtol=0)


def test_fixed_tables_are_verified_not_loaded():
    model = _milan()
    # The checkpoint's buffers equal the model's own tables (MAE convention, zero class row) ...
    np.testing.assert_allclose(layers.posemb_sincos_2d(4, 4, D, convention='mae')[0], _mae_table(D)[0, 1:],
                               atol=1e-6)
    # ... and a different table is refused, naming the key and the convention.
    sd = _pretrain_sd()
    sd['decoder_pos_embed'] = np.concatenate([np.zeros((1, 1, DD), np.float32),
                                              layers.posemb_sincos_2d(4, 4, DD)], axis=1)
    with pytest.raises(registry.ConversionError, match="decoder_pos_embed.*big_vision"):
        registry.from_official('milan', sd, model)
    with pytest.raises(registry.ConversionError, match='plain MAE'):
        registry.from_official('milan', _pretrain_sd(decoder='mae'), model)
    with pytest.raises(registry.ConversionError, match='pre-training checkpoint'):
        registry.from_official('milan', _pretrain_sd(), models.get_model('ViT-testing'))


# --- fine-tuned classifiers (models_vit.VisionTransformer) --------------------------------------------------------
def _finetuned_sd(global_pool, seed=4):
    sd = RandomStateDict(seed)
    sd.conv('patch_embed.proj', D, 3, P)
    sd.add('cls_token', (1, 1, D))
    sd.add('pos_embed', (1, 1 + N, D))
    sd.linear('head', NC, D)
    sd.ln('fc_norm' if global_pool else 'norm', D)
    for i in range(L):
        _block(sd, f'blocks.{i}', D)
    return sd


def _torch_finetuned(sd, imgs):
    t = {k: torch.from_numpy(v) for k, v in sd.items()}
    x = F.conv2d(imgs, t['patch_embed.proj.weight'], t['patch_embed.proj.bias'], stride=P).flatten(2).transpose(1, 2)
    x = torch.cat([t['cls_token'].expand(x.shape[0], -1, -1), x], 1) + t['pos_embed']
    for i in range(L):
        x = _timm_block(t, f'blocks.{i}', x, H)
    x = _ln(t, 'fc_norm', x[:, 1:].mean(1)) if 'fc_norm.weight' in t else _ln(t, 'norm', x)[:, 0]
    return F.linear(x, t['head.weight'], t['head.bias'])


@pytest.mark.parametrize('global_pool', [True, False])
def test_finetuned_classifier_converts_and_matches(global_pool):
    sd = _finetuned_sd(global_pool)
    size = dict(image_size=IMG, patch_size=P, hidden_size=D, mlp_dim=2 * D, num_heads=H, num_layers=L,
                num_classes=NC)
    if global_pool:
        model = models.get_model('BEiT-testing', abs_posemb=True, rel_pos_bias='none', layer_scale=None,
                                 use_mask_token=False, classifier='gap', **size)
    else:
        model = models.get_model('ViT-testing', norm_eps=1e-6, activation='gelu_exact', **size)
    variables = registry.from_official('milan', sd, model)
    x = np.random.RandomState(5).randn(2, IMG, IMG, 3).astype(np.float32)
    logits, _ = jax.jit(model.apply)(variables, x)
    with torch.no_grad():
        want = _torch_finetuned(sd, torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(np.asarray(logits), want, atol=2e-5 * max(1.0, np.abs(want).max()), rtol=0)


def test_global_pool_checkpoint_into_vit_is_refused():
    with pytest.raises(registry.ConversionError, match='fc_norm.*BEiT'):
        registry.from_official('milan', _finetuned_sd(True), models.get_model(
            'ViT-testing', image_size=IMG, patch_size=P, hidden_size=D, mlp_dim=2 * D, num_heads=H, num_layers=L,
            num_classes=NC, norm_eps=1e-6, activation='gelu_exact'))
