"""Segmenter on the built-in dense digits (no download): a CPU-sized check of the whole segmentation path.

    python -m vit_jax.main --config=configs/segmenter_digits.py --workdir=workdirs/seg_digits
    python -m vit_jax.main --config=configs/segmenter_digits.py:linear --workdir=workdirs/seg_digits_linear

Digits pasted on 32x32 canvases (11 classes: background + 10 digits; glyph borders ignored). A 2-layer Segmenter
(width 64, 4x4 patches) with the mask-transformer decoder (arg 'mask', default) or the linear decoder ('linear'),
trained from scratch on 20000 canvases with AdamW (`config_utils.dense_digits_recipe`). Separating strokes from the
background takes ~200 steps; which digit a stroke belongs to is learnt only after ~1500 steps (before that the loss
sits at ~0.42, fg/bg right and the digit a guess), hence the step count. tests/test_dense.py runs exactly this
config (evaluating on the first 200 test canvases); the figures it reaches are in the README and the test.
Arg 'tiny' (or 'linear,tiny'): a few steps.
"""

from vit_jax import config_utils


def get_config(arg=None):
    args = set((arg or 'mask').split(','))
    linear = 'linear' in args
    model = dict(name='Seg-T/16' if linear else 'Seg-T-Mask/16', num_classes=11, image_size=32, patch_size=4,
                 hidden_size=64, mlp_dim=128, num_heads=2, num_layers=2, decoder_heads=2, decoder_dropout=0.0,
                 drop_path_rate=0.0, backbone_classes=0)
    return config_utils.dense_digits_recipe(
        model, steps=4000, lr=3e-3, objective=dict(type='segmentation', ignore_label=255),
        evals=dict(type='segmentation'), dont_load=('decoder/.*', 'head/.*'), tiny='tiny' in args)
