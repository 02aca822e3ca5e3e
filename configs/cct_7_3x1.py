"""CCT-7/3x1 from scratch on CIFAR: the official Compact-Transformers recipes (configs/pretrained/*.yml, timm trainer).

    python -m vit_jax.main --config=configs/cct_7_3x1.py:cifar10 --workdir=workdirs/cct_7_3x1_c10
    python -m vit_jax.main --config=configs/cct_7_3x1.py:cifar100,5000 --workdir=workdirs/cct_7_3x1_c100_5k

Arguments: `cifar10` or `cifar100`, then optionally the schedule length `300` (default), `1500` or `5000` epochs, and
optionally another registered model (`cifar10,300,CCT-6/3x2`, `cifar100,300,CVT-7/4`) trained with the same recipe.
Needs the TFDS datasets prepared (`tfds build cifar10`).

Recipe (the released yml files; timm trainer): AdamW, batch 128, cosine with 10 warm-up epochs to 1e-5 plus 10
cooldown epochs at 1e-5 (approximated by a cosine to 1e-5 over epochs + 10), label smoothing 0.1,
RandomResizedCrop(32, scale 0.8-1, bicubic) + flip + RandAugment rand-m9-mstd0.5-inc1 (fill = dataset mean), dataset
mean/std normalisation, mixup 0.8 / CutMix 1.0 (switch 0.5, batch mode), no gradient clipping, dropout 0 / attention
dropout 0.1 / stochastic depth 0.1 (the model defaults), weight decay on every weight matrix and the position
embedding (timm's filter leaves only biases and norms undecayed), no EMA. Per run:

| dataset, epochs | position emb. | lr | weight decay | mixup off after | random erasing |
|---|---|---|---|---|---|
| cifar10, 300 | learnable | 5.5e-4 | 6e-2 | epoch 175 | 0 |
| cifar10, 1500 / 5000 | sine | 5e-4 | 5e-2 | never | 0.25 |
| cifar100, 300 | learnable | 6e-4 | 6e-2 | never | 0 |
| cifar100, 1500 | sine | 7e-4 | 5e-2 | never | 0 |
| cifar100, 5000 | sine | 5e-4 | 5e-2 | never | 0 |

timm steps its schedule per epoch and warms up from 1e-5 (or 1e-6); here it is per step from 0. timm's train
interpolation is a random choice of bilinear/bicubic; here bicubic.

Published (README, 32 px, top-1): CIFAR-10 96.53 (300 ep), 97.48 (1500 ep, sine), 98.00 (5000 ep, sine);
CIFAR-100 80.92, 82.72, 82.87. Not measured here (no CIFAR or accelerator in this environment); the same pipeline
and model train on the built-in digits in tests/test_small_data_quickstarts.py.
"""

import ml_collections

from configs import common
from vit_jax import config_utils

# name: (classes, training images, mean, std)
CIFAR = {
    'cifar10': (10, 50_000, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': (100, 50_000, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
# (dataset, epochs): (posemb, lr, weight decay, mixup off epoch or None, random erasing probability)
RUNS = {
    ('cifar10', 300): ('learnable', 5.5e-4, 6e-2, 175, 0.0),
    ('cifar10', 1500): ('sine', 5e-4, 5e-2, None, 0.25),
    ('cifar10', 5000): ('sine', 5e-4, 5e-2, None, 0.25),
    ('cifar100', 300): ('learnable', 6e-4, 6e-2, None, 0.0),
    ('cifar100', 1500): ('sine', 7e-4, 5e-2, None, 0.0),
    ('cifar100', 5000): ('sine', 5e-4, 5e-2, None, 0.0),
}


def cifar_recipe(model: str, dataset: str, epochs: int, **model_overrides) -> ml_collections.ConfigDict:
    """The timm-trainer CIFAR recipe of Compact-Transformers for any registered model (32 px)."""
    if (dataset, epochs) not in RUNS:
        raise ValueError(f'No released recipe for {dataset!r} with {epochs} epochs; choose one of {sorted(RUNS)}.')
    num_classes, n_train, mean, std = CIFAR[dataset]
    posemb, lr, wd, mixup_off, reprob = RUNS[dataset, epochs]
    batch = 128
    steps_per_epoch = n_train // batch  # timm drops the last partial batch.
    c = config_utils.base_config()
    c.dataset = dataset
    c.model = dict(name=model, num_classes=num_classes, image_size=32, posemb=posemb, **model_overrides)
    c.data.train_split = 'train'
    pipe = ('inception_crop(area_range=(0.8, 1.0))|flip|randaugment(2, 9, 0.5)|value_range(0, 1)|'
            f'normalize({mean}, {std})')
    if reprob:
        pipe += f'|random_erasing({reprob})'
    c.data.train_pp = pipe
    c.data.eval_pp = f'resize|value_range(0, 1)|normalize({mean}, {std})'
    c.data.flip = False  # In the pipe already.
    c.data.resize_method = 'bicubic'
    c.data.aug_fill_mean = mean  # RandAugment fill colour (timm's img_mean).
    off = f', off_step={mixup_off * steps_per_epoch}' if mixup_off else ''
    c.data.num_classes = num_classes  # For mixup's label_dist (keep equal to model.num_classes).
    c.data.train_batch_pp = f'mixup(0.8, 1.0, prob=1.0, switch_prob=0.5, mode="batch"{off})'
    c.data.shuffle_buffer = 50_000
    c.batch_size = batch
    c.total_steps = (epochs + 10) * steps_per_epoch  # + timm's 10 cooldown epochs.
    c.log_every = 100
    c.eval_every = 10 * steps_per_epoch
    c.checkpoint_every = 10 * steps_per_epoch
    c.keep_checkpoints = 2
    c.optimizer = dict(c.optimizer, name='adamw', b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd,
                       wd_mask=r'(kernel|pos_embedding|cls)$', grad_clip_norm=None, ema_decay=None)
    c.lr = dict(base=lr, warmup_steps=10 * steps_per_epoch, decay='cosine', end=1e-5)
    c.objective = dict(type='classification', label_smoothing=0.1, loss='softmax')
    c.evals = dict(val=dict(type='classification', split='test', every=c.eval_every))
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, dataset='cifar10', epochs=300, model='CCT-7/3x1')
    return cifar_recipe(arg.model, arg.dataset, arg.epochs)
