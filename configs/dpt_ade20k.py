"""DPT for semantic segmentation on ADE20K: `configs/dpt_ade20k.py[:VARIANT][,init=PATH]` (default DPT-Hybrid).

    python -m vit_jax.main --config=configs/dpt_ade20k.py:Hybrid,init=/path/R50+ViT-B_16.npz --workdir=DIR

Data: TFDS 'scene_parse150' (150 classes). The segmentation head with BatchNorm in every fusion unit; 480x480
crops from random rescaling 0.5-2.0, flip and photometric distortion; SGD momentum 0.9 with polynomial decay
(power 0.9), batch 48, 240 epochs (~101k steps), lr 2e-3 (the spec marks batch, epochs and lr as recalled, not
verified); cross-entropy plus the auxiliary head's loss at weight 0.4 (HuggingFace / mmseg; the official inference
code builds that head but never uses it). Evaluation at 480 (short side) with 480 windows at stride 320.
Paper (ADE20K val): DPT-Hybrid 49.02 mIoU / 83.11 pixel accuracy; DPT-Large 47.63 / 82.70. Not reproduced here.
"""

from configs import common
from vit_jax import config_utils


def get_config(arg=None):
    arg = common.parse_arg(arg, variant='Hybrid', init=None)
    c = config_utils.base_config()
    c.dataset = 'scene_parse150'
    c.model = dict(name=f'DPT-{arg.variant}', image_size=480, head='segmentation', num_classes=150, aux_head=True,
                   backbone_classes=0)
    if arg.variant == 'Hybrid' and arg.init:
        c.model.resnet_variant = 'release'
    c.data = dict(c.data, train_split='train', flip=False, shuffle_buffer=5_000,
                  train_pp='dense_decode|dense_rescale(scale=(1920, 480))|dense_random_crop(cat_max_ratio=0.75)|'
                           'dense_flip|photometric',
                  eval_pp='dense_decode|dense_fit', eval_scale=(1920, 480))
    c.batch_size = 48
    c.total_steps = 101_000
    c.log_every = 100
    c.eval_every = 10_000
    c.checkpoint_every = 5_000
    c.optimizer = dict(c.optimizer, name='sgd', momentum=0.9, weight_decay=1e-4, wd_mask='no_bias_norm',
                       grad_clip_norm=0.0)
    c.lr = dict(base=2e-3, warmup_steps=0, decay='poly', power=0.9, end=0.0)
    c.objective = dict(type='segmentation', ignore_label=255, aux_weight=0.4)
    c.evals = dict(val=dict(type='segmentation', split='test', every=10_000, batch_size=8, eval_size=(960, 960),
                            window=480, stride=320))
    c.init_from = dict(path=arg.init, dont_load=('neck/.*', 'seg_head/.*', 'aux_head/.*', 'head/.*',
                                                'pre_logits/.*'))
    return c
