"""The one updater (`objectives.base`): no objective forks the train step; optimizers are built once from shapes;
gradient accumulation equals one big batch and the generator's EMA is kept for a GAN objective (PeCo's VQGAN
tokenizer: generator + discriminator with a warm-up); frozen networks are inputs of the step, never in the state or
a checkpoint, and a resumed distillation run equals the uninterrupted one."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import checkpoint, config_utils, objectives, train
from vit_jax.objectives import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_objective_forks_the_updater():
    assert len(objectives.OBJECTIVES.names()) >= 10
    for name, cls in objectives.OBJECTIVES.items():
        for method in ('train_step', 'init_state', 'setup', 'grads'):
            assert getattr(cls, method) is getattr(base.Objective, method), (name, method)


def _vqgan(accum_steps=1, ema_decay=None):
    c = config_utils.load(os.path.join(ROOT, 'configs/peco_tokenizer.py:digits_tiny'))
    c.batch_size = 8
    c.optimizer.accum_steps = accum_steps
    c.optimizer.ema_decay = ema_decay
    c.objective.disc.start_step = 1  # Step 0: generator only; then D after G on every step.
    c.objective.disc.adaptive = False  # The adaptive weight is a ratio of per-batch gradient norms: not additive.
    c.objective.dead_codes = dict(every=2, decay=0.9, threshold=0.9)  # Restarts at step 2.
    return objectives.build(c, train.build_model(c))


def _run(objective, batches):
    state = jax.jit(objective.init_state)(jax.random.PRNGKey(0), batches[0])
    step = jax.jit(objective.train_step)
    states, metrics = [state], []
    for b in batches:
        state, m = step(state, b, objective.frozen)
        states.append(state)
        metrics.append(jax.device_get(m))
    return states, metrics


@pytest.mark.slow  # Two compilations of the VQGAN + PatchGAN + perceptual-net step: ~5 min on 2 idle cores.
def test_gan_accumulation_equals_one_big_batch_and_keeps_the_generator_ema():
    rng = np.random.default_rng(0)
    batches = [{'image': jnp.asarray(rng.uniform(-1, 1, (8, 16, 16, 3)), jnp.float32)} for _ in range(3)]
    one = _vqgan(1, ema_decay=0.5)
    states, metrics = _run(one, batches)
    acc_states, acc_metrics = _run(_vqgan(4, ema_decay=0.5), batches)

    # The discriminator is a trainable group in the state: untouched on step 0, trained from its start step on.
    assert set(states[0].extra) == {'disc', 'usage_ema'}
    assert set(states[0].extra['disc']) == {'params', 'opt_state', 'model_state'}
    assert metrics[0]['d_loss'] == 0 and metrics[0]['disc_l2_grads'] == 0 and metrics[1]['disc_l2_grads'] > 0
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),  # noqa: E731
                                                                 jax.tree_util.tree_leaves(b)))
    assert same(states[1].extra['disc'], states[0].extra['disc'])
    assert not same(states[2].extra['disc']['params'], states[1].extra['disc']['params'])
    assert all(m['nonfinite'] == 0 for m in metrics + acc_metrics)

    # 4 micro-batches of 2 = one batch of 8: generator, discriminator, EMA, codebook usage. (atol: parameters whose
    # gradient is zero in exact arithmetic, e.g. a bias before a normalisation, get Adam updates of their rounding
    # noise, ~lr * noise / eps: up to 1.1e-5 seen here, differently rounded in the two runs.)
    for a, b in ((states[-1].params, acc_states[-1].params), (states[-1].extra, acc_states[-1].extra),
                 (states[-1].ema_params, acc_states[-1].ema_params)):
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            np.testing.assert_allclose(x, y, atol=3e-5, rtol=1e-5)
    for k in ('loss', 'rec_loss', 'd_loss', 'l2_grads', 'disc_l2_grads'):
        np.testing.assert_allclose(metrics[-1][k], acc_metrics[-1][k], rtol=1e-5, atol=1e-7)

    # The generator's EMA (decay 0.5) follows its parameters.
    for i in (1, 2, 3):
        for e, e0, p in zip(*(jax.tree_util.tree_leaves(t) for t in (states[i].ema_params, states[i - 1].ema_params,
                                                                       states[i].params))):
            np.testing.assert_allclose(e, 0.5 * e0 + 0.5 * p, rtol=1e-6, atol=1e-7)


def test_optimizers_are_built_once_from_shapes_and_frozen_nets_stay_out_of_the_state():
    c = config_utils.base_config()
    c.model = dict(name='BEiT-testing', num_classes=0, vocab_size=32, classifier='gap')
    c.objective = dict(type='mim', tokenizer=dict(type='random_projection', patch_size=4, vocab_size=32, dim=8))
    objective = objectives.build(c, train.build_model(c))
    batch = {'image': jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)}
    objective.setup(batch)
    tx = objective.tx['model']
    shapes = jax.eval_shape(objective.init_state, jax.random.PRNGKey(0), batch)
    assert objective.tx['model'] is tx  # Not rebuilt while tracing.
    assert shapes.extra is None  # The tokenizer is not in the state ...
    assert set(objective.frozen) == {'tokenizer'}  # ... but an input of the step.


def _distillation_config(tmp_path, teacher_path):
    c = config_utils.load(os.path.join(ROOT, 'configs/quickstart.py:tiny'))
    small = dict(hidden_size=32, mlp_dim=64, num_heads=2, num_layers=1)
    c.model = dict(c.model, distill_token=True, **small)
    c.objective = dict(type='distillation', distillation='hard', alpha=0.5,
                       teacher=dict(model=dict(name='ViT-Ti/16', num_classes=10, image_size=8, patch_size=4, **small),
                                    checkpoint=teacher_path))
    c.batch_size = 32
    c.total_steps = 6
    c.checkpoint_every = 3
    c.log_every = 3
    c.evals = {}
    c.tensorboard = False
    return c


def test_resumed_distillation_equals_uninterrupted_and_checkpoints_hold_no_teacher(tmp_path):
    from vit_jax import models

    teacher = models.get_model('ViT-Ti/16', num_classes=10, image_size=8, patch_size=4, hidden_size=32, mlp_dim=64,
                               num_heads=2, num_layers=1)
    teacher_params = jax.jit(teacher.init)(jax.random.PRNGKey(7), jnp.zeros((1, 8, 8, 3)))['params']
    teacher_path = str(tmp_path / 'teacher.npz')
    checkpoint.save_npz(teacher_path, teacher_params)

    full = train.train_and_evaluate(_distillation_config(tmp_path, teacher_path), str(tmp_path / 'full'))
    c = _distillation_config(tmp_path, teacher_path)
    c.stop_at_step = 3
    assert train.train_and_evaluate(c, str(tmp_path / 'resumed'))['preempted']
    resumed = train.train_and_evaluate(_distillation_config(tmp_path, teacher_path), str(tmp_path / 'resumed'))
    assert int(resumed['state'].step) == 6
    for a, b in zip(jax.tree_util.tree_leaves(full['state']), jax.tree_util.tree_leaves(resumed['state'])):
        np.testing.assert_array_equal(a, b)
    assert full['history'][-1]['distillation_loss'] == resumed['history'][-1]['distillation_loss']

    # The checkpoint holds the student's state only: no teacher parameters, no `extra`.
    _, saved = checkpoint._restore_latest(str(tmp_path / 'resumed'))
    assert saved.get('extra') is None
    n_saved = sum(np.size(x) for x in jax.tree_util.tree_leaves(saved))
    n_student = sum(np.size(x) for x in jax.tree_util.tree_leaves((saved['params'], saved['opt_state'])))
    n_teacher = sum(np.size(x) for x in jax.tree_util.tree_leaves(teacher_params))
    assert n_saved - n_student < 10 < n_teacher  # step, rng, optimizer counts.


@pytest.mark.parametrize('name', ['adam', 'adamw'])
def test_adam_weight_decay_coupled_or_decoupled(name):
    """'adam' + weight_decay = torch.optim.Adam (L2 added to the gradient before the moments); 'adamw' = AdamW."""
    import torch

    from vit_jax import optim

    c = config_utils.base_config()
    c.optimizer = dict(c.optimizer, name=name, b1=0.5, b2=0.9, weight_decay=0.1, grad_clip_norm=None)
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4,)).astype(np.float32)
    grads = [rng.normal(size=(4,)).astype(np.float32) for _ in range(3)]
    tx, _ = optim.make(c, {'w': w0}, 10, schedule=lambda s: 1e-2)
    p, state = {'w': jnp.asarray(w0)}, tx.init({'w': jnp.asarray(w0)})
    t = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = (torch.optim.Adam if name == 'adam' else torch.optim.AdamW)([t], lr=1e-2, betas=(0.5, 0.9),
                                                                        weight_decay=0.1)
    for g in grads:
        u, state = tx.update({'w': jnp.asarray(g)}, state, p)
        p = {'w': p['w'] + u['w']}
        opt.zero_grad()
        t.grad = torch.from_numpy(g.copy())
        opt.step()
    np.testing.assert_allclose(np.asarray(p['w']), t.detach().numpy(), rtol=1e-5, atol=1e-6)
