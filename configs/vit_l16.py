"""Fine-tuning ViT-L/16 from a pretrained checkpoint with the ViT paper's transfer recipe (see configs/vit_b16.py).

    python -m vit_jax.main --config=configs/vit_l16.py:cifar10 --workdir=workdirs/vit_l16_cifar10 \\
        --config.init_from.path=ViT-L_16.npz

Same arguments (cifar10, cifar100, oxford_iiit_pet, oxford_flowers102, imagenet2012, folder:/path, each optionally
with ,hp), steps, learning-rate grid and schedule as configs/vit_b16.py. The release config of this model uses
dropout 0.1 (`dropout_rate=0.1`). Figures to expect: paper Table 5 (ImageNet-21k pre-training, 384 px): CIFAR-10
99.16, CIFAR-100 93.44, ImageNet 85.15, Flowers 99.61, Pets 94.73. Not measured here.
"""

from configs import vit_b16


def get_config(arg: str = 'cifar10'):
    return vit_b16.get_transfer_config('ViT-L/16', arg, dropout_rate=0.1)
