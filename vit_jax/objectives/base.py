"""The objective interface and the default single-optimiser train step.

A subclass supplies `loss(params, model_state, batch, rng, train)` (and `predict` for evaluators); the base class
turns it into a jit-able `train_step` with gradient accumulation, weight EMA, non-finite guards and the
standard metrics (loss, grad/param norms, learning rate). Objectives with several optimisers (GANs) override
`init_state` and `train_step` and keep whatever they need in `TrainState.extra`.
"""

from __future__ import annotations

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vit_jax import optim

# Collections the model updates in training mode (others, e.g. frozen 'constants', are passed through).
MUTABLE_COLLECTIONS = ('batch_stats',)


class TrainState(flax.struct.PyTreeNode):
    """Everything a run needs to continue: saved whole in every checkpoint."""

    step: jax.Array  # Number of optimizer updates done.
    params: Any  # Trainable parameters.
    opt_state: Any  # Optimizer state.
    model_state: Any  # Non-trainable model collections (batch_stats, constants ...).
    rng: jax.Array  # Base key; step keys are fold_in(rng, step), so a resumed run draws the same randomness.
    ema_params: Any = None  # Exponential moving average of params (optimizer.ema_decay), or None.
    extra: Any = None  # Objective-specific state (e.g. a discriminator and its optimizer).


def tree_l2(tree: Any) -> jax.Array:
    """Global L2 norm of a tree."""
    return optax.global_norm(tree)


def tree_all_finite(*trees: Any) -> jax.Array:
    """True when every floating-point element of every tree is finite (integer leaves are ignored)."""
    ok = jnp.array(True)
    for leaf in jax.tree_util.tree_leaves(trees):
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(leaf))
    return ok


def guard_nonfinite(old: TrainState, new: TrainState, *checks: Any) -> tuple[TrainState, jax.Array]:
    """The one non-finite guard of every train step: keeps `old` (all but `step`) unless the step is finite.

    A step is finite when every float in `checks` (the loss, the gradients, the optimizer updates ...) and every
    float of the new state (parameters, optimizer state, model state, EMA, `extra`) is finite. A non-finite step
    is never applied: the returned state holds the old values with `step` advanced (the update is skipped and
    counted; the trainer stops or skips depending on `config.on_nonfinite`).

    Returns:
        (the state to continue from, the boolean `finite`).
    """
    finite = tree_all_finite(checks, new.params, new.opt_state, new.model_state, new.ema_params, new.extra)
    keep = lambda n, o: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), n, o)  # noqa: E731
    guarded = new.replace(params=keep(new.params, old.params), opt_state=keep(new.opt_state, old.opt_state),
                          model_state=keep(new.model_state, old.model_state),
                          ema_params=keep(new.ema_params, old.ema_params), extra=keep(new.extra, old.extra))
    return guarded, finite


class Objective:
    """Base objective. Subclasses implement `loss` and `predict`."""

    def __init__(self, config: Any, model: nn.Module):
        self.config = config
        self.model = model
        self.tx: Optional[optax.GradientTransformation] = None
        self.schedule = None

    # ----------------------------------------------------------------------------------------------------------
    # Initialisation.
    # ----------------------------------------------------------------------------------------------------------
    def init_inputs(self, batch: dict) -> tuple:
        """Positional inputs of `model.init` from a (shape-only) batch."""
        return (jnp.zeros(batch['image'].shape[1:], jnp.float32)[None],)

    def init_variables(self, rng: jax.Array, batch: dict) -> dict:
        """Model variables (all collections)."""
        params_rng, dropout_rng = jax.random.split(rng)
        return self.model.init({'params': params_rng, 'dropout': dropout_rng}, *self.init_inputs(batch), train=False)

    def make_optimizer(self, params: Any) -> optax.GradientTransformation:
        """Builds (once) and returns the optax transformation from the config."""
        if self.tx is None:
            self.tx, self.schedule = optim.make(self.config, params, int(self.config.total_steps))
        return self.tx

    def init_state(self, rng: jax.Array, batch: dict) -> TrainState:
        """A fresh train state; `batch` may hold only shapes (it is traced under jax.eval_shape / jit)."""
        init_rng, state_rng = jax.random.split(rng)
        variables = dict(self.init_variables(init_rng, batch))
        params = variables.pop('params')
        model_state = variables
        ema = params if self.config.optimizer.get('ema_decay', None) else None
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.make_optimizer(params).init(params), model_state=model_state,
                          rng=state_rng, ema_params=ema)

    # ----------------------------------------------------------------------------------------------------------
    # Losses.
    # ----------------------------------------------------------------------------------------------------------
    def apply_model(self, params: Any, model_state: Any, images: jax.Array, *, train: bool, rng: jax.Array | None,
                    **kwargs) -> tuple[Any, Any]:
        """Runs the model; returns (model outputs, updated model_state)."""
        variables = {'params': params, **model_state}
        rngs = {'dropout': rng} if rng is not None else {}
        mutable = [k for k in model_state if k in MUTABLE_COLLECTIONS] if train else []
        if mutable:
            outputs, updates = self.model.apply(variables, images, train=train, rngs=rngs, mutable=mutable, **kwargs)
            return outputs, {**model_state, **updates}
        return self.model.apply(variables, images, train=train, rngs=rngs, **kwargs), model_state

    def loss(self, params: Any, model_state: Any, batch: dict, rng: jax.Array, train: bool = True
             ) -> tuple[jax.Array, tuple[dict, Any]]:
        """Returns (scalar loss, (metrics dict, new model_state))."""
        raise NotImplementedError

    def predict(self, state: TrainState, batch: dict) -> dict:
        """Eval-mode outputs for evaluators (uses the EMA weights when the run keeps them)."""
        raise NotImplementedError

    def eval_params(self, state: TrainState) -> Any:
        """The weights evaluators use: the EMA when present, else the live parameters."""
        return state.ema_params if state.ema_params is not None else state.params

    # ----------------------------------------------------------------------------------------------------------
    # Train step.
    # ----------------------------------------------------------------------------------------------------------
    def grads(self, params: Any, model_state: Any, batch: dict, rng: jax.Array
              ) -> tuple[Any, dict, Any]:
        """Gradients of `loss`, averaged over `optimizer.accum_steps` micro-batches."""
        accum = int(self.config.optimizer.get('accum_steps', 1) or 1)
        grad_fn = jax.grad(lambda p, s, b, r: self.loss(p, s, b, r, True), has_aux=True)
        if accum <= 1:
            g, (metrics, model_state) = grad_fn(params, model_state, batch, rng)
            return g, metrics, model_state
        n = jax.tree_util.tree_leaves(batch)[0].shape[0]
        if n % accum:
            raise ValueError(f'The batch of {n} is not divisible by optimizer.accum_steps={accum}.')
        micro = jax.tree_util.tree_map(lambda x: x.reshape(accum, n // accum, *x.shape[1:]), batch)

        def body(carry, xs):
            g_acc, m_acc, ms = carry
            mb, i = xs
            g, (m, ms) = grad_fn(params, ms, mb, jax.random.fold_in(rng, i))
            add = lambda a, b: jax.tree_util.tree_map(jnp.add, a, b)  # noqa: E731
            return (add(g_acc, g), add(m_acc, m), ms), None

        g0 = jax.tree_util.tree_map(jnp.zeros_like, params)
        m0 = jax.eval_shape(lambda: grad_fn(params, model_state, jax.tree_util.tree_map(lambda x: x[0], micro),
                                            rng)[1][0])
        m0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), m0)
        (g, m, model_state), _ = jax.lax.scan(body, (g0, m0, model_state), (micro, jnp.arange(accum)))
        scale = lambda t: jax.tree_util.tree_map(lambda x: x / accum, t)  # noqa: E731
        return scale(g), scale(m), model_state

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """One optimizer update. A non-finite loss, gradient, update or new state leaves the state unchanged (the
        step is counted in `metrics['nonfinite']`; see `guard_nonfinite`)."""
        rng = jax.random.fold_in(state.rng, state.step)
        grads, metrics, model_state = self.grads(state.params, state.model_state, batch, rng)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = tree_l2(grads)
        ema = state.ema_params
        if ema is not None:
            decay = float(self.config.optimizer.ema_decay)
            ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state,
                                  ema_params=ema)
        new_state, finite = guard_nonfinite(state, new_state, metrics['loss'], grad_norm, updates)
        metrics = dict(metrics, l2_grads=grad_norm, l2_params=tree_l2(new_state.params), l2_updates=tree_l2(updates),
                       lr=self.schedule(state.step), nonfinite=1.0 - finite.astype(jnp.float32))
        return new_state, metrics
