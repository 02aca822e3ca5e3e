"""CrossViT-15-dagger, 3-conv embedding: the CrossViT recipes of configs/crossvit_s.py (arguments, figures: there).

    python -m vit_jax.main --config=configs/crossvit_15_dagger.py[:imagenet384|cifar10|cifar100|digits] --workdir=DIR
"""

from configs import crossvit_s


def get_config(arg=None):
    return crossvit_s.get_crossvit_config('CrossViT-15\u2020', arg)
