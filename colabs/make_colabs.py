"""Writes colabs/*.ipynb, executed, so that GitHub shows their figures.

    python colabs/make_colabs.py --execute            # all notebooks, run top to bottom on the CPU (~15-30 min)
    python colabs/make_colabs.py --execute tour.ipynb # one of them
    python colabs/make_colabs.py                      # sources only, no outputs (quick; for editing)

Execution uses the notebooks' own settings (built-in data, not the smoke settings of tests/test_colabs.py), runs in
colabs/ like Jupyter, writes its runs under colabs/colab_workdirs/ (ignored by git), and stores the outputs without
stderr streams (library warnings), execution timestamps, or this machine's absolute paths.
"""
# ruff: noqa: E501  (notebook cell sources are kept as written in the notebooks)
import argparse
import os
import sys
import time

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = os.path.dirname(os.path.abspath(__file__))  # colabs/
REPO = os.path.dirname(ROOT)

SETUP = '''# Setup. On Colab: clone this repository and install it first (the runtime's CPU is enough), e.g.
#   !git clone <URL of this repository> vit_jax && pip install -q -e vit_jax && cd vit_jax
import os
import sys

import matplotlib.pyplot as plt
import numpy as np

# tests/test_colabs.py runs every notebook headless with VIT_JAX_COLAB_SMOKE=1: tiny settings, a few steps.
SMOKE = os.environ.get('VIT_JAX_COLAB_SMOKE', '0') == '1'
REPO = next((p for p in ('.', '..', 'vit_jax') if os.path.isdir(os.path.join(p, 'configs'))), '.')
WORK = os.environ.get('VIT_JAX_COLAB_WORKDIR') or os.path.abspath('colab_workdirs')
os.makedirs(WORK, exist_ok=True)
from vit_jax import console  # noqa: E402

console.setup()  # Library logging (absl/Orbax/TensorFlow INFO lines) off; console.setup(verbose=True) brings it back.
%matplotlib inline
'''


def build(cells, name):
    """The notebook `name` made of `cells` (strings; 'md:' starts a markdown cell), without outputs."""
    book = new_notebook(cells=[new_markdown_cell(c[3:]) if c.startswith('md:') else new_code_cell(c.strip('\n'))
                               for c in cells])
    book.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    book.metadata['language_info'] = {'name': 'python'}
    book.metadata['colab'] = {'provenance': []}
    for i, cell in enumerate(book.cells):  # Stable ids: regenerating leaves unchanged cells unchanged.
        cell['id'] = f'{name.split(".")[0][:20]}-{i:02d}'
    nbformat.validate(book)
    return book


def execute(book, timeout=3600):
    """Runs `book` top to bottom in colabs/ (a fresh python3 kernel of this interpreter) and tidies its outputs."""
    import nbclient

    env_work = os.path.join(ROOT, 'colab_workdirs')
    os.environ['VIT_JAX_COLAB_WORKDIR'] = env_work
    os.environ.pop('VIT_JAX_COLAB_SMOKE', None)
    os.environ['MPLBACKEND'] = 'Agg'
    # The kernelspec runs `python`; put this interpreter's directory first so that the kernel is this environment's.
    os.environ['PATH'] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', '')
    nbclient.NotebookClient(book, kernel_name='python3', timeout=timeout,
                            resources={'metadata': {'path': ROOT}}).execute()
    tidy(book)
    return book


def tidy(book):
    """Drops stderr streams and execution timestamps; writes paths under the repository relative to it."""
    prefixes = sorted({REPO + os.sep, os.path.realpath(REPO) + os.sep}, key=len, reverse=True)
    book.metadata.pop('widgets', None)
    for cell in book.cells:
        cell.metadata.pop('execution', None)
        if cell.cell_type != 'code':
            continue
        outputs = []
        for out in cell.get('outputs', []):
            if out.get('output_type') == 'stream':
                if out.get('name') == 'stderr':
                    continue
                for p in prefixes:
                    out['text'] = out['text'].replace(p, '')
            elif 'data' in out and 'text/plain' in out['data']:
                for p in prefixes:
                    out['data']['text/plain'] = out['data']['text/plain'].replace(p, '')
            outputs.append(out)
        cell['outputs'] = outputs
    return book


def write(book, name):
    nbformat.validate(book)
    with open(os.path.join(ROOT, name), 'w') as f:
        nbformat.write(book, f)


# ---------------------------------------------------------------------------------------------------------------
TOUR = [
    '''md:# A tour of vit_jax: build a model, run inference, look at its attention

Runs top to bottom on a CPU runtime in a few minutes with the built-in UCI digits (no download). The settings cell
switches to a released checkpoint and your own image.''',
    SETUP,
    '''md:## Settings
Defaults use the built-in digits: a small ViT is trained for a minute so that its attention means something. For a
released checkpoint, download it first (e.g. `gsutil cp gs://vit_models/imagenet21k+imagenet2012/ViT-B_16.npz .`)
and set `CHECKPOINT`, `MODEL` and `IMAGE_PATH`.''',
    '''# ---- Settings -------------------------------------------------------------------------------------------------
USE_REAL_DATA = False  # True: run the released checkpoint below on IMAGE_PATH instead of the digits.
MODEL = 'ViT-B/16'     # Any name from models.list_models() (built and inspected below without weights).
CHECKPOINT = None      # e.g. 'ViT-B_16.npz' from gs://vit_models/imagenet21k+imagenet2012/ViT-B_16.npz (384 px)
IMAGE_SIZE = 384       # The checkpoint's resolution (the imagenet21k+imagenet2012 release: 384).
IMAGE_PATH = None      # Your own image (JPEG/PNG) when USE_REAL_DATA.
TRAIN_STEPS = 20 if SMOKE else 400  # Steps of the small digits ViT trained when there is no checkpoint.''',
    '''md:## 1. The model zoo
Every variant is registered under its paper's name.''',
    '''from vit_jax import models

names = models.list_models()
print(f'{len(names)} registered variants, e.g.:')
by_paper = {}
for n in names:
    by_paper.setdefault(models.get_entry(n).paper, []).append(n)
for paper, ns in sorted(by_paper.items()):
    print(f'  {paper:12s} {", ".join(ns[:6])}{" ..." if len(ns) > 6 else ""}')''',
    '''md:## 2. Build any registered model
`jax.eval_shape` shows the parameter count and the named intermediates in `out` without materialising weights.''',
    '''import jax
import jax.numpy as jnp

model = models.get_model(MODEL, num_classes=1000)
print(MODEL, f'{models.count_params(model):,} parameters')
shapes = models.init_shapes(model)
x = jax.ShapeDtypeStruct(models.input_shape(model, 1), jnp.float32)
logits, out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), shapes, x)
print('logits', logits.shape)
for k, v in list(out.items())[:8]:
    print(f'  out[{k!r}]', getattr(v, 'shape', None))''',
    '''md:## 3. Inference
Without a checkpoint: train a small ViT (2 layers, width 32, 4x4 patches) on the 32x32 digits with the library's
trainer, then predict the test digits.''',
    '''from vit_jax import config_utils, data, train
from vit_jax.tools import attention

if USE_REAL_DATA and CHECKPOINT:
    from vit_jax import predict
    net, variables, preprocess = attention.load_model(CHECKPOINT, model=MODEL, image_size=IMAGE_SIZE)
    raw = predict.read_image(IMAGE_PATH)
    images = preprocess(raw)[None]
    labels = [None]  # Your image's true label is not known here.
    value_range = (-1.0, 1.0)
else:
    c = config_utils.base_config()
    c.dataset = 'digits'
    c.model = dict(name='ViT-testing', num_classes=10, image_size=32, patch_size=4)
    c.data.train_pp = 'resize'
    c.data.flip = False
    c.batch_size = 64
    c.total_steps = TRAIN_STEPS
    c.log_every = max(TRAIN_STEPS // 4, 1)
    c.eval_every = 0
    c.checkpoint_every = 0
    c.optimizer = dict(c.optimizer, name='adamw', weight_decay=0.05, grad_clip_norm=1.0)
    c.lr = dict(base=3e-3, warmup_steps=min(20, TRAIN_STEPS // 2), decay='cosine', end=1e-5)
    c.evals = dict(val=dict(type='classification', split='test', every=0))
    run_dir = os.path.join(WORK, 'tour_digits')
    result = train.train_and_evaluate(c, run_dir)
    net = train.build_model(c)
    variables = {'params': result['state'].params}
    value_range = (-1.0, 1.0)
    batch = next(iter(data.get_dataset('digits', 'test', batch_size=8, image_size=(32, 32), train=False,
                                       data_config={'value_range': value_range})))
    images = np.asarray(batch['image'])
    labels = [int(t) for t in np.asarray(batch['label'])]
    print('test accuracy', result.get('val/accuracy'))

logits, attn = attention.get_attention(net, variables, jnp.asarray(images))
pred = np.argmax(logits, -1)
fig, axes = plt.subplots(1, len(images), figsize=(1.6 * len(images), 2.1), squeeze=False)
for ax, im, p, t in zip(axes[0], images, pred, labels):
    ax.imshow(attention.image_to_uint8(im, value_range))
    if t is None:
        ax.set_title(f'pred {p}', fontsize=9)
    else:  # Green when the prediction is right, red when it is wrong.
        ax.set_title(f'pred {p}\\ntrue {t}', fontsize=9, color='green' if p == t else 'red')
    ax.axis('off')
plt.show()
print(f'{len(attn)} layers of attention, each {attn[0].shape} (batch, heads, tokens, tokens)')''',
    '''md:## 4. Attention maps
*Rollout* (Abnar & Zuidema; figure 6 of the ViT paper): average the heads, add the identity, re-normalise, multiply
over layers, read the class token's row. *Heads*: each head of the last layer.''',
    '''rollout = attention.rollout_maps(net, variables, jnp.asarray(images))
heads = attention.head_maps(net, variables, jnp.asarray(images))
for i in range(min(2, len(images))):
    raw_i = attention.image_to_uint8(images[i], value_range)
    plt.figure(figsize=(10, 3))
    plt.imshow(attention.figure(raw_i, np.concatenate([rollout[i][None], heads[i]]),
                                titles=['rollout'] + [f'last layer, head {h}' for h in range(heads.shape[1])]))
    plt.axis('off')
    plt.show()''',
    '''md:The same from the command line (a released `.npz` with `--model`, or a run's workdir):
```
python -m vit_jax.tools.attention --model ViT-B/16 --checkpoint ViT-B_16.npz --image cat.jpg --out attn.png
python -m vit_jax.tools.attention --checkpoint WORKDIR --image digit.png --out heads.png --mode heads
```''',
    '''md:## 5. Training curves
Every run writes `WORKDIR/curves.png` at its end; `python -m vit_jax.tools.plot_metrics WORKDIR [...] --out x.png`
draws one or more runs.''',
    '''from IPython.display import Image, display

if not (USE_REAL_DATA and CHECKPOINT):
    display(Image(os.path.join(run_dir, 'curves.png')))''',
]

# ---------------------------------------------------------------------------------------------------------------
FINETUNE = [
    '''md:# Fine-tune a ViT on your own images

The README recipe ("Fine-tune on your own images") on a CPU: this notebook writes a small image folder from the
built-in digits (`root/{train,test}/<class>/*.png`), makes a stand-in "pretrained" checkpoint, fine-tunes with the
`folder:` dataset and the ViT paper's transfer config (`configs/vit_b16.py:folder:...`), and predicts.''',
    SETUP,
    '''# ---- Settings -------------------------------------------------------------------------------------------------
USE_REAL_DATA = False  # True: fine-tune ViT-B/16 on IMAGE_FOLDER from CHECKPOINT (an accelerator is advisable).
IMAGE_FOLDER = None    # Your images: IMAGE_FOLDER/train/<class>/*.jpg (and optionally test/<class>/*.jpg).
CHECKPOINT = None      # e.g. 'ViT-B_16.npz' from gs://vit_models/imagenet21k/ViT-B_16.npz (gsutil cp it first).
PER_CLASS = 10 if SMOKE else 60       # Digits written per class (train); the test split gets a third of that.
PRETRAIN_STEPS = 5 if SMOKE else 300  # The stand-in checkpoint: a tiny ViT trained on the built-in digits.
FINETUNE_STEPS = 5 if SMOKE else 150''',
    '''md:## 1. An image folder
One directory per class; any image size and mode.''',
    '''from PIL import Image as PILImage

from vit_jax.data import datasets

if not USE_REAL_DATA:
    IMAGE_FOLDER = os.path.join(WORK, 'my_digits')
    arrays = datasets.digits_arrays()
    for split, n in (('train', PER_CLASS), ('test', max(PER_CLASS // 3, 2))):
        images, labels, _ = arrays[split]
        count = {}
        for i, (im, lbl) in enumerate(zip(images, labels)):
            if count.get(lbl, 0) >= n:
                continue
            count[lbl] = count.get(lbl, 0) + 1
            d = os.path.join(IMAGE_FOLDER, split, f'digit_{lbl}')
            os.makedirs(d, exist_ok=True)
            PILImage.fromarray(im).resize((48, 48)).save(os.path.join(d, f'{i:04d}.png'))
for split in ('train', 'test'):
    root = os.path.join(IMAGE_FOLDER, split)
    if os.path.isdir(root):
        print(split, {c: len(os.listdir(os.path.join(root, c))) for c in sorted(os.listdir(root))})''',
    '''md:## 2. Pretrained weights
With a released `.npz` this step is skipped. Here a tiny ViT trained on the built-in digits stands in for it and is
saved in the release's `.npz` layout.''',
    '''from vit_jax import checkpoint, config_utils, train

TINY = dict(name='ViT-testing', image_size=32, patch_size=4)  # 2 layers, width 32, 4x4 patches.
if not USE_REAL_DATA:
    c = config_utils.base_config()
    c.dataset = 'digits'
    c.model = dict(TINY, num_classes=10)
    c.data.train_pp = 'resize'
    c.data.flip = False
    c.batch_size = 64
    c.total_steps = PRETRAIN_STEPS
    c.log_every = max(PRETRAIN_STEPS // 3, 1)
    c.eval_every = c.checkpoint_every = 0
    c.optimizer = dict(c.optimizer, name='adamw', weight_decay=0.05, grad_clip_norm=1.0)
    c.lr = dict(base=3e-3, warmup_steps=min(20, PRETRAIN_STEPS // 2), decay='cosine', end=1e-5)
    c.evals = {}
    pre = train.train_and_evaluate(c, os.path.join(WORK, 'pretrain_digits'))
    CHECKPOINT = os.path.join(WORK, 'pretrained_tiny.npz')
    checkpoint.save_npz(CHECKPOINT, pre['state'].params)
print('checkpoint:', CHECKPOINT)''',
    '''md:## 3. Fine-tune
The paper's transfer recipe for an image folder (SGD momentum 0.9, cosine, clip 1, the head replaced by a
zero-initialised one, position embeddings resampled). The command-line equivalent:
```
python -m vit_jax.main --config=configs/vit_b16.py:folder:$PWD/my_images --workdir=workdirs/my_vit \\
    --config.init_from.path=ViT-B_16.npz
```''',
    '''c = config_utils.load(os.path.join(REPO, 'configs', 'vit_b16.py') + ':folder:' + IMAGE_FOLDER)
c.init_from.path = CHECKPOINT
if USE_REAL_DATA:
    c.model.image_size = 224
    c.batch_size = 32
    c.optimizer.accum_steps = 16  # The paper's batch 512 as 16 x 32.
else:  # The tiny stand-in model on the small folder, for a CPU.
    c.model = dict(TINY, num_classes=c.model.num_classes)
    c.data.train_pp = 'resize'  # 48 px PNGs -> 32 px; digits are not mirrored.
    c.data.flip = False
    c.data.shuffle_buffer = 1000
    c.batch_size = 32
    c.total_steps = FINETUNE_STEPS
    c.lr.warmup_steps = min(c.lr.warmup_steps, FINETUNE_STEPS // 3)
    c.lr.base = 0.03
    c.log_every = max(FINETUNE_STEPS // 5, 1)
    c.eval_every = c.evals.val.every = 0
    c.checkpoint_every = 0
ft_dir = os.path.join(WORK, 'finetune_folder')
result = train.train_and_evaluate(c, ft_dir)
print('test accuracy after fine-tuning:', result.get('val/accuracy'))''',
    '''md:## 4. Predict
`vit_jax.predict.Predictor` applies the run's eval preprocessing to any image file; the command line:
`python -m vit_jax.predict --checkpoint WORKDIR image.jpg`.''',
    '''import glob

from vit_jax import predict

config = predict.load_config(None, ft_dir)
predictor = predict.Predictor(config, ft_dir)
names = predict.class_names(config, None, predictor.num_classes)
files = sorted(glob.glob(os.path.join(IMAGE_FOLDER, 'test', '*', '*')))[::max(1, len(glob.glob(os.path.join(IMAGE_FOLDER, 'test', '*', '*'))) // 8)][:8]
imgs = [predict.read_image(f) for f in files]
probs = predictor(imgs)
fig, axes = plt.subplots(1, len(imgs), figsize=(1.8 * len(imgs), 2.2), squeeze=False)
for ax, im, f, p in zip(axes[0], imgs, files, probs):
    ax.imshow(im)
    ax.set_title(f'{names[int(np.argmax(p))]}\\n({os.path.basename(os.path.dirname(f))})', fontsize=8)
    ax.axis('off')
plt.show()''',
    '''md:## 5. Curves
The trainer wrote `curves.png` into the workdir.''',
    '''from IPython.display import Image, display

display(Image(os.path.join(ft_dir, 'curves.png')))''',
]

# ---------------------------------------------------------------------------------------------------------------
ZOO = [
    '''md:# Model zoo: parameters, compute, and accuracy vs compute

Parameters come from `models.count_params` (via `jax.eval_shape`: no weights are materialised); compute from XLA's
cost analysis of the lowered forward pass (no compilation), reported as multiply-adds (GMACs = flops / 2), the
unit most of these papers call "FLOPs". The plot shows the papers' own ImageNet-1k top-1 vs compute figures.''',
    SETUP,
    '''# ---- Settings -------------------------------------------------------------------------------------------------
ALL_MODELS = False  # True: every registered variant (several minutes); False: one list of representatives.
MODELS = ['ViT-Ti/16', 'ViT-S/16', 'ViT-B/16', 'ViT-B/32', 'ViT-L/16', 'R50+ViT-B/16', 'ViTC-1GF', 'ViTC-4GF',
          'DeiT-S/16-distilled', 'CCT-7/3x1', 'CCT-14/7x2', 'CvT-13', 'CvT-21', 'T2T-ViT-14', 'CrossViT-S', 'DHVT-S']
if SMOKE:
    MODELS = ['ViT-Ti/16', 'CvT-13', 'CCT-7/3x1']''',
    '''import jax
import jax.numpy as jnp

from vit_jax import models

try:  # The repository's table tool, when present, is the reference; the cell below computes the same figures.
    from vit_jax.tools import model_table  # noqa: F401
except ImportError:
    model_table = None


def gmacs(model):
    """Forward multiply-adds (GMACs) of one image, from XLA's cost analysis of the lowered computation."""
    shapes = models.init_shapes(model)
    x = jax.ShapeDtypeStruct(models.input_shape(model, 1), jnp.float32)
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(shapes, x)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost['flops']) / 2e9 if cost and 'flops' in cost else float('nan')


names = [n for n in models.list_models() if models.get_entry(n).paper not in ('test',)] if ALL_MODELS else MODELS
rows = []
for name in names:
    try:
        m = models.get_model(name)
        size = models.input_shape(m, 1)[1:-1]
        rows.append((name, models.get_entry(name).paper, 'x'.join(map(str, size)), models.count_params(m) / 1e6,
                     gmacs(m)))
    except Exception as e:  # Keep the table going (e.g. a model needing an option).
        print(f'{name}: skipped ({type(e).__name__}: {str(e)[:80]})')
print(f'{"model":24s} {"paper":12s} {"input":>10s} {"params (M)":>11s} {"GMACs":>8s}')
for r in rows:
    print(f'{r[0]:24s} {r[1]:12s} {r[2]:>10s} {r[3]:11.2f} {r[4]:8.2f}')''',
    '''md:The repository's table tool (`python -m vit_jax.tools.model_table --filter REGEX`) compiles each model and puts
the papers' own parameter and FLOP figures next to the computed ones:''',
    '''if model_table is not None and not SMOKE:
    print(model_table.format_rows(model_table.rows('^(ViT-B/16|CvT-13)$')))''',
    '''md:## Accuracy vs compute, as published
ImageNet-1k top-1 (trained on ImageNet-1k only, 224 px) against the compute each paper reports (multiply-adds).
Sources: ViT_P / ViT_C — "Early Convolutions Help Transformers See Better", tables 1-2 (400 epochs); DeiT-style
ViT-T/S/B — the DTN repository's README table (LN baselines); CvT — CvT paper table 3; T2T-ViT — T2T-ViT paper
(Performer versions); CrossViT — CrossViT paper table 2; CCT-14/7x2 — the Compact Transformers README.''',
    '''PUBLISHED = {  # family: [(model, GMACs, top-1 %)]
    'ViT_P (Early conv, T1-2)': [('ViTP-1GF', 1.1, 72.3), ('ViTP-4GF', 3.9, 80.4), ('ViTP-18GF', 17.5, 82.1)],
    'ViT_C (Early conv, T1-2)': [('ViTC-1GF', 1.1, 75.3), ('ViTC-4GF', 4.0, 81.4), ('ViTC-18GF', 17.7, 83.0)],
    'DeiT-style ViT (DTN README)': [('ViT-Ti/16', 1.26, 72.2), ('ViT-S/16', 4.60, 79.9), ('ViT-B/16', 17.58, 81.7)],
    'CvT (T3)': [('CvT-13', 4.5, 81.6), ('CvT-21', 7.1, 82.5)],
    'T2T-ViT': [('T2T-ViT-14', 4.8, 81.5)],
    'CrossViT (T2)': [('CrossViT-Ti', 1.6, 73.4), ('CrossViT-S', 5.6, 81.0), ('CrossViT-B', 21.2, 82.2)],
    'CCT (README)': [('CCT-14/7x2', 5.11, 80.67)],
}
computed = {r[0]: r[4] for r in rows}
fig, ax = plt.subplots(figsize=(8, 5))
for family, pts in PUBLISHED.items():
    xs, ys = [p[1] for p in pts], [p[2] for p in pts]
    ax.plot(xs, ys, marker='o', label=family)
    for name, x, y in pts:
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, -9), textcoords='offset points')
        if name in computed:  # Our cost analysis of the same model, at the paper's accuracy.
            ax.scatter([computed[name]], [y], marker='x', color='k', zorder=3)
ax.set_xscale('log')
ax.set_xlabel('GMACs per 224 px image (published; x = computed here)')
ax.set_ylabel('ImageNet-1k top-1 (%)')
ax.set_title('Accuracy vs compute (ImageNet-1k training only)')
ax.grid(True, alpha=0.3)
ax.legend(fontsize=7)
plt.show()
for family, pts in PUBLISHED.items():
    for name, x, _ in pts:
        if name in computed:
            print(f'{name:12s} published {x:6.2f} GMACs, computed {computed[name]:6.2f}')''',
]

# ---------------------------------------------------------------------------------------------------------------
ROBUST = [
    '''md:# Robustness: PatchDrop and adversarial curves of two models

"Intriguing Properties of Vision Transformers" (occlusion by PatchDrop) and PGD accuracy, for a ViT trained normally
and the same ViT trained adversarially (the light robust-ViT recipe, `configs/robust_vit_digits.py`), on the
built-in digits at 16 px. The evaluators (`vit_jax/evaluators/robustness.py`) are the ones the configs use.''',
    SETUP,
    '''# ---- Settings -------------------------------------------------------------------------------------------------
USE_REAL_DATA = False  # True: evaluate two ImageNet runs of configs/robust_vit_s16.py (prepared TFDS imagenet2012).
CHECKPOINTS = None     # With USE_REAL_DATA: {'clean': 'workdirs/vit_s16_clean', 'adversarial': 'workdirs/rvit_s16'}
TRAIN_STEPS = 8 if SMOKE else 400     # Per model (the config's own: 400, ~2-3 min on 2 CPU cores).
NUM_EXAMPLES = 64 if SMOKE else None  # Test images evaluated (None: all 360).
PGD_STEPS = 2 if SMOKE else 10
EPS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)''',
    '''from vit_jax import config_utils, train

evals = dict(
    drop=dict(type='patchdrop', mode='random', num_examples=NUM_EXAMPLES, every=0),
    pgd=dict(type='adversarial', attack='pgd', eps=EPS, num_steps=PGD_STEPS, num_examples=NUM_EXAMPLES, every=0),
)
results = {}
for arg in ('clean', 'adversarial'):
    if USE_REAL_DATA:
        c = config_utils.load(os.path.join(REPO, 'configs', 'robust_vit_s16.py'))
        c.total_steps = 0  # Evaluate the restored checkpoint only.
    else:
        c = config_utils.load(os.path.join(REPO, 'configs', f'robust_vit_digits.py:{arg}'))
        c.total_steps = TRAIN_STEPS
        c.log_every = max(TRAIN_STEPS // 4, 1)
    c.evals = dict(val=dict(type='classification', split='test', every=0), **evals)
    wd = CHECKPOINTS[arg] if USE_REAL_DATA else os.path.join(WORK, f'robust_{arg}')
    results[arg] = train.train_and_evaluate(c, wd)
    print(arg, {k: round(v, 3) for k, v in results[arg].items()
                if isinstance(v, float) and ('accuracy' in k) and k.startswith(('val', 'pgd'))})''',
    '''md:## The curves''',
    '''def curve(result, prefix):
    pts = sorted((float(k.split('_')[-1].replace('eps', '')), v) for k, v in result.items()
                 if k.startswith(prefix) and ('accuracy_' in k) and not k.endswith('seconds'))
    return [p[0] for p in pts], [p[1] for p in pts]


fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
for arg, res in results.items():
    x, y = curve(res, 'drop/accuracy_')
    a1.plot([v / 100 for v in x], y, marker='o', label=arg)
    x, y = curve(res, 'pgd/accuracy_eps')
    a2.plot([0.0] + x, [res['pgd/clean_accuracy']] + y, marker='o', label=arg)
a1.set(title='Random PatchDrop', xlabel='fraction of patches dropped', ylabel='accuracy')
a2.set(title=f'PGD-{PGD_STEPS} (L-inf)', xlabel='eps (/255)', ylabel='accuracy')
for a in (a1, a2):
    a.grid(True, alpha=0.3)
    a.legend()
plt.show()''',
    '''md:## What PatchDrop does to the inputs
The image is cut into the model's patch grid and a random set of cells is blacked out (one set per batch).''',
    '''import jax
import jax.numpy as jnp

from vit_jax import data
from vit_jax.evaluators import robustness

if not USE_REAL_DATA:
    batch = next(iter(data.get_dataset('digits', 'test', batch_size=4, image_size=(16, 16), train=False,
                                       data_config={'value_range': (-1.0, 1.0)})))
    x = jnp.asarray(batch['image'])
    rows = []
    for k in (0, 3, 6, 9):
        drop = robustness.random_drop_mask(jax.random.PRNGKey(k), (4, 4), int(k * 16 / 10))
        rows.append(np.asarray(robustness.drop_cells(x, drop, -1.0)))
    fig, axes = plt.subplots(len(rows), 4, figsize=(5, 5))
    for r, imgs in enumerate(rows):
        for q in range(4):
            axes[r, q].imshow((imgs[q] + 1) / 2)
            axes[r, q].axis('off')
        axes[r, 0].set_title(f'{(0, 3, 6, 9)[r] * 10}% dropped', fontsize=8, loc='left')
    plt.show()''',
    '''md:The evaluators also wrote their curves as PNG and JSON under each workdir's `robustness/` folder, and the
trainer wrote `curves.png`:''',
    '''for arg, res in results.items():
    print(arg, sorted(os.listdir(os.path.join(res['workdir'], 'robustness'))))''',
]

# ---------------------------------------------------------------------------------------------------------------
DENSE = [
    '''md:# Dense prediction: segmentation and depth drawn over images

Segmenter (linear decoder) and DPT (depth head) trained briefly on the built-in `dense_digits` (digits on
32x32 canvases with per-pixel classes and a synthetic depth map; no download), then their predictions drawn with
`vit_jax.tools.dense_vis`: image | prediction | ground truth.''',
    SETUP,
    '''# ---- Settings -------------------------------------------------------------------------------------------------
USE_REAL_DATA = False  # True: ADE20K / NYUv2 configs (prepared TFDS data) and the CHECKPOINTS runs below.
CHECKPOINTS = None     # With USE_REAL_DATA: {'seg': 'workdirs/seg_ade20k', 'depth': 'workdirs/dpt_nyu'}
SEG_CONFIG = 'segmenter_ade20k.py' if USE_REAL_DATA else 'segmenter_digits.py:linear'
DEPTH_CONFIG = 'dpt_nyu.py' if USE_REAL_DATA else 'dpt_digits.py'
TRAIN_STEPS = 5 if SMOKE else 300   # The configs' own: 4000 (Segmenter), 1500 (DPT); 5-10 min each on 2 cores.
NUM_SHOWN = 4''',
    '''from vit_jax import config_utils, data, train


def run(config_file, name):
    c = config_utils.load(os.path.join(REPO, 'configs', config_file))
    if USE_REAL_DATA:
        c.total_steps = 0
    else:
        c.total_steps = TRAIN_STEPS
        c.log_every = max(TRAIN_STEPS // 3, 1)
        c.batch_size = 16 if SMOKE else 64
        c.data.dense_num_train = 64 if SMOKE else 2000
        c.data.dense_num_test = 16 if SMOKE else 500
    c.eval_every = c.checkpoint_every = 0
    for ev in c.evals.values():
        ev.every = 0
    wd = CHECKPOINTS[name] if USE_REAL_DATA else os.path.join(WORK, f'dense_{name}')
    res = train.train_and_evaluate(c, wd)
    print(name, {k: round(v, 3) for k, v in res.items() if isinstance(v, float) and k.startswith('val/')})
    return c, res


seg_config, seg = run(SEG_CONFIG, 'seg')
depth_config, dep = run(DEPTH_CONFIG, 'depth')''',
    '''md:## Predictions''',
    '''import jax.numpy as jnp

from vit_jax import objectives
from vit_jax.tools import dense_vis


def test_batch(config, n):
    model = train.build_model(config)
    size = train.model_image_size(model)
    ds = data.get_dataset(config.dataset, config.evals.val.get('split', 'test'), batch_size=n, image_size=size,
                          train=False, data_config=dict(config.data))
    return model, next(iter(ds))


def show(rows, title):
    fig, axes = plt.subplots(len(rows), 1, figsize=(7, 2.4 * len(rows)), squeeze=False)
    for ax, r in zip(axes[:, 0], rows):
        ax.imshow(dense_vis.side_by_side(r))
        ax.axis('off')
    axes[0, 0].set_title(title, fontsize=9)
    plt.show()


vr = tuple(seg_config.data.get('value_range', (-1.0, 1.0)))
model, batch = test_batch(seg_config, NUM_SHOWN)
obj = objectives.build(seg_config, model)
logits = np.asarray(obj.predict(seg['state'], {'image': jnp.asarray(batch['image'])})['logits'])
k = model.num_classes
show([[dense_vis.image_to_uint8(batch['image'][i], vr), dense_vis.colorize_labels(logits[i].argmax(-1), k),
       dense_vis.colorize_labels(batch['label'][i], k)] for i in range(NUM_SHOWN)],
     'segmentation: image | prediction | ground truth')

model, batch = test_batch(depth_config, NUM_SHOWN)
obj = objectives.build(depth_config, model)
pred = np.asarray(obj.predict(dep['state'], {'image': jnp.asarray(batch['image'])})['prediction'])
rows = []
for i in range(NUM_SHOWN):
    gt = np.asarray(batch['depth'][i])
    p = pred[i].squeeze()
    valid = gt > 0
    # The prediction is relative (inverse) depth: align scale and shift to the ground truth's inverse depth first
    # (least squares, as the depth evaluator's 'scale_shift' alignment).
    inv_gt = np.where(valid, 1.0 / np.maximum(gt, 1e-6), 0.0)
    m = valid & np.isfinite(p)
    if m.sum() > 2 and np.std(p[m]) > 1e-8:
        a, b = np.linalg.lstsq(np.stack([p[m], np.ones(m.sum())], 1), inv_gt[m], rcond=None)[0]
    else:  # An untrained (constant) prediction: show it as the mean depth.
        a, b = 0.0, float(inv_gt[m].mean()) if m.any() else 1.0
    p_depth = 1.0 / np.maximum(a * np.nan_to_num(p) + b, 1e-3)
    lo, hi = float(gt[valid].min()), float(gt[valid].max())
    rows.append([dense_vis.image_to_uint8(batch['image'][i], vr), dense_vis.colorize_depth(p_depth, lo, hi),
                 dense_vis.colorize_depth(gt, lo, hi)])
show(rows, 'depth (near = yellow, far = blue): image | prediction | ground truth')''',
    '''md:## Overlay
The segmentation drawn over the image (half transparent).''',
    '''model, batch = test_batch(seg_config, NUM_SHOWN)
over = [(0.5 * dense_vis.image_to_uint8(batch['image'][i], vr) +
         0.5 * dense_vis.colorize_labels(logits[i].argmax(-1), k)).astype(np.uint8) for i in range(NUM_SHOWN)]
plt.figure(figsize=(8, 2.5))
plt.imshow(dense_vis.side_by_side(over))
plt.axis('off')
plt.show()''',
]

NOTEBOOKS = {
    'tour.ipynb': TOUR,
    'finetune_own_images.ipynb': FINETUNE,
    'model_zoo.ipynb': ZOO,
    'robustness.ipynb': ROBUST,
    'dense_prediction.ipynb': DENSE,
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--execute', action='store_true', help='Run each notebook and store it with its outputs.')
    p.add_argument('names', nargs='*', help=f'Notebooks to write (default: all): {", ".join(NOTEBOOKS)}.')
    args = p.parse_args(argv)
    unknown = sorted(set(args.names) - set(NOTEBOOKS))
    if unknown:
        p.error(f'unknown notebook(s) {", ".join(unknown)}; choose from {", ".join(NOTEBOOKS)}')
    for name in args.names or NOTEBOOKS:
        book = build(NOTEBOOKS[name], name)
        if args.execute:
            t0 = time.time()
            execute(book)
            images = sum('image/png' in o.get('data', {}) for c in book.cells for o in c.get('outputs', []))
            print(f'{name}: executed in {time.time() - t0:.0f} s, {images} figure(s)', flush=True)
        write(book, name)
    print('written to', ROOT)


if __name__ == '__main__':
    main()
