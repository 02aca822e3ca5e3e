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

from vit_jax import config_utils

MODELS = {  # registered name and the overrides that shrink it for 8 px digits
    'CCT': ('CCT-7/3x1', dict(hidden_size=64, num_layers=2, num_heads=2, mlp_ratio=2.0)),
    'CVT': ('CVT-7/4', dict(hidden_size=64, num_layers=2, num_heads=2, mlp_ratio=2.0, kernel_size=2)),
    'ViT-Lite': ('ViT-Lite-7/4', dict(hidden_size=64, num_layers=2, num_heads=2, mlp_ratio=2.0, kernel_size=2)),
}


def get_config(arg=None):
    family, *opts = [s.strip() for s in (arg or 'CCT').split(',')]
    if family == 'tiny':  # `quickstart_cct.py:tiny`
        family, opts = 'CCT', ['tiny']
    if family not in MODELS:
        raise ValueError(f'Unknown family {family!r}; choose one of {sorted(MODELS)} (optionally with ",tiny").')
    name, over = MODELS[family]
    c = config_utils.base_config()
    c.dataset = 'digits'
    c.model = dict(name=name, num_classes=10, image_size=8, **over)
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
    if 'tiny' in opts:  # For tests: a narrower model, a short run.
        c.model.hidden_size = 32
        c.batch_size = 64
        c.total_steps = 200
        c.log_every = 50
        c.eval_every = 0
        c.checkpoint_every = 0
        c.tensorboard = False
        c.lr.warmup_steps = 20
        c.evals.val.every = 0
    return c
