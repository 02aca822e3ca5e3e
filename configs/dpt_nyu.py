"""DPT fine-tuned for depth on NYU depth v2: `configs/dpt_nyu.py[:VARIANT][,init=PATH]` (default DPT-Hybrid).

    python -m vit_jax.main --config=configs/dpt_nyu.py:Hybrid,init=/path/R50+ViT-B_16.npz --workdir=DIR

Data: TFDS 'nyu_depth_v2' (47584 train / 654 validation frames at 480x640, depth in metres). The model sees whole
480x640 frames (a multiple of 32) and predicts relative inverse depth trained with the MiDaS scale- and
shift-invariant loss + gradient matching (alpha 0.5, 4 scales) in disparity; Adam with the backbone at 1/10 of the
decoder's learning rate (1e-5 / 1e-4, the paper's monodepth setting). Evaluation: the Eigen crop, depth capped at
10 m, per-image least-squares scale and shift in inverse depth (the zero-shot protocol); the released NYU model
instead maps its output to metric depth with fixed scale 3.05e-4 and shift 0.1378 (set model.depth_scale /
depth_shift and evals.val.prediction='depth', align='none' to evaluate such a model).
The paper (fine-tuned DPT-Hybrid on NYUv2): AbsRel 0.110, RMSE 0.357, log10 0.045, delta1 0.904, delta2 0.988,
delta3 0.998. The fine-tuning schedule is not given in the spec (batch, epochs and augmentation here are this
repository's choice: unverified); not reproduced here (no data or accelerators in this environment).
init=PATH: an R50+ViT-B/16 (Hybrid) or ViT-B/16 / ViT-L/16 checkpoint of the ViT release (its BiT epsilons:
resnet_variant='release' is set when initialising from it).
"""

from configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, variant='Hybrid', init=None)
    return common.dpt_depth_finetune(
        arg.variant, init=arg.init, dataset='nyu_depth_v2', image_size=(480, 640),
        data=dict(train_split='train', flip=False, shuffle_buffer=5_000, value_range=(-1.0, 1.0),
                  train_pp='dense_decode|dense_rescale(scale=(853, 480), ratio=(1.0, 1.5))|'
                           'dense_random_crop(cat_max_ratio=1.0)|dense_flip|photometric',
                  eval_pp='dense_decode|dense_resize'),
        batch_size=16, steps=60_000, max_depth=10.0, evals=dict(split='validation', batch_size=8, crop='eigen_nyu'))
