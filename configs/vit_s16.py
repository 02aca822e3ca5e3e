"""Fine-tuning ViT-S/16 from a pretrained checkpoint with the ViT paper's transfer recipe (see configs/vit_b16.py).

    python -m vit_jax.main --config=configs/vit_s16.py:cifar10 --workdir=workdirs/vit_s16_cifar10 \\
        --config.init_from.path=ViT-S_16.npz

Same arguments (cifar10, cifar100, oxford_iiit_pet, oxford_flowers102, imagenet2012, folder:/path, each optionally
with ,hp), steps, learning-rate grid and schedule as configs/vit_b16.py. Figures to expect: AugReg ViT-S/16
(ImageNet-21k, fine-tuned on ImageNet at 384; release README): 83.73 top-1. Not measured here.
"""

from configs import vit_b16


def get_config(arg: str = 'cifar10'):
    return vit_b16.get_transfer_config('ViT-S/16', arg)
