"""The porting package: official checkpoint layouts through `convert.from_official`, the one converter CLI, the `.npz`
round trip into `checkpoint.load_pretrained` / `config.init_from`, and `models/` free of conversion code.

Each `_official_*` builder lists the keys and shapes the authors' PyTorch modules put in `state_dict()` for a tiny
configuration, written from their code (module attribute names and constructor arguments; the file and class are
named in each docstring). Values are random: these tests pin names, shapes and the bookkeeping (every key consumed,
every variable provided); the parity of the converted models with the official forward passes is tested in the family
test files (test_cct, test_dhvt, test_t2t, test_crossvit, test_queryotr, test_inception_vgg).
"""

import ast
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import unilm_block
from _porting_common import RandomStateDict

from vit_jax import checkpoint, convert, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rand(shape, seed=[0]):
    seed[0] += 1
    return np.random.default_rng(seed[0]).normal(size=shape).astype(np.float32) * 0.1


# ----------------------------------------------------------------------------------------------------------------
# Official layouts (tiny configurations).
# ----------------------------------------------------------------------------------------------------------------
def _cct_block(sd, prefix, d, ffn):
    """One `TransformerEncoderLayer` of CCT and ViT-Lite (Compact-Transformers): pre_norm, self_attn.qkv (no bias),
    self_attn.proj, linear1 (D -> ffn), norm1, linear2."""
    sd.ln(f'{prefix}.pre_norm', d)
    sd.linear(f'{prefix}.self_attn.qkv', 3 * d, d, bias=False)
    sd.linear(f'{prefix}.self_attn.proj', d, d)
    sd.linear(f'{prefix}.linear1', ffn, d)
    sd.ln(f'{prefix}.norm1', d)
    sd.linear(f'{prefix}.linear2', d, ffn)


def _official_cct(d=32, layers=1, classes=10, ffn=64):
    """SHI-Labs/Compact-Transformers `src/cct.py` CCT(kernel 3, 2 convs, seq_pool, learnable): `Tokenizer` ->
    `tokenizer.conv_layers.{i}.0` (Conv2d, no bias; widths 3 -> in_planes=64 -> D), `TransformerClassifier` ->
    `classifier.{attention_pool, positional_emb, blocks.{i}.{pre_norm, self_attn.qkv (no bias), self_attn.proj,
    linear1, norm1, linear2}, norm, fc}`. 32 px -> two conv+maxpool(3, 2, 1) stages -> 8x8 = 64 tokens."""
    sd = RandomStateDict()
    sd.conv('tokenizer.conv_layers.0.0', 64, 3, 3, bias=False)
    sd.conv('tokenizer.conv_layers.1.0', d, 64, 3, bias=False)
    sd.linear('classifier.attention_pool', 1, d)
    sd.add('classifier.positional_emb', (1, 64, d))
    for i in range(layers):
        _cct_block(sd, f'classifier.blocks.{i}', d, ffn)
    sd.ln('classifier.norm', d)
    sd.linear('classifier.fc', classes, d)
    model = models.get_model('CCT-7/3x2', hidden_size=d, num_heads=2, mlp_ratio=ffn / d, num_layers=layers,
                             image_size=32, num_classes=classes)
    return sd, model


def _official_vit_lite(d=32, classes=10):
    """`src/vit.py` ViT-Lite(patch 4, learnable): `tokenizer.conv_layers.0.0` (Conv2d k=stride=4 with bias),
    `classifier.class_emb` (1, 1, D), `classifier.positional_emb` (1, 64 + 1, D) (sequence_length += 1 for the class
    token), blocks as CCT."""
    sd = RandomStateDict()
    sd.conv('tokenizer.conv_layers.0.0', d, 3, 4)
    sd.add('classifier.class_emb', (1, 1, d))
    sd.add('classifier.positional_emb', (1, 65, d))
    _cct_block(sd, 'classifier.blocks.0', d, 2 * d)
    sd.ln('classifier.norm', d)
    sd.linear('classifier.fc', classes, d)
    model = models.get_model('ViT-Lite-7/4', hidden_size=d, num_heads=2, mlp_ratio=2.0, num_layers=1,
                             num_classes=classes)
    return sd, model


def _official_dhvt(c=32, heads=4, layers=1, classes=10, ratio=2.0):
    """ArieSeirack/DHVT `vision_transformer.py` VisionTransformer(apply_dhvt=True, patch 4): `patch_embed`
    (ConvPatchEmbed: `pre_affine`/`post_affine` Affine alpha/beta (1, C, 1, 1); `proj` = Sequential(conv3x3(3, C/2, 2),
    GELU, conv3x3(C/2, C, 2)), each conv3x3 a Sequential(Conv2d no bias, SyncBatchNorm)), `cls_token`,
    `blocks.{i}` (DHVT_Block: `norm1`, `attn` HI_Attention {qkv, proj, ht_proj Linear(C/h, C), ht_norm LN(C/h),
    pos_embed (1, h, C)}, `norm2`, `mlp` DAFF {conv1 1x1, conv2 depthwise 3x3, conv3 1x1, bn1..3, compress
    Linear(C, C/4), excitation Linear(C/4, C)}), `norm`, `head`."""
    sd = RandomStateDict()
    sd.add('patch_embed.pre_affine.alpha', (1, 3, 1, 1))
    sd.add('patch_embed.pre_affine.beta', (1, 3, 1, 1))
    sd.conv('patch_embed.proj.0.0', c // 2, 3, 3, bias=False)
    sd.bn('patch_embed.proj.0.1', c // 2)
    sd.conv('patch_embed.proj.2.0', c, c // 2, 3, bias=False)
    sd.bn('patch_embed.proj.2.1', c)
    sd.add('patch_embed.post_affine.alpha', (1, c, 1, 1))
    sd.add('patch_embed.post_affine.beta', (1, c, 1, 1))
    sd.add('cls_token', (1, 1, c))
    h = int(c * ratio)
    for i in range(layers):
        b = f'blocks.{i}'
        sd.ln(f'{b}.norm1', c)
        sd.linear(f'{b}.attn.qkv', 3 * c, c)
        sd.linear(f'{b}.attn.proj', c, c)
        sd.linear(f'{b}.attn.ht_proj', c, c // heads)
        sd.ln(f'{b}.attn.ht_norm', c // heads)
        sd.add(f'{b}.attn.pos_embed', (1, heads, c))
        sd.ln(f'{b}.norm2', c)
        sd.conv(f'{b}.mlp.conv1', h, c, 1)
        sd.conv(f'{b}.mlp.conv2', h, 1, 3)
        sd.conv(f'{b}.mlp.conv3', c, h, 1)
        sd.bn(f'{b}.mlp.bn1', h)
        sd.bn(f'{b}.mlp.bn2', h)
        sd.bn(f'{b}.mlp.bn3', c)
        sd.linear(f'{b}.mlp.compress', c // 4, c)
        sd.linear(f'{b}.mlp.excitation', c, c // 4)
    sd.ln('norm', c)
    sd.linear('head', classes, c)
    model = models.get_model('DHVT-T-CIFAR/4', hidden_size=c, num_heads=heads, num_layers=layers, mlp_ratio=ratio,
                             image_size=16, num_classes=classes)
    return sd, model


def _official_t2t(d=32, token_dim=16, layers=1, classes=10):
    """yitu-opensource/T2T-ViT `models/t2t_vit.py` T2T_ViT(tokens_type='performer'): `tokens_to_token.attention1`
    = Token_performer(dim=3*7*7, in_dim=token_dim, kernel_ratio=0.5) {kqv Linear(dim, 3e), proj, norm1 LN(dim), norm2
    LN(e), mlp Sequential(Linear, GELU, Linear, Dropout) -> mlp.0 / mlp.2, w (m = e/2, e) frozen Parameter};
    `attention2` with dim = token_dim*3*3; `project` Linear(token_dim*9, D); `cls_token`; `pos_embed` (the sinusoid
    table, a frozen Parameter); `blocks.{i}` {norm1, attn.qkv (no bias), attn.proj, norm2, mlp.fc1, mlp.fc2}; `norm`;
    `head`. 32 px -> soft splits with strides 4, 2, 2 -> 2x2 tokens."""
    sd = RandomStateDict()
    for i, dim in ((1, 3 * 49), (2, token_dim * 9)):
        p = f'tokens_to_token.attention{i}'
        sd.linear(f'{p}.kqv', 3 * token_dim, dim)
        sd.linear(f'{p}.proj', token_dim, token_dim)
        sd.ln(f'{p}.norm1', dim)
        sd.ln(f'{p}.norm2', token_dim)
        sd.linear(f'{p}.mlp.0', token_dim, token_dim)
        sd.linear(f'{p}.mlp.2', token_dim, token_dim)
        sd.add(f'{p}.w', (token_dim // 2, token_dim))
    sd.linear('tokens_to_token.project', d, token_dim * 9)
    sd.add('cls_token', (1, 1, d))
    from vit_jax.porting.common import sinusoid_table

    sd['pos_embed'] = sinusoid_table(4 + 1, d)  # get_sinusoid_encoding(n_position=num_patches + 1, d_hid=D).
    for i in range(layers):
        b = f'blocks.{i}'
        sd.ln(f'{b}.norm1', d)
        sd.linear(f'{b}.attn.qkv', 3 * d, d, bias=False)
        sd.linear(f'{b}.attn.proj', d, d)
        sd.ln(f'{b}.norm2', d)
        sd.linear(f'{b}.mlp.fc1', 2 * d, d)
        sd.linear(f'{b}.mlp.fc2', d, 2 * d)
    sd.ln('norm', d)
    sd.linear('head', classes, d)
    model = models.get_model('T2T-ViT-14', hidden_size=d, num_heads=2, num_layers=layers, mlp_ratio=2.0,
                             token_dim=token_dim, image_size=32, num_classes=classes)
    return sd, model


def _official_crossvit(dims=(16, 32), heads=(2, 4), depths=(1, 2), ratios=(2.0, 3.0), encoders=2, classes=5):
    """IBM/CrossViT `models/crossvit.py` VisionTransformer(img_size=(36, 32), patch_size=(12, 16),
    depth=[[1, 2, 0]] * 2): `patch_embed.{b}.proj` (Conv2d k=stride=patch), `pos_embed.{b}` (1, 1 + N_b, D_b) and
    `cls_token.{b}` (ParameterLists), `blocks.{k}` (MultiScaleBlock: `blocks.{b}.{j}` ViT Blocks {norm1, attn.qkv,
    attn.proj, norm2, mlp.fc1, mlp.fc2}; `projs.{b}` = Sequential(LN(D_b), GELU, Linear(D_b, D_b')); `fusion.{b}` =
    CrossAttentionBlock(D_b', heads_b', has_mlp=False) {norm1, attn.wq/wk/wv/proj} stored directly for depth[-1] = 0;
    `revert_projs.{b}` = Sequential(LN(D_b'), GELU, Linear(D_b', D_b))), `norm.{b}`, `head.{b}`."""
    sd = RandomStateDict()
    tokens = ((36 // 12) ** 2, (32 // 16) ** 2)
    for b in range(2):
        sd.conv(f'patch_embed.{b}.proj', dims[b], 3, (12, 16)[b])
        sd.add(f'pos_embed.{b}', (1, 1 + tokens[b], dims[b]))
        sd.add(f'cls_token.{b}', (1, 1, dims[b]))
        sd.ln(f'norm.{b}', dims[b])
        sd.linear(f'head.{b}', classes, dims[b])
    for k in range(encoders):
        p = f'blocks.{k}'
        for b in range(2):
            d, o = dims[b], dims[1 - b]
            for j in range(depths[b]):
                q = f'{p}.blocks.{b}.{j}'
                sd.ln(f'{q}.norm1', d)
                sd.linear(f'{q}.attn.qkv', 3 * d, d)
                sd.linear(f'{q}.attn.proj', d, d)
                sd.ln(f'{q}.norm2', d)
                sd.linear(f'{q}.mlp.fc1', int(d * ratios[b]), d)
                sd.linear(f'{q}.mlp.fc2', d, int(d * ratios[b]))
            sd.ln(f'{p}.projs.{b}.0', d)
            sd.linear(f'{p}.projs.{b}.2', o, d)
            f = f'{p}.fusion.{b}'
            sd.ln(f'{f}.norm1', o)
            for n in ('wq', 'wk', 'wv', 'proj'):
                sd.linear(f'{f}.attn.{n}', o, o)
            sd.ln(f'{p}.revert_projs.{b}.0', o)
            sd.linear(f'{p}.revert_projs.{b}.2', d, o)
    model = models.get_model('CrossViT-S', image_size=32, branch_sizes=(36, 32), embed_dims=dims, num_heads=heads,
                             depths=depths, mlp_ratios=ratios, num_encoders=encoders, num_classes=classes)
    return sd, model


def _official_queryotr(d=32, mlp=64, layers=2, dec_layers=1, qem_blocks=1, patch=4, overlap=2):
    """Kaiseem/QueryOTR `models/VITGen.py` TransGen (saved as {'gen': state_dict}): `transformer_encoder` (the
    BEiT/MAE-style `models/VIT.py` VisionTransformer: patch_embed.proj, blocks.{i}.{norm1, attn.{qkv (no bias),
    q_bias, v_bias, proj}, norm2, mlp.fc1, mlp.fc2}, norm, and an unused classifier `head`), `qem`
    (QueryExpansionModule: noise_mlp Sequential(Linear(D/8, D/4), LN, act, Linear(D/4, D/2), LN, act, Linear(D/2, D)),
    res_blocks.{i}.{conv1 3x3, conv2 DeformConv (no bias) with conv2.conv_offset_mask Conv2d(D, 27, 3), norm1/norm2
    affine InstanceNorm2d}, norm, embed), `transformer_decoder.{i}` (CorssAttnBlock: norm1, attn, norm2, cross_attn
    {q, kv, q_bias, v_bias, proj}, norm3, mlp), `psm` (PatchSmoothingModule: proj ConvTranspose2d(D, 3,
    k = patch + 2 overlap, no bias) weight (D, 3, k, k), bias (1, 3, k, k))."""
    sd = RandomStateDict()
    e = 'transformer_encoder'
    sd.conv(f'{e}.patch_embed.proj', d, 3, patch)
    for i in range(layers):
        unilm_block(sd, f'{e}.blocks.{i}', d, mlp)
    sd.ln(f'{e}.norm', d)
    sd.linear(f'{e}.head', 1000, d)
    for j, (o, i) in ((0, (d // 4, d // 8)), (3, (d // 2, d // 4)), (6, (d, d // 2))):
        sd.linear(f'qem.noise_mlp.{j}', o, i)
    sd.ln('qem.noise_mlp.1', d // 4)
    sd.ln('qem.noise_mlp.4', d // 2)
    for i in range(qem_blocks):
        b = f'qem.res_blocks.{i}'
        sd.conv(f'{b}.conv1', d, d, 3)
        sd.conv(f'{b}.conv2', d, d, 3, bias=False)
        sd.conv(f'{b}.conv2.conv_offset_mask', 27, d, 3)
        sd.ln(f'{b}.norm1', d)
        sd.ln(f'{b}.norm2', d)
    sd.ln('qem.norm', d)
    sd.linear('qem.embed', d, d)
    for i in range(dec_layers):
        b = f'transformer_decoder.{i}'
        for n in ('norm1', 'norm2', 'norm3'):
            sd.ln(f'{b}.{n}', d)
        sd.linear(f'{b}.attn.qkv', 3 * d, d, bias=False)
        sd.linear(f'{b}.cross_attn.q', d, d, bias=False)
        sd.linear(f'{b}.cross_attn.kv', 2 * d, d, bias=False)
        for a in ('attn', 'cross_attn'):
            sd.add(f'{b}.{a}.q_bias', (d,))
            sd.add(f'{b}.{a}.v_bias', (d,))
            sd.linear(f'{b}.{a}.proj', d, d)
        sd.linear(f'{b}.mlp.fc1', mlp, d)
        sd.linear(f'{b}.mlp.fc2', d, mlp)
    k = patch + 2 * overlap
    sd.add('psm.proj.weight', (d, 3, k, k))
    sd.add('psm.bias', (1, 3, k, k))
    model = models.get_model('QueryOTR-testing')
    return sd, model


def _official_vgg(depth=11, divisor=16, classes=7):
    """torchvision `vgg11()`: `features.{idx}` Conv2d 3x3 (idx counts convs, ReLUs and max pools),
    `classifier.{0, 3, 6}` Linear(512*7*7, 4096), Linear(4096, 4096), Linear(4096, classes) (widths / divisor)."""
    sd = RandomStateDict()
    widths = [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M']  # torchvision cfg 'A' (VGG11).
    idx, cin = 0, 3
    for w in widths:
        if w == 'M':
            idx += 1
            continue
        sd.conv(f'features.{idx}', w // divisor, cin, 3)
        cin = w // divisor
        idx += 2
    sd.linear('classifier.0', 4096 // divisor, cin * 49)
    sd.linear('classifier.3', 4096 // divisor, 4096 // divisor)
    sd.linear('classifier.6', classes, 4096 // divisor)
    model = models.get_model('VGG19', depth=depth, width_divisor=divisor, num_classes=classes, image_size=32)
    return sd, model


def _official_inception(classes=1008):
    """torchvision `inception_v3(aux_logits=True)` / pytorch-fid `FIDInceptionA/C/E`: every BasicConv2d is
    `{name}.conv.weight` (no bias) + `{name}.bn.{weight, bias, running_mean, running_var, num_batches_tracked}` under
    the attribute path (`Conv2d_1a_3x3`, `Mixed_5b.branch5x5_1`, ...), the auxiliary classifier `AuxLogits.*`
    (not built here) and `fc`. The BasicConv2d paths and widths are torchvision's; here they are enumerated from the
    model's tree (same names by construction) and spot-checked against torchvision's below."""
    model = models.get_model('InceptionV3-FID', num_classes=classes, image_size=75)
    sd = RandomStateDict()
    flat = checkpoint.flatten(models.init_shapes(model)['params'])
    for k, v in flat.items():
        if k.endswith('/conv/kernel'):
            kh, kw, i, o = v.shape
            sd.add(k[:-len('/conv/kernel')].replace('/', '.') + '.conv.weight', (o, i, kh, kw))
        elif k.endswith('/bn/scale'):
            sd.bn(k[:-len('/bn/scale')].replace('/', '.') + '.bn', v.shape[0])
    sd.linear('fc', classes, 2048)
    sd.conv('AuxLogits.conv0.conv', 128, 768, 1, bias=False)  # torchvision's auxiliary head: ignored.
    sd.linear('AuxLogits.fc', 1000, 768)
    return sd, model


def test_inception_layout_has_torchvisions_names():
    sd, model = _official_inception()
    # torchvision.models.inception: Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride 2); Mixed_5b = InceptionA(192, 32):
    # branch5x5_1 BasicConv2d(192, 48, 1), branch_pool BasicConv2d(192, 32, 1); Mixed_6e = InceptionC(768, 192):
    # branch7x7_2 BasicConv2d(192, 192, (1, 7)); Mixed_7c = InceptionE(2048): branch3x3dbl_3b BasicConv2d(384, 384,
    # (3, 1)); fc Linear(2048, num_classes).
    want = {'Conv2d_1a_3x3.conv.weight': (32, 3, 3, 3), 'Mixed_5b.branch5x5_1.conv.weight': (48, 192, 1, 1),
            'Mixed_5b.branch_pool.conv.weight': (32, 192, 1, 1), 'Mixed_6e.branch7x7_2.conv.weight': (192, 192, 1, 7),
            'Mixed_7c.branch3x3dbl_3b.conv.weight': (384, 384, 3, 1), 'Mixed_7c.branch3x3dbl_3b.bn.running_var': (384,),
            'fc.weight': (1008, 2048)}
    for k, shape in want.items():
        assert tuple(sd[k].shape) == shape, k
    variables = convert.from_official('inception', dict(sd), model)
    assert set(variables) == {'params', 'batch_stats'}
    pool3 = model.apply(variables, jnp.zeros((1, 75, 75, 3)), train=False)[1]['pool3']
    assert pool3.shape == (1, 2048) and np.isfinite(np.asarray(pool3)).all()


OFFICIAL = {
    'cct': _official_cct, 'cct/vit_lite': _official_vit_lite, 'dhvt': _official_dhvt, 't2t': _official_t2t,
    'crossvit': _official_crossvit, 'queryotr': _official_queryotr, 'vgg': _official_vgg,
}
# A key of each layout whose shape decides a model variable's shape (for the wrong-shape test), and that variable.
HEAD_KEYS = {
    'cct': ('classifier.fc.weight', 'head/kernel'), 'cct/vit_lite': ('classifier.fc.weight', 'head/kernel'),
    'dhvt': ('head.weight', 'head/kernel'), 't2t': ('head.weight', 'head/kernel'),
    'crossvit': ('head.1.weight', 'head_1/kernel'), 'queryotr': ('qem.embed.weight', 'qem/embed/kernel'),
    'vgg': ('classifier.6.weight', 'fc8/kernel'),
}


def _family(name):
    return name.split('/')[0]


def test_official_families_are_listed_and_each_names_its_models():
    fams = convert.official_families()
    for f in ('cct', 'dhvt', 't2t', 'crossvit', 'queryotr', 'inception', 'vgg'):
        assert f in fams
    from vit_jax.porting import registry

    names = models.list_models()
    for f in fams:
        fam = registry.get_family(f)
        assert fam.source and fam.doc, f
        assert any(n.startswith(p) for p in fam.models for n in names), (f, fam.models)


@pytest.mark.parametrize('name', sorted(OFFICIAL))
def test_official_layout_converts_every_key_and_runs(name):
    sd, model = OFFICIAL[name]()
    variables = convert.from_official(_family(name), dict(sd), model)  # Raises on any key left unread.
    shapes = models.init_shapes(model)
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(variables)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=models.input_shape(model, 2)), jnp.float32)
    y, _ = model.apply(variables, x, train=False)
    assert np.isfinite(np.asarray(y)).all()


def test_official_values_land_where_the_official_code_reads_them():
    """Spot checks of the layout arithmetic: q/k/v split of the fused qkv, per-head kernels, Linear transposes."""
    sd, model = _official_cct()
    v = convert.from_official('cct', dict(sd), model)['params']
    qkv = sd['classifier.blocks.0.self_attn.qkv.weight']  # (3D, D): rows q, k, v; head h = rows [h*hd, (h+1)*hd).
    blk = v['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_1']
    np.testing.assert_array_equal(blk['key']['kernel'][:, 1, :], qkv[32 + 16:32 + 32].T)
    np.testing.assert_array_equal(v['head']['kernel'], sd['classifier.fc.weight'].T)
    np.testing.assert_array_equal(v['tokenizer']['conv_1']['kernel'],
                                  sd['tokenizer.conv_layers.1.0.weight'].transpose(2, 3, 1, 0))
    sd, model = _official_dhvt()
    v = convert.from_official('dhvt', dict(sd), model)
    np.testing.assert_array_equal(v['batch_stats']['sope']['bn_1']['var'], sd['patch_embed.proj.2.1.running_var'])


@pytest.mark.parametrize('name', sorted(OFFICIAL))
def test_official_errors_name_the_key(name):
    sd, model = OFFICIAL[name]()
    fam = _family(name)
    extra = dict(sd, **{'blocks_extra.9.weight': np.zeros(3, np.float32)})
    with pytest.raises(convert.ConversionError, match=r"unconverted.*'blocks_extra\.9\.weight'"):
        convert.from_official(fam, extra, model)
    key, var = HEAD_KEYS[name]
    missing = {k: v for k, v in sd.items() if k != key}
    with pytest.raises(convert.ConversionError, match=f"no key '{key}'|does not provide.*{var}"):
        convert.from_official(fam, missing, model)
    bad = dict(sd, **{key: np.zeros((sd[key].shape[0] + 1,) + sd[key].shape[1:], np.float32)})
    with pytest.raises(convert.ConversionError, match=f'shape mismatches.*{var}'):
        convert.from_official(fam, bad, model)


def test_queryotr_fixed_table_is_checked_not_loaded():
    """A stored `pos_embed` (use_learnable_pos_emb=True, or MAE's table saved as a buffer) is accepted only when it is
    the fixed sin-cos table the model rebuilds; a learnable one would be lost, so it is refused."""
    from vit_jax.porting.common import sinusoid_table

    sd, model = _official_queryotr()
    n = (56 // 4) ** 2
    convert.from_official('queryotr', dict(sd, **{'transformer_encoder.pos_embed': sinusoid_table(n, 32)}), model)
    with pytest.raises(convert.ConversionError, match="'transformer_encoder.pos_embed' is not the fixed sin-cos table"):
        convert.from_official('queryotr', dict(sd, **{'transformer_encoder.pos_embed': _rand((1, n, 32))}), model)


def test_fixed_sine_tables_are_checked_not_dropped():
    """CCT's `_sine` models and T2T-ViT store their fixed table; a learned table in its place is refused."""
    sd, model = _official_t2t()
    with pytest.raises(convert.ConversionError, match="'pos_embed' is not the fixed sin-cos table"):
        convert.from_official('t2t', dict(sd, pos_embed=_rand(sd['pos_embed'].shape)), model)
    sd, _ = _official_cct()
    sine = models.get_model('CCT-7/3x2', hidden_size=32, num_heads=2, mlp_ratio=2.0, num_layers=1, image_size=32,
                            num_classes=10, posemb='sine')
    with pytest.raises(convert.ConversionError, match="'classifier.positional_emb' is not the fixed sin-cos table"):
        convert.from_official('cct', dict(sd), sine)  # A learned table into a sine model.
    from vit_jax.porting.common import sinusoid_table

    convert.from_official('cct', dict(sd, **{'classifier.positional_emb': sinusoid_table(64, 32)}), sine)


def test_wrong_model_class_is_refused():
    sd, _ = _official_cct()
    with pytest.raises(convert.ConversionError, match='Compact Transformer'):
        convert.from_official('cct', dict(sd), models.get_model('ViT-testing'))
    with pytest.raises(ValueError, match='Unknown official family'):
        convert.from_official('no_such_family', dict(sd), models.get_model('ViT-testing'))


def test_checkpoint_wrappers_and_module_prefix_are_removed():
    sd, model = _official_cct()
    want = convert.from_official('cct', dict(sd), model)
    for wrapped in ({'model': {f'module.{k}': v for k, v in sd.items()}, 'epoch': np.array(3)},
                    {'state_dict': dict(sd), 'optimizer': {'lr': np.array(0.1)}}):
        got = convert.from_official('cct', wrapped, model)
        for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------------------------
# The command line and the .npz round trip.
# ----------------------------------------------------------------------------------------------------------------
def test_cli_official_pth_with_wrapper_and_module_prefix(tmp_path, capsys):
    torch = pytest.importorskip('torch')
    sd, model = _official_cct()
    want = convert.from_official('cct', dict(sd), model)
    pth = str(tmp_path / 'cct.pth')
    torch.save({'model': {f'module.{k}': torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, 'epoch': 7}, pth)
    out = str(tmp_path / 'cct.npz')
    assert convert.main(['--from=official:cct', '--model=CCT-7/3x2', '--model.hidden_size=32', '--model.num_heads=2',
                         '--model.mlp_ratio=2.0', '--model.num_layers', '1', '--model.image_size=32',
                         '--model.num_classes=10', pth, '--out', out]) == 0
    printed = capsys.readouterr().out
    assert '--config.model.name=CCT-7/3x2' in printed and '--config.model.num_layers=1' in printed
    assert 'Input: 32x32 pixels' in printed and f'--config.init_from.path={out}' in printed
    # Loads like a release file: into a freshly initialised tree of the same model.
    init = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), models.init_shapes(model)['params'])
    loaded = checkpoint.load_pretrained(init, out)
    for a, b in zip(jax.tree_util.tree_leaves(want['params']), jax.tree_util.tree_leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    assert checkpoint.load_npz_model_state(out) == {}


def test_cli_official_safetensors_with_batch_stats(tmp_path, capsys):
    from safetensors.numpy import save_file

    sd, model = _official_dhvt()
    want = convert.from_official('dhvt', dict(sd), model)
    path = str(tmp_path / 'dhvt.safetensors')
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, path)
    out = str(tmp_path / 'dhvt.npz')
    assert convert.main(['--from=official:dhvt', '--model=DHVT-T-CIFAR/4', '--model.hidden_size=32',
                         '--model.num_heads=4', '--model.num_layers=1', '--model.mlp_ratio=2.0',
                         '--model.image_size=16', '--model.num_classes=10', path, '--out', out]) == 0
    assert 'model_state (batch_stats)' in capsys.readouterr().out
    shapes = models.init_shapes(model)
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    params = checkpoint.load_pretrained(zeros['params'], out)
    state = checkpoint.load_pretrained_model_state({'batch_stats': zeros['batch_stats']}, out)
    got = {'params': params, **state}
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
        np.testing.assert_array_equal(a, b)
    # Inference reads the statistics too (predict's loader).
    p, ms = checkpoint.load_for_inference(out)
    assert set(ms) == {'batch_stats'}
    # A model whose statistics do not match is refused, naming the key.
    other = models.init_shapes(models.get_model('DHVT-T-CIFAR/4', hidden_size=32, num_heads=4, num_layers=1,
                                                mlp_ratio=4.0, image_size=16, num_classes=10))
    other_zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), other['batch_stats'])
    with pytest.raises(checkpoint.CheckpointMismatchError, match='bn1/mean'):
        checkpoint.load_pretrained_model_state({'batch_stats': other_zeros}, out)


def test_cli_errors(tmp_path, capsys):
    torch = pytest.importorskip('torch')
    sd, _ = _official_cct()
    pth = str(tmp_path / 'cct.pth')
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, pth)
    out = str(tmp_path / 'o.npz')
    assert convert.main(['--from=official:cct', pth, '--out', out]) == 1  # No --model.
    assert '--model=<registered name>' in capsys.readouterr().err
    assert convert.main(['--from=official:nope', '--model=CCT-7/3x2', pth, '--out', out]) == 1
    assert 'Unknown official family' in capsys.readouterr().err
    assert convert.main(['--from=official:cct', '--model=CCT-7/3x2', pth, '--out', out]) == 1  # Default depth 7.
    assert "has no key 'classifier.blocks.1.self_attn.qkv.weight'" in capsys.readouterr().err
    assert convert.main(['--from=timm', '--model.hidden_size=3', pth, '--out', out]) == 2
    with pytest.raises(SystemExit):
        convert.main(['--from=official:cct', '--model=CCT-7/3x2', '--bogus', pth, '--out', out])
    torch.save({'model': {'w': torch.zeros(2)}, 'args': _Pickled()}, str(tmp_path / 'p.pth'))
    assert convert.main(['--from=official:cct', '--model=CCT-7/3x2', str(tmp_path / 'p.pth'), '--out', out]) == 1
    assert 'weights_only=True' in capsys.readouterr().err  # Pickled objects are never loaded.
    assert not os.path.exists(out)


class _Pickled:
    """An arbitrary object in a checkpoint file: torch.load(weights_only=True) refuses to unpickle it."""


def test_cli_reads_argparse_namespace_next_to_the_weights(tmp_path):
    """DeiT-style training scripts (DHVT, CrossViT, T2T ...) save `args` (an argparse.Namespace) with the weights."""
    import argparse

    torch = pytest.importorskip('torch')
    sd, _ = _official_cct()
    pth = str(tmp_path / 'cct.pth')
    torch.save({'model': {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, 'epoch': 299,
                'model_ema': {k: torch.from_numpy(np.asarray(v) * 2) for k, v in sd.items()},
                'args': argparse.Namespace(lr=5e-4, model='cct_7_3x2_32')}, pth)
    got = convert.read_torch_state_dict(pth)
    assert sorted(got) == sorted(sd)
    np.testing.assert_array_equal(got['classifier.fc.weight'], sd['classifier.fc.weight'])
    # --key picks another entry (the EMA weights).
    ema = convert.read_torch_state_dict(pth, key='model_ema')
    np.testing.assert_array_equal(ema['classifier.fc.weight'], 2 * sd['classifier.fc.weight'])
    with pytest.raises(ValueError, match="no entry 'state_dict_ema'.*model_ema"):
        convert.read_torch_state_dict(pth, key='state_dict_ema')


def test_cli_partial_encoder_only_checkpoint(tmp_path, capsys):
    """An MAE-pytorch encoder (`{'model': {'encoder.*', 'decoder.*', ...}}`) initialises QueryOTR's encoder."""
    torch = pytest.importorskip('torch')
    sd, model = _official_queryotr()
    mae = {k.replace('transformer_encoder.', 'encoder.'): v for k, v in sd.items()
           if k.startswith('transformer_encoder.') and '.head.' not in k}
    mae['decoder.blocks.0.norm1.weight'] = np.ones(8, np.float32)  # MAE's own decoder: not QueryOTR's.
    mae['mask_token'] = np.zeros((1, 1, 8), np.float32)
    pth = str(tmp_path / 'mae.pth')
    torch.save({'model': {k: torch.from_numpy(np.asarray(v)) for k, v in mae.items()}}, pth)
    out = str(tmp_path / 'enc.npz')
    args = ['--from=official:queryotr', '--model=QueryOTR-testing', pth, '--out', out]
    assert convert.main(args) == 1  # The full model needs the QEM, decoder and PSM.
    assert 'does not provide' in capsys.readouterr().err
    assert convert.main(args + ['--partial']) == 0
    printed = capsys.readouterr().out
    assert "dont_load" in printed and "'qem/.*'" in printed and "'psm/.*'" in printed
    init = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), models.init_shapes(model)['params'])
    loaded = checkpoint.load_pretrained(init, out, dont_load=('qem/.*', 'decoder_.*', 'psm/.*'))
    np.testing.assert_array_equal(loaded['embedding']['kernel'],
                                  sd['transformer_encoder.patch_embed.proj.weight'].transpose(2, 3, 1, 0))


@pytest.mark.slow
def test_init_from_a_converted_npz_loads_batch_stats(tmp_path):
    """config.init_from of a converted DHVT .npz: the run starts from the file's parameters and BN statistics."""
    from vit_jax import config_utils, train

    sd, model = _official_dhvt()
    for k in list(sd):
        if k.endswith('running_mean'):
            sd[k] = np.full_like(sd[k], 100.0)
    npz = str(tmp_path / 'dhvt.npz')
    convert.save_variables(npz, convert.from_official('dhvt', dict(sd), model))
    c = config_utils.load(os.path.join(ROOT, 'configs/quickstart.py'))
    c.model = dict(name='DHVT-T-CIFAR/4', hidden_size=32, num_heads=4, num_layers=1, mlp_ratio=2.0, image_size=8,
                   num_classes=10, patch_size=4)
    c.batch_size, c.total_steps, c.log_every, c.eval_every, c.checkpoint_every = 16, 1, 1, 0, 0
    c.tensorboard = False
    c.evals = {}
    c.init_from = dict(path=npz, dont_load=('head/.*',))
    result = train.train_and_evaluate(c, str(tmp_path / 'run'))
    mean = np.asarray(result['state'].model_state['batch_stats']['sope']['bn_0']['mean'])
    assert (mean > 50).all()  # 0.9 * 100 + 0.1 * batch mean after one step (a fresh start would be ~0).


# ----------------------------------------------------------------------------------------------------------------
# models/ is pure architecture.
# ----------------------------------------------------------------------------------------------------------------
def test_models_import_no_conversion_code():
    banned = {'vit_jax.convert', 'vit_jax.checkpoint', 'vit_jax.porting'}
    offenders = []
    folder = os.path.join(ROOT, 'vit_jax', 'models')
    for fname in sorted(os.listdir(folder)):
        if not fname.endswith('.py'):
            continue
        tree = ast.parse(open(os.path.join(folder, fname)).read())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ''
                if node.level:  # Relative: from .. import convert (vit_jax.models.x -> vit_jax).
                    mod = ('vit_jax' if node.level == 2 else 'vit_jax.models') + (f'.{mod}' if mod else '')
                names = [mod] + [f'{mod}.{a.name}' for a in node.names]
            for n in names:
                if any(n == b or n.startswith(b + '.') for b in banned):
                    offenders.append(f'{fname}:{node.lineno} imports {n}')
    assert not offenders, offenders
