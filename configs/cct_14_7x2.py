"""CCT-14/7x2 on ImageNet at 224, and its fine-tunes at 384 (ImageNet, Flowers-102): the official recipes.

    python -m vit_jax.main --config=configs/cct_14_7x2.py:imagenet --workdir=workdirs/cct14_in1k
    python -m vit_jax.main --config=configs/cct_14_7x2.py:imagenet384 --workdir=workdirs/cct14_in1k_384 \\
        --config.init_from.path=workdirs/cct14_in1k
    python -m vit_jax.main --config=configs/cct_14_7x2.py:flowers384 --workdir=workdirs/cct14_flowers_384 \\
        --config.init_from.path=workdirs/cct14_in1k_384

Recipes (Compact-Transformers configs/pretrained/cct_14-7x2_imagenet.yml and configs/finetuned/*.yml, timm
trainer): AdamW, label smoothing 0.1, RandomResizedCrop (bicubic) + flip + RandAugment rand-m9-mstd0.5-inc1,
mean/std normalisation, mixup 0.8 / CutMix 1.0 (switch 0.5, batch mode, throughout), random erasing 0.25 ('pixel'),
cosine schedule with 10 cooldown epochs at the minimum (approximated by a cosine over epochs + 10), no EMA, no
gradient clipping:

| run | epochs | batch | lr | min lr | weight decay | warm-up | crop scale | eval crop_pct |
|---|---|---|---|---|---|---|---|---|
| imagenet (224, from scratch) | 300 | 128 per GPU | 5e-4 | 1e-5 | 5e-2 | 10 | 0.08-1 | 0.9 |
| imagenet384 (from the 224 run) | 30 | 96 | 1e-5 | 0 | 0 | 0 | 0.08-1 | 0.9 |
| flowers384 (from imagenet384) | 300 | 20 | 5e-5 | 1e-8 | 5e-2 | 10 | 0.8-1 | 1.0 |

The yml batch sizes are per process and the number of GPUs is not recorded; `imagenet` assumes 8 GPUs (global batch
1024, lr unscaled as in timm); the fine-tunes use the yml batch as the global batch. Flowers-102 trains on `train`
and is evaluated on `validation` (the official `valid` split) and on `test`. The learnable position embedding of the
224 checkpoint is resampled to the 24x24 grid by `checkpoint.load_pretrained`; the head is re-initialised for
Flowers. Needs the TFDS datasets prepared (imagenet2012 manually; oxford_flowers102 downloads).

Published (README): ImageNet 80.67 (224, 300 epochs), 82.71 (384 fine-tune); Flowers-102 99.76 (384, from ImageNet).
Not measured here (no such data or accelerators in this environment).
"""

import ml_collections

from configs import common
from vit_jax import config_utils

FLOWERS_MEAN, FLOWERS_STD = (0.4353, 0.3773, 0.2872), (0.2966, 0.2455, 0.2698)


def timm_recipe(*, model: dict, dataset: str, n_train: int, num_classes: int, epochs: int, batch: int, lr: float,
                min_lr: float, wd: float, warmup_epochs: int, scale: tuple, crop_pct: float, mean: tuple, std: tuple,
                reprob: float, train_split: str = 'train', eval_splits: dict | None = None, mixup: bool = True,
                ema_decay: float | None = None) -> ml_collections.ConfigDict:
    """A timm `train.py` recipe (RandAugment, mixup/CutMix, random erasing, cosine + cooldown) as a config."""
    steps_per_epoch = max(n_train // batch, 1)
    c = config_utils.base_config()
    c.dataset = dataset
    c.model = dict(num_classes=num_classes, **model)
    c.data.train_split = train_split
    pipe = (f'inception_crop(area_range={tuple(scale)})|flip|randaugment(2, 9, 0.5)|value_range(0, 1)|'
            f'normalize({tuple(mean)}, {tuple(std)})')
    if reprob:
        pipe += f'|random_erasing({reprob})'
    c.data.train_pp = pipe
    c.data.eval_pp = f'resize_crop(crop_pct={crop_pct})|value_range(0, 1)|normalize({tuple(mean)}, {tuple(std)})'
    c.data.flip = False  # In the pipe already.
    c.data.resize_method = 'bicubic'
    c.data.aug_fill_mean = tuple(mean)
    if mixup:
        c.data.num_classes = num_classes  # For mixup's label_dist (keep equal to model.num_classes).
        c.data.train_batch_pp = 'mixup(0.8, 1.0, prob=1.0, switch_prob=0.5, mode="batch")'
    c.data.shuffle_buffer = min(n_train, 50_000)
    c.batch_size = batch
    c.total_steps = (epochs + 10) * steps_per_epoch  # + timm's 10 cooldown epochs.
    c.log_every = 100 if steps_per_epoch >= 100 else 10
    c.eval_every = max(steps_per_epoch * max(epochs // 30, 1), 1)
    c.checkpoint_every = c.eval_every
    c.keep_checkpoints = 2
    c.optimizer = dict(c.optimizer, name='adamw', b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd,
                       wd_mask=r'(kernel|pos_embedding|cls)$', grad_clip_norm=None, ema_decay=ema_decay)
    c.lr = dict(base=lr, warmup_steps=warmup_epochs * steps_per_epoch, decay='cosine', end=min_lr)
    c.objective = dict(type='classification', label_smoothing=0.1, loss='softmax')
    eval_splits = eval_splits or {'val': 'validation'}
    c.evals = {name: dict(type='classification', split=split, every=c.eval_every)
               for name, split in eval_splits.items()}
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    run = common.parse_arg(arg, run=common.OneOf('imagenet', ('imagenet', 'imagenet384', 'flowers384'))).run
    imagenet = dict(dataset='imagenet2012', n_train=common.IMAGENET_TRAIN_EXAMPLES, num_classes=1000,
                    scale=(0.08, 1.0), crop_pct=0.9, mean=common.IMAGENET_MEAN, std=common.IMAGENET_STD, reprob=0.25)
    if run == 'imagenet':
        return timm_recipe(model=dict(name='CCT-14/7x2', image_size=224), epochs=300, batch=1024, lr=5e-4,
                           min_lr=1e-5, wd=5e-2, warmup_epochs=10, **imagenet)
    if run == 'imagenet384':
        c = timm_recipe(model=dict(name='CCT-14/7x2', image_size=384), epochs=30, batch=96, lr=1e-5, min_lr=0.0,
                        wd=0.0, warmup_epochs=0, **imagenet)
        c.init_from = dict(path=None, dont_load=(), old_grid=(14, 14))
        return c
    c = timm_recipe(model=dict(name='CCT-14/7x2', image_size=384), dataset='oxford_flowers102', n_train=1020,
                    num_classes=102, epochs=300, batch=20, lr=5e-5, min_lr=1e-8, wd=5e-2, warmup_epochs=10,
                    scale=(0.8, 1.0), crop_pct=1.0, mean=FLOWERS_MEAN, std=FLOWERS_STD, reprob=0.25,
                    eval_splits={'val': 'validation', 'test': 'test'})
    c.init_from = dict(path=None, dont_load=('head/.*',), old_grid=None)
    return c
