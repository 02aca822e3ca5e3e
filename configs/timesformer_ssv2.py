"""TimeSformer on Something-Something-v2 (174 classes): the Kinetics recipe with SSv2's frame sampling.

    python -m vit_jax.main --config=configs/timesformer_ssv2.py[:hr|:l|:base,joint_space_time] \\
        --workdir=workdirs/ts_ssv2 --config.init_from.path=imagenet21k+imagenet2012_ViT-B_16-224.npz

Data: a TFDS builder `something_something_v2` you prepared (`video` Video feature, `label` ClassLabel, splits train
/ validation; TFDS ships none), used as 'video:something_something_v2'.

Differences from Kinetics (SlowFast's SSv2 loader): frames are sampled one per equal segment of the whole video
(random within the segment in training, its middle in test: op `video_sample_segments`), not with a fixed stride;
no horizontal flip (SSv2 has left/right classes such as "pushing something from left to right") [recalled: the
official yaml was not re-read]. TimeSformer-L on SSv2 uses 64 frames (`--config.model.num_frames=64
--config.data.num_frames=64`). Parameter counts of table 1 are for this 174-way head: 85.9M (space, joint),
121.4M (divided, sparse local-global), 156.8M (axial) - tests/test_timesformer.py pins them.

Figures to expect (paper, SSv2 top-1): TimeSformer 59.5, TimeSformer-HR 62.2, TimeSformer-L 62.3 [PWC; HR recalled];
table 1 (SSv2): space-only 36.6, joint 58.5, divided 59.5, sparse local-global 56.3, axial 56.2. Not measured here.
"""

from configs import timesformer_k400

SSV2_TRAIN_VIDEOS = 168_913  # SSv2 training videos.


def get_config(arg=None):
    return timesformer_k400.get_timesformer_config(arg, dataset='video:something_something_v2', num_classes=174,
                                                   train_videos=SSV2_TRAIN_VIDEOS, sampling='segments', flip=False)
