"""The DeiT-style ImageNet-1k recipe (timm) that CvT, T2T-ViT and CrossViT train with, and their fine-tuning.

    python -m vit_jax.main --config=configs/deit_recipe.py:CvT-13 --workdir=workdirs/cvt13_in1k

`get_config(model_name)` is the generic 300-epoch recipe for any registered classifier; the family configs
(configs/cvt_13.py, configs/t2t_vit_14.py, configs/crossvit_s.py, ...) call the helpers here with each paper's
own settings and document them. What the helpers share:

* ImageNet-1k from scratch (`imagenet`): AdamW (b1 0.9, b2 0.999), no weight decay on biases, norms, class tokens
  and position embeddings (`wd_mask='no_bias_norm'`), linear warm-up then cosine decay to `min_lr`, no gradient
  clipping (timm's default), label smoothing 0.1; RandomResizedCrop (8%-100% of the area, bicubic) + flip +
  RandAugment rand-m9-mstd0.5-inc1 + ImageNet mean/std + random erasing 0.25 per example, Mixup 0.8 / CutMix 1.0
  (switch prob 0.5) per batch; evaluation resizes the short side to size / crop_pct and centre-crops.
  Differences from timm: the warm-up starts from 0 instead of 1e-6, and timm's cool-down epochs at `min_lr` are
  folded into the cosine (the step counts are the same).
* Fine-tuning (`finetune`): the ViT protocol (SGD momentum 0.9, batch 512, cosine, gradient clipping at 1) or
  DeiT's high-resolution recipe, with the pretraining's normalisation; `init_from.path` names the checkpoint and
  its head is dropped.
* `digits`: the same optimiser family on the built-in digits, for CPU-sized runs.
"""

from __future__ import annotations

import ml_collections

from configs import common
from vit_jax import config_utils

# TFDS name, classes, train split, eval split, train examples.
TRANSFER = {
    'imagenet2012': ('imagenet2012', 1000, 'train', 'validation', common.IMAGENET_TRAIN_EXAMPLES),
    'cifar10': ('cifar10', 10, 'train', 'test', 50_000),
    'cifar100': ('cifar100', 100, 'train', 'test', 50_000),
    'oxford_iiit_pet': ('oxford_iiit_pet', 37, 'train', 'test', 3_680),
    'oxford_flowers102': ('oxford_flowers102', 102, 'train+validation', 'test', 2_040),
}
ALIASES = {'imagenet': 'imagenet2012', 'pets': 'oxford_iiit_pet', 'flowers': 'oxford_flowers102'}


def _normalized_pp(c: ml_collections.ConfigDict, train_pp: str, eval_pp: str, crop_pct: float) -> None:
    c.data.norm_mean = common.IMAGENET_MEAN
    c.data.norm_std = common.IMAGENET_STD
    c.data.resize_method = 'bicubic'
    c.data.crop_pct = crop_pct
    c.data.train_pp = train_pp
    c.data.eval_pp = eval_pp
    c.data.flip = True


def imagenet(model: dict, *, batch_size: int, lr: float, weight_decay: float, epochs: int = 300,
             warmup_epochs: int = 5, min_lr: float = 1e-5, crop_pct: float = 0.875, ema_decay: float | None = None,
             repeated_aug: int | None = None, label_smoothing: float = 0.1) -> ml_collections.ConfigDict:
    """ImageNet-1k from scratch with the DeiT/timm augmentation and AdamW (see the module docstring)."""
    c = config_utils.base_config()
    c.dataset = 'imagenet2012'
    c.model = dict(num_classes=1000, image_size=224, **model)
    c.data.train_split = 'train'
    _normalized_pp(c, 'inception_crop|flip|randaugment(num_layers=2, magnitude=9, magnitude_std=0.5)'
                      '|value_range(0, 1)|normalize|random_erasing(prob=0.25)',
                   'resize_crop|value_range(0, 1)|normalize', crop_pct)
    c.data.inception_crop_area = (0.08, 1.0)
    c.data.train_batch_pp = 'mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, num_classes=1000)'
    c.data.repeated_aug = repeated_aug
    c.data.shuffle_buffer = 250_000
    c.batch_size = batch_size
    c.total_steps = common.steps_for(epochs, batch_size)
    c.log_every = 100
    c.eval_every = common.steps_for(5, batch_size)
    c.checkpoint_every = common.steps_for(1, batch_size)
    c.keep_checkpoints = 2
    c.optimizer = dict(c.optimizer, name='adamw', b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay,
                       wd_mask='no_bias_norm', grad_clip_norm=None, ema_decay=ema_decay)
    c.lr = dict(base=lr, warmup_steps=common.steps_for(warmup_epochs, batch_size), decay='cosine', end=min_lr)
    c.objective = dict(type='classification', label_smoothing=label_smoothing, loss='softmax')
    c.evals = dict(val=dict(type='classification', split='validation', every=c.eval_every))
    c.init_from = dict(path=None, dont_load=(), old_grid=None)
    return c


def finetune(model: dict, dataset: str, *, image_size: int, steps: int, batch_size: int = 512, lr: float = 0.003,
             warmup_steps: int = 500, optimizer: str = 'sgd', weight_decay: float = 0.0, min_lr: float = 0.0,
             decay: str = 'cosine', crop_pct: float | None = None, grad_clip_norm: float | None = 1.0,
             dont_load: tuple = ('head.*',)) -> ml_collections.ConfigDict:
    """Fine-tuning a pretrained checkpoint (`--config.init_from.path=...`) on `dataset` at `image_size`.

    Inception crop + flip for training; evaluation resizes to the input size (`crop_pct=None`) or centre-crops.
    Pixels get the ImageNet mean/std normalisation the models were pretrained with.
    """
    name = ALIASES.get(dataset, dataset)
    if name not in TRANSFER:
        raise ValueError(f'Unknown dataset {dataset!r}; choose one of {sorted(TRANSFER)} (aliases {sorted(ALIASES)}).')
    tfds_name, num_classes, train_split, eval_split, _ = TRANSFER[name]
    c = config_utils.base_config()
    c.dataset = tfds_name
    c.model = dict(num_classes=num_classes, image_size=image_size, **model)
    c.data.train_split = train_split
    eval_pp = 'resize|value_range(0, 1)|normalize' if crop_pct is None else 'resize_crop|value_range(0, 1)|normalize'
    _normalized_pp(c, 'inception_crop|flip|value_range(0, 1)|normalize', eval_pp, crop_pct or 0.875)
    c.data.inception_crop_area = (0.08, 1.0)
    c.data.shuffle_buffer = 50_000
    c.batch_size = batch_size
    c.total_steps = steps
    c.log_every = 50
    c.eval_every = max(steps // 10, 1)
    c.checkpoint_every = max(steps // 10, 1)
    c.keep_checkpoints = 2
    c.optimizer = dict(c.optimizer, name=optimizer, momentum=0.9, weight_decay=weight_decay, wd_mask='no_bias_norm',
                       grad_clip_norm=grad_clip_norm)
    c.lr = dict(base=lr, warmup_steps=warmup_steps, decay=decay, end=min_lr)
    c.objective = dict(type='classification', label_smoothing=0.0, loss='softmax')
    c.evals = dict(val=dict(type='classification', split=eval_split, every=c.eval_every))
    c.init_from = dict(path=None, dont_load=tuple(dont_load), old_grid=None)
    return c


def digits(model: dict, *, image_size: int, steps: int = 1500, batch_size: int = 128, lr: float = 2e-3,
           weight_decay: float = 0.05, tiny: bool = False) -> ml_collections.ConfigDict:
    """The recipe's optimiser family (AdamW, cosine, label smoothing) on the built-in digits, CPU-sized.

    With `tiny=True`: a short run for the tests (no intermediate evaluations or checkpoints).
    """
    return common.digits_recipe(dict(image_size=image_size, **model), steps=steps,
                                warmup_steps=max(steps // 15, 1), lr=lr, weight_decay=weight_decay,
                                batch_size=batch_size, tiny=tiny)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """DeiT's ImageNet-1k recipe for any registered model: batch 1024, lr 1e-3 (5e-4 x 1024 / 512), wd 0.05."""
    arg = common.parse_arg(arg, model='ViT-S/16')
    return imagenet(dict(name=arg.model), batch_size=1024, lr=1e-3, weight_decay=0.05)
