"""CrossViT-B: the CrossViT recipes of configs/crossvit_s.py for this size (arguments, figures: see there).

    python -m vit_jax.main --config=configs/crossvit_b.py[:imagenet384|cifar10|cifar100|digits] --workdir=DIR
"""

from configs import crossvit_s


def get_config(arg=None):
    return crossvit_s.get_crossvit_config('CrossViT-B', arg)
