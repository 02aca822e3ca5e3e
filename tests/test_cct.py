"""Compact Transformers (ViT-Lite, CVT, CCT): parameter counts, token counts, and parity with a PyTorch restatement
of the official `TransformerClassifier` (random weights)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import convert, models
from vit_jax.models import layers

# Exact counts of this implementation; the comment gives the published figure (README / paper table).
PINNED = {
    'CCT-2/3x2': 283_723,  # 0.284M (README), 0.28M (paper)
    'CCT-4/3x2': 482_123,  # 0.482M
    'CCT-6/3x1': 3_233_803,  # README 3.168M = this minus the 256x256 position embedding (= cct_6_3x1_32_sine)
    'CCT-6/3x2': 3_326_923,  # 3.327M
    'CCT-7/3x1': 3_760_139,  # 3.760M (README), 3.76M (paper)
    'CCT-7/3x2': 3_853_259,  # 3.853M (README), 3.85M (paper)
    'CCT-7/7x2': 4_573_735,  # 102 classes at 224 (Flowers); no published count
    'CCT-14/7x2': 22_367_273,  # 22.36M at 224 (README)
    'cct_14_7x2_384': 22_513_193,  # 22.51M at 384 (README)
    'ViT-Lite-7/4': 3_716_874,  # 3.717M (README), 3.72M (paper)
    'ViT-Lite-7/8': 3_741_450,  # 3.74M (paper)
    'ViT-Lite-7/16': 3_885_834,  # 3.89M (paper)
    'CVT-7/4': 3_716_619,  # 3.717M (README), 3.72M (paper)
    'CVT-7/8': 3_741_195,  # 3.74M (paper)
}
# Published figures with three decimals: the counts must agree to 0.01M (the tolerance).
PUBLISHED_M = {'CCT-2/3x2': 0.284, 'CCT-4/3x2': 0.482, 'CCT-6/3x2': 3.327, 'CCT-7/3x2': 3.853,
               'CCT-7/3x1': 3.760, 'ViT-Lite-7/4': 3.717, 'CVT-7/4': 3.717, 'CCT-14/7x2': 22.36,
               'cct_14_7x2_384': 22.51, 'cct_6_3x1_32_sine': 3.168}


@pytest.mark.parametrize('name', sorted(PINNED))
def test_param_counts(name):
    assert models.count_params(name) == PINNED[name]


@pytest.mark.parametrize('name', sorted(PUBLISHED_M))
def test_published_counts_within_tolerance(name):
    assert abs(models.count_params(name) / 1e6 - PUBLISHED_M[name]) <= 0.01


def test_every_official_variant_registered():
    names = set(models.list_models('cct'))
    official = [f'cct_{n}_32{s}' for n in ('2_3x2', '4_3x2', '6_3x1', '6_3x2', '7_3x1', '7_3x2') for s in ('', '_sine')]
    official += ['cct_7_3x1_32_c100', 'cct_7_3x1_32_sine_c100', 'cct_7_7x2_224', 'cct_7_7x2_224_sine',
                 'cct_14_7x2_224', 'cct_14_7x2_384', 'cct_14_7x2_384_fl']
    official += [f'{f}_{n}_4_32{s}' for f in ('vit', 'cvt') for n in (2, 4, 6, 7) for s in ('', '_sine')]
    for n in official:
        models.get_entry(n)  # Raises if missing (aliases resolve to the paper names).
    for n in ('CCT-7/3x1', 'CCT-14/7x2', 'ViT-Lite-7/4', 'CVT-7/4', 'CVT-8/4', 'ViT-Lite-7/16'):
        assert n in names


@pytest.mark.parametrize('name,tokens', [('CCT-7/3x1', 256), ('CCT-7/3x2', 64), ('CCT-7/7x2', 196),
                                         ('cct_14_7x2_384', 576), ('CVT-7/4', 64), ('ViT-Lite-7/4', 65)])
def test_token_counts(name, tokens):
    model = models.get_model(name)
    shapes = models.init_shapes(model)
    if model.posemb == 'learnable':
        assert shapes['params']['Transformer']['posembed_input']['pos_embedding'].shape[1] == tokens
    assert model.grid_size[0] * model.grid_size[1] == tokens - (0 if model.seq_pool else 1)


def test_sine_is_constant_and_matches_official_table():
    assert models.count_params('cct_7_3x1_32') - models.count_params('cct_7_3x1_32_sine') == 256 * 256
    table = layers.posemb_sincos_1d(5, 6)[0]
    p, i = np.arange(5)[:, None], np.arange(6)[None]
    ref = p / 10000 ** (2 * (i // 2) / 6)
    ref[:, 0::2], ref[:, 1::2] = np.sin(ref[:, 0::2]), np.cos(ref[:, 1::2])
    np.testing.assert_allclose(table, ref, atol=1e-6)


@pytest.mark.parametrize('name,size', [('CCT-7/3x1', 32), ('CCT-2/3x2', 32), ('CVT-7/4', 32), ('ViT-Lite-7/4', 32),
                                       ('CCT-7/7x2', 224), ('CCT-14/7x2', 224), ('cct_14_7x2_384', 384)])
def test_forward_shapes(name, size):
    # Traced only (jax.eval_shape): the full-size variants at their resolution; numerics are in the parity tests.
    model = models.get_model(name, num_classes=7)
    x = jnp.ones((2, size, size, 3))

    def run(x):
        variables = model.init(jax.random.PRNGKey(0), x)
        return model.apply(variables, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)})

    logits, out = jax.eval_shape(run, x)
    assert logits.shape == (2, 7)
    assert out['pre_logits'].shape == (2, model.hidden_size)
    assert out['tokens_2d'].shape == (2, *model.grid_size, model.hidden_size)
    if model.seq_pool:
        assert out['pool_weights'].shape == (2, model.grid_size[0] * model.grid_size[1])


TINY = dict(hidden_size=16, num_heads=2, num_layers=2)


def test_train_mode_uses_dropout_rng_and_is_deterministic():
    model = models.get_model('CCT-2/3x2', **TINY)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    v = jax.jit(model.init)(jax.random.PRNGKey(0), x)  # Eager init compiles op by op: slow.
    f = jax.jit(lambda v, x, r: model.apply(v, x, train=True, rngs={'dropout': r})[0])
    a, b, c = f(v, x, jax.random.PRNGKey(2)), f(v, x, jax.random.PRNGKey(2)), f(v, x, jax.random.PRNGKey(3))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    logits, out = jax.jit(model.apply)(v, x)
    assert not np.allclose(a, logits)
    np.testing.assert_allclose(out['pool_weights'].sum(-1), 1.0, rtol=1e-5)


def test_wrong_resolution_errors_clearly_and_none_posemb_is_resolution_free():
    model = models.get_model('CVT-2/4', **TINY)
    v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    with pytest.raises(ValueError, match='image_size'):
        jax.eval_shape(model.apply, v, jnp.zeros((1, 48, 48, 3)))
    model = models.get_model('CVT-2/4', posemb='none', **TINY)
    v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    assert jax.eval_shape(model.apply, v, jnp.zeros((1, 48, 48, 3)))[0].shape == (1, 10)


@pytest.mark.slow
def test_scan_matches_loop():
    kw = dict(hidden_size=16, num_heads=2, num_layers=3)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    loop = models.get_model('CCT-7/3x2', **kw)
    v = jax.jit(loop.init)(jax.random.PRNGKey(0), x)
    t = dict(v['params']['Transformer'])
    blocks = [t.pop(f'encoderblock_{i}') for i in range(3)]
    t['encoderblock'] = {'block': jax.tree_util.tree_map(lambda *a: jnp.stack(a), *blocks)}
    scanned = models.get_model('CCT-7/3x2', scan=True, **kw)
    vs = {'params': {**v['params'], 'Transformer': t}}
    np.testing.assert_allclose(jax.jit(loop.apply)(v, x)[0], jax.jit(scanned.apply)(vs, x)[0], atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Parity with a PyTorch restatement of the official code (src/utils/{tokenizer,transformers}.py): the tokenizer, the
# non-standard encoder layer (x += attn(pre_norm(x)); x = norm1(x); x += mlp(x)), SeqPool / class token and the
# position embeddings, with random weights.
# ----------------------------------------------------------------------------------------------------------------
torch = pytest.importorskip('torch')
tnn = torch.nn


class _TorchLayer(tnn.Module):
    def __init__(self, d, heads, ff):
        super().__init__()
        self.heads = heads
        self.pre_norm, self.norm1 = tnn.LayerNorm(d), tnn.LayerNorm(d)
        self.self_attn = tnn.Module()
        self.self_attn.qkv = tnn.Linear(d, 3 * d, bias=False)
        self.self_attn.proj = tnn.Linear(d, d)
        self.linear1, self.linear2 = tnn.Linear(d, ff), tnn.Linear(ff, d)

    def attn(self, x):
        b, n, c = x.shape
        q, k, v = self.self_attn.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(-1)
        return self.self_attn.proj((a @ v).transpose(1, 2).reshape(b, n, c))

    def forward(self, x):
        x = x + self.attn(self.pre_norm(x))
        x = self.norm1(x)
        return x + self.linear2(torch.nn.functional.gelu(self.linear1(x)))


class _TorchCompact(tnn.Module):
    def __init__(self, *, d, heads, ratio, depth, classes, convs, k, patch, seq_pool, posemb, seq_len):
        super().__init__()
        self.tokenizer = tnn.Module()
        if patch:
            self.tokenizer.conv_layers = tnn.Sequential(tnn.Sequential(tnn.Conv2d(3, d, patch, patch)))
        else:
            s, p = max(1, k // 2 - 1), max(1, k // 2)
            widths = [3] + [64] * (convs - 1) + [d]
            self.tokenizer.conv_layers = tnn.Sequential(*[
                tnn.Sequential(tnn.Conv2d(widths[i], widths[i + 1], k, s, p, bias=False), tnn.ReLU(),
                               tnn.MaxPool2d(3, 2, 1)) for i in range(convs)])
        self.classifier = c = tnn.Module()
        self.seq_pool, self.posemb = seq_pool, posemb
        if seq_pool:
            c.attention_pool = tnn.Linear(d, 1)
        else:
            c.class_emb = tnn.Parameter(torch.randn(1, 1, d))
            seq_len += 1
        if posemb == 'learnable':
            c.positional_emb = tnn.Parameter(torch.randn(1, seq_len, d) * 0.2)
        elif posemb == 'sine':
            self.register_buffer('sine', torch.from_numpy(layers.posemb_sincos_1d(seq_len, d)))
        c.blocks = tnn.ModuleList([_TorchLayer(d, heads, int(d * ratio)) for _ in range(depth)])
        c.norm, c.fc = tnn.LayerNorm(d), tnn.Linear(d, classes)
        with torch.no_grad():  # Non-trivial norms.
            for m in self.modules():
                if isinstance(m, tnn.LayerNorm):
                    m.weight.normal_(1.0, 0.2)
                    m.bias.normal_(0.0, 0.2)

    def forward(self, x):
        x = self.tokenizer.conv_layers(x).flatten(2).transpose(1, 2)
        c = self.classifier
        if not self.seq_pool:
            x = torch.cat([c.class_emb.expand(x.shape[0], -1, -1), x], 1)
        if self.posemb == 'learnable':
            x = x + c.positional_emb
        elif self.posemb == 'sine':
            x = x + self.sine
        for blk in c.blocks:
            x = blk(x)
        x = c.norm(x)
        if self.seq_pool:
            x = (torch.softmax(c.attention_pool(x), dim=1).transpose(-1, -2) @ x).squeeze(-2)
        else:
            x = x[:, 0]
        return c.fc(x)


@pytest.mark.parametrize('name,kw,posemb', [
    ('CCT-7/3x2', dict(k=3, convs=2, patch=0, seq_pool=True), 'learnable'),
    ('CCT-7/7x2', dict(k=7, convs=2, patch=0, seq_pool=True), 'sine'),
    ('CVT-7/4', dict(k=0, convs=0, patch=4, seq_pool=True), 'sine'),
    ('ViT-Lite-7/4', dict(k=0, convs=0, patch=4, seq_pool=False), 'learnable'),
    ('ViT-Lite-7/4', dict(k=0, convs=0, patch=4, seq_pool=False), 'none'),
])
def test_parity_with_official_layout(name, kw, posemb):
    size = 64 if kw['k'] == 7 else 32
    over = dict(hidden_size=32, num_heads=2, mlp_ratio=2.0, num_layers=2, image_size=size, posemb=posemb)
    model = models.get_model(name, **over)
    grid = model.grid_size
    torch.manual_seed(0)
    ref = _TorchCompact(d=32, heads=2, ratio=2.0, depth=2, classes=10, posemb=posemb, seq_len=grid[0] * grid[1],
                        **kw).eval()
    sd = {k: v for k, v in ref.state_dict().items() if k != 'sine'}
    model = models.get_model(name, num_classes=10, **over)
    variables = convert.from_official('cct', sd, model)
    x = np.random.RandomState(0).randn(2, size, size, 3).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    got = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x))[0])
    assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()


def test_converter_rejects_mismatched_state_dict():
    torch.manual_seed(0)
    ref = _TorchCompact(d=32, heads=2, ratio=2.0, depth=2, classes=10, posemb='learnable', seq_len=64, k=3, convs=2,
                        patch=0, seq_pool=True)
    with pytest.raises(convert.ConversionError, match='shape mismatches'):
        convert.from_official('cct', ref.state_dict(), models.get_model(
            'CCT-7/3x2', hidden_size=32, num_heads=2, mlp_ratio=2.0, num_layers=2, image_size=64))
