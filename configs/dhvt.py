"""DHVT from scratch: the official DeiT-style recipes for CIFAR-100 / CIFAR-10 (32 px) and ImageNet (224 px).

    python -m vit_jax.main --config=configs/dhvt.py:S-CIFAR/2,cifar100 --workdir=workdirs/dhvt_s_c100
    python -m vit_jax.main --config=configs/dhvt.py:T,imagenet --workdir=workdirs/dhvt_t_in1k

Argument: `VARIANT,DATASET` with VARIANT one of T-CIFAR/4, T-CIFAR/2, S-CIFAR/4, S-CIFAR/2 (for cifar100 or cifar10)
or T, S (for imagenet); the default is `S-CIFAR/2,cifar100`, the paper's 85.68% model.

Recipe (official main.py defaults + run_code_cifar.sh / run_code_imn.sh; DeiT trainer): AdamW (weight decay 0.05 on
weights, not on biases, norms and the class token), cosine to 1e-5 over 300 epochs with a linear warm-up, lr scaled
by batch / 512, label smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1 (fill = ImageNet mean), ImageNet mean/std
normalisation, random erasing 0.25 ('pixel'), mixup 0.8 / CutMix 1.0 (switch 0.5, batch mode), repeated
augmentation x3, stochastic depth 0.1, dropout 0, no gradient clipping:

| dataset | batch | base lr (x batch/512) | warm-up | crop | eval |
|---|---|---|---|---|---|
| cifar100 / cifar10 | 512 (2 x 256) | 1e-3 | 5 epochs | RandomCrop(32, pad 4) + flip | the 32 px image |
| imagenet | 256 (2 x 128) | 5e-4 | 10 epochs | RandomResizedCrop(224, 0.08-1, bicubic) + flip | resize 256, crop 224 |

The DeiT trainer keeps an EMA of the weights (decay 0.99996) but reports the live model, so `ema_decay` is off here;
set `--config.optimizer.ema_decay=0.99996` to keep one (the evaluators then use it). The official SOPE uses
SyncBatchNorm (global statistics: what BatchNorm computes under jit here) and DAFF per-GPU BatchNorm: set
`--config.model.daff_bn_groups=<devices>` to reproduce per-device statistics. DeiT warms up from 1e-6 and steps its
schedule per epoch; here it is per step from 0.

Published: DHVT-S CIFAR-100 85.68% (patch 2, 22.8M); DHVT-T 77.6% and DHVT-S 82.3% ImageNet top-1 (README). Not
measured here (no CIFAR / ImageNet or accelerator in this environment); tests/test_small_data_quickstarts.py trains
the same model family on the built-in digits.
"""

import ml_collections

from configs import common
from vit_jax import config_utils

# dataset: (TFDS name, classes, training images, image size, batch, base lr, warm-up epochs)
DATASETS = {
    'cifar100': ('cifar100', 100, 50_000, 32, 512, 1e-3, 5),
    'cifar10': ('cifar10', 10, 50_000, 32, 512, 1e-3, 5),
    'imagenet': ('imagenet2012', 1000, 1_281_167, 224, 256, 5e-4, 10),
}
CIFAR_VARIANTS = ('T-CIFAR/4', 'T-CIFAR/2', 'S-CIFAR/4', 'S-CIFAR/2')
IMAGENET_VARIANTS = ('T', 'S')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, variant='S-CIFAR/2', dataset=common.OneOf('cifar100', DATASETS))
    variant, dataset = arg.variant, arg.dataset
    allowed = IMAGENET_VARIANTS if dataset == 'imagenet' else CIFAR_VARIANTS
    if variant not in allowed:
        raise ValueError(f'DHVT variant {variant!r} is not for {dataset}; use one of {allowed}.')
    tfds_name, num_classes, n_train, size, batch, base_lr, warmup = DATASETS[dataset]
    steps_per_epoch = n_train // batch
    c = config_utils.base_config()
    c.dataset = tfds_name
    c.model = dict(name=f'DHVT-{variant}', num_classes=num_classes, image_size=size, drop_path_rate=0.1,
                   dropout_rate=0.0)
    norm = f'value_range(0, 1)|normalize({common.IMAGENET_MEAN}, {common.IMAGENET_STD})'
    if dataset == 'imagenet':
        crop = 'inception_crop(area_range=(0.08, 1.0))'
        c.data.eval_pp = f'resize_crop(crop_pct=0.875)|{norm}'
        c.data.resize_method = 'bicubic'
        eval_split = 'validation'
    else:
        crop = 'random_shift(pad=4)'
        c.data.eval_pp = f'resize|{norm}'
        eval_split = 'test'
    c.data.train_pp = f'{crop}|flip|randaugment(2, 9, 0.5)|{norm}|random_erasing(0.25)'
    c.data.flip = False  # In the pipe already.
    c.data.aug_fill_mean = common.IMAGENET_MEAN
    c.data.num_classes = num_classes  # For mixup's label_dist (keep equal to model.num_classes).
    c.data.train_batch_pp = 'mixup(0.8, 1.0, prob=1.0, switch_prob=0.5, mode="batch")'
    c.data.repeated_aug = 3
    c.data.shuffle_buffer = 50_000
    c.batch_size = batch
    c.total_steps = 300 * steps_per_epoch
    c.log_every = 100
    c.eval_every = 10 * steps_per_epoch
    c.checkpoint_every = 10 * steps_per_epoch
    c.keep_checkpoints = 2
    c.optimizer = dict(c.optimizer, name='adamw', b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05,
                       wd_mask='no_bias_norm', grad_clip_norm=None, ema_decay=None)
    c.lr = dict(base=base_lr * batch / 512, warmup_steps=warmup * steps_per_epoch, decay='cosine', end=1e-5)
    c.objective = dict(type='classification', label_smoothing=0.1, loss='softmax')
    c.evals = dict(val=dict(type='classification', split=eval_split, every=c.eval_every))
    return c
