"""The objective interface and the one updater every objective trains with.

An objective is a task. It declares
  - `loss(params, model_state, batch, rng, train)` -> (scalar, (metrics, model_state)) and `predict(state, batch)`;
  - optionally `prepare_batch(batch, rng, ctx)`: batch keys the loss needs from outside the gradient (a frozen
    teacher's outputs, the step's attack radius ...); it runs on every micro-batch, just before the loss;
  - optionally `self.frozen = {name: variables}`: frozen networks (teachers, tokenizers, perceptual nets), loaded
    once per run in `__init__` (host arrays). The trainer passes them to the jitted step as replicated, non-donated
    inputs (`ctx.frozen`); they are never part of the train state, so checkpoints hold only what training changes;
  - optionally `groups()`: named trainable groups, each with its own loss, optimizer settings and first step,
    updated one after the other in the listed order within a step (a discriminator, then the generator against the
    updated discriminator). 'model' is the run's model (`TrainState.params`); another group keeps
    {'params', 'opt_state', 'model_state'} in `TrainState.extra[name]`;
  - optionally `init_extra(batch)` and `after_update(state, metrics, batch, rng)`: state changed outside the
    gradient (running codebook usage, a momentum teacher).
The updater (`setup`, `init_state`, `train_step`; objectives do not override them) owns the rest, once for all:
the optimizers (built from the parameters' shapes, outside tracing), gradient accumulation over
`optimizer.accum_steps` micro-batches, the weight EMA of the model (`optimizer.ema_decay`), the non-finite guard and
the standard metrics (`l2_grads`, `l2_updates`, `lr` per group, prefixed `<group>_` for groups other than 'model';
`l2_params`, `nonfinite`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vit_jax import optim

# Collections the model updates in training mode (others, e.g. frozen 'constants', are passed through).
MUTABLE_COLLECTIONS = ('batch_stats',)
MODEL = 'model'  # The group of the run's model.


class TrainState(flax.struct.PyTreeNode):
    """Everything a run needs to continue: saved whole in every checkpoint (frozen networks are not in it)."""

    step: jax.Array  # Number of optimizer updates done.
    params: Any  # Trainable parameters.
    opt_state: Any  # Optimizer state.
    model_state: Any  # Non-trainable model collections (batch_stats, constants ...).
    rng: jax.Array  # Base key; step keys are fold_in(rng, step), so a resumed run draws the same randomness.
    ema_params: Any = None  # Exponential moving average of params (optimizer.ema_decay), or None.
    extra: Any = None  # Other trainable groups (e.g. a discriminator) and the objective's `init_extra` state.


class Group(NamedTuple):
    """A trainable group of parameters with its own loss and optimizer."""

    name: str  # MODEL, or the key of its state in TrainState.extra.
    loss: Callable  # (params, model_state, batch, rng, ctx) -> (scalar, (metrics, model_state)).
    init: Optional[Callable] = None  # (rng, batch) -> variables; MODEL uses Objective.init_variables.
    optimizer: Any = None  # Its optimizer settings (keys of config.optimizer); None: config.optimizer.
    schedule: Optional[Callable] = None  # Its learning rate per step; None: config.lr.
    start_step: int = 0  # Before this step the group and its optimizer state are left unchanged (zero metrics).


class StepContext(NamedTuple):
    """What a loss or `prepare_batch` may read besides its arguments."""

    state: TrainState  # The state at this point of the step: groups updated earlier in the step are updated.
    frozen: Any  # {name: variables} of the frozen networks.


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
    """The one non-finite guard of the train step: keeps `old` (all but `step`) unless the step is finite.

    A step is finite when every float in `checks` (the losses, gradients, updates ...) and every float of the
    new state (parameters, optimizer state, model state, EMA, `extra`) is finite. A non-finite step is never
    applied: the returned state holds the old values with `step` advanced (the update is skipped and counted; the
    trainer stops or skips depending on `config.on_nonfinite`).

    Returns:
        (the state to continue from, the boolean `finite`).
    """
    finite = tree_all_finite(checks, new.params, new.opt_state, new.model_state, new.ema_params, new.extra)
    keep = lambda n, o: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), n, o)  # noqa: E731
    guarded = new.replace(params=keep(new.params, old.params), opt_state=keep(new.opt_state, old.opt_state),
                          model_state=keep(new.model_state, old.model_state),
                          ema_params=keep(new.ema_params, old.ema_params), extra=keep(new.extra, old.extra))
    return guarded, finite


def _group_vars(state: TrainState, name: str) -> tuple[Any, Any, Any]:
    if name == MODEL:
        return state.params, state.opt_state, state.model_state
    g = state.extra[name]
    return g['params'], g['opt_state'], g['model_state']


def _with_group(state: TrainState, name: str, params: Any, opt_state: Any, model_state: Any) -> TrainState:
    if name == MODEL:
        return state.replace(params=params, opt_state=opt_state, model_state=model_state)
    return state.replace(extra={**state.extra, name: dict(params=params, opt_state=opt_state,
                                                          model_state=model_state)})


def _zeros(shapes: Any) -> Any:
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


class Objective:
    """Base objective. Subclasses implement `loss` (or `groups`) and `predict`; see the module docstring."""

    def __init__(self, config: Any, model: nn.Module):
        self.config = config
        self.model = model
        self.frozen: dict[str, Any] = {}  # Frozen networks' variables (host arrays) by name: inputs of the step.
        self.tx: dict[str, optax.GradientTransformation] = {}  # Per group, built once by `setup`.
        self.schedule: dict[str, optax.Schedule] = {}  # Per group.

    # ----------------------------------------------------------------------------------------------------------
    # What an objective declares.
    # ----------------------------------------------------------------------------------------------------------
    def groups(self) -> tuple[Group, ...]:
        """The trainable groups in update order; by default the model alone, trained on `loss`."""
        return (Group(MODEL, lambda p, s, b, r, ctx: self.loss(p, s, b, r, True)),)

    def init_inputs(self, batch: dict) -> tuple:
        """Positional inputs of `model.init` from a (shape-only) batch."""
        return (jnp.zeros(batch['image'].shape[1:], jnp.float32)[None],)

    def init_variables(self, rng: jax.Array, batch: dict) -> dict:
        """Model variables (all collections)."""
        params_rng, dropout_rng = jax.random.split(rng)
        return self.model.init({'params': params_rng, 'dropout': dropout_rng}, *self.init_inputs(batch), train=False)

    def init_extra(self, batch: dict) -> dict:
        """Initial objective state outside the gradient (kept in TrainState.extra next to other groups)."""
        del batch
        return {}

    def prepare_batch(self, batch: dict, rng: jax.Array, ctx: StepContext) -> dict:
        """The (micro-)batch the loss sees; `rng` is the loss's own key. Runs outside the gradient."""
        del rng, ctx
        return batch

    def loss(self, params: Any, model_state: Any, batch: dict, rng: jax.Array, train: bool = True
             ) -> tuple[jax.Array, tuple[dict, Any]]:
        """Returns (scalar loss, (metrics dict, new model_state))."""
        raise NotImplementedError

    def after_update(self, state: TrainState, metrics: dict, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
        """State changes outside the gradient, after every group's update (`state.step` already counts it)."""
        del batch, rng
        return state, metrics

    def predict(self, state: TrainState, batch: dict) -> dict:
        """Eval-mode outputs for evaluators (uses the EMA weights when the run keeps them)."""
        raise NotImplementedError

    def eval_params(self, state: TrainState) -> Any:
        """The weights evaluators use: the EMA when present, else the live parameters."""
        return state.ema_params if state.ema_params is not None else state.params

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

    # ----------------------------------------------------------------------------------------------------------
    # The updater.
    # ----------------------------------------------------------------------------------------------------------
    def _init_groups(self, rng: jax.Array, batch: dict) -> dict[str, Any]:
        return {g.name: self.init_variables(rng, batch) if g.name == MODEL else g.init(jax.random.fold_in(rng, i),
                                                                                          batch)
                for i, g in enumerate(self.groups())}

    def setup(self, batch: dict) -> None:
        """Builds every group's optimizer and schedule, once, from the shapes of its parameters (no traced values:
        `batch` may hold arrays, tracers or ShapeDtypeStructs)."""
        if self.tx:
            return
        batch = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
        shapes = jax.eval_shape(self._init_groups, jax.random.PRNGKey(0), batch)
        for g in self.groups():
            self.tx[g.name], self.schedule[g.name] = optim.make(
                self.config, shapes[g.name]['params'], int(self.config.total_steps), optimizer=g.optimizer,
                schedule=g.schedule)

    def init_state(self, rng: jax.Array, batch: dict) -> TrainState:
        """A fresh train state; `batch` may hold only shapes (it is traced under jax.eval_shape / jit)."""
        self.setup(batch)
        init_rng, state_rng = jax.random.split(rng)
        state = TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state={}, model_state={}, rng=state_rng,
                           extra=dict(self.init_extra(batch)))
        for name, variables in self._init_groups(init_rng, batch).items():
            variables = dict(variables)
            params = variables.pop('params')
            state = _with_group(state, name, params, self.tx[name].init(params), variables)
        ema = state.params if self.config.optimizer.get('ema_decay', None) else None
        return state.replace(ema_params=ema, extra=state.extra or None)

    def grads(self, loss_fn: Callable, params: Any, model_state: Any, batch: dict, rng: jax.Array,
              ctx: StepContext) -> tuple[jax.Array, Any, dict, Any]:
        """(loss, gradients, metrics, model_state) of `loss_fn(params, model_state, batch, rng)`, averaged over
        `optimizer.accum_steps` micro-batches (micro-batch i gets the key fold_in(rng, i); the model state is threaded
        through them in order)."""
        accum = int(self.config.optimizer.get('accum_steps', 1) or 1)

        def one(ms, mb, r):
            mb = self.prepare_batch(mb, r, ctx)
            (loss, (metrics, ms)), g = jax.value_and_grad(loss_fn, has_aux=True)(params, ms, mb, r)
            return (loss, g, metrics), ms

        if accum <= 1:
            (loss, g, metrics), model_state = one(model_state, batch, rng)
            return loss, g, metrics, model_state
        n = jax.tree_util.tree_leaves(batch)[0].shape[0]
        if n % accum:
            raise ValueError(f'The batch of {n} is not divisible by optimizer.accum_steps={accum}.')
        micro = jax.tree_util.tree_map(lambda x: x.reshape(accum, n // accum, *x.shape[1:]), batch)

        def body(carry, xs):
            total, ms = carry
            out, ms = one(ms, xs[0], jax.random.fold_in(rng, xs[1]))
            return (jax.tree_util.tree_map(jnp.add, total, out), ms), None

        first = jax.tree_util.tree_map(lambda x: x[0], micro)
        zeros = _zeros(jax.eval_shape(lambda: one(model_state, first, rng)[0]))
        (total, model_state), _ = jax.lax.scan(body, (zeros, model_state), (micro, jnp.arange(accum)))
        loss, g, metrics = jax.tree_util.tree_map(lambda x: x / accum, total)
        return loss, g, metrics, model_state

    def _update(self, group: Group, state: TrainState, batch: dict, rng: jax.Array, frozen: Any
                ) -> tuple[TrainState, dict, tuple]:
        """One optimizer update of `group`: (new state, metrics, the values the guard checks)."""

        freeze = (self.config.optimizer if group.optimizer is None else group.optimizer).get('freeze', None)

        def run(state):
            params, opt_state, model_state = _group_vars(state, group.name)
            ctx = StepContext(state, frozen)
            # Frozen parameters (optimizer.freeze) get zero gradients without a backward pass of their own.
            loss, grads, metrics, model_state = self.grads(
                lambda p, s, b, r: group.loss(optim.stop_frozen_gradients(p, freeze), s, b, r, ctx), params,
                model_state, batch, rng, ctx)
            updates, opt_state = self.tx[group.name].update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            pre = '' if group.name == MODEL else f'{group.name}_'
            norms = {f'{pre}l2_grads': tree_l2(grads), f'{pre}l2_updates': tree_l2(updates)}
            metrics = {**metrics, **norms, f'{pre}lr': jnp.asarray(self.schedule[group.name](state.step), jnp.float32)}
            # Elementwise checks: a huge but finite update (whose norm overflows) is applied, as before.
            return _with_group(state, group.name, params, opt_state, model_state), metrics, (loss, grads, updates)

        if group.start_step <= 0:
            return run(state)
        _, metrics, checks = jax.eval_shape(run, state)
        return jax.lax.cond(state.step >= group.start_step, run, lambda s: (s, _zeros(metrics), _zeros(checks)),
                            state)

    def train_step(self, state: TrainState, batch: dict, frozen: Any = None) -> tuple[TrainState, dict]:
        """One update of every group in order, then `after_update` and the EMA. A non-finite loss, gradient, update
        or new state leaves the state unchanged (the step is counted in `metrics['nonfinite']`; see
        `guard_nonfinite`). `frozen`: the frozen networks' variables (default: `self.frozen`)."""
        rng = jax.random.fold_in(state.rng, state.step)
        frozen = self.frozen if frozen is None else frozen
        new, metrics, checks = state, {}, []
        for group in self.groups():
            new, m, c = self._update(group, new, batch, rng, frozen)
            metrics.update(m)
            checks.extend(c)
        new, metrics = self.after_update(new.replace(step=state.step + 1), metrics, batch, rng)
        if new.ema_params is not None:
            decay = float(self.config.optimizer.ema_decay)
            new = new.replace(ema_params=jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p,
                                                                new.ema_params, new.params))
        new, finite = guard_nonfinite(state, new, *checks)
        metrics = dict(metrics, l2_params=tree_l2(new.params), nonfinite=1.0 - finite.astype(jnp.float32))
        return new, metrics
