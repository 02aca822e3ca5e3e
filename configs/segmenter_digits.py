"""Segmenter on the built-in dense digits (no download): a CPU-sized check of the whole segmentation path.

    python -m vit_jax.main --config=configs/segmenter_digits.py --workdir=workdirs/seg_digits
    python -m vit_jax.main --config=configs/segmenter_digits.py:linear --workdir=workdirs/seg_digits_linear

Digits pasted on 32x32 canvases (11 classes: background + 10 digits; glyph borders ignored). A 2-layer Segmenter
(width 64, 4x4 patches) with the mask-transformer decoder (arg 'mask', default) or the linear decoder ('linear'),
600 steps of batch 32 with AdamW. tests/test_dense.py runs exactly this config (evaluating on the first 200 test
canvases); the figures it reaches are in the README (measured on 2 shared CPU cores). Identifying the digit of
every pixel takes far more steps than separating digits from the background, so the mIoU of such a short run is
modest; raise total_steps / the model size for better figures. Arg 'tiny' (or 'linear,tiny'): a few steps.
"""

from vit_jax import config_utils


def get_config(arg=None):
    args = set((arg or 'mask').split(','))
    decoder = 'linear' if 'linear' in args else 'mask_transformer'
    c = config_utils.base_config()
    c.dataset = 'dense_digits'
    c.model = dict(name='Seg-T-Mask/16' if decoder != 'linear' else 'Seg-T/16', num_classes=11, image_size=32,
                   patch_size=4, hidden_size=64, mlp_dim=128, num_heads=2, num_layers=2, decoder_heads=2,
                   decoder_dropout=0.0, drop_path_rate=0.0, backbone_classes=0)
    c.data = dict(c.data, train_pp='dense_decode|dense_random_crop', eval_pp='dense_decode|dense_resize', flip=False)
    c.batch_size = 32
    c.total_steps = 600
    c.log_every = 100
    c.eval_every = 300
    c.checkpoint_every = 300
    c.optimizer = dict(c.optimizer, name='adamw', weight_decay=0.01, wd_mask='no_bias_norm', grad_clip_norm=1.0)
    c.lr = dict(base=3e-3, warmup_steps=50, decay='cosine', end=1e-5)
    c.objective = dict(type='segmentation', ignore_label=255)
    c.evals = dict(val=dict(type='segmentation', split='test', every=300))
    c.init_from = dict(path=None, dont_load=('decoder/.*', 'head/.*'))
    if 'tiny' in args:
        c.total_steps = 10
        c.log_every = 5
        c.eval_every = 0
        c.checkpoint_every = 0
    return c
