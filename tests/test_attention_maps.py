"""Attention maps: rollout against a hand-computed reference, maps of ViT-family models, overlays and the CLI."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vit_jax import checkpoint, models
from vit_jax.data import datasets
from vit_jax.tools import attention


def _rollout_reference(layers):
    """Abnar & Zuidema written out with loops: mean heads, + I, renormalise rows, R = A_L ... A_1."""
    b, _, t, _ = layers[0].shape
    out = np.zeros((b, t, t))
    for n in range(b):
        joint = np.eye(t)
        for a in layers:
            m = np.zeros((t, t))
            for i in range(t):
                for j in range(t):
                    m[i, j] = np.mean(a[n, :, i, j]) + (1.0 if i == j else 0.0)
                m[i] /= m[i].sum()
            joint = m @ joint
        out[n] = joint
    return out


def test_rollout_matches_hand_computed_values():
    # Two heads, two layers, three tokens. Layer 1: head 0 attends to itself, head 1 uniformly.
    eye = np.eye(3)
    uni = np.full((3, 3), 1 / 3)
    l1 = np.stack([eye, uni])[None]
    # mean heads = (I + U) / 2; + I -> (3I + U) / 2, rows sum to 2 -> (3I + U) / 4.
    a1 = (3 * eye + uni) / 4
    np.testing.assert_allclose(attention.attention_rollout([l1]), a1[None], atol=1e-6)
    # Layer 2: both heads uniform -> (U + I) / 2; rollout = A2 @ A1 = (U + I)/2 @ (3I + U)/4 = (4U + 3I + ...)/8:
    # U @ U = U, so (U + I)(3I + U) = 3U + U + 3I + U = 5U + 3I, divided by 8.
    l2 = np.stack([uni, uni])[None]
    expected = (5 * uni + 3 * eye) / 8
    np.testing.assert_allclose(attention.attention_rollout([l1, l2]), expected[None], atol=1e-6)
    # The rows of a rollout remain distributions.
    assert np.allclose(expected.sum(-1), 1.0)


def test_rollout_matches_loop_reference_on_random_attention():
    rng = np.random.default_rng(0)
    layers = []
    for _ in range(4):
        logits = rng.normal(size=(2, 3, 5, 5))
        layers.append(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
    got = attention.attention_rollout(layers)
    np.testing.assert_allclose(got, _rollout_reference(layers), rtol=1e-5, atol=1e-6)
    # Multi-stage: only the trailing layers with the last token count enter the product.
    first = np.full((2, 3, 9, 9), 1 / 9)
    np.testing.assert_allclose(attention.attention_rollout([first] + layers), got, atol=1e-6)
    with pytest.raises(ValueError, match='square'):
        attention.attention_rollout([np.full((1, 2, 5, 3), 1 / 3)])


def test_token_map_class_row_or_mean():
    joint = np.zeros((1, 5, 5), np.float32)
    joint[0, 0, 1:] = [1, 2, 3, 4]
    joint[0, 1:, 1] = 1.0
    m = attention.token_map(joint, (2, 2), num_prefix=1)
    np.testing.assert_allclose(m[0], np.array([[1, 2], [3, 4]]) / 10, atol=1e-6)
    # Without a class token: the mean of all rows (here 4 tokens, no prefix).
    j2 = np.eye(4, dtype=np.float32)[None] * np.array([1, 1, 1, 5], np.float32)
    np.testing.assert_allclose(attention.token_map(j2, (2, 2), num_prefix=0)[0].ravel(), [1 / 8, 1 / 8, 1 / 8, 5 / 8])
    assert attention.grid_and_prefix(65) == ((8, 8), 1)
    assert attention.grid_and_prefix(66) == ((8, 8), 2)
    assert attention.grid_and_prefix(32, image_hw=(16, 32)) == ((4, 8), 0)


@pytest.mark.parametrize('kw, prefix', [({}, 1), ({'classifier': 'gap'}, 0), ({'scan': True}, 1)])
def test_maps_of_vit_models(kw, prefix):
    model = models.get_model('ViT-testing', num_classes=10, image_size=16, patch_size=4, **kw)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    logits, attn = attention.get_attention(model, variables, x)
    assert logits.shape == (2, 10) and len(attn) == 2
    assert all(a.shape == (2, 2, 16 + prefix, 16 + prefix) for a in attn)
    np.testing.assert_allclose(attn[0].sum(-1), 1.0, atol=1e-5)
    roll = attention.rollout_maps(model, variables, x)
    assert roll.shape == (2, 4, 4)
    np.testing.assert_allclose(roll.sum((1, 2)), 1.0, atol=1e-5)
    joint = attention.attention_rollout(attn)
    expected = joint[:, 0, 1:] if prefix else joint.mean(1)
    np.testing.assert_allclose(roll.reshape(2, -1), expected / expected.sum(-1, keepdims=True), atol=1e-5)
    heads = attention.head_maps(model, variables, x)
    assert heads.shape == (2, 2, 4, 4)
    if prefix:
        last = attn[-1][:, :, 0, 1:]
        np.testing.assert_allclose(heads.reshape(2, 2, -1), last / last.sum(-1, keepdims=True), atol=1e-5)


def test_maps_of_distilled_deit_drop_both_prefix_tokens():
    model = models.get_model('DeiT-Ti/16-distilled', num_classes=10, image_size=16, patch_size=4, num_layers=2,
                             hidden_size=32, mlp_dim=64, num_heads=2)
    x = jnp.zeros((1, 16, 16, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    _, attn = attention.get_attention(model, variables, x)
    assert attn[0].shape[-1] == 18
    assert attention.rollout_maps(model, variables, x).shape == (1, 4, 4)
    assert attention.head_maps(model, variables, x, query=1).shape == (1, 2, 4, 4)


def test_overlay_and_figure_follow_the_map():
    img = np.full((8, 8, 3), 128, np.uint8)
    left = np.array([[1.0, 0.0], [1.0, 0.0]])
    a = attention.overlay(img, left, min_side=32)
    b = attention.overlay(img, left[:, ::-1], min_side=32)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a[:, ::-1], b)
    fig = attention.figure(img, np.stack([left, left[:, ::-1], left]))
    assert fig.shape == (260, 960, 3)


def _digit_png(path, index):
    images, _, _ = datasets.digits_arrays()['test']
    Image.fromarray(images[index]).save(path)
    return path


def test_cli_writes_png_that_changes_with_the_image(tmp_path, capsys):
    model = models.get_model('ViT-testing', num_classes=10)  # 32x32, 4x4 patches: an 8x8 grid.
    params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)))['params']
    ckpt = str(tmp_path / 'vit.npz')
    checkpoint.save_npz(ckpt, params)
    pngs = {}
    for idx, mode in ((0, 'rollout'), (5, 'rollout'), (0, 'heads')):
        out = str(tmp_path / f'{idx}_{mode}.png')
        rc = attention.main(['--model', 'ViT-testing', '--checkpoint', ckpt, '--image',
                             _digit_png(str(tmp_path / f'{idx}.png'), idx), '--out', out, '--mode', mode])
        assert rc == 0, capsys.readouterr().err
        pngs[idx, mode] = np.asarray(Image.open(out).convert('RGB'))
    assert 'rollout, 8x8 patch grid' in capsys.readouterr().out
    assert pngs[0, 'rollout'].shape == pngs[5, 'rollout'].shape == (260, 480, 3)
    assert pngs[0, 'heads'].shape == (260, 720, 3)  # Input + 2 heads.
    assert np.abs(pngs[0, 'rollout'].astype(int) - pngs[5, 'rollout']).sum() > 1000
    rc = attention.main(['--model', 'ViT-testing', '--checkpoint', str(tmp_path / 'missing.npz'), '--image',
                         str(tmp_path / '0.png'), '--out', str(tmp_path / 'x.png')])
    assert rc == 2 and 'missing.npz' in capsys.readouterr().err
