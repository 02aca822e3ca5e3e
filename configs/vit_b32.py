"""Fine-tuning ViT-B/32 from a pretrained checkpoint with the ViT paper's transfer recipe (see configs/vit_b16.py).

    python -m vit_jax.main --config=configs/vit_b32.py:cifar10 --workdir=workdirs/vit_b32_cifar10 \\
        --config.init_from.path=ViT-B_32.npz

Same arguments (cifar10, cifar100, oxford_iiit_pet, oxford_flowers102, imagenet2012, folder:/path, each optionally
with ,hp), steps, learning-rate grid and schedule as configs/vit_b16.py. Figures to expect: paper Table 5
(ImageNet-21k pre-training, 384 px): CIFAR-10 98.79, CIFAR-100 91.97, ImageNet 81.28, Flowers 99.11, Pets 93.02. Not
measured here.
"""

from configs import vit_b16


def get_config(arg: str = 'cifar10'):
    return vit_b16.get_transfer_config('ViT-B/32', arg)
