"""Adversarial attacks: FGSM, PGD (L-inf / L2, random start) and APGD-CE, batched and jit-compiled.

    from vit_jax import attacks
    logits_fn = lambda x: model.apply(variables, x, train=False)[0]
    x_adv = attacks.pgd(logits_fn, images, labels, eps=4 / 255, step_size=1 / 255, num_steps=10,
                        rng=jax.random.PRNGKey(0), norm='linf', value_range=(-1.0, 1.0))

Conventions shared by every attack:
- `logits_fn(images) -> logits [B, classes]` decides the model mode (eval / train, which dropout key ...).
- `eps` and `step_size` are in the pixel scale [0, 1] (4/255 is "epsilon 4"), whatever the model's input range;
  the code converts them to `value_range` (an eps of 4/255 is 8/255 in [-1, 1] units). L2 radii scale the same way.
- Results stay inside the eps-ball around `images` and inside `value_range` (projection after every step).
- Untargeted attacks maximise the cross-entropy of the true `labels`; `targeted=True` minimises it for `labels`
  taken as targets. The attack loss is summed over the batch with hard labels (the light recipe's choice; for
  sign steps the reduction does not matter).
- Called on concrete arrays, each attack runs as one compiled XLA program (`jax.jit`, with `logits_fn` as a static
  argument: keep the same function object across calls to reuse the compilation). Called inside a `jit`/`grad`
  trace (a training step, an evaluator), it is traced inline.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
LogitsFn = Callable[[Array], Array]
NORMS = ('linf', 'l2')


# ----------------------------------------------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------------------------------------------
def _check(norm: str, value_range: Sequence[float]) -> tuple[float, float]:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f'value_range must be (low, high) with low < high, got {tuple(value_range)}.')
    return lo, hi


def to_model_scale(v: float | Array, value_range: Sequence[float]) -> Array:
    """A pixel-scale ([0, 1]) magnitude (eps, step size) in the units of `value_range`."""
    lo, hi = (float(x) for x in value_range)
    return jnp.asarray(v, jnp.float32) * (hi - lo)


def _per_example(v: Array, x: Array) -> Array:
    """A scalar or [B] magnitude broadcastable against images [B, ...]."""
    v = jnp.asarray(v, x.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)) if v.ndim == 1 else v


def _l2(x: Array) -> Array:
    """Per-example L2 norm, shaped [B, 1, 1, ...]."""
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)), keepdims=True))


def _normalize(x: Array) -> Array:
    return x / (_l2(x) + 1e-12)


def project(x_adv: Array, x: Array, eps: Array, norm: str, value_range: Sequence[float]) -> Array:
    """Projects `x_adv` onto the `norm`-ball of radius `eps` (model units) around `x`, then into `value_range`.

    Clipping to the value range after the projection keeps the point in the ball: with `x` inside the range each
    coordinate of the perturbation only shrinks.
    """
    lo, hi = _check(norm, value_range)
    eps = _per_example(eps, x)
    delta = x_adv - x
    if norm == 'linf':
        delta = jnp.clip(delta, -eps, eps)
    else:
        delta = delta * jnp.minimum(1.0, eps / (_l2(delta) + 1e-12))
    return jnp.clip(x + delta, lo, hi)


def random_init(rng: Array, x: Array, eps: Array, norm: str, value_range: Sequence[float]) -> Array:
    """A uniform random point of the L-inf ball, or a random direction at a uniform radius in the L2 ball."""
    eps = _per_example(eps, x)
    if norm == 'linf':
        delta = jax.random.uniform(rng, x.shape, x.dtype, -1.0, 1.0) * eps
    else:
        k1, k2 = jax.random.split(rng)
        r = jax.random.uniform(k2, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
        delta = _normalize(jax.random.normal(k1, x.shape, x.dtype)) * eps * r
    return project(x + delta, x, eps, norm, value_range)


def _loss_and_grad(logits_fn: LogitsFn, x: Array, labels: Array, targeted: bool) -> tuple[Array, Array, Array]:
    """(per-example CE [B], d(sum CE)/dx, logits); CE is negated for targeted attacks (so we always ascend)."""

    def f(x):
        logits = logits_fn(x)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        ce = -ce if targeted else ce
        return ce.sum(), (ce, logits)

    grad, (ce, logits) = jax.grad(f, has_aux=True)(x)
    return ce, grad, logits


def _is_traced(*xs: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


def _dispatch(impl: Callable, jitted: Callable, logits_fn: LogitsFn, *args: Any, **kwargs: Any) -> Array:
    if _is_traced(args, kwargs):
        return impl(logits_fn, *args, **kwargs)
    return jitted(logits_fn, *args, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# PGD and FGSM.
# ----------------------------------------------------------------------------------------------------------------
def _pgd_impl(logits_fn: LogitsFn, images: Array, labels: Array, eps: Array, step_size: Array,
              rng: Optional[Array], *, num_steps: int, norm: str, value_range: tuple[float, float],
              random_start: bool, targeted: bool) -> Array:
    _check(norm, value_range)
    x = jax.lax.stop_gradient(images.astype(jnp.float32))
    eps_m = _per_example(to_model_scale(eps, value_range), x)
    step_m = _per_example(to_model_scale(step_size, value_range), x)
    if random_start:
        if rng is None:
            raise ValueError('random_start=True needs an rng key.')
        x_adv = random_init(rng, x, eps_m, norm, value_range)
    else:
        x_adv = x

    def body(_, x_adv):
        _, g, _ = _loss_and_grad(logits_fn, x_adv, labels, targeted)
        step = jnp.sign(g) if norm == 'linf' else _normalize(g)
        return project(x_adv + step_m * step, x, eps_m, norm, value_range)

    x_adv = jax.lax.fori_loop(0, int(num_steps), body, x_adv)
    return jax.lax.stop_gradient(x_adv)


_pgd_jit = jax.jit(_pgd_impl, static_argnums=(0,),
                   static_argnames=('num_steps', 'norm', 'value_range', 'random_start', 'targeted'))


def pgd(logits_fn: LogitsFn, images: Array, labels: Array, *, eps: float | Array, step_size: float | Array,
        num_steps: int, rng: Optional[Array], norm: str = 'linf', value_range: Sequence[float] = (-1.0, 1.0),
        random_start: bool = True, targeted: bool = False) -> Array:
    """Projected gradient descent (Madry et al.) under the L-inf or L2 norm.

    Args:
        logits_fn: images -> logits [B, classes].
        images: clean images [B, H, W, C] (or any [B, ...]) in `value_range`.
        labels: int [B] true labels (targets when `targeted`).
        eps: radius in pixel scale [0, 1] (e.g. 4/255), scalar or per-example [B].
        step_size: step in pixel scale; L-inf steps move by `step_size * sign(grad)`, L2 steps by
            `step_size * grad / ||grad||`.
        num_steps: gradient steps.
        rng: key of the random start (may be None when `random_start=False`).
        norm: 'linf' or 'l2'.
        value_range: (low, high) of the model's inputs.
        random_start: start from a uniform random point of the ball (Madry) instead of the clean image.
        targeted: minimise the cross-entropy of `labels` instead of maximising it.

    Returns:
        Adversarial images of the shape of `images`, inside the eps-ball and `value_range`.
    """
    return _dispatch(_pgd_impl, _pgd_jit, logits_fn, images, labels, eps, step_size, rng, num_steps=int(num_steps),
                     norm=norm, value_range=tuple(float(v) for v in value_range), random_start=bool(random_start),
                     targeted=bool(targeted))


def fgsm(logits_fn: LogitsFn, images: Array, labels: Array, *, eps: float | Array, rng: Optional[Array] = None,
         step_size: Optional[float | Array] = None, norm: str = 'linf', value_range: Sequence[float] = (-1.0, 1.0),
         random_start: bool = False, targeted: bool = False) -> Array:
    """Fast gradient sign method (Goodfellow et al.): one step of size `eps` (or `step_size`), then projection.

    With `random_start=True` and `step_size=1.25 * eps` this is "FGSM-RS" (Wong et al.); the light recipe's
    training attack is the same one-step attack with `step_size = 1.5 * eps`. Arguments as `pgd`.
    """
    return pgd(logits_fn, images, labels, eps=eps, step_size=eps if step_size is None else step_size, num_steps=1,
               rng=rng, norm=norm, value_range=value_range, random_start=random_start, targeted=targeted)


# ----------------------------------------------------------------------------------------------------------------
# APGD-CE (Croce & Hein, 2020), the first component of AutoAttack.
# ----------------------------------------------------------------------------------------------------------------
def apgd_checkpoints(num_steps: int) -> list[int]:
    """Iterations (1-based counts of steps done) after which APGD checks its step size.

    The paper's schedule p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), in the reference
    code's integer form: first window max(int(0.22 n), 1), each next one shorter by max(int(0.03 n), 1) down to
    max(int(0.06 n), 1). For n = 100: 22, 41, 57, 70, 80, 87, 93, 99.
    """
    n = int(num_steps)
    window, smallest, decrease = max(int(0.22 * n), 1), max(int(0.06 * n), 1), max(int(0.03 * n), 1)
    points, at = [], window
    while at <= n:
        points.append(at)
        window = max(window - decrease, smallest)
        at += window
    return points


def _apgd_impl(logits_fn: LogitsFn, images: Array, labels: Array, eps: Array, rng: Optional[Array], *,
               num_steps: int, norm: str, value_range: tuple[float, float], rho: float, random_start: bool,
               targeted: bool) -> Array:
    _check(norm, value_range)
    x = jax.lax.stop_gradient(images.astype(jnp.float32))
    b = x.shape[0]
    eps_m = _per_example(to_model_scale(eps, value_range), x)
    bshape = (b,) + (1,) * (x.ndim - 1)
    if random_start:
        if rng is None:
            raise ValueError('random_start=True needs an rng key.')
        if norm == 'linf':  # The reference init: a random point scaled so that its largest coordinate is eps.
            t = jax.random.uniform(rng, x.shape, x.dtype, -1.0, 1.0)
            t = t / jnp.max(jnp.abs(t), axis=tuple(range(1, x.ndim)), keepdims=True)
        else:
            t = _normalize(jax.random.normal(rng, x.shape, x.dtype))
        x_adv = project(x + eps_m * t, x, eps_m, norm, value_range)
    else:
        x_adv = x

    def step_to(x_from, direction, size):
        return project(x_from + size * direction, x, eps_m, norm, value_range)

    def direction(g):
        return jnp.sign(g) if norm == 'linf' else _normalize(g)

    loss, grad, logits = _loss_and_grad(logits_fn, x_adv, labels, targeted)
    fooled = (jnp.argmax(logits, -1) != labels) if not targeted else (jnp.argmax(logits, -1) == labels)
    checks = apgd_checkpoints(num_steps)
    is_check = jnp.zeros((num_steps + 1,), bool).at[jnp.asarray(checks, jnp.int32)].set(True)
    state = dict(
        x_adv=x_adv, x_prev=x_adv, grad=grad, step=jnp.broadcast_to(2.0 * eps_m, bshape).astype(x.dtype),
        loss_prev=loss, x_best=x_adv, grad_best=grad, loss_best=loss, x_best_adv=x_adv, fooled=fooled,
        n_increase=jnp.zeros((b,), jnp.int32), last_check=jnp.zeros((), jnp.int32),
        loss_best_last_check=loss, step_reduced_last_check=jnp.ones((b,), bool))

    def body(i, s):
        a = jnp.where(i > 0, 0.75, 1.0)
        z = step_to(s['x_adv'], direction(s['grad']), s['step'])
        x_new = project(s['x_adv'] + a * (z - s['x_adv']) + (1 - a) * (s['x_adv'] - s['x_prev']), x, eps_m, norm,
                        value_range)
        loss, grad, logits = _loss_and_grad(logits_fn, x_new, labels, targeted)
        wrong = (jnp.argmax(logits, -1) != labels) if not targeted else (jnp.argmax(logits, -1) == labels)
        bw = wrong.reshape(bshape)
        x_best_adv = jnp.where(bw, x_new, s['x_best_adv'])
        improved = loss > s['loss_best']
        bi = improved.reshape(bshape)
        x_best = jnp.where(bi, x_new, s['x_best'])
        grad_best = jnp.where(bi, grad, s['grad_best'])
        loss_best = jnp.where(improved, loss, s['loss_best'])
        n_increase = s['n_increase'] + (loss > s['loss_prev']).astype(jnp.int32)
        # Step-size check at the checkpoints: halve it and restart from the best point when the loss increased in
        # fewer than rho of the steps since the last check, or when the step was not reduced last time and the
        # best loss has not improved since.
        k = i + 1
        at_check = is_check[k]
        window = (k - s['last_check']).astype(jnp.float32)
        oscillating = n_increase.astype(jnp.float32) <= rho * window
        stalled = (~s['step_reduced_last_check']) & (s['loss_best_last_check'] >= loss_best)
        reduce = at_check & (oscillating | stalled)
        br = reduce.reshape(bshape)
        step = jnp.where(br, s['step'] / 2.0, s['step'])
        x_cont = jnp.where(br, x_best, x_new)
        grad_cont = jnp.where(br, grad_best, grad)
        return dict(
            x_adv=x_cont, x_prev=s['x_adv'], grad=grad_cont, step=step, loss_prev=loss,
            x_best=x_best, grad_best=grad_best, loss_best=loss_best, x_best_adv=x_best_adv,
            fooled=s['fooled'] | wrong,
            n_increase=jnp.where(at_check, 0, n_increase), last_check=jnp.where(at_check, k, s['last_check']),
            loss_best_last_check=jnp.where(at_check, loss_best, s['loss_best_last_check']),
            step_reduced_last_check=jnp.where(at_check, reduce, s['step_reduced_last_check']))

    s = jax.lax.fori_loop(0, int(num_steps), body, state)
    out = jnp.where(s['fooled'].reshape(bshape), s['x_best_adv'], s['x_best'])
    return jax.lax.stop_gradient(out)


_apgd_jit = jax.jit(_apgd_impl, static_argnums=(0,),
                    static_argnames=('num_steps', 'norm', 'value_range', 'rho', 'random_start', 'targeted'))


def apgd_ce(logits_fn: LogitsFn, images: Array, labels: Array, *, eps: float | Array, num_steps: int = 100,
            rng: Optional[Array], norm: str = 'linf', value_range: Sequence[float] = (-1.0, 1.0), rho: float = 0.75,
            random_start: bool = True, targeted: bool = False) -> Array:
    """APGD with the cross-entropy loss (Croce & Hein, "Reliable evaluation of adversarial robustness", 2020).

    Step size starts at 2 eps and is halved (with a restart from the best point) at the checkpoints of
    `apgd_checkpoints` when progress stalls; steps use momentum 0.75. Returns, per example, the last point that
    fooled the model if one was found, else the point of highest loss. One restart (AutoAttack's 'standard'
    setting for APGD-CE is 100 iterations, 1 restart). Arguments as `pgd`.
    """
    return _dispatch(_apgd_impl, _apgd_jit, logits_fn, images, labels, eps, rng, num_steps=int(num_steps),
                     norm=norm, value_range=tuple(float(v) for v in value_range), rho=float(rho),
                     random_start=bool(random_start), targeted=bool(targeted))


# ----------------------------------------------------------------------------------------------------------------
# Registry (evaluators pick attacks by name) and utilities.
# ----------------------------------------------------------------------------------------------------------------
ATTACKS: dict[str, Callable[..., Array]] = {'pgd': pgd, 'fgsm': fgsm, 'apgd_ce': apgd_ce}


def get_attack(name: str) -> Callable[..., Array]:
    """An attack by name: 'pgd', 'fgsm' or 'apgd_ce'."""
    if name not in ATTACKS:
        raise ValueError(f'Unknown attack {name!r}; choose one of {sorted(ATTACKS)}.')
    return ATTACKS[name]


def perturbation_image(images: Array, adv_images: Array, *, eps: float | Array,
                       value_range: Sequence[float] = (-1.0, 1.0)) -> Array:
    """The light recipe's picture of a perturbation: p = (x - x_adv + eps) / (2 eps) in [0, 1], mapped to
    `value_range` so a classifier can read it. Note the sign: x - x_adv points back toward the true class.

    `eps` is in pixel scale (the attack's eps); L-inf perturbations fill [0, 1] exactly.
    """
    lo, hi = (float(v) for v in value_range)
    eps_m = _per_example(to_model_scale(eps, value_range), images)
    p = (images - adv_images + eps_m) / (2.0 * eps_m)
    return lo + jnp.clip(p, 0.0, 1.0) * (hi - lo)


def linf_distance(a: Array, b: Array, value_range: Sequence[float] = (-1.0, 1.0)) -> Array:
    """Per-example L-inf distance in pixel scale [0, 1]."""
    lo, hi = (float(v) for v in value_range)
    return jnp.max(jnp.abs(a - b), axis=tuple(range(1, a.ndim))) / (hi - lo)


def l2_distance(a: Array, b: Array, value_range: Sequence[float] = (-1.0, 1.0)) -> Array:
    """Per-example L2 distance in pixel scale [0, 1]."""
    lo, hi = (float(v) for v in value_range)
    return _l2(a - b).reshape(a.shape[0]) / (hi - lo)


__all__ = ['ATTACKS', 'apgd_ce', 'apgd_checkpoints', 'fgsm', 'get_attack', 'l2_distance', 'linf_distance', 'pgd',
           'perturbation_image', 'project', 'random_init', 'to_model_scale']
