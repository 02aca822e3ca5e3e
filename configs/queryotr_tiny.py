"""A tiny QueryOTR on the built-in photographs (no download), CPU, minutes: the whole GAN recipe at 32 -> 48 px.

    python -m vit_jax.main --config=configs/queryotr_tiny.py --workdir=workdirs/queryotr_tiny
    python -m vit_jax.tools.outpaint_grid --workdir=workdirs/queryotr_tiny --out=grid.png

Data: 'outpaint_samples' (crops of scikit-learn's two sample photographs; test crops come from a held-out strip of
each photo). Model: 'QueryOTR-testing' (2-layer encoder, 1 QEM block with a deformable conv, 1 decoder block, 4 px
patches: the paper's 8x8 -> 12x12 token grids at 1/4 of the resolution). The paper's losses and weights (5 rec +
1 adv + 10 perc), its Adam (0, 0.99) with coupled weight decay 1e-4, a reconstruction-only warm-up, a 2-scale
PatchGAN with DiffAugment. The perceptual VGG19 and the FID Inception are frozen random stand-ins here (1/16 width),
so the logged figures are named *_random_features. With `:tiny` (tests) it runs 300 steps.
"""

from configs import common
from vit_jax import config_utils
from vit_jax.data.outpainting import OUTPAINT_EVAL_PP, OUTPAINT_TRAIN_PP


def get_config(arg=None):
    arg = common.parse_arg(arg, tiny=False)
    c = config_utils.base_config()
    c.dataset = 'outpaint_samples'
    c.model = dict(name='QueryOTR-testing', output_mean=0.5, output_std=0.25)
    c.data.train_pp = OUTPAINT_TRAIN_PP
    c.data.eval_pp = OUTPAINT_EVAL_PP
    c.data.value_range = (0.0, 1.0)
    c.data.outpaint_crop_area = (0.25, 1.0)  # Crops of the 96 px store images: keep them from getting too blurry.
    c.batch_size = 16
    c.total_steps = 2000
    c.log_every = 50
    c.eval_every = 1000
    c.checkpoint_every = 1000
    c.optimizer = dict(c.optimizer, name='adam', b1=0.0, b2=0.99, weight_decay=1e-4, grad_clip_norm=0.0)
    c.lr = dict(base=1e-3, warmup_steps=100, decay='constant', end=1e-3)
    c.objective = dict(
        type='outpainting', rec_weight=5.0, adv_weight=1.0, perc_weight=10.0, rec_loss='mse',
        warmup_steps=100,  # Reconstruction-only steps (the paper: 10 epochs).
        diffaug='color,translation,cutout', offset_lr_mult=0.1, lr_staircase_steps=0,
        disc=dict(num_scales=2, ndf=16, n_layers=3),  # 48 px images: 3 strided layers per scale.
        perceptual=dict(model='VGG19', overrides=dict(num_classes=0, width_divisor=16), weights=None),
    )
    c.evals = dict(val=dict(type='outpainting', split='test', every=1000, inception=dict(kind='tiny_random')))
    if arg.tiny:  # For tests: a few hundred steps.
        c.total_steps = 300
        c.log_every = 50
        c.eval_every = 0
        c.checkpoint_every = 0
        c.objective.warmup_steps = 50
        c.lr.warmup_steps = 20
        c.tensorboard = False
        c.evals.val.every = 0
    return c
