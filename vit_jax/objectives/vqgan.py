"""PeCo stage 1: training the perceptual VQ tokenizer (VQ-VAE trained VQGAN-style), `objective.type='vqgan'`.

Generator loss (per step):
    pixel_weight * |x - x_rec|_{1 or 2}                         (the paper writes L2, VQGAN uses L1: `pixel_loss`)
  + perceptual_weight * sum_l mean((f_l(x) - f_l(x_rec))^2)     (frozen net, `objective.perceptual`)
  + codebook_weight * (|sg[z_e] - e|^2 + beta |z_e - sg[e]|^2)  (beta = 0.25)
  + [step >= disc.start_step] * lambda * disc.weight * (-mean D(x_rec))     (optional PatchGAN, hinge)
with VQGAN's adaptive lambda = |grad_last nll| / (|grad_last g| + 1e-4) at the decoder's last layer. The
PatchGAN discriminator has its own Adam (disc.lr, betas 0.5/0.9) and is trained with the hinge loss on the same
batch; it and its optimizer state live in `TrainState.extra`, with the frozen perceptual net's weights and the
running code usage.

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
import optax

from vit_jax import objectives
from vit_jax.models.vqgan import PatchGAN
from vit_jax.objectives import frozen
from vit_jax.objectives.base import Objective, TrainState, guard_nonfinite, tree_l2


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
        if int(config.optimizer.get('accum_steps', 1) or 1) != 1:
            raise ValueError("objective.type='vqgan' does not support optimizer.accum_steps > 1.")
        image_size = tuple(model.image_size) if not isinstance(model.image_size, int) else (model.image_size,) * 2
        value_range = tuple(config.get('data', {}).get('value_range', (-1.0, 1.0)))
        pcfg = cfg.get('perceptual', None)
        self.perc = None
        if pcfg is not None and _cfg(pcfg, 'model', None) and float(_cfg(pcfg, 'weight', 1.0)) > 0:
            self.perc = frozen.load_frozen(pcfg, 'perceptual net', image_size=image_size, value_range=value_range)
            self.perc_layers = tuple(int(i) for i in _cfg(pcfg, 'layers', (2, 5, 8, 11)))
            self.perc_weight = float(_cfg(pcfg, 'weight', 1.0))
        self.perc_name = ('perceptual_loss_random_features' if self.perc is not None and self.perc.frozen_random
                          else 'perceptual_loss')
        dcfg = cfg.get('disc', None)
        self.disc_on = bool(_cfg(dcfg, 'enabled', False))
        self.disc = PatchGAN(ndf=int(_cfg(dcfg, 'ndf', 64)), n_layers=int(_cfg(dcfg, 'n_layers', 3)),
                             norm=str(_cfg(dcfg, 'norm', 'group')))
        self.disc_start = int(_cfg(dcfg, 'start_step', 0))
        self.disc_weight = float(_cfg(dcfg, 'weight', 0.8))
        self.disc_adaptive = bool(_cfg(dcfg, 'adaptive', True))
        self.disc_tx = optax.adam(float(_cfg(dcfg, 'lr', 1e-4)), b1=float(_cfg(dcfg, 'b1', 0.5)),
                                  b2=float(_cfg(dcfg, 'b2', 0.9)))
        kcfg = cfg.get('dead_codes', None)
        self.dead_every = int(_cfg(kcfg, 'every', 100))
        self.dead_decay = float(_cfg(kcfg, 'decay', 0.99))
        self.dead_threshold = float(_cfg(kcfg, 'threshold', 0.03))

    # ----------------------------------------------------------------------------------------------------------
    def init_state(self, rng: jax.Array, batch: dict) -> TrainState:
        state = super().init_state(rng, batch)
        k = int(self.model.num_codes)
        extra = {'usage_ema': jnp.full((k,), 1.0 / k, jnp.float32),
                 'perceptual': self.perc.device_variables() if self.perc is not None else {}}
        if self.disc_on:
            x = jnp.zeros(batch['image'].shape[1:], jnp.float32)[None]
            disc_params = self.disc.init(jax.random.fold_in(rng, 7), x)['params']
            extra['disc'] = disc_params
            extra['disc_opt'] = self.disc_tx.init(disc_params)
        return state.replace(extra=extra)

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

    def loss(self, params: Any, model_state: Any, batch: dict, rng: jax.Array, train: bool = True,
             extra: Any = None, step: Any = 0):
        x = batch['image']
        extra = extra or {}
        (xrec, out), model_state = self.apply_model(params, model_state, x, train=train, rng=rng)
        perc_vars = extra.get('perceptual', {})
        nll, metrics = self._nll(x, xrec, perc_vars)
        beta = float(_cfg(self.cfg, 'beta', 0.25))
        vq = out['codebook_loss'] + beta * out['commitment_loss']
        total = nll + float(_cfg(self.cfg, 'codebook_weight', 1.0)) * vq
        if self.disc_on:
            disc_params = jax.lax.stop_gradient(extra['disc'])
            g_loss = -jnp.mean(self.disc.apply({'params': disc_params}, xrec))
            factor = (jnp.asarray(step) >= self.disc_start).astype(jnp.float32)
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
        metrics.update(loss=total, codebook_loss=out['codebook_loss'], commitment_loss=out['commitment_loss'],
                       perplexity=out['perplexity'], usage=out['usage'])
        aux = {'xrec': xrec, 'code_counts': out['code_counts'], 'z_e_flat': out['z_e_flat']}
        return total, (metrics, model_state, aux)

    # ----------------------------------------------------------------------------------------------------------
    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        r_gen, r_dead = jax.random.split(rng)
        grad_fn = jax.grad(lambda p: self.loss(p, state.model_state, batch, r_gen, True, state.extra, state.step),
                           has_aux=True)
        grads, (metrics, model_state, aux) = grad_fn(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        extra = dict(state.extra)

        # Discriminator step (hinge) on the same batch, once it is switched on.
        if self.disc_on:
            factor = (state.step >= self.disc_start).astype(jnp.float32)
            fake = jax.lax.stop_gradient(aux['xrec'])

            def d_loss_fn(dp):
                real_logits = self.disc.apply({'params': dp}, batch['image'])
                fake_logits = self.disc.apply({'params': dp}, fake)
                loss = 0.5 * (jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits)))
                return factor * loss, (loss, jnp.mean(real_logits), jnp.mean(fake_logits))

            d_grads, (d_loss, lr_, lf_) = jax.grad(d_loss_fn, has_aux=True)(extra['disc'])
            d_updates, d_opt = self.disc_tx.update(d_grads, extra['disc_opt'], extra['disc'])
            extra['disc'] = optax.apply_updates(extra['disc'], d_updates)
            extra['disc_opt'] = d_opt
            metrics = dict(metrics, d_loss=d_loss, logits_real=lr_, logits_fake=lf_)

        # Codebook usage and dead-code restarts.
        k = int(self.model.num_codes)
        counts = aux['code_counts']
        freq = counts / jnp.maximum(counts.sum(), 1.0)
        usage = self.dead_decay * state.extra['usage_ema'] + (1.0 - self.dead_decay) * freq
        dead = usage < self.dead_threshold / k
        metrics = dict(metrics, live_codes=1.0 - jnp.mean(dead.astype(jnp.float32)))
        if self.dead_every > 0:
            restart = ((state.step + 1) % self.dead_every == 0) & jnp.any(dead)
            z = jax.lax.stop_gradient(aux['z_e_flat'])
            idx = jax.random.randint(r_dead, (k,), 0, z.shape[0])
            cb = params['quantize']['embedding']
            replace = restart & dead
            new_cb = jnp.where(replace[:, None], z[idx].astype(cb.dtype), cb)
            params = {**params, 'quantize': {**params['quantize'], 'embedding': new_cb}}
            usage = jnp.where(replace, 1.0 / k, usage)
            metrics['restarted_codes'] = jnp.sum(replace.astype(jnp.float32))
        extra['usage_ema'] = usage

        grad_norm = tree_l2(grads)
        ema = state.ema_params
        if ema is not None:
            decay = float(self.config.optimizer.ema_decay)
            ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
        new_state, finite = guard_nonfinite(
            state, state.replace(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state,
                                 ema_params=ema, extra=extra),
            metrics['loss'], metrics.get('d_loss', 0.0), grad_norm, updates)
        metrics.update(l2_grads=grad_norm, l2_params=tree_l2(new_state.params), lr=self.schedule(state.step),
                       nonfinite=1.0 - finite.astype(jnp.float32))
        return new_state, metrics

    def predict(self, state: TrainState, batch: dict) -> dict:
        (xrec, out), _ = self.apply_model(self.eval_params(state), state.model_state, batch['image'], train=False,
                                          rng=None)
        return {'reconstruction': xrec, 'codes': out['codes'],
                'rec_loss': jnp.mean(jnp.abs(xrec - batch['image']), axis=(1, 2, 3))}
