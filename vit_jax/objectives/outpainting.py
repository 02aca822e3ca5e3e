"""Image outpainting with a GAN (QueryOTR, Yao et al. 2022), `objective.type='outpainting'`.

Batches hold 'image' (the known centre, the model input) and 'target' (the full image), both in the data config's
value range (see `vit_jax.data.outpainting`). The generator is the run's model (e.g. 'QueryOTR'); the multi-scale
PatchGAN discriminator (`vit_jax.models.patchgan`) is a second trainable group ('disc', its parameters, optimizer
state and spectral-norm statistics in `TrainState.extra['disc']`); the frozen perceptual network is an input of the
step (`frozen['perceptual']`). Two optimisers, as the official code:

  steps < objective.warmup_steps (the paper's first 10 epochs): generator only, reconstruction loss only;
  afterwards every step: one discriminator step (hinge, DiffAugment on real and fake, summed over scales) on the
  generator's output, then one generator step against the updated discriminator with
      rec_weight * L_rec + adv_weight * L_adv + perc_weight * L_perc        (paper: 5, 1, 10)
  L_rec  = MSE ('l1' optional) on the outer ring only, in the normalised space (x - output_mean) / output_std;
  L_adv  = sum over scales of -mean D(DiffAugment(fake));
  L_perc = sum_l w_l * mean |VGG19_l(fake) - VGG19_l(target)| over relu1_1 .. relu5_1 with w = 1/32, 1/16, 1/8,
           1/4, 1 (SPADE), images mapped to [0, 1] then ImageNet-normalised, on the full image.
The discriminator sees normalised images, as in the official code. Its step regenerates the generator's output
(same key, so the same images) outside the generator's gradient; gradient accumulation (`optimizer.accum_steps`) and
the generator's EMA (`optimizer.ema_decay`) work as for every objective.

Optimisers: `config.optimizer` for both networks (`optim.make`; `name='adam'` with `weight_decay` is PyTorch's Adam
with coupled L2, the paper: betas (0, 0.99), weight decay 1e-4); `disc.b1`, `b2`, `weight_decay` and `lr_mult`
change the discriminator's. Parameters whose path contains
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

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import objectives, optim
from vit_jax.models import patchgan
from vit_jax.objectives import frozen
from vit_jax.objectives.base import MODEL, Group, Objective, StepContext, TrainState

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PERCEPTUAL_LAYERS = ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1')
PERCEPTUAL_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


def _get(c: Any, key: str, default: Any) -> Any:
    if c is None:
        return default
    v = c.get(key, default) if hasattr(c, 'get') else getattr(c, key, default)
    return default if v is None else v


@objectives.register('outpainting')
class Outpainting(Objective):
    """GAN outpainting objective (see the module docstring)."""

    def __init__(self, config: Any, model: nn.Module):
        super().__init__(config, model)
        if not hasattr(model, 'outer_pixel_mask') or not hasattr(model, 'output_size'):
            raise ValueError("objective.type='outpainting' needs an outpainting model such as 'QueryOTR' (with "
                             f'output_size and outer_pixel_mask), got {type(model).__name__}.')
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
            self.frozen['perceptual'] = self.perc.variables

    # ----------------------------------------------------------------------------------------------------------
    # Groups: the discriminator's step (after the warm-up), then the generator's against the updated discriminator.
    # ----------------------------------------------------------------------------------------------------------
    def groups(self) -> tuple[Group, ...]:
        base = optim.lr_schedule(self.config.lr, int(self.config.total_steps))
        s = self.lr_staircase
        schedule = (lambda step: base(jnp.asarray(step) // s * s)) if s > 0 else base
        mult = float(_get(self.dcfg, 'lr_mult', 1.0))
        disc_opt = dict(self.config.optimizer)  # The generator's settings unless disc.b1 / b2 / weight_decay are set.
        for k in ('b1', 'b2', 'weight_decay'):
            if _get(self.dcfg, k, None) is not None:
                disc_opt[k] = _get(self.dcfg, k, None)
        gen_opt = dict(self.config.optimizer)
        if self.lr_mult_pattern:  # The deformable convs' offsets at offset_lr_mult x the learning rate.
            gen_opt['lr_mults'] = ((self.lr_mult_pattern, self.offset_lr_mult),) + tuple(
                gen_opt.get('lr_mults', None) or ())
        n = self.full_size
        disc = Group('disc', self.disc_loss, init=lambda rng, _: self.disc.init(rng, jnp.zeros((1, n, n, 3))),
                     optimizer=disc_opt, schedule=lambda step: mult * schedule(step), start_step=self.warmup_steps)
        return disc, Group(MODEL, self.generator_loss, optimizer=gen_opt, schedule=schedule)

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

    # ----------------------------------------------------------------------------------------------------------
    # Batches and the two losses.
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

    def generate(self, params: Any, model_state: Any, batch: dict, rng: jax.Array) -> tuple[jax.Array, Any]:
        """(the full outpainted image, the new model state) in training mode."""
        self.check_batch(batch)
        (full, _), model_state = self.apply_model(params, model_state, batch['image'], train=True, rng=rng)
        return full, model_state

    def disc_loss(self, params: Any, model_state: Any, batch: dict, rng: jax.Array, ctx: StepContext):
        """Hinge loss of D (summed over scales) on DiffAugment(fake) and DiffAugment(real)."""
        r_gen, r_dfake, r_dreal, _ = jax.random.split(rng, 4)
        fake, _ = self.generate(ctx.state.params, ctx.state.model_state, batch, r_gen)
        fake_n = self.normalise(jax.lax.stop_gradient(fake))
        x = jnp.concatenate([patchgan.diff_augment(fake_n, r_dfake, self.diffaug),
                             patchgan.diff_augment(self.normalise(batch['target']), r_dreal, self.diffaug)], 0)
        outs, upd = self.disc.apply({'params': params, **model_state}, x, update_stats=True, mutable=['batch_stats'])
        n = fake.shape[0]
        fl, rl = [o[:n] for o in outs], [o[n:] for o in outs]
        d = patchgan.hinge_d_loss(rl, fl)
        metrics = {'d_loss': d, 'd_real': sum(jnp.mean(o) for o in rl), 'd_fake': sum(jnp.mean(o) for o in fl)}
        return d, (metrics, {**model_state, **upd})

    def generator_loss(self, params: Any, model_state: Any, batch: dict, rng: jax.Array, ctx: StepContext):
        """rec_weight * L_rec, plus adv_weight * L_adv + perc_weight * L_perc after the warm-up."""
        r_gen, _, _, r_g = jax.random.split(rng, 4)
        fake, model_state = self.generate(params, model_state, batch, r_gen)
        target = batch['target']
        rec = self.rec_loss(fake, target)
        disc = ctx.state.extra['disc']
        zero = jnp.zeros((), jnp.float32)

        def gan_terms(f):
            disc_vars = {'params': disc['params'], **disc['model_state']}
            adv = patchgan.hinge_g_loss(self.disc_logits(disc_vars, self.normalise(f), r_g, update_stats=False)[0])
            perc = self.perceptual_loss(f, target, ctx.frozen['perceptual']) if self.perc is not None else zero
            return adv, perc

        warm = ctx.state.step < self.warmup_steps
        adv, perc = jax.lax.cond(warm, lambda f: (zero, zero), gan_terms, fake) if self.warmup_steps > 0 else (
            gan_terms(fake))
        total = self.rec_weight * rec + self.adv_weight * adv + self.perc_weight * perc
        metrics = {'loss': total, 'rec_loss': rec, 'adv_loss': adv, self.perc_name: perc,
                   'gan_phase': 1.0 - warm.astype(jnp.float32)}
        return total, (metrics, model_state)

    def predict(self, state: TrainState, batch: dict) -> dict:
        """{'outpainted': the full image (centre = input), 'prediction': the PSM output before the centre copy}."""
        (full, out), _ = self.apply_model(self.eval_params(state), state.model_state, batch['image'], train=False,
                                          rng=None)
        return {'outpainted': full, 'prediction': out['prediction']}
