"""CvT-13 ("Introducing Convolutions to Vision Transformers", Wu et al., ICCV 2021): ImageNet-1k, 384, CIFAR, digits.

    python -m vit_jax.main --config=configs/cvt_13.py --workdir=workdirs/cvt13                 # ImageNet-1k at 224
    python -m vit_jax.main --config=configs/cvt_13.py:imagenet384 --workdir=workdirs/cvt13_384 \\
        --config.init_from.path=workdirs/cvt13                                                 # fine-tune at 384
    python -m vit_jax.main --config=configs/cvt_13.py:cifar10 --workdir=workdirs/cvt13_c10 \\
        --config.init_from.path=workdirs/cvt13                                                 # transfer (cifar100 too)
    python -m vit_jax.main --config=configs/cvt_13.py:digits --workdir=workdirs/cvt_digits      # CPU, minutes

Arguments: `imagenet` (default), `imagenet384`, `cifar10`, `cifar100`, `pets`, `flowers`, `digits` (`digits,tiny`
is the short run of tests/test_multiscale_training.py). configs/cvt_21.py is the same for CvT-21.

ImageNet-1k recipe (the official experiments/imagenet/cvt/*.yaml; specs_a.md 4(c)): AdamW, lr 2e-3 at batch 2048
(the yaml's 2.5e-4 per 256-image GPU batch scaled by the world size; the paper's "0.02" is a typo), weight decay
0.05 for CvT-13 and 0.1 for CvT-21 / CvT-W24 (none on biases, norms, class token), 300 epochs, 5 warm-up epochs,
cosine to 1e-5 (the yaml's 10 cool-down epochs folded in), stochastic depth 0.1 in stage 3 only (the model
default), label smoothing 0.1, RandAugment m9-mstd0.5-inc1, Mixup 0.8 / CutMix 1.0, random erasing 0.25, bicubic,
test: short side 256 then centre crop 224. See configs/deit_recipe.py for what is shared and how it differs.

Fine-tuning (paper section 4.1, "follows ViT"): SGD momentum 0.9, batch 512, 384 px, lr 0.003 (the yaml's
FINETUNE default), 20k steps on ImageNet, 10k on CIFAR, 500 on Pets / Flowers; evaluation without a centre crop.
CvT has no position embedding, so a 224 checkpoint runs at 384 unchanged. The trainer's init_from loads `params`:
BatchNorm statistics of the conv projections are re-estimated during fine-tuning (momentum 0.9, within ~50 steps).

Figures to expect (paper tables 3, 4; not measured here: no ImageNet or accelerators in this environment):
CvT-13 81.6 top-1 at 224, 83.0 after 384 fine-tuning; CvT-21 82.5 / 83.3. CIFAR-10 / CIFAR-100 after ImageNet-22k
pre-training: CvT-13 98.83 / 91.11, CvT-21 99.16 / 92.88. Digits (this repository, 1500 steps on 2 CPU cores):
see README; tests/test_multiscale_training.py pins the short run's accuracy.
"""

from configs import common, deit_recipe

WEIGHT_DECAY = {'CvT-13': 0.05, 'CvT-21': 0.1, 'CvT-W24': 0.1}
FINETUNE_STEPS = {'imagenet2012': (20_000, 500), 'cifar10': (10_000, 500), 'cifar100': (10_000, 500),
                  'oxford_iiit_pet': (500, 100), 'oxford_flowers102': (500, 100)}
# CvT shrunk for 16 px digits: 3x3 stride-2 conv embeddings (16 -> 8 -> 4 -> 2), widths 32 / 48 / 64.
DIGITS_MODEL = dict(patch_sizes=(3, 3, 3), patch_strides=(2, 2, 2), patch_paddings=(1, 1, 1), embed_dims=(32, 48, 64),
                    num_heads=(1, 2, 2), depths=(1, 1, 2), drop_path_rate=(0.0, 0.0, 0.0))


def get_cvt_config(model_name: str, arg: str | None = None):
    """The recipe of `model_name` ('CvT-13', 'CvT-21', 'CvT-W24') for `arg` (see the module docstring)."""
    arg = common.parse_arg(arg, task='imagenet', tiny=False)
    if arg.task in ('imagenet', 'imagenet2012'):
        return deit_recipe.imagenet(dict(name=model_name), batch_size=2048, lr=2e-3,
                                    weight_decay=WEIGHT_DECAY[model_name], epochs=300, warmup_epochs=5, min_lr=1e-5)
    if arg.task == 'digits':
        return deit_recipe.digits(dict(name=model_name, **DIGITS_MODEL), image_size=16, tiny=arg.tiny,
                                  steps=300 if arg.tiny else 1500)
    dataset = deit_recipe.ALIASES.get(arg.task, 'imagenet2012' if arg.task == 'imagenet384' else arg.task)
    if dataset not in FINETUNE_STEPS:
        raise ValueError(f'Unknown argument {arg.task!r}; choose imagenet, imagenet384, cifar10, cifar100, pets, '
                         'flowers or digits[,tiny].')
    steps, warmup = FINETUNE_STEPS[dataset]
    return deit_recipe.finetune(dict(name=model_name), dataset, image_size=384, steps=steps, warmup_steps=warmup,
                                batch_size=512, lr=0.003, crop_pct=None)


def get_config(arg=None):
    return get_cvt_config('CvT-13', arg)
