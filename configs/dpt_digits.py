"""DPT on the built-in dense digits (no download): relative depth (default) or segmentation, on the CPU.

    python -m vit_jax.main --config=configs/dpt_digits.py --workdir=workdirs/dpt_digits          # depth
    python -m vit_jax.main --config=configs/dpt_digits.py:seg --workdir=workdirs/dpt_digits_seg  # segmentation

32x32 canvases of digits with a synthetic depth map (a receding floor; digits nearer the bigger they are). A
4-layer ViT (width 64, 4x4 patches) with the DPT decoder (hooks on blocks 0-3, reassembled to 1/4 ... 1/32 of the
input, fusion width 32), trained from scratch on 20000 canvases with AdamW (`common.dense_digits_recipe`);
depth is trained with the MiDaS scale-and-shift-invariant loss + gradient matching in inverse depth, and evaluated
after per-image scale-and-shift alignment (the DPT zero-shot protocol): AbsRel, RMSE, log10, delta < 1.25^k.

One departure from DPT: the depth head's final ReLU is off (`non_negative=False`). With a randomly initialised
backbone it pushed every output below zero within ~100 steps, after which no gradient flowed (the official model
starts from a pretrained backbone); the scale-and-shift-invariant loss does not need a non-negative output.
tests/test_dense.py runs exactly this config (on the first 200 test canvases); the figures it reaches are in the
README and the test. Arg 'tiny': a few steps.
"""

from configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, task=common.OneOf('depth', ('depth', 'seg')), tiny=False)
    seg = arg.task == 'seg'
    model = dict(name='DPT-Base', image_size=32, patch_size=4, hidden_size=64, mlp_dim=128, num_heads=2,
                 num_layers=4, hooks=(0, 1, 2, 3), features=(16, 32, 64, 64), fusion_features=32,
                 backbone_classes=0, head='segmentation' if seg else 'depth', num_classes=11, non_negative=False)
    if seg:
        objective = dict(type='segmentation', ignore_label=255)
        evals = dict(type='segmentation')
    else:
        objective = dict(type='depth', loss='ssi_mse', alpha=0.5, scales=4, target_space='disparity')
        evals = dict(type='depth', prediction='inverse_depth', align='scale_shift', min_depth=1e-3, max_depth=10.0)
    return common.dense_digits_recipe(
        model, steps=1500, lr=2e-3, objective=objective, evals=evals,
        dont_load=('neck/.*', 'depth_head/.*', 'seg_head/.*', 'aux_head/.*', 'head/.*'), tiny=arg.tiny)
