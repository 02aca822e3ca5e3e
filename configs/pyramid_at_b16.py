"""Pyramid Adversarial Training Improves ViT Performance (Herrmann et al., CVPR 2022): ViT-B/16 on ImageNet-1k.

    python -m vit_jax.main --config=configs/pyramid_at_b16.py --workdir=workdirs/pyramid_at_b16
    python -m vit_jax.main --config=configs/pyramid_at_b16.py:pixel ...      # PixelAT (one 1x1 level)
    python -m vit_jax.main --config=configs/pyramid_at_b16.py:baseline ...   # the regularised ViT, no attack

The official code is JAX (scenic/projects/adversarialtraining, `imagenet_regvit_config.py`):
- Base ("regularised ViT", after "How to train your ViT"): images in [-1, 1], Inception crop 224 + flip +
  RandAugment(2, 15) + mixup alpha 0.5 (per batch, before the attack); class-token ViT-B/16, zero-initialised head
  with bias -6.9; sigmoid cross-entropy; dropout 0.1, no attention dropout, stochastic depth 0.1 rising linearly
  over the depth; AdamW (0.9, 0.999), weight decay 0.1, lr 1e-3 at batch 4096, 10k warm-up steps then cosine,
  300 epochs, gradient clipping at global norm 1.
- Attack: pyramid levels of 7x7, 14x14 and 224x224 cells (blocks of 32, 16 and 1 pixels) with multipliers 20,
  10 and 1, zero init; 5 steps of sign-SGD at 1/255, each level clipped to [-6/255, 6/255] ([-1, 1] units; 3/255
  and 0.5/255 in this project's pixel scale), toward a random target class, in train mode; one dropout key shared
  by the clean, attack and adversarial passes; loss = clean + 1.0 x adversarial.
Differences: RandAugment is timm's implementation (vit_jax.data.augment), whose magnitude stops at 10, so the
official magnitude 15 (TF RandAugment scale) is approximated by 10; the official code splits the dropout after the
attention and on the embedding into separate clean / adversarial submodules (different masks there), while here
every mask is shared.

Published figures (abstract): ViT-B/16 on ImageNet-1k only gains +1.82% top-1 on clean ImageNet over the
baseline, and reaches ImageNet-C 41.42 mCE, ImageNet-R 53.92%, ImageNet-Sketch 41.04%. Not measured here (no
ImageNet on this machine); the CPU-sized version is configs/pyramid_at_digits.py. ImageNet-A / -R are 200-class
subsets that need a class mapping not implemented here; V2, Sketch and C are evaluated.
"""

import ml_collections

from configs import common
from vit_jax import config_utils


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, attack=common.OneOf('pyramid', ('pyramid', 'pixel', 'baseline')))
    c = config_utils.base_config()
    c.dataset = 'imagenet2012'
    c.model = dict(name='ViT-B/16', num_classes=1000, image_size=224, classifier='token', dropout_rate=0.1,
                   attention_dropout_rate=0.0, drop_path_rate=0.1, head_bias_init=-6.9, representation_size=None)
    c.data.train_split = 'train'
    c.data.value_range = (-1.0, 1.0)
    c.data.train_pp = 'inception_crop|flip|randaugment(num_layers=2, magnitude=10, magnitude_std=0.0)'
    c.data.train_batch_pp = 'mixup(mixup_alpha=0.5, cutmix_alpha=0.0, num_classes=1000)'
    c.data.eval_pp = 'resize_crop'
    c.data.shuffle_buffer = 250_000
    c.batch_size = 4096
    c.total_steps = common.steps_for(300, c.batch_size)
    c.log_every = 100
    c.eval_every = 2000
    c.checkpoint_every = 1000
    c.keep_checkpoints = 2
    c.optimizer = dict(c.optimizer, name='adamw', b1=0.9, b2=0.999, weight_decay=0.1, wd_mask='all',
                       grad_clip_norm=1.0)
    c.lr = dict(base=1e-3, warmup_steps=10_000, decay='cosine', end=0.0)
    if arg.attack == 'baseline':
        c.objective = dict(type='classification', loss='sigmoid', label_smoothing=0.0)
    else:
        sizes, scalars = ((7, 14, 224), (20, 10, 1)) if arg.attack == 'pyramid' else ((224,), (1,))
        c.objective = dict(type='pyramid_adversarial', pyramid_sizes=sizes, pyramid_scalars=scalars,
                           pyramid_reference_size=224, eps=3 / 255, step_size=0.5 / 255, attack_steps=5,
                           adv_weight=1.0, attack_train_mode=True, loss='sigmoid', label_smoothing=0.0)
    c.evals = dict(
        val=dict(type='classification', split='validation', every=c.eval_every),
        v2=dict(type='classification', dataset='imagenet_v2', split='test', every=0),
        sketch=dict(type='classification', dataset='imagenet_sketch', split='test', every=0),
        c=dict(type='corruption', dataset='imagenet2012_corrupted', split='validation', every=0),
    )
    return c
