"""DTN: the paper's ConViT-style ViTs from scratch on ImageNet at 224, with DTN or the LayerNorm baseline.

    python -m vit_jax.main --config=configs/dtn_vit.py:T* --workdir=workdirs/dtn_vit_t_star
    python -m vit_jax.main --config=configs/dtn_vit.py:S*,layernorm --workdir=workdirs/ln_vit_s_star

Argument: `SIZE[,NORM]` with SIZE one of T*, S, S*, B, B* (models DTN-ViT-<SIZE>) and NORM `dtn` (default),
`dtn_var` or `layernorm`.

Recipe (official train.py defaults + configs/ViT/vit.yaml; timm trainer): AdamW lr 5e-4 x batch / 512, weight
decay 0.05 (not on biases, norms, gates, the class token and the position embedding), cosine to 1e-5 with 5 warm-up
epochs and 10 cooldown epochs (approximated by a cosine over 310 epochs), label smoothing 0.1, RandomResizedCrop(224,
0.08-1, bicubic) + flip + RandAugment rand-m9-mstd0.5-inc1, ImageNet mean/std, mixup 0.8 / CutMix 1.0 (switch 0.5,
batch mode), no random erasing, no repeated augmentation, stochastic depth 0.1, EMA of the weights (decay 0.99996;
the evaluators use it, as timm validates the EMA model). Evaluation: resize 256 / centre crop 224 (crop_pct 0.875).
The per-GPU batch is 128; the number of GPUs is not recorded, so this assumes 8 (global batch 1024, lr 1e-3).

Published (README, ImageNet top-1): ViT-T* 72.3 (LN) -> 73.2 (DTN); ViT-S 79.9 -> 80.6; ViT-S* 80.6 -> 81.7;
ViT-B* 81.7 -> 82.5. Not measured here (no ImageNet or accelerator in this environment);
configs/quickstart_dtn.py trains the same network on the built-in digits.
"""

import ml_collections

from configs import common
from vit_jax import config_utils

SIZES = ('T*', 'S', 'S*', 'B', 'B*')
NORMS = ('dtn', 'dtn_var', 'layernorm')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, size=common.OneOf('T*', SIZES), norm=common.OneOf('dtn', NORMS))
    batch, n_train, epochs = 1024, common.IMAGENET_TRAIN_EXAMPLES, 300
    steps_per_epoch = n_train // batch
    c = config_utils.base_config()
    c.dataset = 'imagenet2012'
    c.model = dict(name=f'DTN-ViT-{arg.size}', image_size=224, norm=arg.norm, drop_path_rate=0.1)
    norm_pp = f'value_range(0, 1)|normalize({common.IMAGENET_MEAN}, {common.IMAGENET_STD})'
    c.data.train_pp = f'inception_crop(area_range=(0.08, 1.0))|flip|randaugment(2, 9, 0.5)|{norm_pp}'
    c.data.eval_pp = f'resize_crop(crop_pct=0.875)|{norm_pp}'
    c.data.flip = False  # In the pipe already.
    c.data.resize_method = 'bicubic'
    c.data.aug_fill_mean = common.IMAGENET_MEAN
    c.data.num_classes = 1000  # For mixup's label_dist (keep equal to model.num_classes).
    c.data.train_batch_pp = 'mixup(0.8, 1.0, prob=1.0, switch_prob=0.5, mode="batch")'
    c.data.shuffle_buffer = 50_000
    c.batch_size = batch
    c.total_steps = (epochs + 10) * steps_per_epoch
    c.log_every = 100
    c.eval_every = 10 * steps_per_epoch
    c.checkpoint_every = 10 * steps_per_epoch
    c.keep_checkpoints = 2
    c.optimizer = dict(c.optimizer, name='adamw', b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05,
                       wd_mask='no_bias_norm', grad_clip_norm=None, ema_decay=0.99996)
    c.lr = dict(base=5e-4 * batch / 512, warmup_steps=5 * steps_per_epoch, decay='cosine', end=1e-5)
    c.objective = dict(type='classification', label_smoothing=0.1, loss='softmax')
    c.evals = dict(val=dict(type='classification', split='validation', every=c.eval_every))
    return c
