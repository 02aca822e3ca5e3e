"""Colour jitter as torchvision's `ColorJitter(brightness, contrast, saturation)` (timm's `color_jitter=0.4`, the
light robust-ViT recipe's only photometric augmentation): a registered preprocessing op.

    config.data.train_pp = 'inception_crop|flip|color_jitter(0.4)'

Images are float32 HxWx3 in [0, 255] (the pipeline's convention before `value_range`). Each factor is drawn
uniformly from [max(0, 1 - s), 1 + s]; the three adjustments are applied in a random order (torchvision draws a
permutation), each clipped to [0, 255]:
- brightness: x * f;
- contrast: blend with the mean of the image's grayscale (a scalar): f * x + (1 - f) * mean(gray(x));
- saturation: blend with the grayscale image: f * x + (1 - f) * gray(x); gray = 0.299 R + 0.587 G + 0.114 B.
"""

from __future__ import annotations

import itertools

import tensorflow as tf

from vit_jax.data.preprocess import Context, Example, register


def _gray(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114], x.dtype), axis=-1, keepdims=True)


def _adjust(x: tf.Tensor, kind: int, f: tf.Tensor) -> tf.Tensor:
    if kind == 0:
        y = x * f
    elif kind == 1:
        y = f * x + (1.0 - f) * tf.reduce_mean(_gray(x))
    else:
        y = f * x + (1.0 - f) * _gray(x)
    return tf.clip_by_value(y, 0.0, 255.0)


def color_jitter_image(image: tf.Tensor, seed: tf.Tensor, brightness: float = 0.4, contrast: float = 0.4,
                       saturation: float = 0.4) -> tf.Tensor:
    """torchvision ColorJitter (no hue) on one HxWx3 float image in [0, 255]."""
    x = tf.cast(image, tf.float32)
    strengths = (float(brightness), float(contrast), float(saturation))
    factors = []
    for i, s in enumerate(strengths):
        key = tf.random.experimental.stateless_fold_in(seed, i)
        factors.append(tf.random.stateless_uniform([], key, max(0.0, 1.0 - s), 1.0 + s) if s > 0 else None)
    orders = list(itertools.permutations(range(3)))
    pick = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, 3), 0, len(orders),
                                       tf.int32)

    def branch(order):
        def fn():
            y = x
            for k in order:
                if factors[k] is not None:
                    y = _adjust(y, k, factors[k])
            return y

        return fn

    return tf.ensure_shape(tf.switch_case(pick, [branch(o) for o in orders]), x.shape)


@register('color_jitter', random=True)
def color_jitter(example: Example, ctx: Context, strength: float | None = None, brightness: float | None = None,
                 contrast: float | None = None, saturation: float | None = None) -> Example:
    """`color_jitter(0.4)`: brightness = contrast = saturation = 0.4 (timm); or set each one."""
    s = 0.4 if strength is None else float(strength)
    b = s if brightness is None else brightness
    c = s if contrast is None else contrast
    sat = s if saturation is None else saturation
    return {**example, 'image': color_jitter_image(example['image'], ctx.seed, b, c, sat)}
