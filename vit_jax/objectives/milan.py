"""MILAN pretraining: reconstruct a frozen teacher's features with a prompting decoder, `objective.type='milan'`.

Per step (specs_c.md section 2):
1. The frozen teacher (CLIP ViT-B/16 in the paper; any vit_jax model behind `FeatureTeacher`) sees the same images
   as the student and gives targets for all tokens (CLIP: every token through `ln_post` and the projection,
   [B, 197, 512]) and the importance map (the class-token row of its last block's head-averaged attention, [B, 196]).
2. Semantic-aware masking (`attn_mask=True`): a permutation of the patches drawn without replacement with
   probability proportional to the importance (Gumbel-top-k); the first 49 (of 196) are *kept visible*, the rest
   masked. `attn_mask=False` is MAE's uniform random masking.
3. The student (`MILAN`) encodes the visible patches and its prompting decoder predicts features for all tokens.
4. Loss: 2 - 2 cos(pred, target) per token (both l2-normalised), averaged over *all* tokens (class token, visible
   and masked patches) and the batch.

The teacher's weights are a frozen input of the step (`frozen['teacher']`, not checkpointed). Without
`teacher.weights` a random-init stand-in is used, loudly, and the loss is also logged as `loss_random_teacher`
("feature distillation from a random teacher", not MILAN).

Config (`config.objective`):
    type='milan', attn_mask=True,
    teacher=dict(model='CLIP-ViT-B/16', weights='/path/clip_b16.npz', overrides={},
                 input_mean=(0.485, 0.456, 0.406), input_std=(0.229, 0.224, 0.225),   # MILAN feeds ImageNet stats
                 tokens='tokens_proj')   # the `out` key holding [B, T, D] targets ('encoded' for a plain ViT)
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import objectives
from vit_jax.data import masking
from vit_jax.models.milan import last_block_cls_attention
from vit_jax.objectives import frozen
from vit_jax.objectives.base import Objective, StepContext, TrainState


class FeatureTeacher:
    """`teacher(variables, images) -> (tokens [B, T, D], cls_attn [B, N] or None)` from a frozen vit_jax model."""

    def __init__(self, cfg: Any, *, image_size, value_range):
        self.net = frozen.load_frozen(cfg, 'teacher', image_size=image_size, value_range=value_range)
        self.tokens_key = cfg.get('tokens', None) if hasattr(cfg, 'get') else None
        if self.tokens_key is None:
            self.tokens_key = 'tokens_proj' if type(self.net.model).__name__ == 'CLIPVisionTransformer' else 'encoded'
        self.frozen_random = self.net.frozen_random

    def __call__(self, variables: Any, images: jax.Array) -> tuple[jax.Array, Optional[jax.Array]]:
        (_, out), state = frozen.apply_frozen(self.net, variables, images, mutable=['intermediates'])
        if self.tokens_key not in out:
            raise ValueError(f'The teacher outputs no {self.tokens_key!r}; set objective.teacher.tokens to one of '
                             f'{sorted(out)}.')
        attn = last_block_cls_attention(state.get('intermediates', {}))
        tokens = jax.lax.stop_gradient(out[self.tokens_key].astype(jnp.float32))
        return tokens, None if attn is None else jax.lax.stop_gradient(attn.astype(jnp.float32))


def cosine_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Per-token 2 - 2 cos(pred, target) (both l2-normalised), shape [B, T]."""
    p = pred * jax.lax.rsqrt(jnp.maximum(jnp.sum(pred * pred, -1, keepdims=True), 1e-12))
    t = target * jax.lax.rsqrt(jnp.maximum(jnp.sum(target * target, -1, keepdims=True), 1e-12))
    return 2.0 - 2.0 * jnp.sum(p * t, -1)


@objectives.register('milan')
class MILANObjective(Objective):
    """MILAN pretraining (see the module docstring)."""

    def __init__(self, config: Any, model: nn.Module):
        super().__init__(config, model)
        if not hasattr(model, 'decoder_depth'):
            raise ValueError(f"objective.type='milan' needs a MILAN model (e.g. 'MILAN-B/16'), got "
                             f'{type(model).__name__}.')
        cfg = config.objective
        image_size = model.image_size if not isinstance(model.image_size, int) else (model.image_size,) * 2
        value_range = tuple(config.get('data', {}).get('value_range', (-1.0, 1.0)))
        tcfg = cfg.get('teacher', None)
        if tcfg is None:
            raise ValueError("objective.teacher is required, e.g. dict(model='CLIP-ViT-B/16', weights=...).")
        self.teacher = FeatureTeacher(tcfg, image_size=image_size, value_range=value_range)
        self.frozen['teacher'] = self.teacher.net.variables
        self.attn_mask = bool(cfg.get('attn_mask', True))
        self.num_patches = model.grid_size[0] * model.grid_size[1]

    def prepare_batch(self, batch: dict, rng: jax.Array, ctx: StepContext) -> dict:
        tokens, attn = self.teacher(ctx.frozen['teacher'], batch['image'])
        if tokens.shape[1] != self.num_patches + 1:
            raise ValueError(f'The teacher gives {tokens.shape[1]} tokens but the student predicts '
                             f'{self.num_patches + 1} (class token + patches): use the same image and patch size.')
        if attn is None:
            attn = jnp.ones((tokens.shape[0], self.num_patches), jnp.float32)  # Uniform: random masking.
        return dict(batch, teacher_tokens=tokens, teacher_importance=attn)

    def loss(self, params: Any, model_state: Any, batch: dict, rng: jax.Array, train: bool = True):
        r_mask, r_drop = jax.random.split(rng)
        b = batch['image'].shape[0]
        if self.attn_mask:
            ids = masking.semantic_ids_shuffle(r_mask, batch['teacher_importance'])
        else:
            ids = masking.random_ids_shuffle(r_mask, b, self.num_patches)
        (pred, out), model_state = self.apply_model(params, model_state, batch['image'], train=train, rng=r_drop,
                                                    ids_shuffle=ids)
        target = batch['teacher_tokens']
        if pred.shape[-1] != target.shape[-1]:
            raise ValueError(f'model.target_dim={pred.shape[-1]} but the teacher features have {target.shape[-1]} '
                             'dimensions.')
        per_token = cosine_loss(pred, target)  # [B, 1 + N]
        loss = jnp.mean(per_token)  # All tokens: cls, visible and masked (the official code).
        m = out['mask'].astype(jnp.float32)
        cos = 1.0 - 0.5 * per_token[:, 1:]
        metrics = {'loss': loss, 'cos_masked': jnp.sum(cos * m) / jnp.maximum(m.sum(), 1.0),
                   'cos_visible': jnp.sum(cos * (1 - m)) / jnp.maximum((1 - m).sum(), 1.0),
                   'cos_cls': jnp.mean(1.0 - 0.5 * per_token[:, 0])}
        if self.teacher.frozen_random:
            metrics['loss_random_teacher'] = loss
        return loss, (metrics, model_state)

    def predict(self, state: TrainState, batch: dict) -> dict:
        (feats, out), _ = self.apply_model(self.eval_params(state), state.model_state, batch['image'], train=False,
                                           rng=None)
        return {'logits': feats, 'features': out['pre_logits']}
