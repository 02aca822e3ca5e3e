"""Fine-tuning R50+ViT-B/16 from a pretrained checkpoint with the ViT paper's transfer recipe (see configs/vit_b16.py).

    python -m vit_jax.main --config=configs/r50_vit_b16.py:cifar10 --workdir=workdirs/r50_vit_b16_cifar10 \\
        --config.init_from.path=R50+ViT-B_16.npz

Same arguments (cifar10, cifar100, oxford_iiit_pet, oxford_flowers102, imagenet2012, folder:/path, each optionally
with ,hp), steps, learning-rate grid and schedule as configs/vit_b16.py. The release config of this model uses
dropout 0.1 (`dropout_rate=0.1`). Figures to expect: the release README's replication (ImageNet-21k, dropout 0.1):
CIFAR-10 98.94, CIFAR-100 92.30, ImageNet 85.08. Not measured here.
"""

from configs import vit_b16


def get_config(arg: str = 'cifar10'):
    return vit_b16.get_transfer_config('R50+ViT-B/16', arg, dropout_rate=0.1)
