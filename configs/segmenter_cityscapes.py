"""Segmenter on Cityscapes (the paper's recipe): `configs/segmenter_cityscapes.py:VARIANT[,init=PATH]`.

    python -m vit_jax.main --config=configs/segmenter_cityscapes.py:L-Mask/16,init=/path/ViT-L_16-384.npz --workdir=DIR

Data: TFDS 'cityscapes/semantic_segmentation' (manual download of leftImg8bit + gtFine) as 'cityscapes_seg'
(labelIds mapped to the 19 trainIds, the rest ignored). Recipe (official code): SGD momentum 0.9, lr 1e-2, poly
0.9 to 1e-5, batch 8, 80k iterations (216 epochs), 768 crops from random rescaling 0.5-2.0 of (2048, 1024), flip,
photometric distortion; encoder drop path 0.1; evaluation at full resolution (short side 1024) with 768 windows at
stride 512. Paper: Seg-L-Mask/16 79.1 / 81.3 mIoU (single / multi-scale). Not reproduced here.
"""

from configs import common
from vit_jax import config_utils


def get_config(arg=None):
    arg = common.parse_arg(arg, variant='L-Mask/16', init=None)
    name = arg.variant if arg.variant.startswith('Seg-') else f'Seg-{arg.variant}'
    c = config_utils.base_config()
    c.dataset = 'cityscapes_seg'
    c.model = dict(name=name, num_classes=19, image_size=768, dropout_rate=0.0, drop_path_rate=0.1,
                   decoder_dropout=0.1)
    c.data = dict(c.data, train_split='train', flip=False, shuffle_buffer=3_000,
                  train_pp='dense_decode|dense_rescale(scale=(2048, 1024))|dense_random_crop(cat_max_ratio=0.75)|'
                           'dense_flip|photometric',
                  eval_pp='dense_decode|dense_fit', eval_scale=(2048, 1024))
    c.batch_size = 8
    c.total_steps = 80_000
    c.log_every = 100
    c.eval_every = 8_000
    c.checkpoint_every = 4_000
    c.optimizer = dict(c.optimizer, name='sgd', momentum=0.9, weight_decay=0.0, grad_clip_norm=0.0)
    c.lr = dict(base=1e-2, warmup_steps=0, decay='poly', power=0.9, end=1e-5)
    c.objective = dict(type='segmentation', ignore_label=255)
    c.evals = dict(val=dict(type='segmentation', split='validation', every=8_000, batch_size=2,
                            eval_size=(1024, 2048), window=768, stride=512))
    c.init_from = dict(path=arg.init, dont_load=('decoder/.*', 'head/.*', 'pre_logits/.*'))
    return c
