"""Pyramid Adversarial Training (configs/pyramid_at_b16.py) at CPU size: a 2-layer ViT on the built-in digits.

    python -m vit_jax.main --config=configs/pyramid_at_digits.py --workdir=workdirs/pyramid_digits
    python -m vit_jax.main --config=configs/pyramid_at_digits.py:baseline --workdir=workdirs/pyramid_digits_base

'ViT-testing' on 16x16 digits with 4x4 patches, dropout 0.1 and stochastic depth 0.1 (matched between the clean
and adversarial passes), sigmoid loss with head bias -log(10), 400 steps of batch 64. The pyramid keeps the
official geometry relative to the patch: blocks of 2 patches, 1 patch and 1 pixel (8, 4, 1 pixels here; 32, 16, 1
at patch 16), multipliers 20, 10, 1, eps 3/255 and step 0.5/255 in pixel scale (6/255 and 1/255 in [-1, 1]),
5 steps toward a random target. ':baseline' is the same run without the attack. Both end with clean accuracy,
random PatchDrop, patch shuffle and PGD-10.

Measured here (2 CPU cores, ~2.5 and ~4.5 minutes):
  baseline:    clean 0.808, test loss 0.706, PGD-10 eps 2/255 0.656, 4/255 0.469, PatchDrop 50% 0.464, shuffle 4x4 0.319
  Pyramid AT:  clean 0.808, test loss 0.612, PGD-10 eps 2/255 0.750, 4/255 0.669, PatchDrop 50% 0.469, shuffle 4x4 0.278
"""

import math

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, attack=common.OneOf('pyramid', ('pyramid', 'pixel', 'baseline')))
    c = common.robust_digits_recipe(dict(name='ViT-testing', num_classes=10, image_size=16, patch_size=4,
                                               dropout_rate=0.1, drop_path_rate=0.1,
                                               head_bias_init=-math.log(10.0)))
    if arg.attack == 'baseline':
        c.objective = dict(type='classification', loss='sigmoid')
    else:
        blocks, scalars = ((8, 4, 1), (20, 10, 1)) if arg.attack == 'pyramid' else ((1,), (1,))
        c.objective = dict(type='pyramid_adversarial', pyramid_blocks=blocks, pyramid_scalars=scalars, eps=3 / 255,
                           step_size=0.5 / 255, attack_steps=5, adv_weight=1.0, attack_train_mode=True,
                           loss='sigmoid')
    c.evals = dict(
        val=dict(type='classification', split='test', every=0),
        # Batches of 36: one random mask / permutation per batch (the paper's protocol), 10 of them over the split.
        drop=dict(type='patchdrop', mode='random', batch_size=36, every=0),
        shuffle=dict(type='patch_shuffle', batch_size=36, every=0),
        pgd=dict(type='adversarial', attack='pgd', eps=(2 / 255, 4 / 255), num_steps=10, every=0),
    )
    return c
