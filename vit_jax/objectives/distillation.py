"""DeiT distillation through a distillation token (Touvron et al., 2021), and the "shape token" of Intriguing
Properties of Vision Transformers (Naseer et al., 2021): the same setup with a shape-biased teacher (a model
trained on Stylized ImageNet), so that the distillation token learns shape while the class token learns the
natural-image labels.

    config.model = dict(name='DeiT-S/16-distilled', ...)          # any ViT with distill_token=True
    config.objective = dict(type='distillation', teacher=dict(model=dict(name='ViT-S/16', num_classes=1000),
                                                              checkpoint='workdirs/sin_teacher'),
                            distillation='hard', alpha=0.5, tau=1.0, label_smoothing=0.1)

Loss (DeiT): (1 - alpha) * CE(class-token logits, labels) + alpha * D, where D is, for 'hard', the cross-entropy
of the distillation-token logits against the teacher's argmax, and for 'soft', tau^2 * KL(softmax(teacher / tau)
|| softmax(student_dist / tau)). The teacher runs in eval mode on the same (augmented) batch, outside the
gradient; its variables are a frozen input of the step (`frozen['teacher']`, loaded once, not checkpointed).
`predict` returns the mean of both heads (DeiT's inference) and each head apart.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from vit_jax import objectives
from vit_jax.objectives.base import StepContext, TrainState
from vit_jax.objectives.classification import Classification, cross_entropy, soft_targets


@objectives.register('distillation')
class Distillation(Classification):
    """DeiT hard / soft distillation into the distillation token (see the module docstring)."""

    def __init__(self, config: Any, model: Any):
        super().__init__(config, model)
        if not getattr(model, 'distill_token', False):
            raise ValueError("The 'distillation' objective needs a model with a distillation token: e.g. "
                             "'DeiT-S/16-distilled', or any ViT with distill_token=True.")
        cfg = config.objective
        if cfg.get('teacher', None) is None:
            raise ValueError("objective.teacher is required: dict(model=dict(name=..., ...), checkpoint=PATH).")
        kind = cfg.get('distillation', 'hard')
        if kind not in ('hard', 'soft'):
            raise ValueError(f"objective.distillation must be 'hard' or 'soft', got {kind!r}.")
        from vit_jax.evaluators.robustness import load_aux_model

        # Loaded now (outside any trace), so a wrong path fails before compiling.
        self.teacher_model, self.frozen['teacher'] = load_aux_model(cfg.teacher)

    def prepare_batch(self, batch: dict, rng: jax.Array, ctx: StepContext) -> dict:
        logits = self.teacher_model.apply(ctx.frozen['teacher'], batch['image'], train=False)[0]
        return dict(batch, teacher_logits=jax.lax.stop_gradient(logits.astype(jnp.float32)))

    def loss(self, params: Any, model_state: Any, batch: dict, rng: jax.Array, train: bool = True):
        cfg = self.config.objective
        (_, out), model_state = self.apply_model(params, model_state, batch['image'], train=train, rng=rng)
        cls_logits, dist_logits = out['logits_cls'], out['logits_dist']
        targets = soft_targets(batch, cls_logits.shape[-1], float(cfg.get('label_smoothing', 0.0)))
        base = cross_entropy(cls_logits, targets, cfg.get('loss', 'softmax')).mean()
        teacher = batch['teacher_logits']
        alpha = float(cfg.get('alpha', 0.5))
        if cfg.get('distillation', 'hard') == 'hard':
            dist = optax.softmax_cross_entropy_with_integer_labels(dist_logits, jnp.argmax(teacher, -1)).mean()
        else:
            tau = float(cfg.get('tau', 1.0))
            p_t = jax.nn.softmax(teacher / tau)
            dist = tau ** 2 * jnp.mean(jnp.sum(p_t * (jax.nn.log_softmax(teacher / tau)
                                                       - jax.nn.log_softmax(dist_logits / tau)), -1))
        loss = (1.0 - alpha) * base + alpha * dist
        hard = jnp.argmax(targets, -1)
        metrics = {'loss': loss, 'base_loss': base, 'distillation_loss': dist,
                   'accuracy': jnp.mean(jnp.argmax((cls_logits + dist_logits) / 2, -1) == hard),
                   'cls_accuracy': jnp.mean(jnp.argmax(cls_logits, -1) == hard),
                   'dist_teacher_agreement': jnp.mean(jnp.argmax(dist_logits, -1) == jnp.argmax(teacher, -1))}
        return loss, (metrics, model_state)

    def predict(self, state: TrainState, batch: dict) -> dict:
        (logits, out), _ = self.apply_model(self.eval_params(state), state.model_state, batch['image'], train=False,
                                            rng=None)
        return {'logits': logits, 'logits_cls': out['logits_cls'], 'logits_dist': out['logits_dist']}
