"""CvT-21: the CvT-13 recipes (configs/cvt_13.py) with weight decay 0.1 for ImageNet-1k.

    python -m vit_jax.main --config=configs/cvt_21.py[:imagenet384|cifar10|cifar100|digits] --workdir=DIR

Figures to expect (paper): 82.5 top-1 at 224, 83.3 after 384 fine-tuning; CIFAR-10 / CIFAR-100 after ImageNet-22k
pre-training 99.16 / 92.88. Not measured here.
"""

from configs import cvt_13


def get_config(arg=None):
    return cvt_13.get_cvt_config('CvT-21', arg)
