"""TimeSformer on Kinetics-400: the paper's recipe ("Is Space-Time Attention All You Need for Video Understanding?",
Bertasius et al., ICML 2021; official configs `configs/Kinetics/TimeSformer_divST_*.yaml`).

    python -m vit_jax.main --config=configs/timesformer_k400.py --workdir=workdirs/ts_k400 \\
        --config.init_from.path=imagenet21k+imagenet2012_ViT-B_16-224.npz
    --config=configs/timesformer_k400.py:hr                      TimeSformer-HR: 16 frames x 16 stride at 448
    --config=configs/timesformer_k400.py:l                       TimeSformer-L: 96 frames x 4 stride at 224
    --config=configs/timesformer_k400.py:base,joint_space_time   table 1's schemes (space_only, joint_space_time,
                                                                 divided_space_time, sparse_local_global, axial)

Data: TFDS ships no Kinetics. Prepare a TFDS builder with a `video` feature (tfds.features.Video) and a `label`
ClassLabel (splits train / validation) under the name `kinetics400`, then `config.dataset='video:kinetics400'`
(`config.data.data_dir` where you prepared it). Frames stay encoded until a clip is sampled. The number of steps
assumes `KINETICS_TRAIN_VIDEOS` training videos (copies differ; set `--config.total_steps` for yours).

Recipe (official configs; [code] unless marked): ViT-B/16 backbone initialised from ImageNet-21k + ImageNet-1k ViT-B/16
(each block's temporal attention and norm copied from its spatial ones, the position embedding resized 1-D nearest
for HR as the official loader does: `models.timesformer.init_from_image_vit`, applied by `config.init_from`);
drop-path 0.1; clips of 8 frames 32 apart (HR 16 x 16, L 96 x 4); training: short side jittered in [256, 320]
(HR [448, 512]), random crop 224 (448), horizontal flip; pixels normalised with mean 0.45 / std 0.225
(value_range (-2, 2.444)); SGD momentum 0.9 (Nesterov: SlowFast default [recalled]), weight decay 1e-4, batch 8
(total), learning rate 0.005 for 15 epochs, x0.1 at epochs 11 and 14; test: 1 temporal clip x 3 spatial crops
(left/centre/right of frames scaled to 224), softmax scores averaged (evaluator 'video').

Differences from the official schedule: the trainer's schedules are warm-up + cosine/linear/constant, so the
step decay (x0.1 at epochs 11, 14) is replaced by a cosine decay to 0 over the same 15 epochs.

Figures to expect (paper, K400 top-1 / top-5, 1x3 views): TimeSformer 78.0 / 93.7, TimeSformer-HR 79.7 / 94.4,
TimeSformer-L 80.7 / 94.7; table 1 (K400): space-only 76.9, joint 77.4, divided 78.0, sparse local-global 75.9,
axial 73.5. Not measured here (no Kinetics or accelerators in this environment); the same code path trains end to
end on the built-in moving digits in tests/test_timesformer_train.py.
"""

import ml_collections

from configs import common
from vit_jax import config_utils

KINETICS_TRAIN_VIDEOS = 240_000  # Nominal K400 training set (the original 246k videos; current copies ~230-241k).
EPOCHS = 15

# variant: (registered model, frames, frame stride, crop size, train short-side jitter)
VARIANTS = {
    'base': ('TimeSformer', 8, 32, 224, (256, 320)),
    'hr': ('TimeSformer-HR', 16, 16, 448, (448, 512)),
    'l': ('TimeSformer-L', 96, 4, 224, (256, 320)),
}
ATTENTION_TYPES = ('divided_space_time', 'space_only', 'joint_space_time', 'sparse_local_global', 'axial')


def get_timesformer_config(arg: str | None, *, dataset: str, num_classes: int, train_videos: int,
                           eval_split: str = 'validation', sampling: str = 'stride',
                           flip: bool = True) -> ml_collections.ConfigDict:
    """The TimeSformer fine-tuning recipe for one dataset; `arg` = 'base'|'hr'|'l'[,<attention_type>]."""
    arg = common.parse_arg(arg, variant=common.OneOf('base', VARIANTS),
                           attention=common.OneOf('divided_space_time', ATTENTION_TYPES))
    name, frames, stride, crop, jitter = VARIANTS[arg.variant]
    c = config_utils.base_config()
    c.dataset = dataset
    c.model = dict(name=name, num_classes=num_classes, attention_type=arg.attention, drop_path_rate=0.1)
    sample = 'video_sample' if sampling == 'stride' else 'video_sample_segments'
    c.data = dict(
        c.data,
        num_frames=frames,  # Clip length (= the model's num_frames).
        frame_stride=stride,  # Frames between sampled frames (SlowFast's sampling rate).
        train_short_side=jitter,  # Short-side scale jitter in training.
        test_short_side=crop,  # Test: frames scaled to the crop size, then 3 crops along the long side.
        train_pp=f'{sample}|video_resize_small|video_random_crop' + ('|video_flip' if flip else ''),
        eval_pp=f'{sample}|video_resize_small|video_central_crop',  # Single view (the 'video' evaluator: 1x3).
        value_range=(-0.45 / 0.225, 0.55 / 0.225),  # (x/255 - 0.45) / 0.225, SlowFast's normalisation.
        flip=False,  # The image `flip` op would flip frames independently; video_flip is in train_pp.
        shuffle_buffer=1_000,
    )
    c.batch_size = 8
    steps_per_epoch = train_videos // c.batch_size
    c.total_steps = EPOCHS * steps_per_epoch
    c.log_every = 100
    c.eval_every = steps_per_epoch
    c.checkpoint_every = 5_000
    c.optimizer = dict(c.optimizer, name='sgd', momentum=0.9, nesterov=True, weight_decay=1e-4,
                       wd_mask='no_bias_norm', grad_clip_norm=0.0)
    c.lr = dict(base=0.005, warmup_steps=0, decay='cosine', end=0.0)
    c.objective = dict(type='classification', label_smoothing=0.0, loss='softmax')
    c.evals = dict(val=dict(type='video', split=eval_split, temporal_views=1, spatial_crops=3,
                            every=steps_per_epoch, batch_size=8))
    c.init_from = dict(path=None, dont_load=('head/.*', 'pre_logits/.*'))
    return c


def get_config(arg=None):
    return get_timesformer_config(arg, dataset='video:kinetics400', num_classes=400,
                                  train_videos=KINETICS_TRAIN_VIDEOS)
