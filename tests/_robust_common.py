"""Shared fixtures of the robustness tests: the digits at 16 px and a tiny ViT trained on them (cached per process).

The training loop here is a plain optax loop (no trainer, no tf.data per step) so that the attack and evaluator
tests stay cheap; the end-to-end trainer runs live in tests/test_adversarial.py.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vit_jax import checkpoint, config_utils, data, models, objectives, sharding
from vit_jax.evaluators.base import Context
from vit_jax.objectives.base import TrainState

IMAGE_SIZE = 16
_CACHE_VERSION = 1  # Bump when the training recipe below changes.
MODEL = dict(name='ViT-testing', num_classes=10, image_size=IMAGE_SIZE, patch_size=4)  # 2 layers, width 32.


@functools.lru_cache(maxsize=None)
def digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """All images of a digits split at 16x16 in [-1, 1] (the eval pipeline) and their labels."""
    ds = data.get_dataset('digits', split, data_config={'value_range': (-1.0, 1.0)}, batch_size=512,
                          image_size=IMAGE_SIZE, train=False, process_index=0, process_count=1)
    xs, ys = [], []
    for b in ds:
        m = np.asarray(b['mask'], bool)
        xs.append(np.asarray(b['image'])[m])
        ys.append(np.asarray(b['label'])[m])
    return np.concatenate(xs), np.concatenate(ys)


def tiny_model():
    kw = dict(MODEL)
    return models.get_model(kw.pop('name'), **kw)


@functools.lru_cache(maxsize=None)
def trained_params(steps: int = 300, seed: int = 0):
    """Parameters of the tiny ViT after `steps` Adam steps of clean training (0.917 test accuracy).

    The (deterministic) result is cached in the temp folder, keyed by everything it depends on, so that the test
    files share one training on this 2-core machine.
    """
    key = hashlib.sha1(repr((MODEL, IMAGE_SIZE, steps, seed, jax.__version__, _CACHE_VERSION)).encode()).hexdigest()
    path = os.path.join(tempfile.gettempdir(), 'vit_jax_robust_tests', f'tiny_{key[:16]}.npz')
    if os.path.exists(path):
        return jax.tree_util.tree_map(jnp.asarray, checkpoint.load_npz(path))
    params = _train(steps, seed)
    checkpoint.save_npz(path, params)
    return params


def _train(steps: int, seed: int):
    model = tiny_model()
    x, y = digits('train')
    params = model.init(jax.random.PRNGKey(seed), jnp.asarray(x[:1]))['params']
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, xb, yb):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({'params': p}, xb)[0], yb).mean()

        g = jax.grad(loss)(params)
        u, opt = tx.update(g, opt)
        return optax.apply_updates(params, u), opt

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(len(x), 128, replace=False)
        params, opt = step(params, opt, x[idx], y[idx])
    return params


def accuracy(params, images, labels) -> float:
    model = tiny_model()
    logits = jax.jit(lambda p, x: model.apply({'params': p}, x)[0])(params, jnp.asarray(images))
    return float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(labels)))


def config(**objective) -> ml_collections.ConfigDict:
    c = config_utils.base_config()
    c.model = dict(MODEL)
    c.dataset = 'digits'
    c.data.train_pp = 'resize'
    c.data.flip = False
    c.batch_size = 120
    c.eval_batch_size = 120
    c.total_steps = 10
    c.tensorboard = False
    c.objective = dict(type='classification', **objective) if 'type' not in objective else dict(objective)
    return c


def context(cfg: ml_collections.ConfigDict, workdir: str | None = None) -> Context:
    """An evaluator Context like the trainer's (same dataset factory)."""
    model = tiny_model()
    mesh = sharding.make_mesh(cfg.get('mesh', None))

    def make_dataset(split, *, batch_size, train=False, dataset=None, data_config=None, start_step=0, **kw):
        dcfg = dict(cfg.get('data', {}) or {})
        dcfg.update(dict(data_config or {}))
        return data.get_dataset(dataset or cfg.dataset, split, data_config=dcfg, batch_size=batch_size,
                                image_size=(IMAGE_SIZE, IMAGE_SIZE), train=train, seed=int(cfg.seed),
                                process_index=0, process_count=1, start_step=start_step, **kw)

    return Context(config=cfg, model=model, objective=objectives.build(cfg, model), mesh=mesh,
                   image_size=(IMAGE_SIZE, IMAGE_SIZE), make_dataset=make_dataset, workdir=workdir)


def state_of(params, step: int = 7) -> TrainState:
    return TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=None, model_state={},
                      rng=jax.random.PRNGKey(0))
