"""MILAN ViT-B/16: masked pretraining on CLIP ViT-B/16 features with a prompting decoder, then fine-tuning.

    # Convert the teacher once (HuggingFace openai/clip-vit-base-patch16, downloaded where you have the network):
    #   model, variables = convert.from_transformers(CLIPVisionModelWithProjection.from_pretrained(...))
    #   checkpoint.save_npz('clip_b16.npz', variables['params'])
    python -m vit_jax.main --config=configs/milan_b16.py --workdir=workdirs/milan_b16 \
        --config.objective.teacher.weights=clip_b16.npz
    python -m vit_jax.main --config=configs/milan_b16.py:finetune --workdir=workdirs/milan_b16_ft \
        --config.init_from.path=workdirs/milan_b16
    python -m vit_jax.main --config=configs/milan_b16.py:linprobe --workdir=workdirs/milan_b16_lin \
        --config.init_from.path=workdirs/milan_b16

    # On the built-in digits (CPU, minutes; a STAND-IN teacher: a frozen random-init CLIP-architecture network, not
    # CLIP, so not MILAN's language-assisted targets; metrics say `loss_random_teacher`):
    python -m vit_jax.main --config=configs/milan_b16.py:digits --workdir=workdirs/milan_digits
    python -m vit_jax.main --config=configs/milan_b16.py:digits_finetune --workdir=workdirs/milan_digits_ft \
        --config.init_from.path=workdirs/milan_digits
    python -m vit_jax.main --config=configs/milan_b16.py:digits_scratch --workdir=workdirs/milan_digits_scratch
    python -m vit_jax.main --config=configs/milan_b16.py:digits_linprobe --workdir=workdirs/milan_digits_lin
    # ... or with a trained ViT teacher from a workdir (trained with the digits labels: it shows the teacher path end
    # to end; fine-tuning gains from it would be label distillation, so it is never used for a comparison):
    python -m vit_jax.main --config=configs/milan_b16.py:digits_scratch --workdir=workdirs/milan_teacher_digits \
        --config.model.classifier=token --config.data.train_split=train   # the teacher needs a class token
    python -m vit_jax.main --config=configs/milan_b16.py:digits_vit_teacher --workdir=workdirs/milan_digits_vt

Digits figures (test accuracy on the 360 held-out digits; `tests/test_milan.py` runs `:digits_tiny` then the pair).
The pretraining sees all 1437 training images without labels. `:digits_finetune` and `:digits_scratch` are the same
label-scarce recipe (labels of 10% of the training images = 143, 400 steps at batch 128; ViT 4 layers x 64, sin-cos
position embedding, global average pooling, AdamW lr 8e-3 = the best of a scratch sweep 2e-3 / 4e-3 / 8e-3 / 1.6e-2:
72.2% / 73.3% / 74.7% / 66.1%, cosine, warm-up 30, label smoothing 0.1, random shifts); the fine-tune starts from the
MILAN encoder and adds layer decay 0.75 (as MILAN/MAE fine-tune). With the random STAND-IN teacher and 300
pretraining steps (loss 1.18 -> 0.37): fine-tuned 82.5% / 81.4% / 79.7% vs scratch 75.0% / 64.7% / 77.5% for
classifier seeds 0 / 1 / 2 (+8.8 on the mean), measured with MAE's sin-cos table (`posemb='sincos2d_mae'`, as
zejiangh/MILAN). The lr sweep and the figures below were measured earlier with big_vision's table (then: fine-tuned
77.8% / 79.4% / 81.7% vs scratch 74.7% / 72.8% / 73.1%, +6.1; a pretraining with seed 1: 78.6% vs 72.8%).
Without label scarcity pretraining on a random teacher does not help: all labels, 150 steps, lr 4e-3: scratch 65.8%
vs fine-tuned 64.7% / 66.7% after 200 / 600 pretraining steps; 400 steps: 91.9% vs 89.2%.

Recipe (specs_c.md section 2, zejiangh/MILAN PRETRAIN.sh / FINETUNE.sh): MAE ViT-B/16 encoder on 49 of 196 patches,
semantic-aware masking from CLIP's last-block class-token attention (kept patches drawn without replacement
proportionally to it), prompting decoder (512 wide, 8 blocks, 16 heads), targets = all 197 CLIP tokens through
ln_post and the projection (512-d), loss 2 - 2 cos over all tokens. 400 epochs at batch 4096, AdamW lr 2.4e-3
(1.5e-4 x 4096 / 256), betas (0.9, 0.95), weight decay 0.05 (not on biases / norms), 40 warm-up epochs, cosine to
0; random-resized-crop (0.2, 1) + flip. The paper's figure: 85.4% ImageNet top-1 after fine-tuning (ViT-B/16).
MILAN feeds CLIP ImageNet-normalised inputs (not CLIP's own constants): `teacher.input_mean/std` below. The student
sees the run's [-1, 1] range instead of ImageNet normalisation (an affine difference the first layer absorbs).

Fine-tuning: 100 epochs, batch 1024, lr 4e-4 (1e-4 x 1024 / 256), layer decay 0.65, weight decay 0.05, drop-path
0.1, label smoothing 0.1, 5 warm-up epochs, min lr 1e-6, MAE's global-pool head (the class token through the
blocks, `fc_norm` on the mean of the patch tokens, no final encoder norm), a learned position embedding that starts
from the sin-cos table, the head initialised N(0, 2e-5^2) as MAE's. Mixup/CutMix/RandAugment/random erasing
are left to the data config (`train_pp` / `train_batch_pp` ops where available). The digits fine-tune below keeps
the earlier head (the mean of the final-norm patch tokens, no class token; its figures were measured so).

Linear probing (MAE's main_linprobe.py, which MILAN uses): the encoder frozen (`optimizer.freeze`: all but the
head), the class token after the final norm, a BatchNorm without scale or offset then the linear head (init
N(0, 0.01^2)), LARS (momentum 0.9, trust coefficient 0.001, no weight decay), lr 0.05 x 2048 / 256 = 0.4 for
batch 2048, 10 warm-up epochs then cosine to 0 over 100 epochs, random-resized-crop + flip, no label smoothing.
The BatchNorm takes statistics over the global batch (MAE's: per GPU). As in MAE, no encoder gradient is computed
(the updater stops the gradient of frozen parameters). Digits (`:digits_linprobe`, all 1437 training labels, 2000
steps at batch 128, LARS lr 16, seeds 0 / 1 / 2): on the `:digits_tiny` MILAN encoder 53.3 / 52.5 / 54.7% vs
42.2 / 45.6 / 49.4% for the same probe on a random-init encoder (after the 1000-step `:digits` pretraining 54.7 /
54.7 / 56.4%). Low for both: a linear probe of this tiny encoder trained on a random teacher's features (the
fine-tune above reaches ~80%). At 400 steps, lr 1 / 4 / 16 / 64 gave 26.9 / 31.7 / 42.8 / 51.9% (MILAN encoder,
seed 0) vs 19.2 / 27.8 / 38.9 / 43.1% (random encoder).
"""

import ml_collections

from configs import common
from vit_jax import config_utils

# The digits fine-tune / scratch comparison: label-scarce (`common.label_scarce_digits`: the labels of 10% of
# the training images, 400 steps at batch 128); the pretraining sees all 1437 training images without labels.
DIGITS_FINETUNE_LR = 8e-3  # The best of the scratch sweep (see the module docstring).
RUNS = ('pretrain', 'finetune', 'linprobe', 'digits', 'digits_tiny', 'digits_vit_teacher', 'digits_finetune',
        'digits_scratch', 'digits_linprobe')


def _digits_encoder():
    return dict(image_size=16, patch_size=4, hidden_size=64, mlp_dim=128, num_heads=4, num_layers=4)


# MAE's linear-probing model: the frozen encoder's class token after the final norm (fixed sin-cos position table,
# as the frozen learned one holds those values), BatchNorm without scale / offset, a linear head N(0, 0.01^2).
LINPROBE_MODEL = dict(posemb='sincos2d_mae', classifier='token', activation='gelu_exact', head_norm='batchnorm',
                      head_init_std=0.01)


def _linprobe(c, *, lr, warmup_steps):
    """MAE / MILAN linear probing: only the head trains (LARS, no weight decay), plain cross-entropy."""
    c.optimizer = ml_collections.ConfigDict(dict(c.optimizer.to_dict(), name='lars', momentum=0.9,
                                                 trust_coefficient=0.001, weight_decay=0.0, grad_clip_norm=None,
                                                 freeze=r'^(?!head/)'))
    c.lr = ml_collections.ConfigDict(dict(base=lr, warmup_steps=warmup_steps, decay='cosine', end=0.0))
    c.objective = ml_collections.ConfigDict(dict(type='classification', label_smoothing=0.0, loss='softmax'))
    return c


def get_config(arg=None):
    c = config_utils.base_config()
    run = common.parse_arg(arg, run=common.OneOf('pretrain', RUNS)).run
    c.init_from = ml_collections.ConfigDict(dict(path=None, dont_load=('head/.*', 'decoder.*', 'mask_token')))
    if run == 'pretrain':
        spe = 1_281_167 // 4096
        c.dataset = 'imagenet2012'
        c.model = ml_collections.ConfigDict(dict(name='MILAN-B/16', mask_ratio=0.75, decoder='prompt',
                                                 target_dim=512))
        c.data.train_pp = 'inception_crop'
        c.data.inception_crop_area = (0.2, 1.0)
        c.batch_size = 4096
        c.total_steps = 400 * spe
        c.log_every = 100
        c.checkpoint_every = 5000
        c.optimizer = ml_collections.ConfigDict(dict(c.optimizer.to_dict(), name='adamw', b1=0.9, b2=0.95,
                                                     weight_decay=0.05, wd_mask='no_bias_norm', grad_clip_norm=None))
        c.lr = ml_collections.ConfigDict(dict(base=1.5e-4 * 4096 / 256, warmup_steps=40 * spe, decay='cosine',
                                              end=0.0))
        c.objective = ml_collections.ConfigDict(dict(
            type='milan', attn_mask=True,
            teacher=dict(model='CLIP-ViT-B/16', overrides=dict(), weights=None, allow_random=True,
                         input_mean=common.IMAGENET_MEAN, input_std=common.IMAGENET_STD, tokens='tokens_proj')))
        c.evals = ml_collections.ConfigDict()
        return c
    if run == 'finetune':
        spe = 1_281_167 // 1024
        c.dataset = 'imagenet2012'
        # MAE's fine-tuning model (zejiangh/MILAN main_finetune.py, --global_pool): the class token goes through the
        # blocks, the mean of the patch tokens goes through `fc_norm` (no final encoder norm); the position
        # embedding is learned, starting from the pretraining's fixed sin-cos table.
        c.model = ml_collections.ConfigDict(dict(name='ViT-B/16', num_classes=1000, posemb='learn',
                                                 posemb_init='sincos2d_mae', class_token=True, classifier='gap',
                                                 fc_norm=True, activation='gelu_exact', drop_path_rate=0.1,
                                                 head_init_std=2e-5))
        c.init_from.dont_load = ('head/.*', 'decoder.*', 'mask_token', 'Transformer/encoder_norm/.*',
                                 'Transformer/posembed_input/.*', 'fc_norm/.*')
        c.data.train_pp = 'inception_crop'
        c.data.inception_crop_area = (0.08, 1.0)
        c.data.eval_pp = 'resize_crop'
        c.batch_size = 1024
        c.total_steps = 100 * spe
        c.optimizer = ml_collections.ConfigDict(dict(c.optimizer.to_dict(), name='adamw', b1=0.9, b2=0.999,
                                                     weight_decay=0.05, wd_mask='no_bias_norm', grad_clip_norm=None,
                                                     layer_decay=0.65))
        c.lr = ml_collections.ConfigDict(dict(base=1e-4 * 1024 / 256, warmup_steps=5 * spe, decay='cosine',
                                              end=1e-6))
        c.objective = ml_collections.ConfigDict(dict(type='classification', label_smoothing=0.1, loss='softmax'))
        c.evals = ml_collections.ConfigDict(dict(val=dict(type='classification', split='validation', every=5000)))
        return c
    if run == 'linprobe':
        spe = 1_281_167 // 2048
        c.dataset = 'imagenet2012'
        c.model = ml_collections.ConfigDict(dict(name='ViT-B/16', num_classes=1000, **LINPROBE_MODEL))
        c.data.train_pp = 'inception_crop'
        c.data.inception_crop_area = (0.08, 1.0)
        c.data.eval_pp = 'resize_crop'
        c.batch_size = 2048
        c.total_steps = 100 * spe
        c.evals = ml_collections.ConfigDict(dict(val=dict(type='classification', split='validation', every=5000)))
        return _linprobe(c, lr=0.05 * 2048 / 256, warmup_steps=10 * spe)
    if run in ('digits', 'digits_tiny', 'digits_vit_teacher'):
        c.dataset = 'digits'
        c.model = ml_collections.ConfigDict(dict(name='MILAN-testing', **_digits_encoder(), decoder_dim=64,
                                                 decoder_depth=2, decoder_heads=4, target_dim=32, mask_ratio=0.75))
        c.data.train_pp = 'random_shift'
        c.data.flip = False
        c.batch_size = 128
        c.total_steps = 1000 if run == 'digits' else 300
        c.log_every = 25 if run == 'digits_tiny' else 50
        c.checkpoint_every = 0
        c.optimizer = ml_collections.ConfigDict(dict(c.optimizer.to_dict(), name='adamw', b1=0.9, b2=0.95,
                                                     weight_decay=0.05, wd_mask='no_bias_norm', grad_clip_norm=None))
        c.lr = ml_collections.ConfigDict(dict(base=1.5e-3, warmup_steps=20, decay='cosine', end=0.0))
        c.objective = ml_collections.ConfigDict(dict(
            type='milan', attn_mask=True,
            teacher=dict(model='CLIP-testing', overrides=dict(image_size=16, patch_size=4, hidden_size=64,
                                                              mlp_dim=128, num_heads=4, num_layers=2,
                                                              projection_dim=32),
                         weights=None, allow_random=True, tokens='tokens_proj')))
        if run == 'digits_vit_teacher':
            # A trained vit_jax ViT as the teacher, weights from its workdir (e.g. a `:digits_scratch` run). It was
            # trained with the digits labels, so this shows the teacher path end to end; it is not self-supervised.
            c.model.target_dim = 64
            c.objective.teacher = dict(model='ViT-testing', overrides=dict(num_classes=10, **_digits_encoder(),
                                                                          posemb='sincos2d_mae',
                                                                          activation='gelu_exact', classifier='token'),
                                       weights='workdirs/milan_teacher_digits', allow_random=False, tokens='encoded')
        c.evals = ml_collections.ConfigDict(dict(fewshot=dict(type='fewshot', every=0, shots=(5, 10), seeds=3)))
        return c
    if run == 'digits_linprobe':  # The frozen MILAN digits encoder (init_from.path: the :digits workdir).
        c.dataset = 'digits'
        c.model = ml_collections.ConfigDict(dict(name='ViT-testing', num_classes=10, **_digits_encoder(),
                                                 **LINPROBE_MODEL))
        c.data.train_pp = 'random_shift'
        c.data.flip = False
        c.batch_size = 128
        c.total_steps = 2000  # A forward pass of the frozen encoder per step: ~30 s on 2 CPU cores.
        c.log_every = 200
        c.checkpoint_every = 0
        c.evals = ml_collections.ConfigDict(dict(val=dict(type='classification', split='test', every=0)))
        c.init_from.path = 'workdirs/milan_digits'
        # LARS steps each weight by lr x 0.001 of its norm: MAE's lr (0.1 x 16384 / 256 = 6.4) at this batch would
        # be 0.05; lr 16 was the best of 1 / 4 / 16 / 64 at 400 steps (module docstring).
        return _linprobe(c, lr=16.0, warmup_steps=200)
    # 'digits_finetune' or 'digits_scratch'.
    c.dataset = 'digits'
    # Global average pooling as MILAN fine-tunes; the pretrained class token is not used (dont_load 'cls').
    c.model = ml_collections.ConfigDict(dict(name='ViT-testing', num_classes=10, **_digits_encoder(),
                                             posemb='sincos2d_mae', classifier='gap', activation='gelu_exact'))
    # The same recipe for both; the fine-tune only adds layer decay (as MILAN/MAE fine-tune). lr: the best of the
    # scratch sweep (see the module docstring).
    return common.label_scarce_digits(
        c, lr=DIGITS_FINETUNE_LR, layer_decay=0.75 if run == 'digits_finetune' else None,
        init_path='workdirs/milan_digits' if run == 'digits_finetune' else None,
        dont_load=('head/.*', 'decoder.*', 'mask_token', 'cls'))
