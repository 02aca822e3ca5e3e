"""Segmenter on Pascal Context (the paper's recipe): `segmenter_pascal_context.py:DATA_ROOT[,VARIANT][,init=PATH]`.

    python -m vit_jax.main --config=configs/segmenter_pascal_context.py:/data/pcontext,L-Mask/16 --workdir=DIR

Pascal Context is not in TFDS: prepare it as DATA_ROOT/{train,val}/images/*.jpg with labels/<stem>.png holding the
60 class ids (background 0 + the 59 classes, as the official code's 60-way head), read with 'dense_folder:'.
Recipe (official code): SGD momentum 0.9, lr 1e-3, poly 0.9 to 1e-5, batch 16, 80k iterations (256 epochs), 480
crops from random rescaling 0.5-2.0 of (520, 520), flip, photometric distortion; evaluation with short side 520 and
480 windows at stride 320. Paper: Seg-L-Mask/16 58.1 / 59.0 mIoU (single / multi-scale). Not reproduced here.
"""

from configs import common
from vit_jax import config_utils


def _is_root(word: str) -> bool:
    return '/' in word and not word.endswith(('/16', '/8'))  # Not a variant such as L-Mask/16.


def get_config(arg=None):
    root = common.OneOf('/path/to/pcontext', _is_root, what='a data root (a path with a /)')
    arg = common.parse_arg(arg, root=root, variant='L-Mask/16', init=None)
    name = arg.variant if arg.variant.startswith('Seg-') else f'Seg-{arg.variant}'
    c = config_utils.base_config()
    c.dataset = f'dense_folder:{arg.root}'
    c.model = dict(name=name, num_classes=60, image_size=480, dropout_rate=0.0, drop_path_rate=0.1,
                   decoder_dropout=0.1)
    c.data = dict(c.data, train_split='train', flip=False, num_classes=60,
                  train_pp='dense_decode|dense_rescale(scale=(520, 520))|dense_random_crop(cat_max_ratio=0.75)|'
                           'dense_flip|photometric',
                  eval_pp='dense_decode|dense_fit', eval_scale=(2048, 520))
    c.batch_size = 16
    c.total_steps = 80_000
    c.log_every = 100
    c.eval_every = 8_000
    c.checkpoint_every = 4_000
    c.optimizer = dict(c.optimizer, name='sgd', momentum=0.9, weight_decay=0.0, grad_clip_norm=0.0)
    c.lr = dict(base=1e-3, warmup_steps=0, decay='poly', power=0.9, end=1e-5)
    c.objective = dict(type='segmentation', ignore_label=255)
    c.evals = dict(val=dict(type='segmentation', split='val', every=8_000, batch_size=8, eval_size=(1040, 1040),
                            window=480, stride=320))
    c.init_from = dict(path=arg.init, dont_load=('decoder/.*', 'head/.*', 'pre_logits/.*'))
    return c
