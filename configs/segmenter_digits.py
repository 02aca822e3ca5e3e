"""Segmenter on the built-in dense digits (no download): a CPU-sized check of the whole segmentation path.

    python -m vit_jax.main --config=configs/segmenter_digits.py:linear --workdir=workdirs/seg_digits_linear
    python -m vit_jax.main --config=configs/segmenter_digits.py --workdir=workdirs/seg_digits  # mask, from ^

Digits pasted on 32x32 canvases (11 classes: background + 10 digits; glyph borders ignored). A 2-layer Segmenter
(width 64, 4x4 patches) with the linear decoder ('linear') or the mask-transformer decoder ('mask', default), on
20000 canvases with AdamW (`common.dense_digits_recipe`).

- 'linear' trains from scratch for 4000 steps. Separating strokes from the background takes ~200 steps; which digit
  a stroke belongs to is learnt only after ~1500 steps (before that the loss sits at ~0.42: fg/bg right, the digit
  a guess), hence the step count.
- 'mask' starts, as in the paper, from a trained ViT backbone: the linear run's (`init_from.path`, decoder not
  loaded), then 600 steps. From a random backbone the mask decoder stayed at the background prior for all 4000
  steps at lr 3e-3 (loss 0.82, mIoU 0.076): its class embeddings start almost identical (trunc-normal 0.02), so the
  LayerNorm over the classes' cosine similarities mostly amplifies noise; at lr 1e-3 it only begins to leave the
  prior after ~500 steps. 'mask,scratch' keeps the random backbone (and the 4000 steps) for that comparison.

tests/test_dense.py runs exactly these configs (evaluating on the first 200 test canvases); the figures are in the
README and the test. Arg 'tiny' (e.g. 'linear,tiny'): a few steps, random init.
"""

from configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, decoder=common.OneOf('mask', ('mask', 'linear')), scratch=False, tiny=False)
    linear = arg.decoder == 'linear'
    model = dict(name='Seg-T/16' if linear else 'Seg-T-Mask/16', num_classes=11, image_size=32, patch_size=4,
                 hidden_size=64, mlp_dim=128, num_heads=2, num_layers=2, decoder_heads=2, decoder_dropout=0.0,
                 drop_path_rate=0.0, backbone_classes=0)
    from_backbone = not linear and not arg.scratch and not arg.tiny
    c = common.dense_digits_recipe(
        model, steps=600 if from_backbone else 4000, lr=3e-3, objective=dict(type='segmentation', ignore_label=255),
        evals=dict(type='segmentation'), dont_load=('decoder/.*', 'head/.*'), tiny=arg.tiny)
    if from_backbone:
        c.init_from.path = 'workdirs/seg_digits_linear'
    return c
