"""What the configs share: the `:arg` parser, ImageNet constants, and the CPU-sized recipes on the built-in data.

    from configs import common

    def get_config(arg=None):
        arg = common.parse_arg(arg, dataset='cifar10', hp=False)   # 'cifar100,hp' -> dataset='cifar100', hp=True
        c = common.digits_recipe(dict(name='ViT-Ti/16', image_size=8), tiny=arg.tiny)

The paper-specific recipes that several configs share live with the paper's config: the ViT transfer recipe in
configs/vit_b16.py (`get_transfer_config`), DeiT's in configs/deit_recipe.py, timm's CCT recipe in
configs/cct_14_7x2.py, the CrossViT / CvT / T2T-ViT / TimeSformer families in their first config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Collection, Sequence

import ml_collections

from vit_jax import config_utils

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_TRAIN_EXAMPLES = 1_281_167


def steps_for(epochs: float, batch_size: int, examples: int = IMAGENET_TRAIN_EXAMPLES) -> int:
    """Optimizer steps of `epochs` passes over `examples` at `batch_size` (at least one)."""
    return max(1, int(round(epochs * examples / batch_size)))


# ----------------------------------------------------------------------------------------------------------------
# The `:arg` parser.
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OneOf:
    """A `parse_arg` option set by any bare word that is one of `values` (or for which `values(word)` is true)."""

    default: Any
    values: Collection[str] | Callable[[str], bool]
    what: str = ''  # How errors describe a predicate's values, e.g. 'a path with a /'.

    def accepts(self, word: str) -> bool:
        return bool(self.values(word)) if callable(self.values) else word in self.values

    def describe(self) -> str:
        if callable(self.values):
            return self.what or 'see the docstring'
        return 'one of ' + ', '.join(map(str, self.values))


_TRUE, _FALSE = ('true', '1', 'yes'), ('false', '0', 'no', '')


def _convert(name: str, value: str, option: Any, arg: str) -> Any:
    if isinstance(option, OneOf):
        if not option.accepts(value):
            raise ValueError(f'Unknown option {name}={value!r} in {arg!r}: {name} is {option.describe()}.')
        return value
    if isinstance(option, bool):
        if value.lower() not in _TRUE + _FALSE:
            raise ValueError(f'Unknown option {name}={value!r} in {arg!r}: {name} is True or False.')
        return value.lower() in _TRUE
    kind = type(option) if isinstance(option, (int, float)) else str
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f'Unknown option {value!r} in {arg!r}: {name} expects {kind.__name__} values.') from None


def _usage(spec: dict[str, Any]) -> str:
    parts = []
    for k, v in spec.items():
        if isinstance(v, OneOf):
            parts.append(f'{k} ({v.describe()}; default {v.default!r})')
        elif isinstance(v, bool):
            parts.append(f'{k} (a flag)')
        elif v is None:
            parts.append(f'{k}=VALUE')
        else:
            parts.append(f'{k} (default {v!r})')
    return 'options: ' + ('; '.join(parts) if parts else 'none (this config takes no argument)')


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
    """Parses a config's `:arg` (`vit_b16.py:cifar100,hp`, `dhvt.py:T,imagenet`, `vtab1k/config.py:dtd,lr=0.01`).

    `spec` names every option with its default, in order; the default's type is the option's type:
    - a bool is a flag: its bare name sets it (`hp`), or `hp=False`;
    - `OneOf(default, values)` is set by a bare word among its values, wherever the word stands (`layernorm,tiny`
      and `tiny,layernorm` are the same); `values` may also be a predicate (e.g. "contains a /" for a data root);
    - a None default is a string given only as `name=value` (paths: `init=/path/to.npz`);
    - any other option (str, int, float) is positional: the bare words left over fill these options in the order of
      `spec` (`cifar100,5000,CVT-7/4` -> dataset, epochs, model).
    Every option can also be given as `name=value`. Empty words are skipped. Anything else is a ValueError that
    names the options. Returns a ConfigDict with every option (`arg.hp`, `arg.dataset` ...).
    """
    given: dict[str, Any] = {}
    positional = [k for k, v in spec.items() if v is not None and not isinstance(v, (bool, OneOf))]
    for word in (w.strip() for w in (arg or '').split(',')):
        if not word:
            continue
        if '=' in word:
            name, value = (s.strip() for s in word.split('=', 1))
            if name not in spec:
                raise ValueError(f'Unknown option {name!r} in {arg!r}; {_usage(spec)}.')
        elif isinstance(spec.get(word), bool):
            name, value = word, 'true'
        else:
            accepting = [k for k, v in spec.items() if isinstance(v, OneOf) and v.accepts(word)]
            name = next((k for k in accepting if k not in given), accepting[0] if accepting else None)  # Taken: twice.
            name = name or next((k for k in positional if k not in given), None)
            if name is None:
                raise ValueError(f'Unknown option {word!r} in {arg!r}; {_usage(spec)}.')
            value = word
        if name in given:
            raise ValueError(f'Option {name!r} is given twice in {arg!r}.')
        given[name] = _convert(name, value, spec[name], arg)
    values = {k: given[k] if k in given else (v.default if isinstance(v, OneOf) else v) for k, v in spec.items()}
    return ml_collections.ConfigDict(values, type_safe=False)


# ----------------------------------------------------------------------------------------------------------------
# CPU-sized recipes on the built-in data (digits, dense digits) and the DPT depth fine-tuning.
# ----------------------------------------------------------------------------------------------------------------
def digits_recipe(model: dict, *, train_pp: str = 'random_shift', steps: int = 1500, warmup_steps: int = 100,
                  lr: float = 2e-3, weight_decay: float = 0.05, batch_size: int = 128, tiny: bool = False):
    """The CPU-sized classification recipe on the built-in digits that the family quickstarts share: AdamW with
    weight decay off biases and norms, cosine with warm-up, label smoothing 0.1, random 1-pixel shifts, no flips.

    `model` is `config.model` (name, image_size and overrides; num_classes is set to 10). `tiny=True` is the
    short form the tests run: batch 64, no intermediate evaluations or checkpoints, no TensorBoard.
    """
    c = config_utils.base_config()
    c.dataset = 'digits'
    c.model = dict(num_classes=10, **model)
    c.data.train_pp = train_pp
    c.data.flip = False  # Mirrored digits are other digits.
    c.batch_size = batch_size
    c.total_steps = steps
    c.log_every = 100
    c.eval_every = 500
    c.checkpoint_every = 500
    c.optimizer = dict(c.optimizer, name='adamw', weight_decay=weight_decay, wd_mask='no_bias_norm',
                       grad_clip_norm=1.0)
    c.lr = dict(base=lr, warmup_steps=warmup_steps, decay='cosine', end=1e-5)
    c.objective.label_smoothing = 0.1
    c.evals.val = dict(type='classification', split='test', every=500)
    if tiny:
        c.batch_size = 64
        c.log_every = 50
        c.eval_every = 0
        c.checkpoint_every = 0
        c.tensorboard = False
        c.evals.val.every = 0
    return c


def robust_digits_recipe(model: dict) -> ml_collections.ConfigDict:
    """The CPU-sized training recipe of the adversarial-training configs on the built-in digits (robust_vit_digits,
    pyramid_at_digits): `model` (a dict for `config.model`) on 16 px digits resized, not shifted (the attacks are the
    perturbation), batch 64, 400 steps, AdamW (weight decay 0.05 off biases and norms, clipping at 1), lr 3e-3,
    cosine with 20 warm-up steps; evaluation only at the end, on all 360 test digits in one batch. The configs add
    the objective and the evaluators.
    """
    c = config_utils.base_config()
    c.dataset = 'digits'
    c.model = dict(model)
    c.data.train_pp = 'resize'
    c.data.flip = False
    c.batch_size = 64
    c.eval_batch_size = 360
    c.total_steps = 400
    c.log_every = 100
    c.eval_every = 0
    c.checkpoint_every = 0
    c.optimizer = dict(c.optimizer, name='adamw', weight_decay=0.05, wd_mask='no_bias_norm', grad_clip_norm=1.0)
    c.lr = dict(base=3e-3, warmup_steps=20, decay='cosine', end=1e-5)
    return c


LABEL_SCARCE_SPLIT = 'train[:10%]'  # 143 of the 1437 training digits: a fixed random subset.
LABEL_SCARCE_STEPS = 400


def label_scarce_digits(c: ml_collections.ConfigDict, *, lr: float, dont_load: Sequence[str],
                        init_path: str | None = None, layer_decay: float | None = None) -> ml_collections.ConfigDict:
    """The fine-tune / scratch comparison after self-supervised pretraining on the digits (PeCo, MILAN configs).

    Label-scarce, as self-supervised pretraining is meant to be used: the pretraining sees all 1437 training images
    without labels; the classifier sees the labels of LABEL_SCARCE_SPLIT for LABEL_SCARCE_STEPS steps at batch 128
    (AdamW, weight decay 0.05 off biases and norms, no clipping, cosine with 30 warm-up steps, label smoothing 0.1,
    random shifts) and is evaluated once, on the 360 test digits. Sets everything but `c.model` / `c.dataset`;
    `init_path` (the pretraining's workdir, None for scratch) and `dont_load` go to `init_from`.
    """
    c.data.train_pp = 'random_shift'
    c.data.flip = False
    c.batch_size = 128
    c.data.train_split = LABEL_SCARCE_SPLIT
    c.total_steps = LABEL_SCARCE_STEPS
    c.log_every = 50
    c.eval_every = 0
    c.checkpoint_every = 0
    c.tensorboard = False
    c.optimizer = ml_collections.ConfigDict(dict(c.optimizer.to_dict(), name='adamw', weight_decay=0.05,
                                                 wd_mask='no_bias_norm', grad_clip_norm=None,
                                                 layer_decay=layer_decay))
    c.lr = ml_collections.ConfigDict(dict(base=lr, warmup_steps=30, decay='cosine', end=1e-5))
    c.objective = ml_collections.ConfigDict(dict(type='classification', label_smoothing=0.1, loss='softmax'))
    c.evals = ml_collections.ConfigDict(dict(val=dict(type='classification', split='test', every=0)))
    c.init_from = ml_collections.ConfigDict(dict(path=init_path, dont_load=tuple(dont_load)))
    return c


DPT_DEPTH_DECODER = ('neck/.*', 'depth_head/.*')  # What a DPT depth model adds to its ViT backbone.


def dpt_depth_finetune(variant: str, *, init: str | None, dataset: str, image_size: tuple[int, int], data: dict,
                       batch_size: int, steps: int, max_depth: float, evals: dict) -> ml_collections.ConfigDict:
    """The monocular-depth fine-tuning recipe of the DPT configs (NYU v2, KITTI): DPT-`variant` with a depth head,
    Adam (no weight decay, no clipping) with the backbone at 1/10 of the decoder's learning rate (1e-5 / 1e-4, the
    paper's monodepth setting), cosine to 1e-6, the MiDaS scale- and shift-invariant loss with gradient matching
    (alpha 0.5, 4 scales) in disparity, evaluation every 5000 steps in inverse depth with per-image scale and shift.

    `data` updates `config.data`; `evals` updates the depth evaluator (split, batch_size, crop); `init` is a ViT
    release checkpoint (its BiT epsilons for the Hybrid: resnet_variant='release') whose decoder is not loaded.
    """
    c = config_utils.base_config()
    c.dataset = dataset
    c.model = dict(name=f'DPT-{variant}', image_size=tuple(image_size), head='depth', backbone_classes=0)
    if variant == 'Hybrid' and init:
        c.model.resnet_variant = 'release'
    c.data = dict(c.data, **data)
    c.batch_size = batch_size
    c.total_steps = steps
    c.log_every = 100
    c.eval_every = 5_000
    c.checkpoint_every = 5_000
    c.optimizer = dict(c.optimizer, name='adam', weight_decay=0.0, grad_clip_norm=0.0,
                       lr_mults=((r'^(?!(neck|depth_head|seg_head|aux_head)/)', 0.1),))
    c.lr = dict(base=1e-4, warmup_steps=0, decay='cosine', end=1e-6)
    c.objective = dict(type='depth', loss='ssi_mse', alpha=0.5, scales=4, target_space='disparity', min_depth=1e-3,
                       max_depth=max_depth)
    c.evals = dict(val=dict(dict(type='depth', every=5_000, prediction='inverse_depth', align='scale_shift',
                                 min_depth=1e-3, max_depth=max_depth), **evals))
    c.init_from = dict(path=init, dont_load=DPT_DEPTH_DECODER + ('head/.*', 'pre_logits/.*'))
    return c


def dense_digits_recipe(model: dict, *, steps: int, lr: float, objective: dict, evals: dict,
                        dont_load: Sequence[str], tiny: bool = False):
    """The CPU-sized dense-prediction recipe on the built-in 'dense_digits' that the Segmenter and DPT configs
    share: 20000 freshly drawn training canvases (2000 are memorised long before a tiny ViT learns which digit a
    stroke belongs to), batch 32, AdamW (weight decay 0.01 off biases and norms, clipping at 1), cosine with 50
    warm-up steps, evaluation on the 500 test canvases (glyphs training never sees) every quarter of the run.

    `model` is `config.model`; `objective` / `evals` the dense objective and the evaluator entry ('every' is set
    here); `dont_load` the decoder's parameters for `init_from` (a ViT checkpoint initialises the backbone).
    `tiny=True` is the short form the smoke tests run: 10 steps on 2000 canvases, no evaluation, no checkpoints.
    """
    c = config_utils.base_config()
    c.dataset = 'dense_digits'
    c.model = dict(model)
    c.data = dict(c.data, train_pp='dense_decode|dense_random_crop', eval_pp='dense_decode|dense_resize',
                  flip=False, dense_num_train=20000)
    c.batch_size = 32
    c.total_steps = steps
    c.log_every = 100
    c.eval_every = max(steps // 4, 1)
    c.checkpoint_every = c.eval_every
    c.optimizer = dict(c.optimizer, name='adamw', weight_decay=0.01, wd_mask='no_bias_norm', grad_clip_norm=1.0)
    c.lr = dict(base=lr, warmup_steps=50, decay='cosine', end=1e-5)
    c.objective = dict(objective)
    c.evals = dict(val=dict(evals, split='test', every=c.eval_every))
    c.init_from = dict(path=None, dont_load=tuple(dont_load))
    if tiny:
        c.data.dense_num_train = 2000
        c.total_steps = 10
        c.log_every = 5
        c.eval_every = 0
        c.checkpoint_every = 0
    return c
