"""Quickstart for DHVT: a small DHVT on the built-in UCI digits, on the CPU, in a few minutes.

    python -m vit_jax.main --config=configs/quickstart_dhvt.py --workdir=workdirs/quickstart_dhvt

A 2-layer DHVT-T-CIFAR/2 shrunk to width 64 on the native 8x8 digits with random 1-pixel shifts (SOPE with one
3x3 stride-2 conv + BatchNorm: 4x4 tokens; head-interacted attention with 4 head tokens; DAFF with BatchNorm).
BatchNorm statistics live in the `batch_stats` collection, updated in training and used at evaluation. The recipe
is the paper's family (AdamW, cosine with warm-up, label smoothing 0.1), scaled down; add `:tiny` for the few-step
version the tests run. Figures measured here are in the README (DHVT section).
"""

from vit_jax import config_utils


def get_config(arg=None):
    c = config_utils.base_config()
    c.dataset = 'digits'
    c.model = dict(name='DHVT-T-CIFAR/2', num_classes=10, image_size=8, hidden_size=64, num_heads=4, num_layers=2,
                   drop_path_rate=0.0)
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
    if arg == 'tiny':  # For tests: a narrower model, a short run.
        c.model.hidden_size = 32
        c.batch_size = 64
        c.total_steps = 200
        c.log_every = 50
        c.eval_every = 0
        c.checkpoint_every = 0
        c.tensorboard = False
        c.lr.warmup_steps = 20
        c.evals.val.every = 0
    elif arg:
        raise ValueError(f'Unknown argument {arg!r}; the only one is "tiny".')
    return c
