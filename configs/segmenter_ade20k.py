"""Segmenter on ADE20K (the paper's recipe): `configs/segmenter_ade20k.py:VARIANT[,init=PATH]`.

    python -m vit_jax.main --config=configs/segmenter_ade20k.py:B-Mask/16,init=/path/ViT-B_16-384.npz --workdir=DIR

VARIANT: T-Mask/16, S-Mask/16, B-Mask/16 (default), B/8, B/16, L-Mask/16 (trained at 640 px), ... any 'Seg-' name.
Data: TFDS 'scene_parse150' (ADE20K, 150 classes; `tfds build scene_parse150` once). Recipe (official code, spec 5):
SGD momentum 0.9, weight decay 0, lr 1e-3 with polynomial decay (power 0.9) to 1e-5, no warm-up, batch 8,
160k iterations (64 epochs), 512 crops (640 for L) from random rescaling 0.5-2.0 of (2048, 512), cat_max_ratio
0.75 crops, flips, photometric distortion; encoder dropout 0, drop path 0.1, decoder dropout 0.1. The encoder
starts from an ImageNet ViT (the paper: AugReg ViT-{T,S,B,L}/16 at 384 px; init=PATH, a ViT .npz or a vit_jax
workdir) with its position embedding resampled to the crop grid. Evaluation: short side 512 (long side <= 2048),
each image on its own with 512 windows at stride 512 (the final window flush with the border), single scale; the
multi-scale figure uses evals.val.scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75) and flip=True.
Paper (ADE20K val mIoU, single / multi-scale): T-Mask/16 38.1 / 38.8, S-Mask/16 45.3 / 46.9, B-Mask/16 48.5 / 50.0,
B/8 49.5 / 50.5, L-Mask/16 51.8 / 53.6. Not reproduced here (no data or accelerators in this environment).
`segmenter_recipe(...)` here is the recipe configs/segmenter_cityscapes.py and segmenter_pascal_context.py share.
"""

from __future__ import annotations

import ml_collections

from configs import common
from vit_jax import config_utils


def model_name(variant: str) -> str:
    """'B-Mask/16' -> 'Seg-B-Mask/16' (a full 'Seg-' name is kept)."""
    return variant if variant.startswith('Seg-') else f'Seg-{variant}'


def segmenter_recipe(variant: str, *, dataset: str, num_classes: int, crop: int, scale: tuple[int, int],
                     batch_size: int, steps: int, lr: float, eval_every: int, evals: dict, init: str | None,
                     data: dict | None = None) -> ml_collections.ConfigDict:
    """The official Segmenter training recipe that the ADE20K, Cityscapes and Pascal Context configs share.

    SGD momentum 0.9 without weight decay or clipping, `lr` with polynomial decay (power 0.9) to 1e-5 and no
    warm-up; `crop` px crops from random rescaling (0.5-2.0) of `scale` with cat_max_ratio 0.75, flips and
    photometric distortion; encoder dropout 0, drop path 0.1, decoder dropout 0.1; checkpoints every 4000 steps.
    `evals` completes the segmentation evaluator (split, windows ...); `data` updates `config.data` (eval_scale
    ...); `init` is the encoder's checkpoint (the decoder and any classifier head are not loaded).
    """
    c = config_utils.base_config()
    c.dataset = dataset
    c.model = dict(name=model_name(variant), num_classes=num_classes, image_size=crop, dropout_rate=0.0,
                   drop_path_rate=0.1, decoder_dropout=0.1)
    c.data = dict(c.data, train_split='train', flip=False, eval_pp='dense_decode|dense_fit',
                  train_pp=f'dense_decode|dense_rescale(scale={tuple(scale)})|dense_random_crop(cat_max_ratio=0.75)|'
                           'dense_flip|photometric', **(data or {}))
    c.batch_size = batch_size
    c.total_steps = steps
    c.log_every = 100
    c.eval_every = eval_every
    c.checkpoint_every = 4_000
    c.optimizer = dict(c.optimizer, name='sgd', momentum=0.9, weight_decay=0.0, grad_clip_norm=0.0)
    c.lr = dict(base=lr, warmup_steps=0, decay='poly', power=0.9, end=1e-5)
    c.objective = dict(type='segmentation', ignore_label=255)
    c.evals = dict(val=dict(type='segmentation', every=eval_every, **evals))
    c.init_from = dict(path=init, dont_load=('decoder/.*', 'head/.*', 'pre_logits/.*'))
    return c


def get_config(arg=None):
    arg = common.parse_arg(arg, variant='B-Mask/16', init=None)
    crop = 640 if model_name(arg.variant).startswith('Seg-L') else 512
    # Eval canvases of 1024 x 1024 hold the short-side-512 images up to 2:1 (wider ones are shrunk to fit).
    return segmenter_recipe(arg.variant, dataset='scene_parse150', num_classes=150, crop=crop, scale=(2048, 512),
                            batch_size=8, steps=160_000, lr=1e-3, eval_every=16_000, init=arg.init,
                            data=dict(shuffle_buffer=5_000, eval_scale=(2048, 512)),
                            evals=dict(split='test', batch_size=8, eval_size=(1024, 1024), window=crop, stride=crop,
                                       scales=(1.0,), flip=False))
