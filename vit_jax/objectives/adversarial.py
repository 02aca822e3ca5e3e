"""Adversarial training objectives: the light recipe (Debenedetti et al., 2023) and Pyramid AT (Herrmann et al., 2022).

'adversarial' (A Light Recipe to Train Robust Vision Transformers; Madry-style adversarial training):
    config.objective = dict(type='adversarial', eps=4 / 255, attack_steps=1, step_size=None, norm='linf',
                            eps_schedule='linear', eps_warmup_epochs=10, zero_eps_epochs=0, steps_per_epoch=None,
                            attack_train_mode=True, clean_weight=0.0, label_smoothing=0.1, loss='softmax')
  Each step attacks the training batch with PGD from a random start (step size 1.5 x the FINAL eps / steps,
  projection on the ball of the CURRENT eps), and trains on the adversarial examples only (label-smoothed CE on the
  adversarial logits; `clean_weight` > 0 adds a clean term, 0 is the recipe). Epsilon warms up linearly per
  integer epoch from 0: eps(epoch) = eps * min(1, (epoch - zero_eps_epochs) / eps_warmup_epochs), so epoch 0 is
  clean training. The attack uses hard labels; a clean forward in train mode gives the clean metrics.

'pyramid_adversarial' (Pyramid Adversarial Training Improves ViT Performance):
    config.objective = dict(type='pyramid_adversarial', pyramid_sizes=(7, 14, 224), pyramid_scalars=(20, 10, 1),
                            pyramid_reference_size=224, eps=3 / 255, step_size=0.5 / 255, attack_steps=5,
                            adv_weight=1.0, attack_train_mode=True, loss='sigmoid')
  A perturbation pyramid: level s holds one RGB offset per cell of a (size_s x size_s) grid at 224 px (blocks of
  32, 16 and 1 pixels), initialised at zero, added times its multiplier M_s, with the image clipped to the value
  range after each level. Five signed-gradient steps DESCEND the training loss toward a random target label
  drawn once per step; each level is clipped to [-eps, eps] before its multiplier (no bound on the sum). The loss
  is L(clean) + adv_weight * L(adversarial) with the (mixed) true labels. "Matched" dropout and stochastic depth:
  ONE dropout key per train step is shared by the clean pass, every attack pass and the adversarial pass, so all
  of them see the same masks.

eps and step sizes are in pixel scale [0, 1] everywhere in vit_jax (the official PyramidAT code works in [-1, 1]
units: its eps 6/255 and step 1/255 are 3/255 and 0.5/255 here; the conversion to `config.data.value_range` is
done by the code).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from vit_jax import attacks, objectives
from vit_jax.objectives.base import Objective, StepContext
from vit_jax.objectives.classification import Classification, cross_entropy, soft_targets


def _value_range(config: Any) -> tuple[float, float]:
    data_cfg = dict(config.get('data', None) or {})
    if 'normalize' in str(data_cfg.get('train_pp', '')):
        raise ValueError('Adversarial training needs the model inputs in a plain box (config.data.value_range): the '
                         "train pipeline applies 'normalize' (per-channel mean/std), which changes the eps geometry. "
                         'Drop it (the light recipe uses no normalisation; PyramidAT uses [-1, 1]).')
    vr = data_cfg.get('value_range', (-1.0, 1.0))
    return float(vr[0]), float(vr[1])


def _hard_labels(batch: dict) -> jax.Array:
    if 'label_dist' in batch:
        return jnp.argmax(batch['label_dist'], -1)
    return batch['label']


def epsilon_at(step: jax.Array | int, *, eps: float, steps_per_epoch: int, schedule: str = 'linear',
               warmup_epochs: float = 10, zero_eps_epochs: float = 0) -> jax.Array:
    """The light recipe's epsilon at optimizer step `step` (granularity: whole epochs; epoch 0 gives 0 with warm-up).

    'linear': eps * clip((epoch - zero_eps_epochs) / warmup_epochs, 0, 1); 'constant': eps after the zero epochs;
    'sine': eps * sin(pi/2 * the linear fraction) (in the official code, not the default recipe).
    """
    epoch = jnp.floor_divide(jnp.asarray(step, jnp.int32), max(int(steps_per_epoch), 1)).astype(jnp.float32)
    t = epoch - float(zero_eps_epochs)
    if schedule == 'constant' or not warmup_epochs:
        frac = (t >= 0).astype(jnp.float32)
    elif schedule in ('linear', 'sine'):
        frac = jnp.clip(t / float(warmup_epochs), 0.0, 1.0)
        if schedule == 'sine':
            frac = jnp.sin(0.5 * jnp.pi * frac)
    else:
        raise ValueError(f"objective.eps_schedule must be 'linear', 'sine' or 'constant', got {schedule!r}.")
    return float(eps) * frac


@objectives.register('adversarial')
class AdversarialTraining(Classification):
    """PGD adversarial training with the light recipe's epsilon warm-up (see the module docstring for the keys)."""

    def __init__(self, config: Any, model: Any):
        super().__init__(config, model)
        cfg = config.objective
        self.eps = float(cfg.get('eps', 4 / 255))
        self.attack_steps = int(cfg.get('attack_steps', 1))
        step = cfg.get('step_size', None)
        # The recipe: 1.5 x the final eps, split over the steps (1 step at eps 4/255: 6/255).
        self.step_size = float(step) if step is not None else 1.5 * self.eps / max(self.attack_steps, 1)
        self.norm = cfg.get('norm', 'linf')
        self.value_range = _value_range(config)
        self._steps_per_epoch = cfg.get('steps_per_epoch', None)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: objective.steps_per_epoch, else the training split's size / batch size."""
        if not self._steps_per_epoch:
            from vit_jax import data

            try:
                info = data.dataset_info(self.config.dataset, self.config.data.get('train_split', 'train'),
                                         data_config=self.config.get('data', None))
            except Exception as e:  # noqa: BLE001  (surface the reason with the fix)
                raise ValueError(f'The epsilon warm-up needs the epoch length: set config.objective.steps_per_epoch '
                                 f'(could not read the size of {self.config.dataset!r}: {e}).') from e
            self._steps_per_epoch = max(1, int(info['num_examples']) // int(self.config.batch_size))
        return int(self._steps_per_epoch)

    def epsilon(self, step: jax.Array | int) -> jax.Array:
        """The (warmed-up) attack radius in pixel scale at optimizer step `step`."""
        cfg = self.config.objective
        return epsilon_at(step, eps=self.eps, steps_per_epoch=self.steps_per_epoch,
                          schedule=cfg.get('eps_schedule', 'linear'), warmup_epochs=cfg.get('eps_warmup_epochs', 10),
                          zero_eps_epochs=cfg.get('zero_eps_epochs', 0))

    def prepare_batch(self, batch: dict, rng: jax.Array, ctx: StepContext) -> dict:
        """The step's (warmed-up) radius as `adv_eps`, one per example."""
        return dict(batch, adv_eps=jnp.full((batch['image'].shape[0],), self.epsilon(ctx.state.step), jnp.float32))

    def adversarial_examples(self, params: Any, model_state: Any, batch: dict, rng: jax.Array) -> jax.Array:
        """PGD (random start) on the batch with the current params held fixed; eps from `batch['adv_eps']`."""
        cfg = self.config.objective
        n = batch['image'].shape[0]
        eps = batch.get('adv_eps', jnp.full((n,), self.eps, jnp.float32))
        attack_rng, init_rng = jax.random.split(rng)
        fixed = jax.lax.stop_gradient(params)
        train_mode = bool(cfg.get('attack_train_mode', True))

        def logits_fn(x):
            (logits, _), _ = self.apply_model(fixed, model_state, x, train=train_mode,
                                              rng=attack_rng if train_mode else None)
            return logits

        return attacks.pgd(logits_fn, batch['image'], _hard_labels(batch), eps=eps, step_size=self.step_size,
                           num_steps=self.attack_steps, rng=init_rng, norm=self.norm, value_range=self.value_range,
                           random_start=bool(cfg.get('random_start', True)))

    def loss(self, params: Any, model_state: Any, batch: dict, rng: jax.Array, train: bool = True):
        cfg = self.config.objective
        attack_rng, clean_rng, adv_rng = jax.random.split(rng, 3)
        x_adv = self.adversarial_examples(params, model_state, batch, attack_rng)
        clean_weight = float(cfg.get('clean_weight', 0.0))
        # Clean pass (train mode, so BatchNorm statistics see clean batches too); only its metrics are used unless
        # clean_weight > 0.
        clean_params = params if clean_weight else jax.lax.stop_gradient(params)
        (clean_logits, _), model_state = self.apply_model(clean_params, model_state, batch['image'], train=train,
                                                          rng=clean_rng)
        (adv_logits, _), model_state = self.apply_model(params, model_state, x_adv, train=train, rng=adv_rng)
        targets = soft_targets(batch, adv_logits.shape[-1], float(cfg.get('label_smoothing', 0.0)))
        kind = cfg.get('loss', 'softmax')
        adv_loss = cross_entropy(adv_logits, targets, kind).mean()
        clean_loss = cross_entropy(clean_logits, targets, kind).mean()
        loss = adv_loss + clean_weight * clean_loss
        hard = jnp.argmax(targets, -1)
        metrics = {'loss': loss, 'adv_loss': adv_loss, 'clean_loss': clean_loss,
                   'accuracy': jnp.mean(jnp.argmax(clean_logits, -1) == hard),
                   'adv_accuracy': jnp.mean(jnp.argmax(adv_logits, -1) == hard),
                   'eps': jnp.mean(batch['adv_eps']) if 'adv_eps' in batch else jnp.asarray(self.eps),
                   'linf': jnp.max(attacks.linf_distance(x_adv, batch['image'], self.value_range))}
        return loss, (metrics, model_state)


# ----------------------------------------------------------------------------------------------------------------
# Pyramid adversarial training.
# ----------------------------------------------------------------------------------------------------------------
def pyramid_blocks(sizes: Sequence[int], reference_size: int = 224) -> tuple[int, ...]:
    """Block side (pixels) of each level: the official grid sizes (7, 14, 224) at 224 px are blocks 32, 16, 1."""
    return tuple(max(1, int(reference_size) // int(s)) for s in sizes)


def pyramid_shapes(image_shape: Sequence[int], blocks: Sequence[int]) -> list[tuple[int, ...]]:
    """Shapes [B, ceil(H / b), ceil(W / b), C] of the perturbation of each level (cells cover the image)."""
    b, h, w, c = image_shape
    return [(b, math.ceil(h / k), math.ceil(w / k), c) for k in blocks]


def pyramid_perturb(images: jax.Array, deltas: Sequence[jax.Array], blocks: Sequence[int],
                    scalars: Sequence[float], value_range: Sequence[float] = (-1.0, 1.0)) -> jax.Array:
    """Adds each level's per-cell offsets (nearest upsampling to its blocks) times its multiplier, clipping the image
    to `value_range` after every level (as the official transform). `deltas` are in model units."""
    lo, hi = (float(v) for v in value_range)
    _, h, w, _ = images.shape
    x = images
    for d, k, m in zip(deltas, blocks, scalars):
        up = jnp.repeat(jnp.repeat(d, k, axis=1), k, axis=2)[:, :h, :w]
        x = jnp.clip(x + float(m) * up.astype(x.dtype), lo, hi)
    return x


@objectives.register('pyramid_adversarial')
class PyramidAdversarialTraining(Classification):
    """Pyramid AT (see the module docstring). `passes` exposes the clean and adversarial forward passes."""

    def __init__(self, config: Any, model: Any):
        super().__init__(config, model)
        cfg = config.objective
        blocks = cfg.get('pyramid_blocks', None)
        self.blocks = tuple(int(b) for b in blocks) if blocks else pyramid_blocks(
            cfg.get('pyramid_sizes', (7, 14, 224)), cfg.get('pyramid_reference_size', 224))
        self.scalars = tuple(float(s) for s in cfg.get('pyramid_scalars', (20, 10, 1)))
        if len(self.scalars) != len(self.blocks):
            raise ValueError(f'objective.pyramid_scalars {self.scalars} and the pyramid levels {self.blocks} differ '
                             'in length.')
        self.value_range = _value_range(config)
        self.eps = float(attacks.to_model_scale(cfg.get('eps', 3 / 255), self.value_range))
        self.step_size = float(attacks.to_model_scale(cfg.get('step_size', 0.5 / 255), self.value_range))
        self.attack_steps = int(cfg.get('attack_steps', 5))

    def attack(self, params: Any, model_state: Any, images: jax.Array, targets: jax.Array, rng: jax.Array
               ) -> tuple[jax.Array, list[jax.Array]]:
        """The pyramid attack toward one-hot `targets` (descending the training loss); params held fixed.

        `rng` is the step's dropout key, shared with the clean and adversarial passes.
        """
        cfg = self.config.objective
        kind = cfg.get('loss', 'softmax')
        fixed = jax.lax.stop_gradient(params)
        x = jax.lax.stop_gradient(images)
        train_mode = bool(cfg.get('attack_train_mode', True))

        def attack_loss(deltas):
            x_adv = pyramid_perturb(x, deltas, self.blocks, self.scalars, self.value_range)
            (logits, _), _ = self.apply_model(fixed, model_state, x_adv, train=train_mode,
                                              rng=rng if train_mode else None)
            return cross_entropy(logits, targets, kind).mean()

        def step(_, deltas):
            g = jax.grad(attack_loss)(deltas)
            return [jnp.clip(d - self.step_size * jnp.sign(gd), -self.eps, self.eps) for d, gd in zip(deltas, g)]

        deltas = [jnp.zeros(s, jnp.float32) for s in pyramid_shapes(x.shape, self.blocks)]
        deltas = jax.lax.fori_loop(0, self.attack_steps, step, deltas)
        x_adv = pyramid_perturb(x, deltas, self.blocks, self.scalars, self.value_range)
        return jax.lax.stop_gradient(x_adv), [jax.lax.stop_gradient(d) for d in deltas]

    def passes(self, params: Any, model_state: Any, batch: dict, rng: jax.Array, train: bool = True) -> dict:
        """Attack, clean pass and adversarial pass of one train step, all under the same dropout key."""
        dropout_rng, target_rng = jax.random.split(rng)
        num_classes = self.model.num_classes
        random_labels = jax.random.randint(target_rng, (batch['image'].shape[0],), 0, num_classes)
        x_adv, deltas = self.attack(params, model_state, batch['image'], jax.nn.one_hot(random_labels, num_classes),
                                    dropout_rng)
        (clean_logits, _), model_state = self.apply_model(params, model_state, batch['image'], train=train,
                                                          rng=dropout_rng)
        (adv_logits, _), model_state = self.apply_model(params, model_state, x_adv, train=train, rng=dropout_rng)
        return dict(clean_logits=clean_logits, adv_logits=adv_logits, x_adv=x_adv, deltas=deltas,
                    random_labels=random_labels, model_state=model_state)

    def loss(self, params: Any, model_state: Any, batch: dict, rng: jax.Array, train: bool = True):
        cfg = self.config.objective
        p = self.passes(params, model_state, batch, rng, train)
        targets = soft_targets(batch, p['clean_logits'].shape[-1], float(cfg.get('label_smoothing', 0.0)))
        kind = cfg.get('loss', 'softmax')
        clean_loss = cross_entropy(p['clean_logits'], targets, kind).mean()
        adv_loss = cross_entropy(p['adv_logits'], targets, kind).mean()
        loss = clean_loss + float(cfg.get('adv_weight', 1.0)) * adv_loss
        hard = jnp.argmax(targets, -1)
        lo, hi = self.value_range
        metrics = {'loss': loss, 'clean_loss': clean_loss, 'adv_loss': adv_loss,
                   'accuracy': jnp.mean(jnp.argmax(p['clean_logits'], -1) == hard),
                   'adv_accuracy': jnp.mean(jnp.argmax(p['adv_logits'], -1) == hard),
                   'target_hit': jnp.mean(jnp.argmax(p['adv_logits'], -1) == p['random_labels']),
                   'linf': jnp.max(jnp.abs(p['x_adv'] - batch['image'])) / (hi - lo)}
        return loss, (metrics, p['model_state'])


__all__ = ['AdversarialTraining', 'Objective', 'PyramidAdversarialTraining', 'epsilon_at', 'pyramid_blocks',
           'pyramid_perturb', 'pyramid_shapes']
