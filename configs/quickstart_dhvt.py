"""Quickstart for DHVT: a small DHVT on the built-in UCI digits, on the CPU, in a few minutes.

    python -m vit_jax.main --config=configs/quickstart_dhvt.py --workdir=workdirs/quickstart_dhvt

A 2-layer DHVT-T-CIFAR/2 shrunk to width 64 on the native 8x8 digits with random 1-pixel shifts (SOPE with one
3x3 stride-2 conv + BatchNorm: 4x4 tokens; head-interacted attention with 4 head tokens; DAFF with BatchNorm).
BatchNorm statistics live in the `batch_stats` collection, updated in training and used at evaluation. The recipe
is the paper's family (AdamW, cosine with warm-up, label smoothing 0.1), scaled down; add `:tiny` for the few-step
version the tests run. Figures measured here are in the README (DHVT section).
"""

from configs import common


def get_config(arg=None):
    tiny = common.parse_arg(arg, tiny=False).tiny  # For tests: a narrower model, a short run.
    c = common.digits_recipe(dict(name='DHVT-T-CIFAR/2', image_size=8, hidden_size=64, num_heads=4, num_layers=2,
                                  drop_path_rate=0.0),
                             steps=200 if tiny else 1500, warmup_steps=20 if tiny else 100, tiny=tiny)
    if tiny:
        c.model.hidden_size = 32
    return c
