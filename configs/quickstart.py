"""Quickstart: a small ViT on the built-in UCI handwritten digits, on the CPU, in a few minutes.

    python -m vit_jax.main --config=configs/quickstart.py --workdir=workdirs/quickstart

The digits (1797 8x8 images shipped with scikit-learn) are fed at their native 8x8; 20% (360 images) are a fixed
test split that training never sees. A 4-layer, 128-wide ViT with 4x4 patches (4 tokens + the class token)
reaches >= 97% test accuracy (see README for the measured figure and time on 2 CPU cores). Random shifts are
left out on purpose: on 8x8 images a 1-pixel shift is a 12% translation and slowed learning several-fold here.
"""

from configs import common
from vit_jax import config_utils


def get_config(arg=None):
    arg = common.parse_arg(arg, tiny=False)
    c = config_utils.base_config()
    c.dataset = 'digits'
    # A ViT-Ti-like model shrunk for 8x8 inputs: 4x4 patches, width 128, 4 layers.
    c.model = dict(name='ViT-Ti/16', num_classes=10, image_size=8, patch_size=4, hidden_size=128, mlp_dim=256,
                   num_heads=4, num_layers=4, classifier='token')
    c.data.train_pp = 'resize'
    c.data.flip = False  # Mirrored digits are other digits.
    c.batch_size = 128
    c.total_steps = 1000
    c.log_every = 100
    c.eval_every = 250
    c.checkpoint_every = 500
    c.optimizer = dict(c.optimizer, name='adamw', weight_decay=0.05, wd_mask='no_bias_norm', grad_clip_norm=1.0)
    c.lr = dict(base=2e-3, warmup_steps=50, decay='cosine', end=1e-5)
    c.objective.label_smoothing = 0.1
    c.evals.val = dict(type='classification', split='test', every=250)
    if arg.tiny:  # For tests: a few steps.
        c.total_steps = 20
        c.log_every = 10
        c.eval_every = 0
        c.checkpoint_every = 10
    return c
