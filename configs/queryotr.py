"""QueryOTR (Yao, Gao et al., ECCV 2022): 128 -> 192 outpainting (2.25x) on Scenery, Building facades or WikiArt.

    # Your copy of the data as ROOT/train/*.jpg and ROOT/test/*.jpg (any subfolders):
    python -m vit_jax.main --config=configs/queryotr.py:scenery --workdir=workdirs/queryotr_scenery \\
        --config.dataset=flat_folder:/data/scenery
    python -m vit_jax.tools.outpaint_grid --workdir=workdirs/queryotr_scenery --num=16

Arguments: 'scenery' (default), 'building', 'wikiart'. The official recipe (Kaiseem/QueryOTR): ViT-B/16 encoder
(initialised from an MAE ViT-B: `pretrain_mae_vit_base_mask_0.75_400e.pth` of MAE-pytorch, converted with
`python -m vit_jax.convert --from=official:queryotr --model=QueryOTR --partial IN.pth --out mae_vitb.npz`, then
--config.init_from.path=mae_vitb.npz with the init_from.dont_load it prints), 8 QEM blocks,
4 decoder blocks; 300 epochs of batch 64; Adam betas (0, 0.99), coupled weight decay 1e-4, lr 1e-4 for both
networks (the offset convs 1e-5), constant after a linear warm-up over the first 10 epochs that is updated once per
epoch; those 10 epochs train the generator on the reconstruction loss only; then every step one discriminator step
and one generator step with 5 rec + 1 adv + 10 perceptual (VGG19). Training crops: RandomResizedCrop(192) and a
flip; test: Resize(192, 192); the input is the central 128x128.

Steps per epoch are ceil(train images / 64): the sizes below are the README's approximate split sizes (Scenery
~5,000 train of ~6,000; Building ~16,000; WikiArt genre split 45,503); set --config.total_steps and the epoch-based
keys (lr.warmup_steps, objective.warmup_steps, objective.lr_staircase_steps) for your copy.

Normalisation: the encoder sees ImageNet mean/std; the generator predicts pixels normalised by one scalar
mean/std per dataset (`model.output_mean/output_std`, the official --patch_mean/--patch_std). Only Scenery's values
are published (0.5044838, 0.1355051); for Building and WikiArt compute yours with
`vit_jax.data.outpainting.pixel_stats('flat_folder:/data/building')` and pass them as --config.model.output_mean /
output_std (the configs default to Scenery's).

External weights (see vit_jax/porting/{vgg,inception}.py): the VGG19 perceptual net (torchvision ImageNet weights ->
objective.perceptual.weights: `python -m vit_jax.convert --from=official:vgg --model=VGG19 --model.num_classes=0
vgg19-dcbb9e9d.pth --out vgg19.npz`) and pytorch-fid's Inception (`python -m vit_jax.convert --from=official:inception
--model=InceptionV3-FID pt_inception-2015-12-05-6726825d.pth --out inception.npz` -> evals.val.inception.weights).
Without them the run works with frozen random stand-ins and reports
perceptual_loss_random_features / fid_random_features / is_random_features, never the paper's metrics.

Published: the released Scenery checkpoint gives FID 20.38, IS 3.959 (README). Not reproduced here (no GPU time,
no data, no external weights in this environment).
"""

import math

from configs import common
from vit_jax import config_utils
from vit_jax.data.outpainting import OUTPAINT_EVAL_PP, OUTPAINT_TRAIN_PP
from vit_jax.models.queryotr import SCENERY_MEAN, SCENERY_STD

DATASETS = {  # name: approximate number of training images (README).
    'scenery': 5_000,
    'building': 16_000,
    'wikiart': 45_503,
}
EPOCHS = 300
WARMUP_EPOCHS = 10
BATCH = 64


def get_config(arg=None):
    dataset = common.parse_arg(arg, dataset=common.OneOf('scenery', DATASETS)).dataset
    steps_per_epoch = math.ceil(DATASETS[dataset] / BATCH)
    c = config_utils.base_config()
    c.dataset = f'flat_folder:data/{dataset}'  # Override with --config.dataset=flat_folder:/path (or a TFDS name).
    c.model = dict(name='QueryOTR', output_mean=SCENERY_MEAN, output_std=SCENERY_STD)
    c.data.train_pp = OUTPAINT_TRAIN_PP  # RandomResizedCrop(192) + flip, then the central 128 as input.
    c.data.eval_pp = OUTPAINT_EVAL_PP  # Resize(192, 192), central 128.
    c.data.value_range = (0.0, 1.0)  # ToTensor; the model normalises internally.
    c.data.outpaint_scale = 1.5  # 128 -> 192.
    c.batch_size = BATCH
    c.total_steps = EPOCHS * steps_per_epoch
    c.log_every = 50
    c.eval_every = 10 * steps_per_epoch
    c.checkpoint_every = 10 * steps_per_epoch
    c.optimizer = dict(c.optimizer, name='adam', b1=0.0, b2=0.99, eps=1e-8, weight_decay=1e-4, wd_mask='all',
                       grad_clip_norm=0.0)  # torch.optim.Adam(betas=(0, 0.99), weight_decay=1e-4).
    c.lr = dict(base=1e-4, warmup_steps=WARMUP_EPOCHS * steps_per_epoch, decay='constant', end=1e-4)
    c.objective = dict(
        type='outpainting', rec_weight=5.0, adv_weight=1.0, perc_weight=10.0, rec_loss='mse',
        warmup_steps=WARMUP_EPOCHS * steps_per_epoch,  # Epochs 0-9: generator, reconstruction loss only.
        lr_staircase_steps=steps_per_epoch,  # The official lr is set once per epoch.
        diffaug='color,translation,cutout', offset_lr_mult=0.1, lr_mult_pattern='conv_offset_mask',
        disc=dict(num_scales=2, ndf=64, n_layers=4, spectral_norm=True, instance_norm=True),
        perceptual=dict(model='VGG19', overrides=dict(num_classes=0), weights=None,
                        layers=('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1'),
                        layer_weights=(1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)),
    )
    c.evals = dict(val=dict(type='outpainting', split='test', every=c.eval_every, batch_size=64, grid=16,
                            inception=dict(kind='inception', weights=None, variant='fid', resize=299,
                                           unbiased_logits=True, is_splits=10)))
    # MAE-pretrained encoder (converted .npz, see the docstring); the rest starts fresh.
    c.init_from = dict(path=None, dont_load=('qem/.*', 'decoder_.*', 'psm/.*'))
    return c
