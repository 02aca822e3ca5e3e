"""T2T-ViT_t-24: the T2T-ViT recipes of configs/t2t_vit_14.py for this size (arguments, figures: see there).

    python -m vit_jax.main --config=configs/t2t_vit_t_24.py[:imagenet384|cifar10|cifar100|digits] --workdir=DIR
"""

from configs import t2t_vit_14


def get_config(arg=None):
    return t2t_vit_14.get_t2t_config('T2T-ViT_t-24', arg)
