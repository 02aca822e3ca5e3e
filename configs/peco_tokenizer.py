"""PeCo stage 1: the perceptual VQ tokenizer (VQGAN f16, K = 8192) on ImageNet-1k.

    python -m vit_jax.main --config=configs/peco_tokenizer.py --workdir=workdirs/peco_tok \
        --config.objective.perceptual.weights=/path/to/moco_v3_vit_b16.npz
    python -m vit_jax.main --config=configs/peco_tokenizer.py:digits --workdir=workdirs/peco_tok_digits   # CPU

The perceptual network of the paper is a self-supervised (MoCo v3) ViT-B/16, features after blocks 3, 6, 9, 12
(0-based 2, 5, 8, 11), inputs normalised with the ImageNet mean/std. Convert its weights to a vit_jax .npz (e.g.
`vit_jax.convert` from a timm/HF ViT) and pass them as `objective.perceptual.weights`; without them a frozen
random-init ViT-B/16 is used, loudly, and the loss is logged as `perceptual_loss_random_features`.

Not confirmed for PeCo (specs_c.md section 1, [RECALL]): code dimension (256 = taming default), the loss weights
(pixel 1, perceptual 1, beta 0.25, adversarial: VQGAN's adaptive weight x 0.8 switched on after a warm-up), the
tokenizer's epochs, learning rate and batch size. The values below follow taming-transformers' ImageNet f16 VQGAN
(Adam 4.5e-6 x batch, betas 0.5/0.9) scaled to batch 256.

`:digits` trains a tiny tokenizer (16x16 images, f4, K = 64, 4x4 codes) with a tiny random-feature perceptual net on
the built-in digits in about 3 minutes on one CPU core; `configs/peco_beit_b16.py:digits` pretrains on its codes.
"""

import ml_collections

from configs import common
from vit_jax import config_utils


def get_config(arg=None):
    run = common.parse_arg(arg, run=common.OneOf('imagenet', ('imagenet', 'digits', 'digits_tiny'))).run
    c = config_utils.base_config()
    c.dataset = 'imagenet2012'
    c.model = ml_collections.ConfigDict(dict(name='PeCo-VQGAN-f16', image_size=224, num_codes=8192, code_dim=256))
    c.data.train_split = 'train'
    c.data.train_pp = 'inception_crop'
    c.data.inception_crop_area = (0.08, 1.0)
    c.batch_size = 256
    c.total_steps = 100 * 1251 * 4 // 2  # ~100 epochs at batch 256 (unknown for PeCo).
    c.log_every = 100
    c.eval_every = 0
    c.checkpoint_every = 5000
    c.optimizer = ml_collections.ConfigDict(dict(c.optimizer.to_dict(), name='adam', b1=0.5, b2=0.9,
                                                 weight_decay=0.0, grad_clip_norm=None))
    c.lr = ml_collections.ConfigDict(dict(base=4.5e-6 * 256, warmup_steps=5000, decay='cosine', end=0.0))
    c.objective = ml_collections.ConfigDict(dict(
        type='vqgan',
        pixel_loss='l1',  # VQGAN's L1 (the PeCo paper writes L2).
        pixel_weight=1.0,
        beta=0.25,
        codebook_weight=1.0,
        perceptual=dict(model='ViT-B/16', overrides=dict(num_classes=0), weights=None, layers=(2, 5, 8, 11),
                        weight=1.0, input_mean=common.IMAGENET_MEAN, input_std=common.IMAGENET_STD,
                        allow_random=True),
        disc=dict(enabled=True, start_step=30_000, weight=0.8, adaptive=True, lr=4.5e-6 * 256, b1=0.5, b2=0.9,
                  ndf=64, n_layers=3, norm='group'),
        dead_codes=dict(every=200, decay=0.99, threshold=0.03),
    ))
    c.evals = ml_collections.ConfigDict()
    c.init_from = ml_collections.ConfigDict(dict(path=None, dont_load=()))
    if run in ('digits', 'digits_tiny'):
        c.dataset = 'digits'
        c.model = ml_collections.ConfigDict(dict(name='VQGAN-testing', image_size=16, num_codes=64, code_dim=16))
        c.data.train_pp = 'random_shift'
        c.data.flip = False
        c.batch_size = 64
        # Measured (300 steps, ~3 min on one CPU core): rec_loss (L1) 0.133, perplexity 51.5 of 64 codes, batch
        # usage 0.99. (600 steps at lr 2e-3, disc from step 300: L1 0.119, the same MIM and fine-tune figures.)
        c.total_steps = 300
        c.log_every = 50
        c.checkpoint_every = 0
        c.optimizer.b1, c.optimizer.b2 = 0.9, 0.99
        c.optimizer.grad_clip_norm = 1.0
        c.lr = ml_collections.ConfigDict(dict(base=4e-3, warmup_steps=50, decay='cosine', end=1e-4))
        c.objective.perceptual = dict(model='ViT-testing', overrides=dict(num_classes=0, image_size=16),
                                      weights=None, layers=(0, 1), weight=0.1, allow_random=True)
        c.objective.disc = dict(enabled=True, start_step=150, weight=0.1, adaptive=True, lr=2e-4, b1=0.5, b2=0.9,
                                ndf=16, n_layers=2, norm='none')
        c.objective.dead_codes = dict(every=25, decay=0.9, threshold=0.1)
        if run == 'digits_tiny':  # For tests/test_vqgan.py (rec_loss 0.578 -> 0.230).
            c.total_steps = 150
            c.lr.base = 2e-3
            c.objective.disc.start_step = 100
    return c
