"""Segmenter on Pascal Context (the paper's recipe): `segmenter_pascal_context.py:DATA_ROOT[,VARIANT][,init=PATH]`.

    python -m vit_jax.main --config=configs/segmenter_pascal_context.py:/data/pcontext,L-Mask/16 --workdir=DIR

Pascal Context is not in TFDS: prepare it as DATA_ROOT/{train,val}/images/*.jpg with labels/<stem>.png holding the
60 class ids (background 0 + the 59 classes, as the official code's 60-way head), read with 'dense_folder:'.
Recipe (official code): SGD momentum 0.9, lr 1e-3, poly 0.9 to 1e-5, batch 16, 80k iterations (256 epochs), 480
crops from random rescaling 0.5-2.0 of (520, 520), flip, photometric distortion; evaluation with short side 520 and
480 windows at stride 320. Paper: Seg-L-Mask/16 58.1 / 59.0 mIoU (single / multi-scale). Not reproduced here.
"""

from configs import common, segmenter_ade20k


def _is_root(word: str) -> bool:
    return '/' in word and not word.endswith(('/16', '/8'))  # Not a variant such as L-Mask/16.


def get_config(arg=None):
    root = common.OneOf('/path/to/pcontext', _is_root, what='a data root (a path with a /)')
    arg = common.parse_arg(arg, root=root, variant='L-Mask/16', init=None)
    return segmenter_ade20k.segmenter_recipe(
        arg.variant, dataset=f'dense_folder:{arg.root}', num_classes=60, crop=480, scale=(520, 520), batch_size=16,
        steps=80_000, lr=1e-3, eval_every=8_000, init=arg.init, data=dict(num_classes=60, eval_scale=(2048, 520)),
        evals=dict(split='val', batch_size=8, eval_size=(1040, 1040), window=480, stride=320))
