"""Quickstart for Compact Transformers: a small CCT on the built-in UCI digits, on the CPU, in a few minutes.

    python -m vit_jax.main --config=configs/quickstart_cct.py --workdir=workdirs/quickstart_cct
    python -m vit_jax.main --config=configs/quickstart_cct.py:CVT --workdir=workdirs/quickstart_cvt

Arguments: `CCT` (default; a 2-layer CCT-x/3x1: one 3x3 conv + max-pool tokenizer, SeqPool), `CVT` (4x4 patches,
SeqPool) or `ViT-Lite` (4x4 patches, class token); add `,tiny` for the few-step version the tests run.

The digits (1797 8x8 images from scikit-learn, 20% held out as a fixed test split) are used at their native 8x8
(the CCT tokenizer's conv + max-pool gives a 4x4 grid; CVT/ViT-Lite use 2x2 patches), with random 1-pixel shifts.
The model keeps the official encoder layer (norm on the residual stream before the MLP, no q/k/v bias, exact GELU)
and the recipe's optimiser family (AdamW, cosine with warm-up, label smoothing 0.1), scaled down. Figures measured
here are in the README (CCT section).
"""

from configs import common

MODELS = {  # registered name and the overrides that shrink it for 8 px digits
    'CCT': ('CCT-7/3x1', dict(hidden_size=64, num_layers=2, num_heads=2, mlp_ratio=2.0)),
    'CVT': ('CVT-7/4', dict(hidden_size=64, num_layers=2, num_heads=2, mlp_ratio=2.0, kernel_size=2)),
    'ViT-Lite': ('ViT-Lite-7/4', dict(hidden_size=64, num_layers=2, num_heads=2, mlp_ratio=2.0, kernel_size=2)),
}


def get_config(arg=None):
    arg = common.parse_arg(arg, family=common.OneOf('CCT', MODELS), tiny=False)
    name, over = MODELS[arg.family]
    tiny = arg.tiny  # For tests: a narrower model, a short run.
    c = common.digits_recipe(dict(name=name, image_size=8, **over), steps=200 if tiny else 1500,
                             warmup_steps=20 if tiny else 100, tiny=tiny)
    if tiny:
        c.model.hidden_size = 32
    return c
