"""Video input: clip sampling, spatial augmentation and multi-view testing ops, TFDS video datasets, and the
built-in 'moving_digits' dataset (no download).

Datasets (use as `config.dataset`):

  'moving_digits'     UCI handwritten digits (scikit-learn) moving in a straight line across a black canvas;
                      label = direction of motion (right, left, down, up) by default, or the digit, or both.
                      Deterministic from a seed; the test clips use the held-out images of the built-in 'digits'
                      split and a fixed seed, so the test set never changes.
  'video:NAME'        any prepared TFDS dataset with a video feature, e.g. 'video:ucf101' or a Kinetics builder
                      you prepared yourself (TFDS ships no Kinetics). Frames stay encoded until sampled: only the
                      frames of the clip are decoded.

Examples carry the whole video under 'video' (uint8 [L, H, W, C], or encoded frames string [L]); the first op
of a pipeline, `video_sample` or `video_multi_view`, turns it into the model input 'image':

  train:  'video_sample|video_resize_small|video_random_crop|video_flip'   (TimeSformer / SlowFast training)
  test:   'video_multi_view(1, 3)'   (temporal clips x spatial crops: [V, T, h, w, 3]; the 'video' evaluator
          averages the softmax scores of the views: `multi_view_scores`)

Data-config keys read by the ops: `num_frames` (clip length T), `frame_stride` (frames between samples),
`train_short_side` ((min, max) short-side jitter; SlowFast's inverse-uniform draw), `test_short_side` (short side
before the test crops; default the crop size), `temporal_views`, `spatial_crops`. The image size is the model's.
The value range is the usual `value_range` op (SlowFast's mean 0.45 / std 0.225 on [0, 1] is
value_range=(-2.0, 2.4444444)). Use `video_flip`, not `flip` (which flips frames independently); video datasets
default to flip=False so that the trainer does not add `flip`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from vit_jax.data import datasets as datasets_lib
from vit_jax.data import preprocess
from vit_jax.data.preprocess import Context, Example

# ---------------------------------------------------------------------------------------------------------------
# Pure functions on videos [L, H, W, C] (uint8 or float32 in [0, 255]).


def clip_indices(video_len: tf.Tensor, num_frames: int, stride: int, start: tf.Tensor) -> tf.Tensor:
    """SlowFast's `temporal_sampling`: `num_frames` indices spread over [start, start + T*stride - 1], clamped.

    Videos shorter than the clip repeat their last frame.
    """
    start = tf.cast(start, tf.float32)
    end = start + float(num_frames * stride - 1)
    idx = tf.cast(tf.floor(tf.linspace(start, end, num_frames)), tf.int32)
    return tf.clip_by_value(idx, 0, tf.maximum(tf.cast(video_len, tf.int32) - 1, 0))


def clip_start(video_len: tf.Tensor, num_frames: int, stride: int, *, seed: tf.Tensor | None = None,
               view: int = 0, num_views: int = 1) -> tf.Tensor:
    """First frame of a clip: uniform in [0, L - T*stride] with a seed (training), else SlowFast's test rule
    `delta * view / num_views` (view 0 of 1 starts at frame 0, as the official TimeSformer test)."""
    delta = tf.maximum(tf.cast(video_len, tf.float32) - float(num_frames * stride), 0.0)
    if seed is not None:
        return tf.random.stateless_uniform([], seed=seed) * delta
    return delta * float(view) / float(num_views)


def segment_indices(video_len: tf.Tensor, num_frames: int, seed: tf.Tensor | None = None) -> tf.Tensor:
    """SlowFast's Something-Something sampling: the video cut into `num_frames` equal segments, one frame each
    (uniformly random in training when `seed` is given, the segment's middle otherwise)."""
    seg = (tf.cast(video_len, tf.float32) - 1.0) / float(num_frames)
    i = tf.range(num_frames, dtype=tf.float32)
    start = tf.cast(tf.round(seg * i), tf.int32)
    end = tf.cast(tf.round(seg * (i + 1.0)), tf.int32)
    if seed is None:
        return (start + end) // 2
    u = tf.random.stateless_uniform([num_frames], seed=seed)
    return tf.minimum(start + tf.cast(tf.floor(u * tf.cast(end - start + 1, tf.float32)), tf.int32), end)


def gather_frames(video: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """Frames `indices` of a video (decoding only those when the frames are encoded strings) as uint8/float RGB."""
    frames = tf.gather(video, indices)
    if video.dtype == tf.string:
        frames = tf.map_fn(lambda f: preprocess.decode_image(f, 3), frames, fn_output_signature=tf.uint8)
    return preprocess.to_rgb(frames)


def resize_short_side(frames: tf.Tensor, short_side: tf.Tensor | int, method: str = 'bilinear') -> tf.Tensor:
    """Scales every frame so that its short side is `short_side` (SlowFast: the long side is floor(long*s/short))."""
    shape = tf.shape(frames)
    h, w = shape[-3], shape[-2]
    s = tf.cast(short_side, tf.int32)
    long_new = lambda long, short: tf.cast(tf.floor(tf.cast(long, tf.float32) * tf.cast(s, tf.float32)  # noqa: E731
                                                    / tf.cast(short, tf.float32)), tf.int32)
    new_h = tf.where(h <= w, s, long_new(h, w))
    new_w = tf.where(h <= w, long_new(w, h), s)
    out = tf.image.resize(frames, tf.stack([new_h, new_w]), method=method)
    return tf.cast(out, tf.float32)


def jitter_short_side(min_size: int, max_size: int, seed: tf.Tensor) -> tf.Tensor:
    """SlowFast's short-side scale jitter: round(1 / uniform(1/max, 1/min))."""
    u = tf.random.stateless_uniform([], seed=seed, minval=1.0 / float(max_size), maxval=1.0 / float(min_size))
    return tf.cast(tf.round(1.0 / u), tf.int32)


def uniform_crop(frames: tf.Tensor, size: tuple[int, int], index: int, num_crops: int = 3) -> tf.Tensor:
    """SlowFast's test crop `index` of `num_crops` along the longer side (0: left/top, centre, right/bottom)."""
    shape = tf.shape(frames)
    h, w = shape[-3], shape[-2]
    frac = 0.5 if num_crops == 1 else index / (num_crops - 1)
    dy, dx = h - size[0], w - size[1]
    centre_y, centre_x = dy // 2, dx // 2
    along_y = tf.cast(tf.round(tf.cast(dy, tf.float32) * frac), tf.int32)
    along_x = tf.cast(tf.round(tf.cast(dx, tf.float32) * frac), tf.int32)
    top = tf.where(h > w, along_y, centre_y)
    left = tf.where(h > w, centre_x, along_x)
    return frames[..., top:top + size[0], left:left + size[1], :]


def random_crop_video(frames: tf.Tensor, size: tuple[int, int], seed: tf.Tensor) -> tf.Tensor:
    """The same random window in every frame."""
    shape = tf.shape(frames)
    return tf.image.stateless_random_crop(frames, tf.stack([shape[0], size[0], size[1], shape[3]]), seed=seed)


def flip_video(frames: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Left-right flip of the whole clip with probability 1/2 (one coin for all frames)."""
    coin = tf.random.stateless_uniform([], seed=seed) < 0.5
    return tf.cond(coin, lambda: tf.reverse(frames, axis=[-2]), lambda: frames)


def multi_view(video: tf.Tensor, *, num_frames: int, stride: int, crop_size: tuple[int, int], short_side: int,
               temporal_views: int = 1, spatial_crops: int = 3) -> tf.Tensor:
    """The test views of one video: [temporal_views * spatial_crops, T, h, w, C] float32 in [0, 255].

    Each temporal clip (SlowFast's uniform test starts) is scaled to `short_side` and cut into `spatial_crops`
    crops along its longer side (left, centre, right); views are ordered temporal-major.
    """
    n = tf.shape(video)[0]
    views = []
    for i in range(temporal_views):
        idx = clip_indices(n, num_frames, stride, clip_start(n, num_frames, stride, view=i, num_views=temporal_views))
        frames = resize_short_side(gather_frames(video, idx), short_side)
        for j in range(spatial_crops):
            views.append(uniform_crop(frames, crop_size, j, spatial_crops))
    return tf.stack(views)


# ---------------------------------------------------------------------------------------------------------------
# Registered preprocessing ops.


def _frames_cfg(ctx: Context, num_frames: int | None, stride: int | None) -> tuple[int, int]:
    return int(num_frames or ctx.get('num_frames', 8)), int(stride or ctx.get('frame_stride', 1))


def _take_video(example: Example) -> tf.Tensor:
    if 'video' in example:
        return example.pop('video')
    if 'image' in example and example['image'].shape.rank == 4:  # A decoded video under the image key (TFDS).
        return example.pop('image')
    raise ValueError("Video ops need the whole video under 'video' (or a rank-4 'image'); got keys "
                     f'{sorted(example)}. Use a video dataset (moving_digits, video:NAME).')


def _set_clip_shape(frames: tf.Tensor, num_frames: int, size: tuple[int, int] | None = None) -> tf.Tensor:
    frames.set_shape([num_frames, size[0] if size else None, size[1] if size else None, 3])
    return frames


@preprocess.register('video_sample', random=True, eval_ok=True)
def video_sample(example: Example, ctx: Context, num_frames: int | None = None, stride: int | None = None,
                 view: int = 0, num_views: int = 1) -> Example:
    """'video' -> 'image' clip of T frames, `stride` apart (data config num_frames, frame_stride).

    Training: a uniformly random start; evaluation: SlowFast's start for test view `view` of `num_views`.
    """
    t, s = _frames_cfg(ctx, num_frames, stride)
    video = _take_video(example)
    n = tf.shape(video)[0]
    start = clip_start(n, t, s, seed=ctx.seed if ctx.train else None, view=view, num_views=num_views)
    example['image'] = _set_clip_shape(gather_frames(video, clip_indices(n, t, s, start)), t)
    return example


@preprocess.register('video_sample_segments', random=True, eval_ok=True)
def video_sample_segments(example: Example, ctx: Context, num_frames: int | None = None) -> Example:
    """'video' -> 'image' of T frames, one per equal segment of the video (Something-Something v2 protocol)."""
    t, _ = _frames_cfg(ctx, num_frames, None)
    video = _take_video(example)
    idx = segment_indices(tf.shape(video)[0], t, ctx.seed if ctx.train else None)
    example['image'] = _set_clip_shape(gather_frames(video, idx), t)
    return example


@preprocess.register('video_resize_small', random=True, eval_ok=True)
def video_resize_small(example: Example, ctx: Context, min_size: int | None = None,
                       max_size: int | None = None) -> Example:
    """Short side to a size drawn from [min_size, max_size] in training (data config `train_short_side`,
    default (256, 320) scaled to the model size: 8/7 .. 10/7 of it), to `min_size` in evaluation
    (data config `test_short_side`, default the model size)."""
    crop = min(ctx.image_size)
    if ctx.train:
        lo, hi = ctx.get('train_short_side', (round(crop * 256 / 224), round(crop * 320 / 224)))
        lo, hi = int(min_size or lo), int(max_size or hi)
        side = jitter_short_side(lo, hi, ctx.seed)
    else:
        side = int(min_size or ctx.get('test_short_side', crop))
    t = example['image'].shape[0]
    example['image'] = _set_clip_shape(resize_short_side(example['image'], side, ctx.get('resize_method',
                                                                                          'bilinear')), t)
    return example


@preprocess.register('video_resize')
def video_resize(example: Example, ctx: Context, size: Any = None) -> Example:
    """Every frame resized to exactly the model size (no crop; a no-op when the frames have that size)."""
    hw = ctx.image_size if size is None else ((size, size) if isinstance(size, int) else tuple(size))
    frames = example['image']
    if tuple(frames.shape[1:3]) != tuple(hw):
        frames = tf.image.resize(frames, hw, method=ctx.get('resize_method', 'bilinear'))
    example['image'] = _set_clip_shape(tf.cast(frames, tf.float32), frames.shape[0], hw)
    return example


@preprocess.register('video_random_crop', random=True)
def video_random_crop(example: Example, ctx: Context) -> Example:
    """The same random window of the model size in every frame."""
    frames = example['image']
    example['image'] = _set_clip_shape(random_crop_video(frames, ctx.image_size, ctx.seed), frames.shape[0],
                                       ctx.image_size)
    return example


@preprocess.register('video_central_crop')
def video_central_crop(example: Example, ctx: Context, index: int = 1, num_crops: int = 3) -> Example:
    """Test crop `index` of `num_crops` along the longer side (default the centre), of the model size."""
    frames = example['image']
    example['image'] = _set_clip_shape(uniform_crop(frames, ctx.image_size, index, num_crops), frames.shape[0],
                                       ctx.image_size)
    return example


@preprocess.register('video_flip', random=True)
def video_flip(example: Example, ctx: Context) -> Example:
    """Left-right flip of the whole clip with probability 1/2."""
    example['image'] = flip_video(example['image'], ctx.seed)
    return example


@preprocess.register('video_multi_view')
def video_multi_view(example: Example, ctx: Context, temporal_views: int | None = None,
                     spatial_crops: int | None = None, short_side: int | None = None) -> Example:
    """'video' -> 'image' [temporal_views * spatial_crops, T, h, w, 3]: the multi-view test input.

    Defaults: data config `temporal_views` (1) and `spatial_crops` (3), as the TimeSformer test; short side =
    `test_short_side` (default the model size). Each batch then has shape [B, V, T, h, w, 3]; the 'video'
    evaluator averages the views' softmax scores.
    """
    t, s = _frames_cfg(ctx, None, None)
    tv = int(temporal_views or ctx.get('temporal_views', 1))
    sc = int(spatial_crops or ctx.get('spatial_crops', 3))
    side = int(short_side or ctx.get('test_short_side', min(ctx.image_size)))
    views = multi_view(_take_video(example), num_frames=t, stride=s, crop_size=ctx.image_size, short_side=side,
                       temporal_views=tv, spatial_crops=sc)
    views.set_shape([tv * sc, t, *ctx.image_size, 3])
    example['image'] = views
    return example


# ---------------------------------------------------------------------------------------------------------------
# Multi-view inference (JAX side).


def multi_view_scores(predict_fn: Callable[[Any], Any], clips: Any, *, average: str = 'softmax') -> Any:
    """Class scores of multi-view clips [B, V, T, H, W, C]: the views' softmax (or logits) averaged.

    `predict_fn` maps [N, T, H, W, C] clips to logits [N, classes]. Returns [B, classes].
    """
    b, v = clips.shape[:2]
    logits = predict_fn(clips.reshape(b * v, *clips.shape[2:]))
    return average_views(logits.reshape(b, v, -1), average)


def average_views(logits: Any, average: str = 'softmax') -> Any:
    """[B, V, classes] logits of the views of each video -> [B, classes] averaged softmax (or logits)."""
    import jax
    import jax.numpy as jnp

    logits = logits.astype(jnp.float32)
    if average == 'softmax':
        return jnp.mean(jax.nn.softmax(logits, axis=-1), axis=1)
    if average == 'logits':
        return jnp.mean(logits, axis=1)
    raise ValueError(f"average must be 'softmax' or 'logits', got {average!r}.")


# ---------------------------------------------------------------------------------------------------------------
# Built-in dataset: moving digits.

MOVING_DIGITS_DIRECTIONS = ('right', 'left', 'down', 'up')
MOVING_DIGITS_LABELS = ('direction', 'digit', 'digit_direction')
MOVING_DIGITS_DEFAULTS = {  # Data-config keys of 'moving_digits' (all part of the dataset's definition).
    'num_frames': 8,  # Frames per video (and per clip with stride 1).
    'moving_digits_size': 32,  # Canvas side in pixels.
    'moving_digits_scale': 2,  # 8x8 digits upsampled by pixel repetition (16x16 glyphs).
    'moving_digits_label': 'direction',  # 'direction' (4 classes), 'digit' (10) or 'digit_direction' (40).
    'moving_digits_train_size': 4096,  # Training clips.
    'moving_digits_test_size': 1024,  # Test clips (from the held-out digit images, fixed seed).
    'moving_digits_seed': 0,  # Seed of the training clips (the test clips always use their own fixed seed).
}
_MOVING_DIGITS_TEST_SEED = 1234


def moving_digits_arrays(split: str, *, num_frames: int = 8, size: int = 32, scale: int = 2,
                         label: str = 'direction', num_examples: int = 4096, seed: int = 0) -> dict[str, np.ndarray]:
    """Generates the clips of one split: {'videos': uint8 [N, T, size, size, 1], 'labels': int32 [N], 'digits',
    'directions' (0 right, 1 left, 2 down, 3 up), 'image_index' (of the digit image in sklearn's load_digits)}.

    Each clip shows one real handwritten digit (the 'digits' dataset's fixed train/test partition, so test clips
    use unseen images) moving in a straight line at a constant speed of 1 to (size - glyph)/(T - 1) pixels per
    frame, right, left, down or up (directions balanced), with a random position across the motion. The training
    clips depend on `seed`; the test clips always use a fixed seed.
    """
    if split not in ('train', 'test'):
        raise ValueError(f"'moving_digits' has splits 'train' and 'test', not {split!r}.")
    if label not in MOVING_DIGITS_LABELS:
        raise ValueError(f'moving_digits_label must be one of {MOVING_DIGITS_LABELS}, got {label!r}.')
    return _moving_digits(split, int(num_frames), int(size), int(scale), label, int(num_examples),
                          int(seed) if split == 'train' else _MOVING_DIGITS_TEST_SEED)


@functools.lru_cache(maxsize=4)
def _moving_digits(split, num_frames, size, scale, label, n, seed):
    images, digit_labels, image_index = datasets_lib.digits_arrays()[split]
    glyphs = images[:, ::datasets_lib.DIGITS_UPSAMPLE, ::datasets_lib.DIGITS_UPSAMPLE, 0]  # The 8x8 originals.
    glyphs = np.repeat(np.repeat(glyphs, scale, axis=1), scale, axis=2)
    g = glyphs.shape[1]
    room = size - g
    if room < 1 or num_frames < 2:
        raise ValueError(f'moving_digits: a {g}px glyph cannot move on a {size}px canvas over {num_frames} frames; '
                         'use a larger moving_digits_size, a smaller moving_digits_scale or at least 2 frames.')
    rng = np.random.default_rng([seed, 0 if split == 'train' else 1])
    which = np.concatenate([rng.permutation(len(glyphs)) for _ in range(-(-n // len(glyphs)))])[:n]
    direction = rng.permutation(np.arange(n) % 4)
    vmax = room / (num_frames - 1)
    speed = rng.uniform(min(1.0, vmax), vmax, n)
    travel = speed * (num_frames - 1)
    start = rng.uniform(0.0, 1.0, n) * (room - travel)
    across = rng.integers(0, room + 1, n)
    t = np.arange(num_frames)
    along = start[:, None] + speed[:, None] * t[None]  # Position along the motion axis, increasing.
    reverse = (direction == 1) | (direction == 3)
    along = np.where(reverse[:, None], start[:, None] + travel[:, None] - speed[:, None] * t[None], along)
    along = np.clip(np.round(along).astype(np.int64), 0, room)
    horizontal = (direction < 2)[:, None]
    y0 = np.where(horizontal, across[:, None], along)  # [n, T] top-left corner of the glyph in each frame.
    x0 = np.where(horizontal, along, across[:, None])
    videos = np.zeros((n, num_frames, size, size, 1), np.uint8)
    o = np.arange(g)
    videos[np.arange(n)[:, None, None, None], t[None, :, None, None], (y0[:, :, None, None] + o[:, None]),
           (x0[:, :, None, None] + o[None, :]), 0] = glyphs[which][:, None]
    digits = digit_labels[which].astype(np.int32)
    labels = {'direction': direction, 'digit': digits, 'digit_direction': digits * 4 + direction}[label]
    return {'videos': videos, 'labels': labels.astype(np.int32), 'digits': digits,
            'directions': direction.astype(np.int32), 'image_index': image_index[which]}


@datasets_lib.register_dataset('moving_digits', flip=False, train_pp='video_sample|video_resize',
                               eval_pp='video_sample|video_resize', **MOVING_DIGITS_DEFAULTS)
def moving_digits(split: str, *, data_config: Mapping[str, Any]) -> datasets_lib.Source:
    """Handwritten digits moving across a canvas: 4 directions (default label), 10 digits or 40 (digit, direction).

    No download; 4096 training clips (seeded by `moving_digits_seed`) and 1024 fixed test clips of 8 frames of
    32x32 by default (see MOVING_DIGITS_DEFAULTS for the data-config keys). Flips are off: a flip changes the
    direction of horizontal motion.
    """
    cfg = {**MOVING_DIGITS_DEFAULTS, **{k: v for k, v in dict(data_config or {}).items() if v is not None}}
    label = cfg['moving_digits_label']
    n = cfg['moving_digits_train_size' if split == 'train' else 'moving_digits_test_size']
    arrays = moving_digits_arrays(
        split, num_frames=cfg['num_frames'], size=cfg['moving_digits_size'], scale=cfg['moving_digits_scale'],
        label=label, num_examples=n, seed=cfg['moving_digits_seed'])
    videos, labels = arrays['videos'], arrays['labels']
    names = {'direction': list(MOVING_DIGITS_DIRECTIONS), 'digit': [str(i) for i in range(10)],
             'digit_direction': [f'{d}_{m}' for d in range(10) for m in MOVING_DIGITS_DIRECTIONS]}[label]

    def select(start: int, stop: int) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices({'video': videos[start:stop], 'label': labels[start:stop]})

    return datasets_lib.Source(select(0, len(labels)), len(names), len(labels), select=select, class_names=names)


# ---------------------------------------------------------------------------------------------------------------
# TFDS video datasets: 'video:ucf101', 'video:ucf101/ucf101_1_256', your own Kinetics builder ...

VIDEO_TFDS_DEFAULTS = {
    'flip': False,  # The trainer's image `flip` would flip frames independently; video_flip is in train_pp.
    'train_pp': 'video_sample|video_resize_small|video_random_crop|video_flip',
    'eval_pp': 'video_sample|video_resize_small|video_central_crop',  # Single view; the 'video' evaluator: multi.
    'video_key': 'video',  # TFDS feature holding the frames.
}


@datasets_lib.register_dataset('video', prefix=True, **VIDEO_TFDS_DEFAULTS)
def tfds_video(split: str, *, arg: str, data_config: Mapping[str, Any]) -> datasets_lib.Source:
    """A prepared TFDS video dataset, frames kept encoded (only the sampled frames are decoded).

    'video:ucf101' (TFDS's UCF-101; prepare it with `tfds build ucf101`), or any TFDS builder with a
    `tfds.features.Video` feature (data config `video_key`, default 'video') and a ClassLabel (`label_key`).
    """
    import tensorflow_datasets as tfds

    builder = datasets_lib.tfds_builder(arg, data_config.get('data_dir'))
    video_key = data_config.get('video_key') or 'video'
    label_key = data_config.get('label_key') or 'label'
    features = builder.info.features
    for key, what in ((video_key, 'video_key'), (label_key, 'label_key')):
        if key not in features:
            raise ValueError(f'TFDS dataset {arg!r} has no feature {key!r} (features: {list(features.keys())}); '
                             f'set config.data.{what}.')
    if split not in builder.info.splits:
        raise ValueError(f'TFDS dataset {arg!r} has no split {split!r}; its splits: '
                         f'{", ".join(builder.info.splits.keys())}.')
    num_examples = builder.info.splits[split].num_examples
    names = getattr(features[label_key], 'names', None)
    decoders = {video_key: tfds.decode.SkipDecoding()} if isinstance(features[video_key], tfds.features.Video) \
        else None

    def select(start: int, stop: int) -> tf.data.Dataset:
        ds = builder.as_dataset(split=f'{split}[{start}:{stop}]', decoders=decoders, shuffle_files=False,
                                read_config=tfds.ReadConfig(try_autocache=False, add_tfds_id=False))
        return ds.map(lambda ex: {'video': ex[video_key], 'label': ex[label_key]},
                      num_parallel_calls=tf.data.AUTOTUNE)

    return datasets_lib.Source(select(0, num_examples), int(features[label_key].num_classes), int(num_examples),
                               select=select, class_names=list(names) if names else None)


__all__ = [
    'clip_indices', 'clip_start', 'segment_indices', 'gather_frames', 'resize_short_side', 'jitter_short_side',
    'uniform_crop', 'random_crop_video', 'flip_video', 'multi_view', 'multi_view_scores', 'average_views',
    'moving_digits_arrays', 'MOVING_DIGITS_DEFAULTS',
]
