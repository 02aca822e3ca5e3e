"""TimeSformer on Kinetics-600: the Kinetics-400 recipe (configs/timesformer_k400.py) with a 600-way head.

    python -m vit_jax.main --config=configs/timesformer_k600.py[:hr|:l] --workdir=workdirs/ts_k600 \\
        --config.init_from.path=imagenet21k+imagenet2012_ViT-B_16-224.npz

Data: a TFDS builder `kinetics600` you prepared (`video` Video feature, `label` ClassLabel; TFDS ships none).
Figures to expect (paper / official README, K600 top-1 / top-5, 1x3 views): TimeSformer 79.1 / 94.4,
TimeSformer-HR 81.8 / 95.8, TimeSformer-L 82.2 / 95.6. Not measured here.
"""

from configs import timesformer_k400

KINETICS600_TRAIN_VIDEOS = 390_000  # Nominal K600 training set (~392k videos originally; copies differ).


def get_config(arg=None):
    return timesformer_k400.get_timesformer_config(arg, dataset='video:kinetics600', num_classes=600,
                                                   train_videos=KINETICS600_TRAIN_VIDEOS)
