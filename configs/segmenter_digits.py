"""Segmenter on the built-in dense digits (no download): a CPU-sized check of the whole segmentation path.

    python -m vit_jax.main --config=configs/segmenter_digits.py --workdir=workdirs/seg_digits
    python -m vit_jax.main --config=configs/segmenter_digits.py:linear --workdir=workdirs/seg_digits_linear

Digits pasted on 32x32 canvases (11 classes: background + 10 digits; glyph borders ignored). A 4-layer Segmenter
(width 96, 4x4 patches) with the mask-transformer decoder (arg 'mask', default) or the linear decoder ('linear').
With the default 1500 steps (batch 64) it reaches about 0.85 test mIoU on 2 CPU cores in roughly 10 minutes (see
the README for the measured figures); tests/test_dense.py trains a smaller one for 300 steps.
Arg 'tiny' (or 'linear,tiny'): a few steps, for smoke tests.
"""

from vit_jax import config_utils


def get_config(arg=None):
    args = set((arg or 'mask').split(','))
    decoder = 'linear' if 'linear' in args else 'mask_transformer'
    c = config_utils.base_config()
    c.dataset = 'dense_digits'
    c.model = dict(name='Seg-T-Mask/16' if decoder != 'linear' else 'Seg-T/16', num_classes=11, image_size=32,
                   patch_size=4, hidden_size=96, mlp_dim=192, num_heads=3, num_layers=4, decoder_heads=3,
                   decoder_dropout=0.0, drop_path_rate=0.0, backbone_classes=0)
    c.data = dict(c.data, train_pp='dense_decode|dense_random_crop', eval_pp='dense_decode|dense_resize', flip=False)
    c.batch_size = 64
    c.total_steps = 1500
    c.log_every = 100
    c.eval_every = 500
    c.checkpoint_every = 500
    c.optimizer = dict(c.optimizer, name='adamw', weight_decay=0.01, wd_mask='no_bias_norm', grad_clip_norm=1.0)
    c.lr = dict(base=2e-3, warmup_steps=100, decay='cosine', end=1e-5)
    c.objective = dict(type='segmentation', ignore_label=255)
    c.evals = dict(val=dict(type='segmentation', split='test', every=500))
    c.init_from = dict(path=None, dont_load=('decoder/.*', 'head/.*'))
    if 'tiny' in args:
        c.total_steps = 10
        c.log_every = 5
        c.eval_every = 0
        c.checkpoint_every = 0
    return c
