"""CCT-7/7x2 from scratch on Flowers-102 at 224 (sine position embedding): the official recipe.

    python -m vit_jax.main --config=configs/cct_7_7x2.py --workdir=workdirs/cct_7_7x2_flowers

Recipe (Compact-Transformers configs/pretrained/cct_7-7x2_flowers102.yml, timm trainer): CCT-7/7x2 with the sine
position embedding, AdamW lr 5e-4 (min 1e-5), weight decay 6e-2, batch 96, 300 epochs with 10 warm-up and 10
cooldown epochs, label smoothing 0.1, RandomResizedCrop(224, scale 0.8-1, bicubic) + flip + RandAugment
rand-m9-mstd0.5-inc1, Flowers mean/std normalisation, mixup 0.8 / CutMix 1.0 (switch 0.5, batch mode), no random
erasing, no EMA. Trains on `train` (1,020 images), evaluates on `validation` (the official `valid` split) and `test`.
See configs/cct_14_7x2.py for the timm-recipe conventions used here.

Published (README): 97.19% top-1 (the 'valid' split). Not measured here (no Flowers-102 or accelerator in this
environment).
"""

from configs import cct_14_7x2, common


def get_config(arg=None):
    common.parse_arg(arg)  # No options.
    return cct_14_7x2.timm_recipe(
        model=dict(name='CCT-7/7x2', image_size=224, posemb='sine'), dataset='oxford_flowers102', n_train=1020,
        num_classes=102, epochs=300, batch=96, lr=5e-4, min_lr=1e-5, wd=6e-2, warmup_epochs=10, scale=(0.8, 1.0),
        crop_pct=1.0, mean=cct_14_7x2.FLOWERS_MEAN, std=cct_14_7x2.FLOWERS_STD, reprob=0.0,
        eval_splits={'val': 'validation', 'test': 'test'})
