"""PeCo stage 1: training the perceptual VQ tokenizer (VQ-VAE trained VQGAN-style), `objective.type='vqgan'`.

Generator loss (per step):
    pixel_weight * |x - x_rec|_{1 or 2}                         (the paper writes L2, VQGAN uses L1: `pixel_loss`)
  + perceptual_weight * sum_l mean((f_l(x) - f_l(x_rec))^2)     (frozen net, `objective.perceptual`)
  + codebook_weight * (|sg[z_e] - e|^2 + beta |z_e - sg[e]|^2)  (beta = 0.25)
  + [step >= disc.start_step] * lambda * disc.weight * (-mean D(x_rec))     (optional PatchGAN, hinge)
with VQGAN's adaptive lambda = |grad_last nll| / (|grad_last g| + 1e-4) at the decoder's last layer. The
PatchGAN discriminator is a second trainable group ('disc', in `TrainState.extra['disc']`) with its own Adam
(disc.lr, betas 0.5/0.9); from `disc.start_step` on it is trained after the generator on every step, with the hinge
loss on the batch and the updated generator's reconstructions (as taming's two-optimizer step; before it, the
discriminator and its Adam state are left untouched). The running code usage is in `TrainState.extra['usage_ema']`;
the frozen perceptual net is an input of the step (`frozen['perceptual']`).

Codebook health: every step logs the batch perplexity of the codes, the fraction of the codebook used by the
batch (`usage`) and by the running average (`live_codes`); every `dead_codes.every` steps the codes whose running
usage fell below `dead_codes.threshold / K` are re-initialised from encoder outputs of the batch (a practical fix
against collapse, not a claim of the paper).

Config (`config.objective`):
    type='vqgan', pixel_loss='l1', pixel_weight=1.0, beta=0.25, codebook_weight=1.0,
    perceptual=dict(model='ViT-B/16', overrides=dict(num_classes=0), weights=None, layers=(2, 5, 8, 11),
                    weight=1.0, input_mean=None, input_std=None) or None,
    disc=dict(enabled=False, start_step=0, weight=0.8, adaptive=True, lr=1e-4, b1=0.5, b2=0.9, ndf=64, n_layers=3,
              norm='group'),
    dead_codes=dict(every=100, decay=0.99, threshold=0.03)   # every=0 disables restarts

Without perceptual weights the loss is named `perceptual_loss_random_features` (a stand-in, see objectives.frozen).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import objectives
from vit_jax.models.vqgan import PatchGAN
from vit_jax.objectives import frozen
from vit_jax.objectives.base import MODEL, Group, Objective, StepContext, TrainState


def _cfg(c: Any, key: str, default: Any) -> Any:
    if c is None:
        return default
    v = c.get(key, default) if hasattr(c, 'get') else default
    return default if v is None else v


@objectives.register('vqgan')
class VQGANObjective(Objective):
    """Trains a `vit_jax.models.vqgan.VQGAN` (see the module docstring for the loss and the config)."""

    def __init__(self, config: Any, model: nn.Module):
        super().__init__(config, model)
        if not hasattr(model, 'num_codes'):
            raise ValueError(f"objective.type='vqgan' needs a VQGAN model (e.g. 'PeCo-VQGAN-f16'), got "
                             f'{type(model).__name__}.')
        cfg = config.objective
        self.cfg = cfg
        image_size = tuple(model.image_size) if not isinstance(model.image_size, int) else (model.image_size,) * 2
        value_range = tuple(config.get('data', {}).get('value_range', (-1.0, 1.0)))
        pcfg = cfg.get('perceptual', None)
        self.perc = None
        if pcfg is not None and _cfg(pcfg, 'model', None) and float(_cfg(pcfg, 'weight', 1.0)) > 0:
            self.perc = frozen.load_frozen(pcfg, 'perceptual net', image_size=image_size, value_range=value_range)
            self.perc_layers = tuple(int(i) for i in _cfg(pcfg, 'layers', (2, 5, 8, 11)))
            self.perc_weight = float(_cfg(pcfg, 'weight', 1.0))
            self.frozen['perceptual'] = self.perc.variables
        self.perc_name = ('perceptual_loss_random_features' if self.perc is not None and self.perc.frozen_random
                          else 'perceptual_loss')
        dcfg = cfg.get('disc', None)
        self.dcfg = dcfg
        self.disc_on = bool(_cfg(dcfg, 'enabled', False))
        self.disc = PatchGAN(ndf=int(_cfg(dcfg, 'ndf', 64)), n_layers=int(_cfg(dcfg, 'n_layers', 3)),
                             norm=str(_cfg(dcfg, 'norm', 'group')))
        self.disc_start = int(_cfg(dcfg, 'start_step', 0))
        self.disc_weight = float(_cfg(dcfg, 'weight', 0.8))
        self.disc_adaptive = bool(_cfg(dcfg, 'adaptive', True))
        kcfg = cfg.get('dead_codes', None)
        self.dead_every = int(_cfg(kcfg, 'every', 100))
        self.dead_decay = float(_cfg(kcfg, 'decay', 0.99))
        self.dead_threshold = float(_cfg(kcfg, 'threshold', 0.03))

    def groups(self) -> tuple[Group, ...]:
        model = Group(MODEL, self.generator_loss)
        if not self.disc_on:
            return (model,)
        dcfg = self.dcfg
        lr = float(_cfg(dcfg, 'lr', 1e-4))
        disc = Group('disc', self.disc_loss, init=lambda rng, batch: self.disc.init(rng, *self.init_inputs(batch)),
                     optimizer=dict(name='adam', b1=float(_cfg(dcfg, 'b1', 0.5)), b2=float(_cfg(dcfg, 'b2', 0.9))),
                     schedule=lambda step: lr, start_step=self.disc_start)
        return model, disc

    def init_extra(self, batch: dict) -> dict:
        k = int(self.model.num_codes)
        return {'usage_ema': jnp.full((k,), 1.0 / k, jnp.float32)}

    # ----------------------------------------------------------------------------------------------------------
    def _pixel(self, x: jax.Array, y: jax.Array) -> jax.Array:
        kind = str(_cfg(self.cfg, 'pixel_loss', 'l1'))
        if kind == 'l1':
            return jnp.mean(jnp.abs(x - y))
        if kind == 'l2':
            return jnp.mean((x - y) ** 2)
        raise ValueError(f"objective.pixel_loss must be 'l1' or 'l2', got {kind!r}.")

    def _nll(self, x: jax.Array, xrec: jax.Array, perc_vars: Any) -> tuple[jax.Array, dict]:
        rec = self._pixel(x, xrec)
        nll = float(_cfg(self.cfg, 'pixel_weight', 1.0)) * rec
        m = {'rec_loss': rec}
        if self.perc is not None:
            p = frozen.perceptual_loss(self.perc, perc_vars, x, xrec, self.perc_layers)
            nll = nll + self.perc_weight * p
            m[self.perc_name] = p
        return nll, m

    def _last_layer_grad_norm(self, params: Any, h: jax.Array, dloss_dxrec: jax.Array) -> jax.Array:
        """|d loss / d conv_out.kernel| given d loss / d x_rec and the input h of the decoder's conv_out."""
        p = params['decoder']['conv_out']
        conv = nn.Conv(p['kernel'].shape[-1], (3, 3), padding=1)
        _, vjp = jax.vjp(lambda k: conv.apply({'params': {'kernel': k, 'bias': p['bias']}}, h), p['kernel'])
        return jnp.sqrt(jnp.sum(vjp(dloss_dxrec)[0] ** 2))

    def generator_loss(self, params: Any, model_state: Any, batch: dict, rng: jax.Array, ctx: StepContext):
        x = batch['image']
        (xrec, out), model_state = self.apply_model(params, model_state, x, train=True, rng=rng)
        perc_vars = ctx.frozen.get('perceptual', {})
        nll, metrics = self._nll(x, xrec, perc_vars)
        beta = float(_cfg(self.cfg, 'beta', 0.25))
        vq = out['codebook_loss'] + beta * out['commitment_loss']
        total = nll + float(_cfg(self.cfg, 'codebook_weight', 1.0)) * vq
        if self.disc_on:
            disc_params = jax.lax.stop_gradient(ctx.state.extra['disc']['params'])
            g_loss = -jnp.mean(self.disc.apply({'params': disc_params}, xrec))
            factor = (ctx.state.step >= self.disc_start).astype(jnp.float32)
            if self.disc_adaptive:
                xs, hs = jax.lax.stop_gradient(xrec), jax.lax.stop_gradient(out['decoder_last_input'])
                g_nll = jax.grad(lambda r: self._nll(x, r, perc_vars)[0])(xs)
                g_gan = jax.grad(lambda r: -jnp.mean(self.disc.apply({'params': disc_params}, r)))(xs)
                n1 = self._last_layer_grad_norm(jax.lax.stop_gradient(params), hs, g_nll)
                n2 = self._last_layer_grad_norm(jax.lax.stop_gradient(params), hs, g_gan)
                d_weight = jax.lax.stop_gradient(jnp.clip(n1 / (n2 + 1e-4), 0.0, 1e4))
            else:
                d_weight = jnp.asarray(1.0)
            d_weight = d_weight * self.disc_weight
            total = total + factor * d_weight * g_loss
            metrics.update(g_loss=g_loss, d_weight=d_weight, disc_factor=factor)
        counts = out['code_counts']
        metrics.update(loss=total, codebook_loss=out['codebook_loss'], commitment_loss=out['commitment_loss'],
                       perplexity=out['perplexity'], usage=out['usage'],
                       code_freq=counts / jnp.maximum(counts.sum(), 1.0))  # Used (and dropped) by `after_update`.
        return total, (metrics, model_state)

    def disc_loss(self, params: Any, model_state: Any, batch: dict, rng: jax.Array, ctx: StepContext):
        """Hinge loss on the batch and the (updated) generator's reconstructions of it."""
        (xrec, _), _ = self.apply_model(ctx.state.params, ctx.state.model_state, batch['image'], train=True, rng=rng)
        real_logits = self.disc.apply({'params': params}, batch['image'])
        fake_logits = self.disc.apply({'params': params}, jax.lax.stop_gradient(xrec))
        loss = 0.5 * (jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits)))
        return loss, ({'d_loss': loss, 'logits_real': jnp.mean(real_logits), 'logits_fake': jnp.mean(fake_logits)},
                      model_state)

    def after_update(self, state: TrainState, metrics: dict, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
        """Running code usage, and every `dead_codes.every` steps dead codes re-initialised from encoder outputs."""
        k = int(self.model.num_codes)
        metrics = dict(metrics)
        usage = self.dead_decay * state.extra['usage_ema'] + (1.0 - self.dead_decay) * metrics.pop('code_freq')
        dead = usage < self.dead_threshold / k
        metrics['live_codes'] = 1.0 - jnp.mean(dead.astype(jnp.float32))
        params = state.params
        if self.dead_every > 0:
            replace = (state.step % self.dead_every == 0) & dead

            def restart(params):
                variables = {'params': params, **state.model_state}
                z = self.model.apply(variables, batch['image'],
                                     method=lambda m, x: m.quant_conv(m.encoder(x.astype(m.dtype), False)))
                z = z.reshape(-1, z.shape[-1])
                idx = jax.random.randint(jax.random.fold_in(rng, 1), (k,), 0, z.shape[0])
                cb = params['quantize']['embedding']
                new_cb = jnp.where(replace[:, None], z[idx].astype(cb.dtype), cb)
                return {**params, 'quantize': {**params['quantize'], 'embedding': new_cb}}

            params = jax.lax.cond(jnp.any(replace), restart, lambda p: p, params)
            usage = jnp.where(replace, 1.0 / k, usage)
            metrics['restarted_codes'] = jnp.sum(replace.astype(jnp.float32))
        return state.replace(params=params, extra={**state.extra, 'usage_ema': usage}), metrics

    def predict(self, state: TrainState, batch: dict) -> dict:
        (xrec, out), _ = self.apply_model(self.eval_params(state), state.model_state, batch['image'], train=False,
                                          rng=None)
        return {'reconstruction': xrec, 'codes': out['codes'],
                'rec_loss': jnp.mean(jnp.abs(xrec - batch['image']), axis=(1, 2, 3))}
