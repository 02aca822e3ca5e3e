"""DPT on the built-in dense digits (no download): relative depth (default) or segmentation, on the CPU.

    python -m vit_jax.main --config=configs/dpt_digits.py --workdir=workdirs/dpt_digits          # depth
    python -m vit_jax.main --config=configs/dpt_digits.py:seg --workdir=workdirs/dpt_digits_seg  # segmentation

32x32 canvases of digits with a synthetic depth map (a receding floor; digits nearer the bigger they are). A
4-layer ViT (width 64, 4x4 patches) with the DPT decoder (hooks on blocks 0-3, reassembled to 1/4 ... 1/32 of the
input, fusion width 32), 600 steps of batch 32 with AdamW; depth is trained with the MiDaS scale-and-shift-invariant
loss + gradient matching in inverse depth, and evaluated after per-image scale-and-shift alignment (the DPT
zero-shot protocol): AbsRel, RMSE, log10, delta < 1.25^k. tests/test_dense.py runs exactly this config (on the
first 200 test canvases); the figures it reaches are in the README (2 shared CPU cores). Arg 'tiny': a few steps.
"""

from vit_jax import config_utils


def get_config(arg=None):
    args = set((arg or 'depth').split(','))
    seg = 'seg' in args
    c = config_utils.base_config()
    c.dataset = 'dense_digits'
    c.model = dict(name='DPT-Base', image_size=32, patch_size=4, hidden_size=64, mlp_dim=128, num_heads=2,
                   num_layers=4, hooks=(0, 1, 2, 3), features=(16, 32, 64, 64), fusion_features=32,
                   backbone_classes=0, head='segmentation' if seg else 'depth', num_classes=11)
    c.data = dict(c.data, train_pp='dense_decode|dense_random_crop', eval_pp='dense_decode|dense_resize', flip=False)
    c.batch_size = 32
    c.total_steps = 600
    c.log_every = 100
    c.eval_every = 300
    c.checkpoint_every = 300
    c.optimizer = dict(c.optimizer, name='adamw', weight_decay=0.01, wd_mask='no_bias_norm', grad_clip_norm=1.0)
    c.lr = dict(base=2e-3, warmup_steps=50, decay='cosine', end=1e-5)
    if seg:
        c.objective = dict(type='segmentation', ignore_label=255)
        c.evals = dict(val=dict(type='segmentation', split='test', every=300))
    else:
        c.objective = dict(type='depth', loss='ssi_mse', alpha=0.5, scales=4, target_space='disparity')
        c.evals = dict(val=dict(type='depth', split='test', every=300, prediction='inverse_depth',
                                align='scale_shift', min_depth=1e-3, max_depth=10.0))
    c.init_from = dict(path=None, dont_load=('neck/.*', 'depth_head/.*', 'seg_head/.*', 'aux_head/.*', 'head/.*'))
    if 'tiny' in args:
        c.total_steps = 10
        c.log_every = 5
        c.eval_every = 0
        c.checkpoint_every = 0
    return c
