"""DPT on the built-in dense digits (no download): relative depth (default) or segmentation, on the CPU.

    python -m vit_jax.main --config=configs/dpt_digits.py --workdir=workdirs/dpt_digits          # depth
    python -m vit_jax.main --config=configs/dpt_digits.py:seg --workdir=workdirs/dpt_digits_seg  # segmentation

32x32 canvases of digits with a synthetic depth map (a receding floor, digits nearer the bigger they are). A
4-layer ViT (width 96, 4x4 patches) with the DPT decoder (hooks 0-3, fusion width 32) trained with the MiDaS
scale-and-shift-invariant loss + gradient matching; the evaluator aligns scale and shift per image in inverse
depth (as the DPT zero-shot protocol) and reports AbsRel / RMSE / log10 / delta < 1.25^k. With the default 1500
steps (batch 64) it reaches about AbsRel 0.05 and delta1 0.97 on 2 CPU cores (see the README for the measured
figures); tests/test_dense.py trains a smaller one for 300 steps. Arg 'tiny': a few steps for smoke tests.
"""

from vit_jax import config_utils


def get_config(arg=None):
    args = set((arg or 'depth').split(','))
    seg = 'seg' in args
    c = config_utils.base_config()
    c.dataset = 'dense_digits'
    c.model = dict(name='DPT-Base', image_size=32, patch_size=4, hidden_size=96, mlp_dim=192, num_heads=3,
                   num_layers=4, hooks=(0, 1, 2, 3), features=(24, 48, 96, 96), fusion_features=32,
                   backbone_classes=0, head='segmentation' if seg else 'depth', num_classes=11)
    c.data = dict(c.data, train_pp='dense_decode|dense_random_crop', eval_pp='dense_decode|dense_resize', flip=False)
    c.batch_size = 64
    c.total_steps = 1500
    c.log_every = 100
    c.eval_every = 500
    c.checkpoint_every = 500
    c.optimizer = dict(c.optimizer, name='adamw', weight_decay=0.01, wd_mask='no_bias_norm', grad_clip_norm=1.0)
    c.lr = dict(base=1e-3, warmup_steps=100, decay='cosine', end=1e-5)
    if seg:
        c.objective = dict(type='segmentation', ignore_label=255)
        c.evals = dict(val=dict(type='segmentation', split='test', every=500))
    else:
        c.objective = dict(type='depth', loss='ssi_mse', alpha=0.5, scales=4, target_space='disparity')
        c.evals = dict(val=dict(type='depth', split='test', every=500, prediction='inverse_depth',
                                align='scale_shift', min_depth=1e-3, max_depth=10.0))
    c.init_from = dict(path=None, dont_load=('neck/.*', 'depth_head/.*', 'seg_head/.*', 'aux_head/.*', 'head/.*'))
    if 'tiny' in args:
        c.total_steps = 10
        c.log_every = 5
        c.eval_every = 0
        c.checkpoint_every = 0
    return c
