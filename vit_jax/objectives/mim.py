"""BEiT / PeCo stage 2: masked image modelling on a frozen tokenizer's codes, `objective.type='mim'`.

The model (a `BEiT` with `vocab_size` = the tokenizer's K) sees the image with the masked patches replaced by its
mask token and predicts, at every masked position, the code the frozen tokenizer gives that patch on the *same*
image (an f16 tokenizer on the 224 view gives the 14x14 grid directly, so no second view is needed). The loss is the
cross-entropy at masked positions only, averaged over all masked tokens of the batch (not per image):
`sum(mask * ce) / sum(mask)`.

Masks come from the input pipeline: add `beit_mask(...)` (blockwise, 75 of 196, see `vit_jax.data.masking`) to
`config.data.train_pp`; every example then carries `patch_mask` (bool [N]). The tokenizer codes are computed in
`prepare_batch`, outside the gradient; the tokenizer's weights are a frozen input of the step (`frozen['tokenizer']`,
not checkpointed).

Config (`config.objective`):
    type='mim',
    tokenizer=dict(type='vqgan', model='PeCo-VQGAN-f16', overrides={}, weights='/path/workdir_or.npz'),
              # or dict(type='random_projection', patch_size=16, vocab_size=8192): a test stand-in (not PeCo)
    mask_key='patch_mask', rescale_init=True, label_smoothing=0.0
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vit_jax import objectives
from vit_jax.data import masking  # noqa: F401  (registers the beit_mask / random_mask preprocessing ops)
from vit_jax.objectives import frozen
from vit_jax.objectives.base import Objective, StepContext, TrainState


@objectives.register('mim')
class MaskedImageModeling(Objective):
    """BEiT-style MIM against a frozen tokenizer (see the module docstring)."""

    def __init__(self, config: Any, model: nn.Module):
        super().__init__(config, model)
        cfg = config.objective
        if not getattr(model, 'vocab_size', None):
            raise ValueError("objective.type='mim' needs a model with a masked-image-modelling head: e.g. "
                             "model.name='BEiT-B/16' with model.vocab_size=8192 (the tokenizer's codebook size).")
        image_size = model.image_size if not isinstance(model.image_size, int) else (model.image_size,) * 2
        value_range = tuple(config.get('data', {}).get('value_range', (-1.0, 1.0)))
        tcfg = cfg.get('tokenizer', None)
        if tcfg is None:
            raise ValueError('objective.tokenizer is required: dict(type="vqgan", weights=<workdir or .npz of a '
                             'trained tokenizer (configs/peco_tokenizer.py)>), or type="random_projection" for '
                             'a stand-in.')
        self.tokenizer = frozen.build_tokenizer(tcfg, image_size=image_size, value_range=value_range)
        patch = model.patch_size if isinstance(model.patch_size, int) else model.patch_size[0]
        if self.tokenizer.downsampling != patch:
            raise ValueError(f'The tokenizer grid must equal the patch grid: tokenizer downsampling '
                             f'{self.tokenizer.downsampling} vs model patch size {patch} (PeCo: f16 tokenizer on the '
                             'same 224 view as ViT-B/16).')
        if self.tokenizer.vocab_size != model.vocab_size:
            raise ValueError(f'model.vocab_size={model.vocab_size} but the tokenizer has '
                             f'{self.tokenizer.vocab_size} codes.')
        self.mask_key = cfg.get('mask_key', 'patch_mask')
        self.frozen['tokenizer'] = self.tokenizer.init_variables()

    def init_variables(self, rng: jax.Array, batch: dict) -> dict:
        variables = super().init_variables(rng, batch)
        if self.config.objective.get('rescale_init', True) and 'Transformer' in variables['params']:
            from vit_jax.models import beit

            variables = {**variables, 'params': beit.rescale_init(variables['params'])}
        return variables

    def prepare_batch(self, batch: dict, rng: jax.Array, ctx: StepContext) -> dict:
        """Adds the frozen tokenizer's codes, flattened to [B, N] in row-major grid order."""
        if self.mask_key not in batch:
            raise ValueError(f"objective.type='mim' needs per-example masks in batch[{self.mask_key!r}]: add e.g. "
                             "'beit_mask(num_masking_patches=75, patch_size=16)' to config.data.train_pp.")
        codes = self.tokenizer.encode(ctx.frozen['tokenizer'], batch['image'])
        return dict(batch, mim_targets=codes.reshape(codes.shape[0], -1))

    def loss(self, params: Any, model_state: Any, batch: dict, rng: jax.Array, train: bool = True):
        mask = batch[self.mask_key].astype(bool)
        (_, out), model_state = self.apply_model(params, model_state, batch['image'], train=train, rng=rng,
                                                 mask=mask)
        logits = out['mim_logits']
        targets = batch['mim_targets']
        ls = float(self.config.objective.get('label_smoothing', 0.0) or 0.0)
        if ls:
            t = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), ls)
            ce = optax.softmax_cross_entropy(logits, t)
        else:
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        w = mask.astype(jnp.float32)
        n = jnp.maximum(w.sum(), 1.0)
        loss = jnp.sum(ce * w) / n  # Averaged over all masked tokens of the batch.
        acc = jnp.sum((jnp.argmax(logits, -1) == targets) * w) / n
        metrics = {'loss': loss, 'mim_accuracy': acc, 'mask_ratio': jnp.mean(w)}
        if self.tokenizer.frozen_random:
            metrics = {**metrics, 'mim_loss_random_tokenizer': loss}
        return loss, (metrics, model_state)

    def predict(self, state: TrainState, batch: dict) -> dict:
        (logits, out), _ = self.apply_model(self.eval_params(state), state.model_state, batch['image'], train=False,
                                            rng=None)
        return {'logits': logits, 'features': out['pre_logits']}
