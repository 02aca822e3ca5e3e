"""Dense prediction data: segmentation / depth datasets and joint image + label-map augmentation.

Examples carry 'image' [H, W, 3] with per-pixel targets 'label' [H, W] (class ids, `ignore_label` = 255 where there
is no target) and/or 'depth' [H, W] (float, 0 = no measurement). Datasets registered here:

- 'dense_digits' (built-in, no download): UCI handwritten digits (scikit-learn), one (70%) or two per canvas, at
  three sizes (16, 20, 24 px) on coloured, shaded canvases; 11 classes (0 = background, 1 + d for digit d), 255 on
  the anti-aliased glyph borders, and a synthetic depth map (a receding floor from 8 m at the top to 5 m at the
  bottom; each digit at 32 / size metres: bigger digits are nearer, and nearer digits occlude farther ones). Train
  canvases use only glyphs of the digits train split, test canvases only test glyphs. Data config `dense_canvas`
  (32) sets the canvas side, `dense_num_train` (2000) / `dense_num_test` (500) the number of canvases.
- 'scene_parse150' / 'ade20k' (TFDS ADE20K, 150 classes; label 0 'other' -> 255, k -> k - 1), 'cityscapes_seg'
  (TFDS 'cityscapes/semantic_segmentation', manual download; labelIds -> the 19 trainIds), 'nyu_depth_v2' /
  'nyu_depth' (TFDS NYU depth v2, 'depth' in metres). Prepare them with `tfds build` as the error message says.
- 'dense_folder:/root' for your own data: root/<split>/images/*.{jpg,png} with root/<split>/labels/<same stem>.png
  (class-id PNG) and/or root/<split>/depth/<same stem>.png (16-bit PNG, metres x data config `depth_png_scale`,
  default 1/256 as KITTI) — e.g. Pascal Context or the KITTI Eigen split prepared by the user. Data config
  `num_classes` gives the class count, `label_map`='reduce_zero' shifts labels like ADE20K.

Joint preprocessing ops (registered in `vit_jax.data.preprocess`; every spatial op moves 'image', 'label' and
'depth' together; images bilinear, label maps and depth nearest):
  dense_decode, dense_resize(size), dense_rescale(scale, ratio) [random, mmseg Resize ratio_range],
  dense_random_crop(size, cat_max_ratio) [random, then padded: image 0, label 255, depth 0], dense_flip [random],
  photometric [random, mmseg PhotoMetricDistortion], dense_pad(size), dense_fit(scale, size) [eval: keep the aspect
  ratio, pad to a fixed canvas, record 'valid_hw'].
Keep `data.flip=False` with dense data: the generic 'flip' op would flip the image only (the datasets here default
to it); use 'dense_flip' in the pipe instead.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from vit_jax.data import datasets as datasets_lib
from vit_jax.data import preprocess
from vit_jax.data.preprocess import Context, Example

IGNORE_LABEL = 255
DENSE_KEYS = ('label', 'depth')  # Per-pixel targets moved with the image.

# ---------------------------------------------------------------------------------------------------------------
# Built-in: digits on canvases.

DIGIT_SIZES = (16, 20, 24)  # Glyph sizes in pixels (the 8x8 digits at 2x, 2.5x, 3x).


def _glyphs(images8: np.ndarray, size: int) -> np.ndarray:
    """8x8 digits (0..16) [N, 8, 8] as [N, size, size] intensity maps in [0, 1] (bilinear, edges kept)."""
    import scipy.ndimage

    g = images8.astype(np.float32) / 16.0
    if size != 8:
        g = scipy.ndimage.zoom(g, (1, size / 8.0, size / 8.0), order=1, mode='nearest', grid_mode=True)
    return np.clip(g, 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def dense_digits_arrays(split: str, canvas: int = 32, num: int | None = None) -> dict[str, np.ndarray]:
    """{'image': uint8 [N, c, c, 3], 'label': uint8 [N, c, c], 'depth': float32 [N, c, c]} of one split."""
    from sklearn.datasets import load_digits

    arrays = datasets_lib.digits_arrays()
    if split not in arrays:
        raise ValueError(f"The 'dense_digits' dataset has splits 'train' and 'test', not {split!r}.")
    glyph_idx = arrays[split][2]
    digits = load_digits()
    num = num or (2000 if split == 'train' else 500)
    rng = np.random.default_rng({'train': 1, 'test': 2}[split])
    c = int(canvas)
    images = np.zeros((num, c, c, 3), np.uint8)
    labels = np.zeros((num, c, c), np.uint8)
    depths = np.zeros((num, c, c), np.float32)
    y = np.arange(c, dtype=np.float32)[:, None] / max(c - 1, 1)
    glyphs = {size: _glyphs(digits.images, min(size, c)) for size in DIGIT_SIZES}
    for n in range(num):
        bg = rng.uniform(30, 225, size=3).astype(np.float32)
        shade = (0.6 + 0.4 * y)[..., None]  # Brighter towards the bottom (nearer).
        img = np.broadcast_to(bg * shade, (c, c, 3)).copy() + rng.normal(0, 6, size=(c, c, 3))
        lab = np.zeros((c, c), np.uint8)
        dep = np.broadcast_to(8.0 - 3.0 * y, (c, c)).astype(np.float32).copy()
        count = 1 if rng.uniform() < 0.7 else 2
        sizes = sorted((int(rng.choice(DIGIT_SIZES)) for _ in range(count)))  # Far (small) first.
        for size in sizes:
            k = int(rng.choice(glyph_idx))
            g = glyphs[size][k]
            size = g.shape[0]
            top, left = (int(v) for v in rng.integers(0, c - size + 1, size=2))
            while True:  # A colour that stands out from the background.
                colour = rng.uniform(0, 255, size=3).astype(np.float32)
                if np.abs(colour - bg).sum() > 150:
                    break
            sl = (slice(top, top + size), slice(left, left + size))
            img[sl] = img[sl] * (1 - g[..., None]) + colour * g[..., None]
            fg = g >= 0.5
            edge = (g > 0.15) & ~fg
            lab[sl] = np.where(fg, 1 + digits.target[k], np.where(edge, IGNORE_LABEL, lab[sl]))
            dep[sl] = np.where(fg, 32.0 / size, dep[sl])
        images[n] = np.clip(np.round(img), 0, 255).astype(np.uint8)
        labels[n] = lab
        depths[n] = dep
    return {'image': images, 'label': labels, 'depth': depths}


# Targets are aligned with the stored pixels, so images are not turned by their EXIF orientation.
_DENSE_DEFAULTS = dict(flip=False, ignore_label=IGNORE_LABEL, exif_orientation=False)


@datasets_lib.register_dataset('dense_digits', train_pp='dense_decode|dense_random_crop',
                               eval_pp='dense_decode|dense_resize', **_DENSE_DEFAULTS)
def dense_digits(split: str, *, data_config: Mapping[str, Any]) -> datasets_lib.Source:
    """Digits on canvases with per-pixel classes (11) and depth; see the module docstring. No download."""
    canvas = int(data_config.get('dense_canvas', None) or 32)
    num = data_config.get(f'dense_num_{split}', None)
    arrays = dense_digits_arrays(split, canvas, int(num) if num else None)
    n = len(arrays['label'])

    def select(start: int, stop: int) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices({k: v[start:stop] for k, v in arrays.items()})

    return datasets_lib.Source(select(0, n), 11, n, select=select,
                               class_names=['background'] + [str(i) for i in range(10)])


# ---------------------------------------------------------------------------------------------------------------
# TFDS dense datasets.

# labelIds -> trainIds of Cityscapes (19 classes); every other id -> 255.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

_TFDS_DENSE = {
    # name: (tfds name, image key, label key, depth key, num classes, label map)
    'scene_parse150': ('scene_parse150', 'image', 'annotation', None, 150, 'reduce_zero'),
    'cityscapes_seg': ('cityscapes/semantic_segmentation', 'image_left', 'segmentation_label', None, 19,
                       'cityscapes'),
    'nyu_depth_v2': ('nyu_depth_v2', 'image', None, 'depth', 0, None),
}
_ALIASES = {'ade20k': 'scene_parse150', 'nyu_depth': 'nyu_depth_v2'}


def _tfds_dense_source(key: str, split: str, data_dir: str | None) -> datasets_lib.Source:
    import tensorflow_datasets as tfds

    tfds_name, image_key, label_key, depth_key, num_classes, label_map = _TFDS_DENSE[key]
    builder = datasets_lib.tfds_builder(tfds_name, data_dir)
    try:
        n = builder.info.splits[split].num_examples
    except (KeyError, ValueError) as e:
        raise ValueError(f'TFDS dataset {tfds_name!r} has no split {split!r} ({e}); its splits: '
                         f'{", ".join(builder.info.splits.keys())}.') from None
    decoders = {image_key: tfds.decode.SkipDecoding()}
    if label_key:
        decoders[label_key] = tfds.decode.SkipDecoding()

    def select(start: int, stop: int) -> tf.data.Dataset:
        ds = builder.as_dataset(split=f'{split}[{start}:{stop}]', decoders=decoders, shuffle_files=False,
                                read_config=tfds.ReadConfig(try_autocache=False, add_tfds_id=False))

        def pick(ex):
            out = {'image': ex[image_key]}
            if label_key:
                out['label'] = ex[label_key]
            if depth_key:
                out['depth'] = tf.cast(ex[depth_key], tf.float32)
            return out

        return ds.map(pick, num_parallel_calls=tf.data.AUTOTUNE)

    defaults = dict(_DENSE_DEFAULTS, cache=False, label_map=label_map)
    return datasets_lib.Source(select(0, n), max(num_classes, 1), n, select=select, defaults=defaults)


def _register_tfds(name: str, key: str) -> None:
    def fn(split: str, *, data_dir: str | None = None) -> datasets_lib.Source:
        return _tfds_dense_source(key, split, data_dir)

    fn.__doc__ = f'TFDS {_TFDS_DENSE[key][0]!r} as a dense dataset (see vit_jax.data.dense).'
    datasets_lib.register_dataset(name, train_pp='dense_decode|dense_rescale|dense_random_crop|dense_flip|photometric',
                                  eval_pp='dense_decode|dense_fit')(fn)


for _name in _TFDS_DENSE:
    _register_tfds(_name, _name)
for _alias, _key in _ALIASES.items():
    _register_tfds(_alias, _key)


# ---------------------------------------------------------------------------------------------------------------
# Your own images: dense_folder:/root with <split>/images, <split>/labels, <split>/depth.

@datasets_lib.register_dataset('dense_folder', prefix=True, train_pp='dense_decode|dense_rescale|dense_random_crop|'
                               'dense_flip|photometric', eval_pp='dense_decode|dense_fit', cache=False,
                               **_DENSE_DEFAULTS)
def dense_folder(split: str, *, arg: str, data_config: Mapping[str, Any]) -> datasets_lib.Source:
    """root/<split>/images/*.{jpg,png} + labels/<stem>.png (class ids) and/or depth/<stem>.png (16-bit)."""
    root = os.path.abspath(os.path.expanduser(arg))
    img_dir = os.path.join(root, split, 'images')
    if not os.path.isdir(img_dir):
        raise FileNotFoundError(f'Dense folder: {img_dir!r} does not exist. Expected ROOT/<split>/images/*.jpg with '
                                'ROOT/<split>/labels/<stem>.png and/or ROOT/<split>/depth/<stem>.png.')
    names = [f for f in os.listdir(img_dir) if f.lower().endswith(datasets_lib.IMAGE_EXTENSIONS)
             and not f.startswith('.')]
    for f in names:
        if not datasets_lib._utf8(f):
            datasets_lib.log.warning('Dense folder %s: skipped %r: the name is not valid UTF-8 (rename it).', img_dir,
                                     os.fsencode(os.path.join(img_dir, f)))
    stems = sorted(os.path.splitext(f)[0] for f in names if datasets_lib._utf8(f))
    files = {os.path.splitext(f)[0]: os.path.join(img_dir, f) for f in os.listdir(img_dir)}
    cols: dict[str, list[str]] = {'image_path': [files[s] for s in stems]}
    for key, sub in (('label_path', 'labels'), ('depth_path', 'depth')):
        d = os.path.join(root, split, sub)
        if os.path.isdir(d):
            missing = [s for s in stems if not os.path.exists(os.path.join(d, s + '.png'))]
            if missing:
                raise FileNotFoundError(f'Dense folder: {len(missing)} image(s) have no {sub}/<stem>.png, e.g. '
                                        f'{os.path.join(d, missing[0] + ".png")}.')
            cols[key] = [os.path.join(d, s + '.png') for s in stems]
    if len(cols) == 1:
        raise FileNotFoundError(f'Dense folder {root!r}/{split} has neither labels/ nor depth/.')
    num_classes = int(data_config.get('num_classes', None) or (1 if 'label_path' not in cols else 0))
    if not num_classes:
        raise ValueError('Dense folder with labels: set config.data.num_classes (the number of classes).')
    arrays = {k: np.array(v) for k, v in cols.items()}

    def select(start: int, stop: int) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices({k: v[start:stop] for k, v in arrays.items()})

    return datasets_lib.Source(select(0, len(stems)), num_classes, len(stems), select=select)


# ---------------------------------------------------------------------------------------------------------------
# Joint preprocessing ops.

def _label_map(label: tf.Tensor, kind: str | None) -> tf.Tensor:
    if kind in (None, 'none'):
        return label
    if kind == 'reduce_zero':  # ADE20K: 0 ('other') -> ignore, k -> k - 1.
        label = tf.cast(label, tf.int32)
        return tf.where(label == 0, IGNORE_LABEL, label - 1)
    if kind == 'cityscapes':
        table = np.full(256, IGNORE_LABEL, np.int32)
        for k, v in CITYSCAPES_TRAIN_IDS.items():
            table[k] = v
        return tf.gather(tf.constant(table), tf.cast(label, tf.int32))
    raise ValueError(f"Unknown label_map {kind!r}: use None, 'reduce_zero' or 'cityscapes'.")


def ensure_decoded(example: Example, ctx: Context | None = None) -> Example:
    """Decodes 'label' / 'depth' bytes or files to [H, W] tensors (idempotent) and applies the label map."""
    if 'label_path' in example:
        example['label'] = tf.io.read_file(example.pop('label_path'))
    if 'depth_path' in example:
        example['depth'] = tf.io.read_file(example.pop('depth_path'))
    if 'label' in example and example['label'].dtype == tf.string:
        lab = tf.io.decode_png(example['label'], channels=0)
        lab = tf.cast(lab[..., 0], tf.int32)
        example['label'] = _label_map(lab, ctx.get('label_map', None) if ctx is not None else None)
    elif 'label' in example and example['label'].shape.rank == 3:
        example['label'] = tf.cast(example['label'][..., 0], tf.int32)
    if 'depth' in example and example['depth'].dtype == tf.string:
        d = tf.io.decode_png(example['depth'], channels=1, dtype=tf.uint16)[..., 0]
        scale = float(ctx.get('depth_png_scale', 1 / 256)) if ctx is not None else 1 / 256
        example['depth'] = tf.cast(d, tf.float32) * scale
    if 'label' in example:
        example['label'] = tf.cast(example['label'], tf.int32)
    if 'depth' in example:
        example['depth'] = tf.cast(example['depth'], tf.float32)
    return example


def _size(size: Any, ctx: Context) -> tuple[int, int]:
    if size is None:
        return ctx.image_size
    if isinstance(size, (int, np.integer)):
        return (int(size), int(size))
    return (int(size[0]), int(size[1]))


def _resize_all(example: Example, size: Any) -> Example:
    example['image'] = tf.image.resize(tf.cast(example['image'], tf.float32), size, method='bilinear')
    for key in DENSE_KEYS:
        if key in example:
            t = example[key][..., None]
            example[key] = tf.image.resize(t, size, method='nearest')[..., 0]
    return example


def _pad_all(example: Example, size: tuple[int, int], ignore: int) -> Example:
    shape = tf.shape(example['image'])
    ph, pw = tf.maximum(size[0] - shape[0], 0), tf.maximum(size[1] - shape[1], 0)
    example['image'] = tf.pad(tf.cast(example['image'], tf.float32), [[0, ph], [0, pw], [0, 0]])
    if 'label' in example:
        example['label'] = tf.pad(example['label'], [[0, ph], [0, pw]], constant_values=ignore)
    if 'depth' in example:
        example['depth'] = tf.pad(example['depth'], [[0, ph], [0, pw]])
    return example


def _set_shapes(example: Example, size: tuple[int, int]) -> Example:
    example['image'] = tf.ensure_shape(example['image'], [size[0], size[1], 3])
    for key in DENSE_KEYS:
        if key in example:
            example[key] = tf.ensure_shape(example[key], [size[0], size[1]])
    return example


@preprocess.register('dense_decode')
def dense_decode(example: Example, ctx: Context) -> Example:
    """Decodes per-pixel targets ('label' class ids with the data config's `label_map`, 'depth' in metres)."""
    return ensure_decoded(example, ctx)


@preprocess.register('dense_resize')
def dense_resize(example: Example, ctx: Context, size: Any = None) -> Example:
    """Resizes image (bilinear) and targets (nearest) to `size` (default: the model input size)."""
    example = _resize_all(ensure_decoded(example, ctx), _size(size, ctx))
    return _set_shapes(example, _size(size, ctx))


@preprocess.register('dense_rescale', random=True)
def dense_rescale(example: Example, ctx: Context, scale: Sequence[int] | None = None,
                  ratio: Sequence[float] = (0.5, 2.0)) -> Example:
    """mmseg `Resize(img_scale, ratio_range, keep_ratio=True)`: a random ratio r, then the largest aspect-kept size
    with long side <= r * scale[0] and short side <= r * scale[1] (default scale: (4 s, s), s = the crop side)."""
    example = ensure_decoded(example, ctx)
    s = min(ctx.image_size)
    long_s, short_s = (float(v) for v in (scale if scale is not None else ctx.get('rescale_base', (4 * s, s))))
    r = tf.random.stateless_uniform([], seed=ctx.seed, minval=float(ratio[0]), maxval=float(ratio[1]))
    hw = tf.cast(tf.shape(example['image'])[:2], tf.float32)
    f = tf.minimum(r * long_s / tf.reduce_max(hw), r * short_s / tf.reduce_min(hw))
    new = tf.cast(tf.round(hw * f), tf.int32)
    return _resize_all(example, tf.maximum(new, 1))


@preprocess.register('dense_random_crop', random=True)
def dense_random_crop(example: Example, ctx: Context, size: Any = None, cat_max_ratio: float = 0.75,
                      attempts: int = 10) -> Example:
    """Random crop of `size` (default: model input), retried up to `attempts` times until no class covers more than
    `cat_max_ratio` of the crop's labelled pixels (mmseg); smaller images are padded (image 0, label 255, depth 0)."""
    example = ensure_decoded(example, ctx)
    ch, cw = _size(size, ctx)
    ignore = int(ctx.get('ignore_label', IGNORE_LABEL))
    shape = tf.shape(example['image'])
    h, w = shape[0], shape[1]
    crop_h, crop_w = tf.minimum(h, ch), tf.minimum(w, cw)

    def offsets(i):
        seed = tf.random.experimental.stateless_fold_in(ctx.seed, i)
        top = tf.random.stateless_uniform([], seed=seed, minval=0, maxval=h - crop_h + 1, dtype=tf.int32)
        seed2 = tf.random.experimental.stateless_fold_in(seed, 7)
        left = tf.random.stateless_uniform([], seed=seed2, minval=0, maxval=w - crop_w + 1, dtype=tf.int32)
        return top, left

    top, left = offsets(0)
    if 'label' in example and cat_max_ratio < 1.0:
        label = example['label']

        def ok(t, lft):
            crop = tf.reshape(label[t:t + crop_h, lft:lft + crop_w], [-1])
            crop = tf.boolean_mask(crop, crop != ignore)
            counts = tf.math.bincount(crop, minlength=1)
            counts = tf.boolean_mask(counts, counts > 0)
            total = tf.maximum(tf.reduce_sum(counts), 1)
            return tf.logical_and(tf.size(counts) > 1,
                                  tf.cast(tf.reduce_max(counts), tf.float32) / tf.cast(total, tf.float32)
                                  < cat_max_ratio)

        def cond(i, t, lft):
            return tf.logical_and(i < attempts, tf.logical_not(ok(t, lft)))

        def body(i, t, lft):
            t2, l2 = offsets(i)
            return i + 1, t2, l2

        _, top, left = tf.while_loop(cond, body, (tf.constant(1), top, left))
    example['image'] = example['image'][top:top + crop_h, left:left + crop_w]
    for key in DENSE_KEYS:
        if key in example:
            example[key] = example[key][top:top + crop_h, left:left + crop_w]
    return _set_shapes(_pad_all(example, (ch, cw), ignore), (ch, cw))


@preprocess.register('dense_flip', random=True)
def dense_flip(example: Example, ctx: Context) -> Example:
    """Horizontal flip of the image and its targets together, with probability 1/2."""
    example = ensure_decoded(example, ctx)
    do = tf.random.stateless_uniform([], seed=ctx.seed) < 0.5
    example['image'] = tf.cond(do, lambda: example['image'][:, ::-1], lambda: example['image'])
    for key in DENSE_KEYS:
        if key in example:
            t = example[key]
            example[key] = tf.cond(do, lambda t=t: t[:, ::-1], lambda t=t: t)
    return example


@preprocess.register('photometric', random=True)
def photometric(example: Example, ctx: Context, brightness_delta: float = 32.0,
                contrast_range: Sequence[float] = (0.5, 1.5), saturation_range: Sequence[float] = (0.5, 1.5),
                hue_delta: float = 18.0) -> Example:
    """mmseg PhotoMetricDistortion on [0, 255] images: brightness, contrast (before or after), saturation, hue,
    each applied with probability 1/2 and clipped to [0, 255]; `hue_delta` in OpenCV units (degrees / 2)."""
    img = tf.cast(example['image'], tf.float32)
    seeds = [tf.random.experimental.stateless_fold_in(ctx.seed, i) for i in range(10)]
    coin = lambda i: tf.random.stateless_uniform([], seed=seeds[i]) < 0.5  # noqa: E731
    uni = lambda i, lo, hi: tf.random.stateless_uniform([], seed=seeds[i], minval=lo, maxval=hi)  # noqa: E731
    img = tf.where(coin(0), tf.clip_by_value(img + uni(1, -brightness_delta, brightness_delta), 0, 255), img)
    contrast_first = coin(2)
    alpha = uni(4, float(contrast_range[0]), float(contrast_range[1]))
    contrast = lambda x: tf.where(coin(3), tf.clip_by_value(x * alpha, 0, 255), x)  # noqa: E731
    img = tf.where(contrast_first, contrast(img), img)
    sat = uni(6, float(saturation_range[0]), float(saturation_range[1]))
    img = tf.where(coin(5), tf.clip_by_value(tf.image.adjust_saturation(img / 255.0, sat) * 255.0, 0, 255), img)
    hue = uni(8, -hue_delta, hue_delta) / 180.0
    img = tf.where(coin(7), tf.clip_by_value(tf.image.adjust_hue(img / 255.0, hue) * 255.0, 0, 255), img)
    img = tf.where(contrast_first, img, contrast(img))
    example['image'] = img
    return example


@preprocess.register('dense_pad')
def dense_pad(example: Example, ctx: Context, size: Any = None) -> Example:
    """Pads bottom/right to `size` (image 0, label 255, depth 0); the image must not be larger."""
    size = _size(size, ctx)
    example = ensure_decoded(example, ctx)
    hw = tf.shape(example['image'])[:2]
    example['valid_hw'] = tf.cast(hw, tf.int32)
    example = _pad_all(example, size, int(ctx.get('ignore_label', IGNORE_LABEL)))
    return _set_shapes(example, size)


@preprocess.register('dense_fit')
def dense_fit(example: Example, ctx: Context, scale: Sequence[int] | None = None, size: Any = None) -> Example:
    """Evaluation: aspect-kept resize to long side <= scale[0] and short side <= scale[1] (mmseg test Resize; default
    data config `eval_scale`, else (4 s, s) with s the canvas side), shrunk further if needed to fit the canvas
    `size` (default: the eval image size), then padded to it; 'valid_hw' records the image's size in the canvas."""
    example = ensure_decoded(example, ctx)
    ch, cw = _size(size, ctx)
    s = min(ch, cw)
    long_s, short_s = (float(v) for v in (scale if scale is not None else ctx.get('eval_scale', (4 * s, s))))
    hw = tf.cast(tf.shape(example['image'])[:2], tf.float32)
    f = tf.minimum(long_s / tf.reduce_max(hw), short_s / tf.reduce_min(hw))
    f = tf.minimum(f, tf.minimum(ch / hw[0], cw / hw[1]))
    new = tf.maximum(tf.cast(tf.round(hw * f), tf.int32), 1)
    new = tf.minimum(new, tf.constant([ch, cw]))
    example = _resize_all(example, new)
    example['valid_hw'] = new
    example = _pad_all(example, (ch, cw), int(ctx.get('ignore_label', IGNORE_LABEL)))
    return _set_shapes(example, (ch, cw))
