"""The light robust-ViT recipe (configs/robust_vit_s16.py) at CPU size: a 2-layer ViT on the built-in digits.

    python -m vit_jax.main --config=configs/robust_vit_digits.py --workdir=workdirs/robust_digits
    python -m vit_jax.main --config=configs/robust_vit_digits.py:clean --workdir=workdirs/robust_digits_clean

'ViT-testing' (width 32, 2 layers, 2 heads) on 16x16 digits with 4x4 patches, 400 steps of batch 64 (18 epochs),
AdamW, label smoothing 0.1. The default trains adversarially with the recipe's attack (PGD-1 from a random start,
step 1.5 x eps, eps 8/255 warmed up over the first 2 epochs, loss on adversarial examples only); ':clean' is the
same run with the plain classification objective. Both end with PGD-10 (step 2.5 eps / 10, random start) on the
360 test images at eps 4/255 and 8/255.

Measured here (tests/test_adversarial.py::test_adversarial_training_on_digits_is_more_robust, 2 CPU cores):
  clean training:        clean 0.903, PGD-10 eps 4/255 0.444, eps 8/255 0.053
  adversarial training:  clean 0.861, PGD-10 eps 4/255 0.783, eps 8/255 0.689
(about 2 and 3 minutes on 2 busy CPU cores).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, objective=common.OneOf('adversarial', ('adversarial', 'clean')))
    c = common.robust_digits_recipe(dict(name='ViT-testing', num_classes=10, image_size=16, patch_size=4))
    c.data.value_range = (-1.0, 1.0)
    if arg.objective == 'adversarial':
        c.objective = dict(type='adversarial', eps=8 / 255, attack_steps=1, eps_warmup_epochs=2,
                           attack_train_mode=True, label_smoothing=0.1)
    else:
        c.objective = dict(type='classification', label_smoothing=0.1)
    c.evals = dict(
        val=dict(type='classification', split='test', every=0),
        pgd=dict(type='adversarial', attack='pgd', eps=(4 / 255, 8 / 255), num_steps=10, every=0),
    )
    return c
