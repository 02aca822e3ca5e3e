"""Quickstart: a small ViT on the built-in UCI handwritten digits, on the CPU, in a few minutes.

    python -m vit_jax.main --config=configs/quickstart.py --workdir=workdirs/quickstart

The digits (1797 8x8 images shipped with scikit-learn) are upsampled to 16x16; 20% are a fixed test split that
training never sees. A 4-layer ViT with 2x2 patches reaches >= 97% test accuracy (see README for the measured
figure and time on 2 CPU cores).
"""

from vit_jax import config_utils


def get_config(arg=None):
    c = config_utils.base_config()
    c.dataset = 'digits'
    # A ViT-Ti-like model shrunk for 16x16 inputs: 2x2 patches (64 tokens), width 128, 4 layers.
    c.model = dict(name='ViT-Ti/16', num_classes=10, image_size=16, patch_size=2, hidden_size=128, mlp_dim=256,
                   num_heads=4, num_layers=4, classifier='token')
    c.data.train_pp = 'random_shift'
    c.data.flip = False  # Mirrored digits are other digits.
    c.batch_size = 128
    c.total_steps = 1500
    c.log_every = 100
    c.eval_every = 500
    c.checkpoint_every = 500
    c.optimizer = dict(c.optimizer, name='adamw', weight_decay=0.05, wd_mask='no_bias_norm', grad_clip_norm=1.0)
    c.lr = dict(base=2e-3, warmup_steps=100, decay='cosine', end=1e-5)
    c.objective.label_smoothing = 0.1
    c.evals.val = dict(type='classification', split='test', every=500)
    if arg == 'tiny':  # For tests: a few steps.
        c.total_steps = 20
        c.log_every = 10
        c.eval_every = 0
        c.checkpoint_every = 10
    return c
