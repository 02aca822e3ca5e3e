"""Outpainting inputs: the full image is the target, its centre crop the model input.

Preprocessing ops (pipe strings for `config.data.train_pp` / `eval_pp`):

    OUTPAINT_TRAIN_PP = 'outpaint_crop|flip|value_range|outpaint_split'   # QueryOTR training
    OUTPAINT_EVAL_PP = 'outpaint_crop|value_range|outpaint_split'         # QueryOTR test

  outpaint_crop(size=None): the full image at size x size (default: the model input size times the data config's
      `outpaint_scale`, 1.5 for 128 -> 192). Training: a random resized crop (torchvision's RandomResizedCrop
      defaults: 8%-100% of the area, aspect 3/4-4/3; data config `outpaint_crop_area`); evaluation: a plain resize
      to size x size (the aspect ratio is not kept, as the official test transform).
  outpaint_split: 'target' = the full image; 'image' = its central crop at the model input size.

Batches: {'image': [B, 128, 128, 3], 'target': [B, 192, 192, 3], 'label'} in the data config's value range.

Datasets (no download needed for the first):
  'outpaint_samples': real photographs cut into many crops: scikit-learn's two bundled sample images
      (`sklearn.datasets.load_sample_images`: china.jpg, flower.jpg, 427x640). Train crops come from the left
      512 columns of each photo, test crops from the right 112 columns (a 16 px gap in between), so no test pixel is
      ever seen in training. Crops are squares of random size and position (fixed seed), stored at 96x96.
  'flat_folder:/path': your own images without class folders: /path/train/**/*.{jpg,jpeg,png} and
      /path/test/**/* (label 0), the layout of the Scenery / Building / WikiArt outpainting sets.
Any TFDS image dataset works with the same pipes (e.g. 'places365_small').
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from vit_jax.data import datasets, preprocess

log = logging.getLogger(__name__)

OUTPAINT_TRAIN_PP = 'outpaint_crop|flip|value_range|outpaint_split'
OUTPAINT_EVAL_PP = 'outpaint_crop|value_range|outpaint_split'


def _full_size(ctx: preprocess.Context, size: Any) -> tuple[int, int]:
    if size is not None:
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    scale = float(ctx.get('outpaint_scale', 1.5))
    h, w = ctx.image_size
    return (int(round(h * scale)), int(round(w * scale)))


@preprocess.register('outpaint_crop', random=True, eval_ok=True)
def outpaint_crop(example: dict, ctx: preprocess.Context, size: Any = None) -> dict:
    """The full (target) image: random resized crop in training, plain resize in evaluation (see module doc)."""
    full = _full_size(ctx, size)
    antialias = bool(ctx.get('antialias', True))
    method = ctx.get('resize_method', 'bilinear')
    if ctx.train:
        area = tuple(ctx.get('outpaint_crop_area', (0.08, 1.0)))
        image = preprocess.inception_crop_image(example['image'], full, ctx.seed, area_range=area,
                                                aspect_ratio_range=(3 / 4, 4 / 3), method=method,
                                                antialias=antialias)
    else:
        image = preprocess.resize_image(example['image'], full, method=method, antialias=antialias)
    example['image'] = image
    return example


@preprocess.register('outpaint_split')
def outpaint_split(example: dict, ctx: preprocess.Context) -> dict:
    """'target' = the full image, 'image' = its central crop of the model input size."""
    image = example['image']
    h, w = ctx.image_size
    full = image.shape
    if full[0] is not None and (full[0] < h or full[1] < w):
        raise ValueError(f'outpaint_split: the full image {tuple(full[:2])} is smaller than the model input '
                         f'{(h, w)}; put outpaint_crop (or a resize to the full size) before it.')
    example['target'] = tf.ensure_shape(tf.cast(image, tf.float32), [full[0], full[1], 3])
    example['image'] = preprocess.central_crop_image(image, (h, w))
    return example


# ---------------------------------------------------------------------------------------------------------------
# Built-in: crops of scikit-learn's sample photographs.

SAMPLES_STORE = 96  # Stored crop side (pixels).
SAMPLES_TRAIN = 2000  # Train crops.
SAMPLES_TEST = 200  # Test crops.
SAMPLES_SPLIT_COL = 512  # Train crops lie in columns [0, 512), test crops in [528, 640).
SAMPLES_GAP = 16


@functools.lru_cache(maxsize=4)
def sample_crops(split: str, store: int = SAMPLES_STORE) -> np.ndarray:
    """uint8 [N, store, store, 3] crops of china.jpg and flower.jpg for 'train' or 'test' (fixed seed)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # Two uint8 427x640x3 photographs.
    if split == 'train':
        n, lo, hi, sizes, seed = SAMPLES_TRAIN, 0, SAMPLES_SPLIT_COL, (96, 384), 0
    elif split == 'test':
        n, lo, hi, sizes, seed = SAMPLES_TEST, SAMPLES_SPLIT_COL + SAMPLES_GAP, None, (80, 112), 1
    else:
        raise ValueError(f"The 'outpaint_samples' dataset has splits 'train' and 'test', not {split!r}.")
    rng = np.random.default_rng(seed)
    out = np.empty((n, store, store, 3), np.uint8)
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        right = w if hi is None else hi
        side = int(rng.integers(sizes[0], min(sizes[1], right - lo, h) + 1))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(lo, right - side + 1))
        crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((store, store), Image.BICUBIC)
        out[i] = np.asarray(crop)
    return out


@datasets.register_dataset('outpaint_samples', train_pp=OUTPAINT_TRAIN_PP, eval_pp=OUTPAINT_EVAL_PP,
                           value_range=(0.0, 1.0))
def outpaint_samples(split: str) -> datasets.Source:
    """Crops of scikit-learn's two sample photographs (no download): 2000 train / 200 test, 96x96 RGB."""
    images = sample_crops(split)
    labels = np.zeros(len(images), np.int32)

    def select(start: int, stop: int) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices({'image': images[start:stop], 'label': labels[start:stop]})

    return datasets.Source(select(0, len(images)), 1, len(images), select=select, class_names=['photo'])


# ---------------------------------------------------------------------------------------------------------------
# Image folders without classes.


@functools.lru_cache(maxsize=16)
def _scan_flat(split_dir: str, stamp: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(image files, warnings) under `split_dir`: symlinks, non-UTF-8 names and unreadable directories are handled
    as for class folders (`datasets.ImageWalk`: no image is listed twice)."""
    del stamp
    walk = datasets.ImageWalk(split_dir, {'image': split_dir})
    files = walk.files(split_dir, 'image')
    files.sort(key=lambda f: datasets._order_key(split_dir, f))
    return tuple(files), tuple(walk.notes)


@datasets.register_dataset('flat_folder', prefix=True)
def flat_folder(split: str, *, arg: str, data_config: Mapping[str, Any]) -> datasets.Source:
    """Your images without class folders: 'flat_folder:/root' reads /root/<split>/**/*.{jpg,jpeg,png} (label 0).

    Files are in a fixed pseudo-random order (slices such as 'train[:90%]' are random subsets); files that fail to
    decode are skipped and counted.
    """
    root = os.path.abspath(os.path.expanduser(arg))
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        have = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))) if os.path.isdir(
            root) else None
        raise FileNotFoundError(f'flat_folder: {split_dir!r} does not exist' + (
            f' ({root!r} has: {have}).' if have is not None else '.') + ' Expected ROOT/train/*.jpg and '
            'ROOT/test/*.jpg (subfolders allowed).')
    files, notes = _scan_flat(split_dir, os.path.getmtime(split_dir))
    for note in notes:
        log.warning('flat_folder %s: %s.', split_dir, note)
    if not files:
        raise ValueError(f'flat_folder: no .jpg/.jpeg/.png images under {split_dir!r}.')
    files_a = np.array(files)
    labels = np.zeros(len(files), np.int32)
    del data_config

    def select(start: int, stop: int) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices({'image_path': files_a[start:stop], 'label': labels[start:stop]})

    return datasets.Source(select(0, len(files)), 1, len(files), decode_errors='skip', class_names=['image'],
                           select=select)


def pixel_stats(name: str, split: str = 'train', *, size: int = 192, max_examples: int = 2000,
                data_config: Any = None) -> tuple[float, float]:
    """The scalar mean / std of all pixels in [0, 1] (QueryOTR's per-dataset `--patch_mean/--patch_std`).

    Images are resized to size x size (the test transform) first; at most `max_examples` are read.
    """
    from vit_jax.data import pipeline

    cfg = dict(data_config or {})
    cfg.update(eval_pp=f'resize({size})|value_range(0, 1)', value_range=(0.0, 1.0))
    ds = pipeline.get_dataset(name, split, data_config=cfg, batch_size=64, image_size=size, train=False)
    total = total_sq = count = 0.0
    for batch in ds:
        x = batch['image'][batch['mask']].astype(np.float64)
        total += x.sum()
        total_sq += (x ** 2).sum()
        count += x.size
        if count >= max_examples * size * size * 3:
            break
    mean = total / max(count, 1.0)
    return float(mean), float(np.sqrt(max(total_sq / max(count, 1.0) - mean ** 2, 0.0)))
