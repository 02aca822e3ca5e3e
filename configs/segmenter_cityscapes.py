"""Segmenter on Cityscapes (the paper's recipe): `configs/segmenter_cityscapes.py:VARIANT[,init=PATH]`.

    python -m vit_jax.main --config=configs/segmenter_cityscapes.py:L-Mask/16,init=/path/ViT-L_16-384.npz --workdir=DIR

Data: TFDS 'cityscapes/semantic_segmentation' (manual download of leftImg8bit + gtFine) as 'cityscapes_seg'
(labelIds mapped to the 19 trainIds, the rest ignored). Recipe (official code): SGD momentum 0.9, lr 1e-2, poly
0.9 to 1e-5, batch 8, 80k iterations (216 epochs), 768 crops from random rescaling 0.5-2.0 of (2048, 1024), flip,
photometric distortion; encoder drop path 0.1; evaluation at full resolution (short side 1024) with 768 windows at
stride 512. Paper: Seg-L-Mask/16 79.1 / 81.3 mIoU (single / multi-scale). Not reproduced here.
"""

from configs import common, segmenter_ade20k


def get_config(arg=None):
    arg = common.parse_arg(arg, variant='L-Mask/16', init=None)
    return segmenter_ade20k.segmenter_recipe(
        arg.variant, dataset='cityscapes_seg', num_classes=19, crop=768, scale=(2048, 1024), batch_size=8,
        steps=80_000, lr=1e-2, eval_every=8_000, init=arg.init,
        data=dict(shuffle_buffer=3_000, eval_scale=(2048, 1024)),
        evals=dict(split='validation', batch_size=2, eval_size=(1024, 2048), window=768, stride=512))
