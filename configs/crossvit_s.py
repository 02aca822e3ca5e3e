"""CrossViT-S ("CrossViT: Cross-Attention Multi-Scale Vision Transformer", Chen et al., ICCV 2021) and its recipes.

    python -m vit_jax.main --config=configs/crossvit_s.py --workdir=workdirs/crossvit_s          # ImageNet-1k, 224
    python -m vit_jax.main --config=configs/crossvit_s.py:imagenet384 --workdir=workdirs/crossvit_s_384 \\
        --config.init_from.path=workdirs/crossvit_s                                             # fine-tune at 384
    python -m vit_jax.main --config=configs/crossvit_s.py:cifar10 --workdir=workdirs/crossvit_s_c10 \\
        --config.init_from.path=workdirs/crossvit_s                                             # transfer
    python -m vit_jax.main --config=configs/crossvit_s.py:digits --workdir=workdirs/crossvit_digits

Arguments: `imagenet` (default), `imagenet384`, `cifar10`, `cifar100`, `pets`, `flowers`, `digits` (`digits,tiny`:
the short test run). Other sizes: configs/crossvit_{ti,b,9,15,18}.py and configs/crossvit_{9,15,18}_dagger.py;
`get_crossvit_config(name, arg)` here serves every registered CrossViT.

ImageNet-1k recipe (paper section 4.1 and the official main.py; specs_a.md 6(c)), DeiT's: AdamW, batch 4096, lr
0.004 (5e-4 x 4096 / 512), weight decay 0.05, 300 epochs with 30 warm-up epochs (the paper; main.py's default is
5), cosine to 1e-5, stochastic depth 0.1 (the model default), label smoothing 0.1, RandAugment m9-mstd0.5-inc1,
Mixup 0.8 / CutMix 1.0, random erasing 0.25, repeated augmentation (x3) for CrossViT-18 / 18-dagger only; test:
short side 256, centre crop 224. The model itself resizes the 224 input to 240 for the small-patch branch.

Fine-tuning at 384 (paper: 30 epochs, position embeddings interpolated): 30 epochs with DeiT's high-resolution
settings as recalled (AdamW, lr 5e-6 at batch 512, weight decay 1e-8; not in the spec: unverified); the model runs
its branches at 408 / 384 and the trainer resamples both position embeddings (bilinearly; the official code uses
bicubic). Transfer (paper table 5): SGD, batch 768, lr 0.01, weight decay 1e-4, 1000 epochs at 224.

Figures to expect (paper; not measured here): ImageNet-1k top-1 Ti 73.4, S 81.0, B 82.2, 9 73.9, 15 81.5, 18 82.5,
9-dagger 77.1, 15-dagger 82.3, 18-dagger 82.8; at 384: 15-dagger 83.5, 18-dagger 83.9. CIFAR-10 / CIFAR-100:
CrossViT-15 99.00 / 90.77, CrossViT-18 99.11 / 91.36. Digits: see README and tests/test_multiscale_training.py.
"""

from configs import common, deit_recipe

REPEATED_AUG = ('CrossViT-18', 'CrossViT-18\u2020', 'CrossViT-18-dagger')
# A small CrossViT for 16 px digits, scaled from the paper's 240 / 224 px, patch 12 / 16 layout: the small-patch
# branch sees the input resized in the model to 18 px with patch 3 (6x6 tokens), the large-patch branch 16 px with
# patch 4 (4x4 tokens); two multi-scale encoders; linear patch embeddings (also for the dagger models).
DIGITS_MODEL = dict(patch_sizes=(3, 4), branch_sizes=(18, 16), embed_dims=(32, 64), num_heads=(2, 2), depths=(1, 2),
                    mlp_ratios=(2.0, 2.0), num_encoders=2, drop_path_rate=0.0, multi_conv=False)


def get_crossvit_config(model_name: str, arg: str | None = None):
    """The recipe of a registered CrossViT for `arg` (see the module docstring)."""
    arg = common.parse_arg(arg, task='imagenet', tiny=False)
    if arg.task in ('imagenet', 'imagenet2012'):
        return deit_recipe.imagenet(dict(name=model_name), batch_size=4096, lr=0.004, weight_decay=0.05, epochs=300,
                                    warmup_epochs=30, min_lr=1e-5, crop_pct=0.875,
                                    repeated_aug=3 if model_name in REPEATED_AUG else None)
    if arg.task == 'imagenet384':
        return deit_recipe.finetune(dict(name=model_name), 'imagenet2012', image_size=384, optimizer='adamw',
                                    steps=common.steps_for(30, 512), warmup_steps=0, batch_size=512, lr=5e-6,
                                    weight_decay=1e-8, decay='constant', crop_pct=0.875, grad_clip_norm=None)
    if arg.task == 'digits':
        return deit_recipe.digits(dict(name=model_name, **DIGITS_MODEL), image_size=16, tiny=arg.tiny,
                                  steps=300 if arg.tiny else 1500)
    dataset = deit_recipe.ALIASES.get(arg.task, arg.task)
    if dataset not in deit_recipe.TRANSFER or dataset == 'imagenet2012':
        raise ValueError(f'Unknown argument {arg.task!r}; choose imagenet, imagenet384, cifar10, cifar100, pets, '
                         'flowers or digits[,tiny].')
    examples = deit_recipe.TRANSFER[dataset][4]
    return deit_recipe.finetune(dict(name=model_name), dataset, image_size=224, warmup_steps=500, batch_size=768,
                                steps=common.steps_for(1000, 768, examples), lr=0.01, weight_decay=1e-4,
                                crop_pct=0.875)


def get_config(arg=None):
    return get_crossvit_config('CrossViT-S', arg)
