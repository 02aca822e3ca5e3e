"""MILAN: CLIP image tower parity with HuggingFace (random weights), the teacher interface (targets through ln_post +
projection, class-token attention of the last block), the prompting decoder (visible tokens never updated), the
encoder loading into a plain ViT, the loss, and a tiny pretraining run whose loss falls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import init_model, uniform_images

from vit_jax import checkpoint, convert, models
from vit_jax.models import milan
from vit_jax.objectives import milan as milan_obj

# Exact counts of this implementation. MILAN-B/16 (pretraining model, no paper figure): MAE ViT-B's 111,907,840
# minus its two fixed sin-cos tables (252,160) and with a 512-wide instead of 768-wide prediction layer (-131,328).
# The prompting decoder has exactly the parameters of MAE's decoder. CLIP ViT-B/16 image tower: OpenAI's 86.2M.
PINNED = {'MILAN-B/16': 111_524_352, 'CLIP-ViT-B/16': 86_192_640}


@pytest.mark.parametrize('name', sorted(PINNED))
def test_param_counts(name):
    assert models.count_params(name) == PINNED[name]


def test_finetune_model_param_count():
    # MAE / MILAN's fine-tuning ViT-B/16 (timm vit_base_patch16_224, global_pool='avg', fc_norm): 86,567,656, the
    # same as the release ViT-B/16 (fc_norm replaces the final norm).
    assert models.count_params('ViT-B/16', class_token=True, classifier='gap', fc_norm=True) == 86_567_656


def _hf_clip():
    import torch
    import transformers

    cfg = transformers.CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=48, image_size=24, patch_size=4, projection_dim=16,
                                        attn_implementation='eager')
    m = transformers.CLIPVisionModelWithProjection(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.ndim > 1 else 0.5))
    return m


def test_clip_parity_and_teacher_outputs():
    import torch

    hf = _hf_clip()
    model, variables = convert.from_transformers(hf)
    x = np.random.default_rng(0).normal(size=(2, 24, 24, 3)).astype(np.float32)
    with torch.no_grad():
        ref = hf(torch.from_numpy(x.transpose(0, 3, 1, 2)), output_attentions=True)
        vm = hf.vision_model
        tokens_ref = hf.visual_projection(vm.post_layernorm(ref.last_hidden_state)).numpy()
        attn_ref = ref.attentions[-1].mean(1)[:, 0, 1:].numpy()
    (emb, out), state = jax.jit(lambda v, x: model.apply(v, x, mutable=['intermediates']))(variables, jnp.asarray(x))
    diffs = {
        'last_hidden_state': np.abs(np.asarray(out['encoded']) - ref.last_hidden_state.numpy()).max(),
        'image_embeds': np.abs(np.asarray(emb) - ref.image_embeds.numpy()).max(),
        'tokens_proj': np.abs(np.asarray(out['tokens_proj']) - tokens_ref).max(),
    }
    attn = milan.last_block_cls_attention(state['intermediates'])
    diffs['cls_attention'] = np.abs(np.asarray(attn) - attn_ref).max()
    assert all(v <= 1e-4 for v in diffs.values()), diffs
    assert attn.shape == (2, 36) and np.all(np.asarray(attn).sum(-1) < 1.0)  # cls->cls entry dropped.


@pytest.fixture(scope='module')
def tiny():
    return init_model('MILAN-testing', uniform_images((2, 16, 16, 3)))


def test_prompt_decoder_keeps_visible_tokens_fixed(tiny):
    m, v, x = tiny
    assert m.num_keep == 4  # int(16 * 0.25)
    ids = jnp.stack([jax.random.permutation(jax.random.PRNGKey(i), 16) for i in range(2)])
    apply = jax.jit(lambda v, x, ids: m.apply(v, x, ids_shuffle=ids))
    pred, out = apply(v, x, ids)
    assert pred.shape == (2, 17, 16) and out['mask'].shape == (2, 16) and int(out['mask'].sum()) == 24
    # Perturb every decoder block: the prompts (cls + visible) are unchanged, the mask tokens' outputs change.
    p2 = jax.tree_util.tree_map(lambda a: a, v['params'])
    p2 = {**p2, **{k: jax.tree_util.tree_map(lambda a: a + 0.3, p2[k]) for k in p2 if k.startswith('decoder_block')}}
    _, out2 = apply({'params': p2}, x, ids)
    mask = np.asarray(out['mask'])
    t1, t2 = np.asarray(out['decoder_tokens']), np.asarray(out2['decoder_tokens'])
    np.testing.assert_allclose(t1[:, 0], t2[:, 0], atol=1e-6)
    np.testing.assert_allclose(t1[:, 1:][~mask], t2[:, 1:][~mask], atol=1e-6)
    assert np.abs(t1[:, 1:][mask] - t2[:, 1:][mask]).min() > 0


def test_encoder_loads_into_plain_vit(tiny):
    m, v, x = tiny
    feats, _ = jax.jit(m.apply)(v, x)  # No ids: the encoder on every patch.
    vit = models.get_model('ViT-testing', image_size=16, patch_size=4, posemb='sincos2d_mae', num_classes=3,
                           activation='gelu_exact')
    init = jax.jit(vit.init)(jax.random.PRNGKey(1), x)
    params = checkpoint.load_pretrained(init['params'], jax.device_get(v['params']),
                                        dont_load=('head/.*', 'decoder.*', 'mask_token'))
    _, out = jax.jit(vit.apply)({'params': params}, x)
    np.testing.assert_allclose(np.asarray(out['pre_logits']), np.asarray(feats), atol=1e-5)


def test_finetune_config_loads_a_milan_checkpoint(tiny):
    """`milan_b16.py:finetune` (MAE's fine-tuning model, sizes shrunk to MILAN-testing's): the pretrained class token
    and blocks load, the learned position embedding starts from MAE's sin-cos table (what MAE's fine-tuning loads),
    the encoder norm is dropped for `fc_norm` on the mean of the patch tokens."""
    from vit_jax import config_utils

    m, v, x = tiny
    cfg = config_utils.load('configs/milan_b16.py:finetune')
    opts = {k: val for k, val in cfg.model.to_dict().items() if k not in ('name', 'num_classes', 'drop_path_rate')}
    vit = models.get_model('ViT-testing', **opts, image_size=16, patch_size=4, num_classes=3)
    init = jax.jit(vit.init)(jax.random.PRNGKey(1), x)['params']
    params = checkpoint.load_pretrained(init, jax.device_get(v['params']), dont_load=cfg.init_from.dont_load)
    np.testing.assert_array_equal(params['cls'], v['params']['cls'])
    assert 1e-5 < np.std(params['head']['kernel']) < 4e-5  # MAE's head init N(0, 2e-5^2).
    table = models.layers.posemb_sincos_2d(4, 4, 32, convention='mae')
    np.testing.assert_array_equal(params['Transformer']['posembed_input']['pos_embedding'],
                                  np.concatenate([np.zeros((1, 1, 32)), table], axis=1))
    _, ref = jax.jit(m.apply)(v, x)
    _, out = jax.jit(vit.apply)({'params': params}, x)
    last = np.asarray(ref[f'encoder/block_{m.num_layers - 1:02d}'])
    np.testing.assert_allclose(np.asarray(out['encoded']), last, atol=1e-5)
    pooled = last[:, 1:].mean(1)
    pooled = (pooled - pooled.mean(-1, keepdims=True)) / np.sqrt(pooled.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(out['pre_logits']), pooled, atol=1e-4)


def test_mae_finetune_head_matches_hf_mean_pooling():
    """ViT(class_token=True, classifier='gap', fc_norm=True) = MAE's fine-tuning model (timm's global_pool='avg' with
    fc_norm): checked against HuggingFace's BEiT with that head and BEiT's extras off (absolute position embedding,
    no relative bias, no layer scale; BEiT has no key bias: zero here)."""
    import torch
    import transformers

    cfg = transformers.BeitConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, image_size=24, patch_size=4,
        use_relative_position_bias=False, use_shared_relative_position_bias=False,
        use_absolute_position_embeddings=True, use_mean_pooling=True, layer_scale_init_value=0.0, num_labels=5,
        layer_norm_eps=1e-6, attn_implementation='eager')
    hf = transformers.BeitForImageClassification(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in hf.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.ndim > 1 else 0.5))
    _, variables = convert.from_transformers(hf)
    params = {k: val for k, val in variables['params'].items() if k != 'mask_token'}
    vit = models.get_model('ViT-testing', image_size=24, patch_size=4, hidden_size=32, mlp_dim=48, num_heads=4,
                           num_layers=2, num_classes=5, class_token=True, classifier='gap', fc_norm=True,
                           activation='gelu_exact')
    images = np.random.default_rng(0).normal(size=(2, 24, 24, 3)).astype(np.float32)
    logits, _ = jax.jit(vit.apply)({'params': params}, jnp.asarray(images))
    with torch.no_grad():
        ref = hf(torch.from_numpy(images.transpose(0, 3, 1, 2))).logits.numpy()
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4)


def test_class_token_and_fc_norm_options_are_checked():
    x = jnp.zeros((1, 16, 16, 3))
    for kw, msg in [(dict(class_token=False, classifier='token'), 'reads the class token'),
                    (dict(class_token=True, classifier='map'), "goes with classifier='gap'"),
                    (dict(fc_norm=True, classifier='token'), "needs classifier='gap'")]:
        with pytest.raises(ValueError, match=msg):
            models.get_model('ViT-testing', image_size=16, patch_size=4, **kw).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="posemb_init must be"):
        models.get_model('ViT-testing', image_size=16, patch_size=4, posemb_init='sincos').init(
            jax.random.PRNGKey(0), x)


def _torch_lars_steps(w0, b0, grads, lrs, *, wd, momentum=0.9, trust=0.001):
    """MAE / MoCo v3's LARS (util/lars.py), restated in PyTorch: rank >= 2 weights get weight decay and the trust
    ratio, everything gets momentum, then the lr."""
    import torch

    ps = [torch.tensor(w0, dtype=torch.float64), torch.tensor(b0, dtype=torch.float64)]
    mus = [torch.zeros_like(p) for p in ps]
    for (gw, gb), lr in zip(grads, lrs):
        for p, g, mu in zip(ps, (gw, gb), mus):
            dp = torch.tensor(g, dtype=torch.float64)
            if p.ndim > 1:
                dp = dp + wd * p
                pn, un = torch.norm(p), torch.norm(dp)
                q = torch.where(pn > 0, torch.where(un > 0, trust * pn / un, torch.ones_like(pn)),
                                torch.ones_like(pn))
                dp = dp * q
            mu.mul_(momentum).add_(dp)
            p.add_(mu, alpha=-lr)
    return [p.numpy() for p in ps]


def test_lars_is_maes_lars():
    import ml_collections
    import optax

    from vit_jax import optim

    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)
    grads = [(rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32))
             for _ in range(5)]
    lrs = [0.5, 1.0, 2.0, 1.5, 0.25]  # A changing lr: momentum accumulates before the lr is applied.
    cfg = ml_collections.ConfigDict(dict(
        optimizer=dict(name='lars', momentum=0.9, trust_coefficient=0.001, weight_decay=0.05, wd_mask='all',
                       grad_clip_norm=None),
        lr=dict(base=1.0, warmup_steps=0, decay='constant')))
    params = {'head': {'kernel': jnp.asarray(w0), 'bias': jnp.asarray(b0)}}
    tx, _ = optim.make(cfg, params, 10, schedule=lambda s: jnp.asarray(lrs)[jnp.minimum(s, 4)])
    state = tx.init(params)
    for gw, gb in grads:
        upd, state = tx.update({'head': {'kernel': jnp.asarray(gw), 'bias': jnp.asarray(gb)}}, state, params)
        params = optax.apply_updates(params, upd)
    ref_w, ref_b = _torch_lars_steps(w0, b0, grads, lrs, wd=0.05)
    np.testing.assert_allclose(np.asarray(params['head']['kernel']), ref_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(params['head']['bias']), ref_b, rtol=1e-5, atol=1e-6)


def test_frozen_parameters_need_no_backward_pass():
    """optimizer.freeze: the updater differentiates through `optim.stop_frozen_gradients`, so a frozen encoder's
    backward pass is never built (a linear probe costs a forward pass of the encoder, as MAE's), and the trainable
    gradients are those of the full derivative."""
    from vit_jax import optim

    rng = np.random.default_rng(0)
    params = {'enc': {'kernel': jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)},
              'head': {'kernel': jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)}}
    x = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
    loss = lambda p: jnp.sum(jnp.tanh(x @ p['enc']['kernel']) @ p['head']['kernel']) ** 2  # noqa: E731
    stopped = lambda p: loss(optim.stop_frozen_gradients(p, r'^enc/'))  # noqa: E731
    count = lambda f: str(jax.make_jaxpr(jax.grad(f))(params)).count('dot_general')  # noqa: E731
    assert count(stopped) < count(loss)  # No product for the encoder's own gradient or its input cotangent.
    g, full = jax.grad(stopped)(params), jax.grad(loss)(params)
    assert not np.any(np.asarray(g['enc']['kernel']))
    np.testing.assert_allclose(np.asarray(g['head']['kernel']), np.asarray(full['head']['kernel']), rtol=1e-6)


def test_digits_linear_probe_trains_only_the_head(tmp_path):
    """`milan_b16.py:digits_linprobe` (here on a fresh encoder, 100 steps): the encoder stays exactly as it was
    loaded, the head learns (loss falls), the head's BatchNorm keeps running statistics."""
    from vit_jax import config_utils, train

    c = config_utils.load('configs/milan_b16.py:digits_linprobe')
    c.total_steps = 100
    c.log_every = 20
    c.lr.base, c.lr.warmup_steps = 4.0, 10  # A short schedule (the recipe warms up for 200 steps).
    c.tensorboard = False
    init_dir = str(tmp_path / 'init')
    params = init_model('ViT-testing', uniform_images((1, 16, 16, 3)), num_classes=10, image_size=16, patch_size=4,
                        hidden_size=64, mlp_dim=128, num_heads=4, num_layers=4, posemb='sincos2d_mae',
                        activation='gelu_exact')[1]['params']
    checkpoint.save_npz(init_dir + '.npz', params)
    c.init_from.path = init_dir + '.npz'
    result = train.train_and_evaluate(c, str(tmp_path / 'run'))
    got, state = checkpoint.load_for_inference(str(tmp_path / 'run'))
    flat, ref = checkpoint.flatten(got), checkpoint.flatten(params)
    for k, v in flat.items():
        if not k.startswith('head/'):
            np.testing.assert_array_equal(v, ref[k], err_msg=k)
    assert np.abs(flat['head/kernel']).max() > 0
    stats = checkpoint.flatten(state['batch_stats'])
    assert set(stats) == {'head_norm/mean', 'head_norm/var'} and np.abs(stats['head_norm/mean']).max() > 0
    losses = [h['loss'] for h in result['history']]
    assert losses[-1] < losses[0] and 0.0 <= result['val/accuracy'] <= 1.0


def test_cosine_loss():
    a = jnp.array([[[1.0, 0.0], [0.0, 2.0]]])
    b = jnp.array([[[3.0, 0.0], [0.0, -1.0]]])
    np.testing.assert_allclose(milan_obj.cosine_loss(a, b), [[0.0, 4.0]], atol=1e-6)


@pytest.fixture(scope='module')
def milan_digits(tmp_path_factory):
    """MILAN pretraining (`milan_b16.py:digits_tiny`: 300 steps on all 1437 training digits, no labels, random
    STAND-IN teacher) -> the `:digits_finetune` / `:digits_scratch` pair for classifier seeds 0, 1, 2. Returns the
    pretraining loss curve and the test accuracies."""
    import _mim_common

    from vit_jax import config_utils, train

    tmp = tmp_path_factory.mktemp('milan')
    pre_dir = str(tmp / 'pretrain')
    train.train_and_evaluate(config_utils.load('configs/milan_b16.py:digits_tiny'), pre_dir)
    accuracy = _mim_common.finetune_vs_scratch('configs/milan_b16.py', pre_dir, tmp, seeds=(0, 1, 2))
    rows = _mim_common.metrics_rows(pre_dir)
    return dict(rows=[r for r in rows if 'train/loss' in r], accuracy=accuracy, pre_dir=pre_dir, tmp=tmp)


@pytest.mark.slow
def test_milan_digits_linear_probe_beats_a_random_encoder(milan_digits):
    """`:digits_linprobe` (frozen encoder, LARS, 2000 steps, all training labels) on the MILAN encoder vs the same
    probe on a random-init encoder of the same architecture, seeds 0, 1, 2. Measured (2 CPU cores): 53.3 / 52.5 /
    54.7% vs 42.2 / 45.6 / 49.4% (+7.8 on the mean)."""
    from vit_jax import config_utils, train

    acc = {'pre': [], 'random': []}
    for seed in (0, 1, 2):
        for kind, init in (('pre', milan_digits['pre_dir']), ('random', None)):
            c = config_utils.load('configs/milan_b16.py:digits_linprobe')
            c.seed, c.init_from.path, c.tensorboard = seed, init, False
            acc[kind].append(train.train_and_evaluate(c, str(milan_digits['tmp'] / f'probe_{kind}_{seed}'))[
                'val/accuracy'])
    print('linear probe: MILAN', acc['pre'], 'random encoder', acc['random'])
    assert np.mean(acc['pre']) > np.mean(acc['random']) + 0.03, acc
    assert all(p > r for p, r in zip(acc['pre'], acc['random'])), acc


@pytest.mark.slow
def test_tiny_milan_pretraining_loss_falls(milan_digits):
    rows = milan_digits['rows']  # Measured: 1.18 -> 0.37 (seed 0), 1.10 -> 0.37 (seed 1).
    assert rows[-1]['train/loss'] < 0.7 * rows[0]['train/loss'], (rows[0]['train/loss'], rows[-1]['train/loss'])
    assert 'train/loss_random_teacher' in rows[-1]  # The stand-in teacher is named as such.


@pytest.mark.slow
def test_milan_digits_finetune_beats_scratch(milan_digits):
    """Fine-tuning after MILAN pretraining beats training from scratch at the same budget, with few labels: by > 2
    points on the mean of three classifier seeds (one comparison swings by several points between seeds).

    STAND-IN TEACHER: the real MILAN teacher is CLIP ViT-B/16, whose weights cannot be downloaded here; the digits
    config distils a frozen random-init CLIP-architecture network (metric `loss_random_teacher`), so these are not
    MILAN's language-assisted targets and not the paper's figures.

    Label-scarce setting: pretraining on all 1437 training images without labels; both classifiers then train on the
    labels of 10% of them (143 images) for 400 steps at batch 128, the same recipe (ViT 4 layers x 64, global
    average pooling, AdamW lr 8e-3 = the best of the scratch sweep 2e-3 / 4e-3 / 8e-3 / 1.6e-2: 72.2% / 73.3% /
    74.7% / 66.1%, cosine, label smoothing 0.1, random shifts); the fine-tune adds layer decay 0.75 (as MILAN/MAE
    fine-tune). Measured test accuracy (360 images), classifier seeds 0 / 1 / 2, with MAE's sin-cos table (as
    zejiangh/MILAN): fine-tuned 82.5% / 81.4% / 79.7%, scratch 75.0% / 64.7% / 77.5%: +8.8 points on the mean
    (pretraining loss 1.18 -> 0.37). Measured earlier with big_vision's table: 77.8% / 79.4% / 81.7% vs 74.7% /
    72.8% / 73.1% (+6.1); the lr sweep above and the following figures are from then. Without label scarcity the
    random-teacher pretraining does not help (all labels, 150 steps: 66.7% vs 65.8%; 400 steps: 89.2% vs 91.9%).
    About 8 minutes on 2 idle CPU cores (29 minutes on a shared, loaded machine).
    """
    ft, scratch = (np.mean(milan_digits['accuracy'][k]) for k in ('digits_finetune', 'digits_scratch'))
    assert ft > scratch + 0.02, milan_digits['accuracy']


@pytest.mark.slow  # ~30-50 s on 2 cores.
def test_feature_teacher_interface_and_mae_decoder():
    teacher = milan_obj.FeatureTeacher(dict(model='ViT-testing', overrides=dict(num_classes=0, image_size=16)),
                                       image_size=(16, 16), value_range=(-1.0, 1.0))
    assert teacher.frozen_random and teacher.tokens_key == 'encoded'
    x = uniform_images((2, 16, 16, 3))
    variables = jax.tree_util.tree_map(jnp.asarray, teacher.net.variables)
    tokens, attn = jax.jit(teacher)(variables, x)
    assert tokens.shape == (2, 17, 32) and attn.shape == (2, 16)
    np.testing.assert_array_less(np.asarray(attn).sum(-1), 1.0)
    m = models.get_model('MILAN-testing', decoder='mae')
    v = jax.jit(m.init)(jax.random.PRNGKey(0), x)
    ids = jnp.tile(jnp.arange(16)[None], (2, 1))
    pred, out = jax.jit(lambda v, x, i: m.apply(v, x, ids_shuffle=i))(v, x, ids)
    assert pred.shape == (2, 17, 16) and 'decoder_blocks' in v['params']
