"""Image outpainting with a GAN (QueryOTR, Yao et al. 2022), `objective.type='outpainting'`.

Batches hold 'image' (the known centre, the model input) and 'target' (the full image), both in the data config's
value range (see `vit_jax.data.outpainting`). The generator is the run's model (e.g. 'QueryOTR'); the multi-scale
PatchGAN discriminator (`vit_jax.models.patchgan`), its optimizer state and the frozen perceptual network live in
`TrainState.extra`. Two optimisers, as the official code:

  steps < objective.warmup_steps (the paper's first 10 epochs): generator only, reconstruction loss only;
  afterwards every step: one discriminator step (hinge, DiffAugment on real and fake, summed over scales) on the
  generator's output, then one generator step against the updated discriminator with
      rec_weight * L_rec + adv_weight * L_adv + perc_weight * L_perc        (paper: 5, 1, 10)
  L_rec  = MSE ('l1' optional) on the outer ring only, in the normalised space (x - output_mean) / output_std;
  L_adv  = sum over scales of -mean D(DiffAugment(fake));
  L_perc = sum_l w_l * mean |VGG19_l(fake) - VGG19_l(target)| over relu1_1 .. relu5_1 with w = 1/32, 1/16, 1/8,
           1/4, 1 (SPADE), images mapped to [0, 1] then ImageNet-normalised, on the full image.
The discriminator sees normalised images, as in the official code. The generator's output is computed once per
step (its VJP is reused for the generator update).

Optimisers: `optimizer.name='adam'` with `weight_decay` is PyTorch's Adam with coupled L2 (the paper: betas
(0, 0.99), weight decay 1e-4, for both networks); 'adamw' decouples it. Parameters whose path contains
`objective.lr_mult_pattern` ('conv_offset_mask': the deformable convs' offset convs) get `offset_lr_mult` (0.1) times
the learning rate. `objective.lr_staircase_steps` (steps per epoch) holds the learning rate for a whole epoch, as
the official per-epoch warm-up updates (0: updated every step).

Config (`config.objective`):
    type='outpainting', rec_weight=5.0, adv_weight=1.0, perc_weight=10.0, rec_loss='mse', warmup_steps=0,
    diffaug='color,translation,cutout', offset_lr_mult=0.1, lr_mult_pattern='conv_offset_mask',
    lr_staircase_steps=0,
    disc=dict(num_scales=2, ndf=64, n_layers=4, spectral_norm=True, instance_norm=True, lr_mult=1.0,
              b1=None, b2=None, weight_decay=None),       # None: the generator's optimizer settings
    perceptual=dict(model='VGG19', overrides=dict(num_classes=0), weights=None,
                    layers=('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1'),
                    layer_weights=(1/32, 1/16, 1/8, 1/4, 1.0), input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD)

Without VGG weights the perceptual net is a frozen random-init stand-in and its metric is named
`perceptual_loss_random_features` (see `objectives.frozen`). Convert torchvision's VGG19 with
`python -m vit_jax.convert --from=official:vgg --model=VGG19 --model.num_classes=0 vgg19.pth --out vgg19.npz` to get
the real one.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vit_jax import objectives, optim
from vit_jax.models import patchgan
from vit_jax.objectives import frozen
from vit_jax.objectives.base import Objective, TrainState, guard_nonfinite, tree_l2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PERCEPTUAL_LAYERS = ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1')
PERCEPTUAL_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


def _get(c: Any, key: str, default: Any) -> Any:
    if c is None:
        return default
    v = c.get(key, default) if hasattr(c, 'get') else getattr(c, key, default)
    return default if v is None else v


def _path(path: tuple) -> str:
    return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def adam_tx(opt: Any, schedule: Any, params: Any, *, lr_mults: Any = None, b1: Any = None, b2: Any = None,
            weight_decay: Any = None) -> optax.GradientTransformation:
    """Adam as PyTorch: 'adam' with coupled L2 weight decay (torch.optim.Adam) or 'adamw' (decoupled).

    `lr_mults`: an optional tree (like params) of per-parameter learning-rate multipliers.
    """
    name = _get(opt, 'name', 'adam')
    if name not in ('adam', 'adamw'):
        raise ValueError(f"objective.type='outpainting' uses optimizer.name 'adam' (PyTorch Adam, coupled weight "
                         f"decay: the paper) or 'adamw'; got {name!r}.")
    b1 = float(_get(opt, 'b1', 0.9) if b1 is None else b1)
    b2 = float(_get(opt, 'b2', 0.999) if b2 is None else b2)
    wd = float(_get(opt, 'weight_decay', 0.0) if weight_decay is None else weight_decay)
    mask = optim.weight_decay_mask(params, _get(opt, 'wd_mask', 'all'))
    chain = []
    clip = _get(opt, 'grad_clip_norm', None)
    if clip:
        chain.append(optax.clip_by_global_norm(float(clip)))
    if wd and name == 'adam':
        chain.append(optax.add_decayed_weights(wd, mask))
    chain.append(optax.scale_by_adam(b1=b1, b2=b2, eps=float(_get(opt, 'eps', 1e-8))))
    if wd and name == 'adamw':
        chain.append(optax.add_decayed_weights(wd, mask))
    chain.append(optax.scale_by_learning_rate(schedule))
    if lr_mults is not None:
        chain.append(optax.stateless(lambda updates, _: jax.tree_util.tree_map(lambda u, m: u * m, updates,
                                                                               lr_mults)))
    return optax.chain(*chain)


@objectives.register('outpainting')
class Outpainting(Objective):
    """GAN outpainting objective (see the module docstring)."""

    def __init__(self, config: Any, model: nn.Module):
        super().__init__(config, model)
        if not hasattr(model, 'outer_pixel_mask') or not hasattr(model, 'output_size'):
            raise ValueError("objective.type='outpainting' needs an outpainting model such as 'QueryOTR' (with "
                             f'output_size and outer_pixel_mask), got {type(model).__name__}.')
        if int(_get(config.optimizer, 'accum_steps', 1)) != 1:
            raise ValueError("objective.type='outpainting' does not support optimizer.accum_steps > 1.")
        if config.optimizer.get('ema_decay', None):
            raise ValueError("objective.type='outpainting' does not keep a weight EMA (optimizer.ema_decay).")
        cfg = config.objective
        self.cfg = cfg
        self.rec_weight = float(_get(cfg, 'rec_weight', 5.0))
        self.adv_weight = float(_get(cfg, 'adv_weight', 1.0))
        self.perc_weight = float(_get(cfg, 'perc_weight', 10.0))
        self.rec_kind = str(_get(cfg, 'rec_loss', 'mse'))
        if self.rec_kind not in ('mse', 'l1'):
            raise ValueError(f"objective.rec_loss must be 'mse' or 'l1', got {self.rec_kind!r}.")
        self.warmup_steps = int(_get(cfg, 'warmup_steps', 0))
        self.diffaug = str(_get(cfg, 'diffaug', 'color,translation,cutout'))
        self.lr_staircase = int(_get(cfg, 'lr_staircase_steps', 0))
        self.offset_lr_mult = float(_get(cfg, 'offset_lr_mult', 0.1))
        self.lr_mult_pattern = str(_get(cfg, 'lr_mult_pattern', 'conv_offset_mask'))
        self.out_mean = float(model.output_mean)
        self.out_std = float(model.output_std)
        self.full_size = int(model.output_size)

        dcfg = cfg.get('disc', None)
        self.disc = patchgan.MultiScalePatchGAN(
            num_scales=int(_get(dcfg, 'num_scales', 2)), ndf=int(_get(dcfg, 'ndf', 64)),
            n_layers=int(_get(dcfg, 'n_layers', 4)), spectral_norm=bool(_get(dcfg, 'spectral_norm', True)),
            instance_norm=bool(_get(dcfg, 'instance_norm', True)))
        self.dcfg = dcfg
        self.disc_tx = None

        value_range = tuple(float(v) for v in config.get('data', {}).get('value_range', (0.0, 1.0)))
        self.value_range = value_range
        pcfg = cfg.get('perceptual', None)
        self.perc = None
        self.perc_name = 'perceptual_loss'
        if self.perc_weight > 0:
            pc = dict(model='VGG19', overrides=dict(num_classes=0), input_mean=IMAGENET_MEAN,
                      input_std=IMAGENET_STD)
            pc.update({k: v for k, v in dict(pcfg or {}).items() if v is not None})
            self.perc = frozen.load_frozen(pc, 'perceptual net', image_size=(self.full_size, self.full_size),
                                           value_range=value_range)
            self.perc_layers = tuple(_get(pc, 'layers', PERCEPTUAL_LAYERS))
            self.perc_layer_weights = tuple(float(w) for w in _get(pc, 'layer_weights', PERCEPTUAL_WEIGHTS))
            if len(self.perc_layers) != len(self.perc_layer_weights):
                raise ValueError('objective.perceptual.layers and layer_weights differ in length.')
            if self.perc.frozen_random:
                self.perc_name = 'perceptual_loss_random_features'

    # ----------------------------------------------------------------------------------------------------------
    # Optimisers.
    # ----------------------------------------------------------------------------------------------------------
    def _schedule(self):
        base = optim.lr_schedule(self.config.lr, int(self.config.total_steps))
        if self.lr_staircase > 0:
            s = self.lr_staircase
            return lambda step: base(jnp.asarray(step) // s * s)
        return base

    def make_optimizer(self, params: Any) -> optax.GradientTransformation:
        if self.tx is None:
            self.schedule = self._schedule()
            pattern = re.compile(self.lr_mult_pattern) if self.lr_mult_pattern else None
            mults = jax.tree_util.tree_map_with_path(
                lambda p, _: self.offset_lr_mult if pattern is not None and pattern.search(_path(p)) else 1.0,
                params)
            self.tx = adam_tx(self.config.optimizer, self.schedule, params, lr_mults=mults)
        return self.tx

    def make_disc_optimizer(self, params: Any) -> optax.GradientTransformation:
        if self.disc_tx is None:
            if self.schedule is None:
                self.schedule = self._schedule()
            mult = float(_get(self.dcfg, 'lr_mult', 1.0))
            schedule = self.schedule
            self.disc_tx = adam_tx(self.config.optimizer, lambda s: mult * schedule(s), params,
                                   b1=_get(self.dcfg, 'b1', None), b2=_get(self.dcfg, 'b2', None),
                                   weight_decay=_get(self.dcfg, 'weight_decay', None))
        return self.disc_tx

    def init_state(self, rng: jax.Array, batch: dict) -> TrainState:
        state = super().init_state(rng, batch)
        n = self.full_size
        dvars = self.disc.init({'params': jax.random.fold_in(rng, 7)}, jnp.zeros((1, n, n, 3), jnp.float32))
        dvars = dict(dvars)
        extra = {'disc': {'params': dvars['params'], 'batch_stats': dvars.get('batch_stats', {})},
                 'disc_opt': self.make_disc_optimizer(dvars['params']).init(dvars['params']),
                 'perceptual': self.perc.device_variables() if self.perc is not None else {}}
        return state.replace(extra=extra)

    # ----------------------------------------------------------------------------------------------------------
    # Losses.
    # ----------------------------------------------------------------------------------------------------------
    def normalise(self, x: jax.Array) -> jax.Array:
        """Data space -> the scalar-normalised space of the targets (QueryOTR's patch_mean / patch_std)."""
        return (x - self.out_mean) / self.out_std

    def rec_loss(self, fake: jax.Array, target: jax.Array) -> jax.Array:
        """MSE (or L1) over the outer ring only, in the normalised space (mean over outer pixels and channels)."""
        mask = jnp.asarray(self.model.outer_pixel_mask())
        d = (fake - target) / self.out_std
        err = d * d if self.rec_kind == 'mse' else jnp.abs(d)
        return jnp.sum(err * mask) / (jnp.sum(mask) * fake.shape[0] * fake.shape[-1])

    def perceptual_loss(self, fake: jax.Array, target: jax.Array, perc_vars: Any) -> jax.Array:
        """sum_l w_l mean |f_l(fake) - sg(f_l(target))| with the frozen VGG."""
        _, out = frozen.apply_frozen(self.perc, perc_vars, jnp.concatenate([fake, target], 0))
        n = fake.shape[0]
        total = 0.0
        for name, w in zip(self.perc_layers, self.perc_layer_weights):
            if name not in out:
                raise ValueError(f'The perceptual net has no feature {name!r}; it gives {sorted(out)}.')
            f = out[name]
            total = total + w * jnp.mean(jnp.abs(f[:n] - jax.lax.stop_gradient(f[n:])))
        return total

    def disc_logits(self, disc_vars: dict, images_norm: jax.Array, rng: jax.Array, update_stats: bool
                    ) -> tuple[list, Any]:
        """D(DiffAugment(x)) per scale (+ the updated spectral-norm statistics when `update_stats`)."""
        x = patchgan.diff_augment(images_norm, rng, self.diffaug)
        if update_stats:
            outs, upd = self.disc.apply(disc_vars, x, update_stats=True, mutable=['batch_stats'])
            return outs, upd['batch_stats']
        return self.disc.apply(disc_vars, x, update_stats=False), disc_vars['batch_stats']

    def loss(self, params: Any, model_state: Any, batch: dict, rng: jax.Array, train: bool = True):
        """Reconstruction loss of the generator alone (used for evaluation-style figures; training uses
        `train_step`)."""
        (fake, _), model_state = self.apply_model(params, model_state, batch['image'], train=train, rng=rng)
        rec = self.rec_loss(fake, batch['target'])
        return self.rec_weight * rec, ({'loss': self.rec_weight * rec, 'rec_loss': rec}, model_state)

    # ----------------------------------------------------------------------------------------------------------
    # Train step: D step then G step (after the reconstruction-only warm-up).
    # ----------------------------------------------------------------------------------------------------------
    def check_batch(self, batch: dict) -> None:
        """Clear errors for batches without a target or with a target of another size than the model output."""
        if 'target' not in batch:
            raise ValueError("objective.type='outpainting' needs batches with 'target' (the full image): use the "
                             "outpainting pipelines (data.train_pp='outpaint_crop|flip|value_range|outpaint_split', "
                             'see vit_jax.data.outpainting).')
        n = self.full_size
        if tuple(batch['target'].shape[1:3]) != (n, n):
            raise ValueError(f'The targets are {tuple(batch["target"].shape[1:3])}, the model outputs {(n, n)}: set '
                             f'data.outpaint_scale to output_size / image_size '
                             f'({n / int(self.model.image_size):g}).')

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        self.check_batch(batch)
        rng = jax.random.fold_in(state.rng, state.step)
        r_gen, r_dfake, r_dreal, r_g = jax.random.split(rng, 4)
        target = batch['target']

        def generate(p):
            (full, _), _ = self.apply_model(p, state.model_state, batch['image'], train=True, rng=r_gen)
            return full

        fake, pullback = jax.vjp(generate, state.params)
        extra = state.extra
        zero = jnp.zeros((), jnp.float32)

        def warm_branch(_):
            rec, g = jax.value_and_grad(self.rec_loss)(fake, target)
            metrics = {'loss': self.rec_weight * rec, 'rec_loss': rec, 'adv_loss': zero, self.perc_name: zero,
                       'd_loss': zero, 'd_real': zero, 'd_fake': zero}
            return self.rec_weight * g, extra['disc'], extra['disc_opt'], metrics

        def gan_branch(_):
            disc = extra['disc']
            n = fake.shape[0]
            fake_n = self.normalise(jax.lax.stop_gradient(fake))
            real_n = self.normalise(target)

            def d_loss_fn(dp):
                x = jnp.concatenate([patchgan.diff_augment(fake_n, r_dfake, self.diffaug),
                                     patchgan.diff_augment(real_n, r_dreal, self.diffaug)], 0)
                outs, upd = self.disc.apply({'params': dp, 'batch_stats': disc['batch_stats']}, x,
                                            update_stats=True, mutable=['batch_stats'])
                fl, rl = [o[:n] for o in outs], [o[n:] for o in outs]
                d = patchgan.hinge_d_loss(rl, fl)
                return d, (upd['batch_stats'], sum(jnp.mean(o) for o in rl), sum(jnp.mean(o) for o in fl))

            (d_loss, (stats, d_real, d_fake)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
                disc['params'])
            d_updates, d_opt = self.disc_tx.update(d_grads, extra['disc_opt'], disc['params'])
            new_disc = {'params': optax.apply_updates(disc['params'], d_updates), 'batch_stats': stats}

            def g_loss_fn(f):
                rec = self.rec_loss(f, target)
                outs, _ = self.disc_logits(new_disc, self.normalise(f), r_g, update_stats=False)
                adv = patchgan.hinge_g_loss(outs)
                total = self.rec_weight * rec + self.adv_weight * adv
                perc = zero
                if self.perc is not None:
                    perc = self.perceptual_loss(f, target, extra['perceptual'])
                    total = total + self.perc_weight * perc
                return total, {'loss': total, 'rec_loss': rec, 'adv_loss': adv, self.perc_name: perc}

            (_, m), g = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
            m = dict(m, d_loss=d_loss, d_real=d_real, d_fake=d_fake)
            return g, new_disc, d_opt, m

        warm = state.step < self.warmup_steps
        if self.warmup_steps <= 0:
            g_fake, disc, disc_opt, metrics = gan_branch(None)
        else:
            g_fake, disc, disc_opt, metrics = jax.lax.cond(warm, warm_branch, gan_branch, None)
        (grads,) = pullback(g_fake)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_extra = dict(extra, disc=disc, disc_opt=disc_opt)

        grad_norm = tree_l2(grads)
        new_state, finite = guard_nonfinite(
            state, state.replace(step=state.step + 1, params=params, opt_state=opt_state, extra=new_extra),
            metrics['loss'], metrics['d_loss'], grad_norm, updates)
        metrics = dict(metrics, l2_grads=grad_norm, l2_params=tree_l2(new_state.params), lr=self.schedule(state.step),
                       gan_phase=1.0 - warm.astype(jnp.float32), nonfinite=1.0 - finite.astype(jnp.float32))
        return new_state, metrics

    def predict(self, state: TrainState, batch: dict) -> dict:
        """{'outpainted': the full image (centre = input), 'prediction': the PSM output before the centre copy}."""
        (full, out), _ = self.apply_model(self.eval_params(state), state.model_state, batch['image'], train=False,
                                          rng=None)
        return {'outpainted': full, 'prediction': out['prediction']}
