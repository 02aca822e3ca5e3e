"""Fine-tuning ViT-B/16 from a pretrained checkpoint: the ViT paper's transfer recipe (App. B.1.1, Table 4).

    python -m vit_jax.main --config=configs/vit_b16.py:cifar10 --workdir=workdirs/b16_cifar10 \\
        --config.init_from.path=ViT-B_16.npz

Arguments: `cifar10`, `cifar100`, `oxford_iiit_pet` (`pets`), `oxford_flowers102` (`flowers`), `imagenet2012`
(`imagenet`), or `folder:/path/to/images` (your own images: root/train/<class>/*.jpg and optionally
root/test/<class>/*.jpg; without test/ the last 10% of train is held out). Add `,hp` (e.g. `cifar10,hp`) to train on
the held-out hyper-parameter split of the paper and evaluate on the rest of train instead of the test set.

The checkpoint is a `.npz` in the ViT release layout (e.g. gs://vit_models/imagenet21k/ViT-B_16.npz or
gs://vit_models/augreg/...), a file from `python -m vit_jax.convert`, or a run's workdir. Its head (and the
pre-training `pre_logits` layer) are dropped and replaced by a zero-initialised head (`init_from.dont_load`); the
position embeddings are resampled from the 224-px grid (14x14) to 384 px (24x24).

Recipe (paper App. B.1.1; the release's configs/common.py): SGD with momentum 0.9 (momentum kept in bfloat16 as the
release), batch 512, no weight decay, global-norm gradient clipping at 1, linear warm-up then cosine decay to 0,
resolution 384, Inception-crop (5-100% of the area) + horizontal flip for training, a plain resize for evaluation,
pixels in [-1, 1], no dropout. Steps and warm-up follow BiT's HyperRule, which the paper's step counts match:

| dataset | steps | warm-up | LR grid (paper T4) | default LR | held-out split for LR selection |
|---|---|---|---|---|---|
| imagenet2012 | 20,000 | 500 | 0.003, 0.01, 0.03, 0.06 | 0.03 | train[99%:] (1%) |
| cifar10 | 10,000 | 500 | 0.001, 0.003, 0.01, 0.03 | 0.03 | train[98%:] (2%) |
| cifar100 | 10,000 | 500 | 0.001, 0.003, 0.01, 0.03 | 0.03 | train[98%:] (2%) |
| oxford_iiit_pet | 500 | 100 | 0.001, 0.003, 0.01, 0.03 | 0.03 | train[90%:] (10%) |
| oxford_flowers102 | 500 | 100 | 0.001, 0.003, 0.01, 0.03 | 0.03 | 10% of train+validation |
| folder:... | 500 | 100 | 0.001, 0.003, 0.01, 0.03 | 0.01 | 10% of train (without test/) |

Select the LR with `--config.lr.base=...` over the grid on the `,hp` split, then run the final fine-tune on the full
train set. The default LR 0.03 is the release's `base_lr`; the paper does not list the selected LR per dataset. The
500-step warm-up is the release's; 100 steps for the 500-step runs is BiT's HyperRule (the paper does not say).
The release accumulates gradients over 8 micro-batches to fit memory: add `--config.optimizer.accum_steps=8`.
Paper Table 2 (ImageNet) also uses Polyak averaging: `--config.optimizer.ema_decay=0.9999`.

Figures to expect (paper Table 5, ImageNet-21k pre-training, fine-tuned at 384): CIFAR-10 98.95, CIFAR-100 91.67,
ImageNet 83.97, Oxford Flowers-102 99.38, Oxford-IIIT Pets 94.43 (ViT-B/16); the release's README replication
(i21k ViT-B/16, these settings): CIFAR-10 99.02, CIFAR-100 92.06, ImageNet 84.53. Not measured here (no such data
or accelerators in this environment): the recipe is checked end to end on small data by tests/test_transfer.py.

`get_transfer_config(model_name, arg)` is the same recipe for any registered ViT; configs/vit_{ti16,s16,b32,l16}.py
and configs/r50_vit_b16.py use it.
"""

import os

import ml_collections

from configs import common
from vit_jax import config_utils

# name: (TFDS name, classes, steps, warm-up, final train split, final eval split, hp train split, hp eval split)
TRANSFER_DATASETS = {
    'imagenet2012': ('imagenet2012', 1000, 20_000, 500, 'train', 'validation', 'train[:99%]', 'train[99%:]'),
    'cifar10': ('cifar10', 10, 10_000, 500, 'train', 'test', 'train[:98%]', 'train[98%:]'),
    'cifar100': ('cifar100', 100, 10_000, 500, 'train', 'test', 'train[:98%]', 'train[98%:]'),
    'oxford_iiit_pet': ('oxford_iiit_pet', 37, 500, 100, 'train', 'test', 'train[:90%]', 'train[90%:]'),
    'oxford_flowers102': ('oxford_flowers102', 102, 500, 100, 'train+validation', 'test',
                          'train[:90%]+validation[:90%]', 'train[90%:]+validation[90%:]'),
}
ALIASES = {'imagenet': 'imagenet2012', 'pets': 'oxford_iiit_pet', 'flowers': 'oxford_flowers102'}
LR_GRID = {'imagenet2012': (0.003, 0.01, 0.03, 0.06)}  # Others: (0.001, 0.003, 0.01, 0.03).
DEFAULT_LR_GRID = (0.001, 0.003, 0.01, 0.03)


def lr_grid(dataset: str) -> tuple:
    """The paper's learning-rate grid for a dataset (Table 4)."""
    return LR_GRID.get(ALIASES.get(dataset, dataset), DEFAULT_LR_GRID)


def _folder_setup(root: str):
    """(classes, train split, eval split) of an image folder; the last 10% of train is held out without test/."""
    from vit_jax import data

    root = os.path.abspath(os.path.expanduser(root))
    info = data.dataset_info(f'folder:{root}', 'train', {'check_images': False})
    has_test = os.path.isdir(os.path.join(root, 'test'))
    return info['num_classes'], ('train' if has_test else 'train[:90%]'), ('test' if has_test else 'train[90%:]')


def get_transfer_config(model_name: str, arg: str = 'cifar10', **model_overrides) -> ml_collections.ConfigDict:
    """The paper's fine-tuning recipe for `model_name` on the dataset named by `arg` (see the module docstring)."""
    arg = (arg or 'cifar10').strip()
    if arg.startswith('folder:'):  # The path may contain commas (and '='): only a final ',hp' is an option.
        hp = arg.endswith(',hp')
        name = arg[:-3] if hp else arg
    else:
        parsed = common.parse_arg(arg, dataset='cifar10', hp=False)
        name, hp = parsed.dataset, parsed.hp
    c = config_utils.base_config()
    if name.startswith('folder:'):
        num_classes, train_split, eval_split = _folder_setup(name[len('folder:'):])
        c.dataset = 'folder:' + os.path.abspath(os.path.expanduser(name[len('folder:'):]))
        if hp and train_split == 'train':
            train_split, eval_split = 'train[:90%]', 'train[90%:]'
        steps, warmup, base_lr = 500, 100, 0.01
    else:
        name = ALIASES.get(name, name)
        if name not in TRANSFER_DATASETS:
            raise ValueError(f'Unknown transfer dataset {name!r}; choose one of {sorted(TRANSFER_DATASETS)} '
                             f'(aliases {sorted(ALIASES)}) or folder:/path/to/images.')
        tfds_name, num_classes, steps, warmup, train_split, eval_split, hp_train, hp_eval = TRANSFER_DATASETS[name]
        c.dataset = tfds_name
        if hp:
            train_split, eval_split = hp_train, hp_eval
        base_lr = 0.03
    c.model = {**dict(name=model_name, num_classes=num_classes, image_size=384, representation_size=None,
                      classifier='token', dropout_rate=0.0,
                      dtype='auto'),  # bfloat16 compute on GPU/TPU, float32 on CPU; parameters float32.
               **model_overrides}
    c.data.train_split = train_split
    c.data.train_pp = 'inception_crop'
    c.data.inception_crop_area = (0.05, 1.0)
    c.data.eval_pp = 'resize'
    c.data.value_range = (-1.0, 1.0)
    c.data.flip = True
    c.data.shuffle_buffer = 50_000
    c.batch_size = 512
    c.total_steps = steps
    c.log_every = 10 if steps <= 500 else 50
    c.eval_every = 100 if steps <= 500 else 1000
    c.checkpoint_every = 500 if steps <= 500 else 1000
    c.keep_checkpoints = 2
    c.optimizer = dict(c.optimizer, name='sgd', momentum=0.9, nesterov=False, weight_decay=0.0, grad_clip_norm=1.0,
                       accum_steps=1, ema_decay=None, accumulator_dtype='bfloat16')
    c.lr = dict(base=base_lr, warmup_steps=warmup, decay='cosine', end=0.0)
    c.objective = dict(type='classification', label_smoothing=0.0, loss='softmax')
    c.evals = dict(val=dict(type='classification', split=eval_split, every=c.eval_every))
    c.init_from = dict(path=None, dont_load=('head/.*', 'pre_logits/.*'), old_grid=None)
    return c


def get_config(arg: str = 'cifar10') -> ml_collections.ConfigDict:
    return get_transfer_config('ViT-B/16', arg)
