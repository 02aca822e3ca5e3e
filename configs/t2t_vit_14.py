"""T2T-ViT-14 ("Tokens-to-Token ViT", Yuan et al., ICCV 2021): ImageNet-1k, 384, CIFAR transfer and digits.

    python -m vit_jax.main --config=configs/t2t_vit_14.py --workdir=workdirs/t2t14             # ImageNet-1k at 224
    python -m vit_jax.main --config=configs/t2t_vit_14.py:imagenet384 --workdir=workdirs/t2t14_384 \\
        --config.init_from.path=workdirs/t2t14                                                # fine-tune at 384
    python -m vit_jax.main --config=configs/t2t_vit_14.py:cifar10 --workdir=workdirs/t2t14_c10 \\
        --config.init_from.path=workdirs/t2t14                                                # transfer (cifar100 too)
    python -m vit_jax.main --config=configs/t2t_vit_14.py:digits --workdir=workdirs/t2t_digits  # CPU, minutes

Arguments: `imagenet` (default), `imagenet384`, `cifar10`, `cifar100`, `digits` (`digits,tiny`: the short test run).
The other sizes: configs/t2t_vit_{7,19,24}.py and configs/t2t_vit_t_{14,24}.py; `get_t2t_config(name, arg)` here
serves every registered T2T-ViT (e.g. 'T2T-ViT-10', 'T2T-ViT_t-19').

ImageNet-1k recipe (official main.py defaults and README; specs_a.md 5(c)): AdamW, batch 512, cosine over 310
epochs (300 + 10 cool-down) with 10 warm-up epochs, min lr 1e-5; lr 5e-4 and weight decay 0.05 for -14 / _t-14,
5e-4 and 0.065 for -19 / -24 (and _t-), 1e-3 and 0.03 for the lite -7 / -10 / -12; stochastic depth 0.1 (the
model default), weight EMA 0.99996 (on by default in the official code: evaluations use the EMA), label smoothing
0.1, RandAugment m9-mstd0.5-inc1, Mixup 0.8 / CutMix 1.0, random erasing 0.25, bicubic; test crop 0.9.
The models train with head_dim^-0.5 (the class default); released checkpoints used embed_dim^-0.5, so a converted
official checkpoint needs `attention_scale=embed_dim` (`python -m vit_jax.convert --from=official:t2t
--model=T2T-ViT-14 --model.attention_scale=embed_dim 81.5_T2T_ViT_14.pth.tar --out t2t_vit_14.npz`, then
`--config.model.attention_scale=embed_dim`).

Fine-tuning: CIFAR transfer 60 epochs at 224 with SGD and cosine (paper section 4.2); the lr 0.05 at batch 64 and
weight decay 1e-4 are the README's transfer_learning.py command as recalled (not in the spec: unverified).
`imagenet384` follows DeiT's high-resolution fine-tuning (recalled, not in the spec): 30 epochs, AdamW, lr 5e-6 at
batch 512, weight decay 1e-8. The sinusoid table is rebuilt for 24x24 tokens (the official transfer code
interpolates the stored table instead); the Performer features are rebuilt from their fixed seed.

Figures to expect (README / paper; not measured here): T2T-ViT-14 81.5 top-1 (_t-14 81.7), 83.3 at 384;
CIFAR-10 / CIFAR-100 98.3 (paper table 5: 97.5) / 88.4. Digits: see README and tests/test_multiscale_training.py.
"""

from configs import common, deit_recipe

# name -> (lr at batch 512, weight decay).
RECIPE = {
    'T2T-ViT-7': (1e-3, 0.03), 'T2T-ViT-10': (1e-3, 0.03), 'T2T-ViT-12': (1e-3, 0.03),
    'T2T-ViT-14': (5e-4, 0.05), 'T2T-ViT_t-14': (5e-4, 0.05),
    'T2T-ViT-19': (5e-4, 0.065), 'T2T-ViT-24': (5e-4, 0.065),
    'T2T-ViT_t-19': (5e-4, 0.065), 'T2T-ViT_t-24': (5e-4, 0.065),
}
# A small T2T-ViT for digits at 64 px: the paper's soft splits (64 -> 16 -> 8 -> 4, 16 tokens), narrower layers.
DIGITS_MODEL = dict(token_dim=32, hidden_size=64, num_layers=2, num_heads=2, mlp_ratio=2.0, drop_path_rate=0.0)


def get_t2t_config(model_name: str, arg: str | None = None):
    """The recipe of a registered T2T-ViT for `arg` (see the module docstring)."""
    arg = common.parse_arg(arg, task='imagenet', tiny=False)
    lr, wd = RECIPE[model_name]
    if arg.task in ('imagenet', 'imagenet2012'):
        return deit_recipe.imagenet(dict(name=model_name), batch_size=512, lr=lr, weight_decay=wd, epochs=310,
                                    warmup_epochs=10, min_lr=1e-5, crop_pct=0.9, ema_decay=0.99996)
    if arg.task == 'imagenet384':
        return deit_recipe.finetune(dict(name=model_name), 'imagenet2012', image_size=384, optimizer='adamw',
                                    steps=common.steps_for(30, 512), warmup_steps=0, batch_size=512, lr=5e-6,
                                    weight_decay=1e-8, decay='constant', crop_pct=0.9, grad_clip_norm=None)
    if arg.task in ('cifar10', 'cifar100'):
        return deit_recipe.finetune(dict(name=model_name), arg.task, image_size=224, warmup_steps=500,
                                    steps=common.steps_for(60, 64, 50_000), batch_size=64, lr=0.05,
                                    weight_decay=1e-4, crop_pct=None)
    if arg.task == 'digits':
        c = deit_recipe.digits(dict(name=model_name, **DIGITS_MODEL), image_size=64, tiny=arg.tiny,
                               steps=300 if arg.tiny else 1500)
        c.data.shift_pad = 4  # Random shifts of up to 4 px (half the default of 1/8 of the image size).
        return c
    raise ValueError(f'Unknown argument {arg.task!r}; choose imagenet, imagenet384, cifar10, cifar100 or '
                     'digits[,tiny].')


def get_config(arg=None):
    return get_t2t_config('T2T-ViT-14', arg)
