"""Data augmentations of the small-data recipes (CCT, DHVT, DTN, DeiT-style): registered preprocessing ops.

Per-example ops (pipe strings in `config.data.train_pp`; images float32 in [0, 255] unless noted):

* `randaugment(num_layers=2, magnitude=9, magnitude_std=0.5, increasing=True, prob=0.5)`: timm's RandAugment
  (`rand-m9-mstd0.5-inc1` is the default): `num_layers` ops drawn uniformly with replacement, each applied with
  probability `prob` at magnitude ~ N(magnitude, magnitude_std) clipped to [0, 10]; `increasing=True` uses the
  "increasing" op set (stronger at higher magnitude for every op).
* `autoaugment_cifar`: AutoAugment's CIFAR-10 policy (25 sub-policies of two ops, Cubuk et al. 2019), with the
  magnitude ranges of the widely used PIL port (DeepVoltaire/AutoAugment; the CCT `examples/` script).
* `normalize(mean, std)`: (x - mean) / std per channel, for pipelines that end with `value_range(0, 1)` and want
  dataset statistics (e.g. CIFAR's).
* `random_erasing(prob=0.25, mode='pixel', ...)`: timm's RandomErasing; put it after `value_range`/`normalize`
  (it fills with N(0, 1) noise in 'pixel' mode, in the model's input space).

Batch op (in `config.data.train_batch_pp`, after batching; needs `num_classes`):

* `mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch', num_classes=None,
  off_step=None)`: timm's Mixup/CutMix with switching: the partner of example i is example B-1-i, the label
  distribution goes in `label_dist` (the classification objective reads it; label smoothing is applied there),
  CutMix's lambda is corrected to the pasted box's area. `off_step` turns it off from that training step on
  (timm's `mixup_off_epoch`), reading the step the pipeline passes as `_step`.

Every random choice is drawn from the stateless seed the pipeline gives each (example, op) or (step, op), so the
augmented stream is a pure function of the training seed (deterministic, and reproduced on resume).

Repeated augmentation (DeiT/DHVT `--repeated-aug`) is a data-config key, `repeated_aug=3`, handled by the input
pipeline (each example of an epoch appears that many times, with independent augmentations).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from vit_jax.data.preprocess import Context, Example, register

# ---------------------------------------------------------------------------------------------------------------
# Image ops on float32 HxWx3 images with uint8 values (0..255); each returns the same. PIL semantics (the reference
# implementations are PIL based): results are rounded and clipped to uint8 after every op.


def _u8(x: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(tf.round(x), 0.0, 255.0)


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL ImageEnhance (`Image.blend`): degenerate + factor * (image - degenerate), truncated and clipped."""
    return tf.clip_by_value(tf.floor(degenerate + tf.cast(factor, tf.float32) * (image - degenerate)), 0.0, 255.0)


def _grayscale(image: tf.Tensor) -> tf.Tensor:
    """PIL 'L' conversion (ITU-R 601-2 luma, rounded), HxWx1."""
    return tf.round(tf.reduce_sum(image * tf.constant([0.299, 0.587, 0.114]), -1, keepdims=True))


def autocontrast(image: tf.Tensor) -> tf.Tensor:
    """Per channel, maps [min, max] linearly to [0, 255] (PIL ImageOps.autocontrast, cutoff 0)."""
    lo = tf.reduce_min(image, axis=(0, 1), keepdims=True)
    hi = tf.reduce_max(image, axis=(0, 1), keepdims=True)
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    out = tf.clip_by_value(tf.floor((image - lo) * scale), 0.0, 255.0)  # PIL: int(ix * scale + offset).
    return tf.where(hi > lo, out, image)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """Per-channel histogram equalisation (PIL ImageOps.equalize)."""

    def channel(c):
        ci = tf.cast(c, tf.int32)
        hist = tf.math.bincount(tf.reshape(ci, [-1]), minlength=256, maxlength=256)
        nonzero = tf.boolean_mask(hist, hist > 0)
        step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
        lut = (tf.cumsum(hist, exclusive=True) + step // 2) // tf.maximum(step, 1)
        lut = tf.clip_by_value(lut, 0, 255)
        return tf.where(step > 0, tf.cast(tf.gather(lut, ci), tf.float32), c)

    return tf.stack([channel(image[..., i]) for i in range(3)], axis=-1)


def invert(image: tf.Tensor) -> tf.Tensor:
    return 255.0 - image


def posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
    """Keeps the top `bits` bits of every value."""
    shift = tf.cast(8 - tf.cast(bits, tf.int32), tf.int32)
    shift = tf.clip_by_value(shift, 0, 8)
    ci = tf.cast(image, tf.int32)
    return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(ci, shift), shift), tf.float32)


def solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    """Inverts values >= threshold."""
    return tf.where(image >= tf.cast(threshold, tf.float32), 255.0 - image, image)


def solarize_add(image: tf.Tensor, addition: tf.Tensor, threshold: float = 128.0) -> tf.Tensor:
    """Adds `addition` to values < threshold (clipped)."""
    return tf.where(image < threshold, _u8(image + tf.cast(addition, tf.float32)), image)


def color(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return _blend(tf.tile(_grayscale(image), [1, 1, 3]), image, factor)


def contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    mean = tf.floor(tf.reduce_mean(_grayscale(image)) + 0.5)  # PIL: int(mean of the L histogram + 0.5).
    return _blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return _blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Blend with PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13); the border keeps the original pixels."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], 'VALID')[0]
    smooth = _u8(smooth)
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    inner = tf.pad(tf.ones([h - 2, w - 2, 1]), [[1, 1], [1, 1], [0, 0]]) > 0
    degenerate = tf.where(inner, smooth, image)
    return _blend(degenerate, image, factor)


def affine(image: tf.Tensor, matrix: tf.Tensor, fill: Sequence[float]) -> tf.Tensor:
    """Samples input at `matrix @ (x, y, 1)` for every output pixel (x, y) (PIL `Image.transform(AFFINE)`), bilinear,
    out-of-image pixels set to `fill` (an RGB colour)."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    transform = tf.concat([tf.reshape(tf.cast(matrix, tf.float32), [6]), tf.zeros([2])], 0)[None]
    with_mask = tf.concat([image, tf.ones_like(image[..., :1])], -1)[None]
    out = tf.raw_ops.ImageProjectiveTransformV3(images=with_mask, transforms=transform, output_shape=tf.stack([h, w]),
                                                fill_value=0.0, interpolation='BILINEAR', fill_mode='CONSTANT')[0]
    mask = out[..., 3:]
    fill = tf.constant(fill, tf.float32)
    return _u8(out[..., :3] + (1.0 - mask) * fill)


def rotate(image: tf.Tensor, degrees: tf.Tensor, fill: Sequence[float]) -> tf.Tensor:
    """Counter-clockwise rotation about the centre (PIL `Image.rotate`)."""
    h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
    a = -tf.cast(degrees, tf.float32) * math.pi / 180.0
    cx, cy = (w - 1) / 2, (h - 1) / 2
    c, s = tf.cos(a), tf.sin(a)
    matrix = tf.stack([c, s, cx - c * cx - s * cy, -s, c, cy + s * cx - c * cy])
    return affine(image, matrix, fill)


def shear_x(image: tf.Tensor, level: tf.Tensor, fill: Sequence[float]) -> tf.Tensor:
    return affine(image, tf.stack([1.0, level, 0.0, 0.0, 1.0, 0.0]), fill)


def shear_y(image: tf.Tensor, level: tf.Tensor, fill: Sequence[float]) -> tf.Tensor:
    return affine(image, tf.stack([1.0, 0.0, 0.0, level, 1.0, 0.0]), fill)


def translate_x(image: tf.Tensor, pixels: tf.Tensor, fill: Sequence[float]) -> tf.Tensor:
    return affine(image, tf.stack([1.0, 0.0, pixels, 0.0, 1.0, 0.0]), fill)


def translate_y(image: tf.Tensor, pixels: tf.Tensor, fill: Sequence[float]) -> tf.Tensor:
    return affine(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, pixels]), fill)


# ---------------------------------------------------------------------------------------------------------------
# RandAugment (timm `rand_augment_transform`).

_LEVEL_DENOM = 10.0
# Op names of timm's "increasing" set and its default set (the order does not matter: ops are drawn uniformly).
RAND_INCREASING_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing', 'SolarizeIncreasing',
                       'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
                       'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
RAND_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd', 'Color',
            'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')


def _rand_op(name: str, translate_pct: float, fill: Sequence[float]) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor],
                                                                                  tf.Tensor]:
    """fn(image, level in [0, 10], sign in {-1, 1}) for one timm RandAugment op."""
    frac = lambda level: level / _LEVEL_DENOM  # noqa: E731
    enhance_inc = lambda level, sign: 1.0 + sign * frac(level) * 0.9  # noqa: E731
    enhance = lambda level, sign: frac(level) * 1.8 + 0.1  # noqa: E731
    table = {
        'AutoContrast': lambda x, lv, s: autocontrast(x),
        'Equalize': lambda x, lv, s: equalize(x),
        'Invert': lambda x, lv, s: invert(x),
        'Rotate': lambda x, lv, s: rotate(x, s * frac(lv) * 30.0, fill),
        'Posterize': lambda x, lv, s: posterize(x, tf.cast(frac(lv) * 4, tf.int32)),
        'PosterizeIncreasing': lambda x, lv, s: posterize(x, 4 - tf.cast(frac(lv) * 4, tf.int32)),
        'Solarize': lambda x, lv, s: solarize(x, tf.floor(frac(lv) * 256)),
        'SolarizeIncreasing': lambda x, lv, s: solarize(x, 256 - tf.floor(frac(lv) * 256)),
        'SolarizeAdd': lambda x, lv, s: solarize_add(x, tf.floor(frac(lv) * 110)),
        'Color': lambda x, lv, s: color(x, enhance(lv, s)),
        'ColorIncreasing': lambda x, lv, s: color(x, enhance_inc(lv, s)),
        'Contrast': lambda x, lv, s: contrast(x, enhance(lv, s)),
        'ContrastIncreasing': lambda x, lv, s: contrast(x, enhance_inc(lv, s)),
        'Brightness': lambda x, lv, s: brightness(x, enhance(lv, s)),
        'BrightnessIncreasing': lambda x, lv, s: brightness(x, enhance_inc(lv, s)),
        'Sharpness': lambda x, lv, s: sharpness(x, enhance(lv, s)),
        'SharpnessIncreasing': lambda x, lv, s: sharpness(x, enhance_inc(lv, s)),
        'ShearX': lambda x, lv, s: shear_x(x, s * frac(lv) * 0.3, fill),
        'ShearY': lambda x, lv, s: shear_y(x, s * frac(lv) * 0.3, fill),
        'TranslateXRel': lambda x, lv, s: translate_x(
            x, s * frac(lv) * translate_pct * tf.cast(tf.shape(x)[1], tf.float32), fill),
        'TranslateYRel': lambda x, lv, s: translate_y(
            x, s * frac(lv) * translate_pct * tf.cast(tf.shape(x)[0], tf.float32), fill),
    }
    return table[name]


def _uniform(seed: tf.Tensor, i: int, shape=(), minval=0.0, maxval=1.0) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, tf.random.experimental.stateless_fold_in(seed, i), minval, maxval)


def randaugment_image(image: tf.Tensor, seed: tf.Tensor, num_layers: int = 2, magnitude: float = 9.0,
                      magnitude_std: float = 0.5, increasing: bool = True, prob: float = 0.5,
                      translate_pct: float = 0.45, fill: Sequence[float] = (128.0, 128.0, 128.0),
                      ops: Sequence[str] | None = None) -> tf.Tensor:
    """timm RandAugment on one HxWx3 image in [0, 255] (rounded to uint8 values); returns float32."""
    names = tuple(ops) if ops is not None else (RAND_INCREASING_OPS if increasing else RAND_OPS)
    fns = [_rand_op(n, translate_pct, fill) for n in names]
    x = _u8(tf.cast(image, tf.float32))
    for layer in range(num_layers):
        s = tf.random.experimental.stateless_fold_in(seed, layer)
        idx = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(s, 0), 0, len(fns), tf.int32)
        apply = _uniform(s, 1) < prob
        level = magnitude
        if magnitude_std == float('inf'):
            level = _uniform(s, 2) * magnitude
        elif magnitude_std > 0:
            level = magnitude + magnitude_std * tf.random.stateless_normal(
                [], tf.random.experimental.stateless_fold_in(s, 2))
        level = tf.clip_by_value(tf.cast(level, tf.float32), 0.0, _LEVEL_DENOM)
        sign = tf.where(_uniform(s, 3) < 0.5, -1.0, 1.0)
        branches = [lambda f=f: f(x, level, sign) for f in fns]
        y = tf.switch_case(idx, branches)
        x = tf.where(apply, tf.ensure_shape(y, x.shape), x)
    return x


def _fill(ctx: Context, fill) -> tuple[float, float, float]:
    if fill is not None:
        return tuple(float(v) for v in fill) if not isinstance(fill, (int, float)) else (float(fill),) * 3
    mean = ctx.get('aug_fill_mean', None)  # Dataset mean in [0, 1] (timm uses the normalisation mean).
    if mean is not None:
        return tuple(float(min(255, round(255 * m))) for m in mean)
    return (128.0, 128.0, 128.0)


@register('randaugment', random=True)
def randaugment(example: Example, ctx: Context, num_layers: int = 2, magnitude: float = 9.0,
                magnitude_std: float = 0.5, increasing: bool = True, prob: float = 0.5, translate_pct: float = 0.45,
                fill: Sequence[float] | float | None = None) -> Example:
    """timm RandAugment (default `rand-m9-mstd0.5-inc1`); fill: RGB in [0, 255], default from the data config's
    `aug_fill_mean` (a mean in [0, 1], as timm's img_mean) or grey 128."""
    example['image'] = randaugment_image(example['image'], ctx.seed, int(num_layers), float(magnitude),
                                         float(magnitude_std), bool(increasing), float(prob), float(translate_pct),
                                         _fill(ctx, fill))
    return example


# ---------------------------------------------------------------------------------------------------------------
# AutoAugment, CIFAR-10 policy.

# The 25 sub-policies found on reduced CIFAR-10 (Cubuk et al. 2019, appendix table), one a line as listed there:
# two ops, each with its probability and magnitude index.
_CIFAR10_TABLE = """
    invert       0.1 7    contrast     0.2 6
    rotate       0.7 2    translateX   0.3 9
    sharpness    0.8 1    sharpness    0.9 3
    shearY       0.5 8    translateY   0.7 9
    autocontrast 0.5 8    equalize     0.9 2
    shearY       0.2 7    posterize    0.3 7
    color        0.4 3    brightness   0.6 7
    sharpness    0.3 9    brightness   0.7 9
    equalize     0.6 5    equalize     0.5 1
    contrast     0.6 7    sharpness    0.6 5
    color        0.7 7    translateX   0.5 8
    equalize     0.3 7    autocontrast 0.4 8
    translateY   0.4 3    sharpness    0.2 6
    brightness   0.9 6    color        0.2 8
    solarize     0.5 2    invert       0.0 3
    equalize     0.2 0    autocontrast 0.6 0
    equalize     0.2 8    equalize     0.6 4
    color        0.9 9    equalize     0.6 6
    autocontrast 0.8 4    solarize     0.2 8
    brightness   0.1 3    color        0.7 0
    solarize     0.4 5    autocontrast 0.9 3
    translateY   0.9 9    translateY   0.7 9
    autocontrast 0.9 2    solarize     0.8 3
    equalize     0.8 8    invert       0.1 3
    translateY   0.7 9    autocontrast 0.9 1
"""


def _policy(table: str) -> tuple[tuple[str, float, int, str, float, int], ...]:
    """(op1, probability, magnitude index, op2, probability, magnitude index) per line of a policy table."""
    rows = [line.split() for line in table.strip().splitlines()]
    return tuple((op1, float(p1), int(m1), op2, float(p2), int(m2)) for op1, p1, m1, op2, p2, m2 in rows)


CIFAR10_POLICY = _policy(_CIFAR10_TABLE)

# Magnitude of index i (0..9) per op: 10 evenly spaced values (the PIL port's ranges).
_AA_RANGES = {
    'shearX': np.linspace(0, 0.3, 10), 'shearY': np.linspace(0, 0.3, 10),
    'translateX': np.linspace(0, 150 / 331, 10), 'translateY': np.linspace(0, 150 / 331, 10),
    'rotate': np.linspace(0, 30, 10), 'color': np.linspace(0.0, 0.9, 10),
    'posterize': np.round(np.linspace(8, 4, 10), 0), 'solarize': np.linspace(256, 0, 10),
    'contrast': np.linspace(0.0, 0.9, 10), 'sharpness': np.linspace(0.0, 0.9, 10),
    'brightness': np.linspace(0.0, 0.9, 10), 'autocontrast': np.zeros(10), 'equalize': np.zeros(10),
    'invert': np.zeros(10),
}


def _aa_op(name: str, magnitude: float, fill: Sequence[float]) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """fn(image, sign) for one AutoAugment op at a fixed magnitude (signed ops get a random sign)."""
    m = float(magnitude)
    return {
        'shearX': lambda x, s: shear_x(x, s * m, fill),
        'shearY': lambda x, s: shear_y(x, s * m, fill),
        'translateX': lambda x, s: translate_x(x, s * m * tf.cast(tf.shape(x)[1], tf.float32), fill),
        'translateY': lambda x, s: translate_y(x, s * m * tf.cast(tf.shape(x)[0], tf.float32), fill),
        'rotate': lambda x, s: rotate(x, s * m, fill),
        'color': lambda x, s: color(x, 1.0 + s * m),
        'posterize': lambda x, s: posterize(x, tf.constant(int(m))),
        'solarize': lambda x, s: solarize(x, tf.constant(m)),
        'contrast': lambda x, s: contrast(x, 1.0 + s * m),
        'sharpness': lambda x, s: sharpness(x, 1.0 + s * m),
        'brightness': lambda x, s: brightness(x, 1.0 + s * m),
        'autocontrast': lambda x, s: autocontrast(x),
        'equalize': lambda x, s: equalize(x),
        'invert': lambda x, s: invert(x),
    }[name]


def autoaugment_cifar_image(image: tf.Tensor, seed: tf.Tensor,
                            fill: Sequence[float] = (128.0, 128.0, 128.0)) -> tf.Tensor:
    """One randomly chosen CIFAR-10 sub-policy on one HxWx3 image in [0, 255]; returns float32."""
    x = _u8(tf.cast(image, tf.float32))
    idx = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, 0), 0, len(CIFAR10_POLICY),
                                      tf.int32)
    u = _uniform(seed, 1, [4])

    def sub_policy(policy):
        op1, p1, m1, op2, p2, m2 = policy

        def run():
            y = x
            sign1, sign2 = tf.where(u[2] < 0.5, -1.0, 1.0), tf.where(u[3] < 0.5, -1.0, 1.0)
            y = tf.where(u[0] < p1, _aa_op(op1, _AA_RANGES[op1][m1], fill)(y, sign1), y)
            y = tf.where(u[1] < p2, _aa_op(op2, _AA_RANGES[op2][m2], fill)(y, sign2), y)
            return tf.ensure_shape(y, x.shape)

        return run

    return tf.switch_case(idx, [sub_policy(p) for p in CIFAR10_POLICY])


@register('autoaugment_cifar', random=True)
def autoaugment_cifar(example: Example, ctx: Context, fill: Sequence[float] | float | None = None) -> Example:
    """AutoAugment's CIFAR-10 policy (the CCT examples/ script's `CIFAR10Policy`; grey 128 fill by default)."""
    example['image'] = autoaugment_cifar_image(example['image'], ctx.seed,
                                               _fill(ctx, fill) if fill is not None else (128.0, 128.0, 128.0))
    return example


# ---------------------------------------------------------------------------------------------------------------
# Normalisation and random erasing (after value_range).


@register('normalize')
def normalize(example: Example, ctx: Context, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None) -> Example:
    """(x - mean) / std per channel (data config `norm_mean` / `norm_std` by default); use after value_range(0, 1)."""
    mean = mean if mean is not None else ctx.get('norm_mean')
    std = std if std is not None else ctx.get('norm_std')
    if mean is None or std is None:
        raise ValueError('normalize needs mean and std (arguments, or data config norm_mean / norm_std).')
    example['image'] = (tf.cast(example['image'], tf.float32) - tf.constant(mean, tf.float32)) / tf.constant(
        std, tf.float32)
    return example


def random_erasing_image(image: tf.Tensor, seed: tf.Tensor, prob: float = 0.25, mode: str = 'pixel',
                         min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3,
                         max_aspect: float | None = None, attempts: int = 10) -> tf.Tensor:
    """timm RandomErasing (max_count 1) on one HxWxC image: with probability `prob`, the first of `attempts` random
    boxes (area fraction in [min_area, max_area], log-uniform aspect in [min_aspect, max_aspect]) that fits is filled
    with N(0, 1) noise per pixel ('pixel'), per channel ('rand') or zeros ('const')."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    c = image.shape[-1]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    max_aspect = max_aspect if max_aspect is not None else 1.0 / min_aspect
    u = _uniform(seed, 0, [attempts, 4])
    area = hf * wf * (min_area + (max_area - min_area) * u[:, 0])
    aspect = tf.exp(math.log(min_aspect) + (math.log(max_aspect) - math.log(min_aspect)) * u[:, 1])
    eh = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    ew = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    ok = (eh < h) & (ew < w)
    first = tf.argmax(tf.cast(ok, tf.int32))
    eh, ew = eh[first], ew[first]
    top = tf.cast(tf.floor(u[first, 2] * tf.cast(h - eh + 1, tf.float32)), tf.int32)
    left = tf.cast(tf.floor(u[first, 3] * tf.cast(w - ew + 1, tf.float32)), tf.int32)
    rows = tf.range(h)[:, None, None]
    cols = tf.range(w)[None, :, None]
    inside = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
    erase = tf.reduce_any(ok) & (_uniform(seed, 1) < prob)
    noise_seed = tf.random.experimental.stateless_fold_in(seed, 2)
    if mode == 'pixel':
        fill = tf.random.stateless_normal(tf.shape(image), noise_seed)
    elif mode == 'rand':
        fill = tf.broadcast_to(tf.random.stateless_normal([1, 1, c], noise_seed), tf.shape(image))
    elif mode == 'const':
        fill = tf.zeros_like(image)
    else:
        raise ValueError(f"random_erasing mode must be 'pixel', 'rand' or 'const', got {mode!r}.")
    return tf.where(inside & erase, tf.cast(fill, image.dtype), image)


@register('random_erasing', random=True)
def random_erasing(example: Example, ctx: Context, prob: float = 0.25, mode: str = 'pixel', min_area: float = 0.02,
                   max_area: float = 1 / 3, min_aspect: float = 0.3) -> Example:
    """timm RandomErasing (`reprob`, mode 'pixel', one box); put it after value_range / normalize."""
    example['image'] = random_erasing_image(tf.cast(example['image'], tf.float32), ctx.seed, float(prob), mode,
                                            float(min_area), float(max_area), float(min_aspect))
    return example


# ---------------------------------------------------------------------------------------------------------------
# Mixup / CutMix (batch op).


def _beta(seed: tf.Tensor, alpha: float, shape) -> tf.Tensor:
    """Beta(alpha, alpha) samples via two stateless gammas."""
    a = tf.random.stateless_gamma(shape, tf.random.experimental.stateless_fold_in(seed, 0), alpha)
    b = tf.random.stateless_gamma(shape, tf.random.experimental.stateless_fold_in(seed, 1), alpha)
    return a / tf.maximum(a + b, 1e-12)


def cutmix_boxes(seed: tf.Tensor, lam: tf.Tensor, h: int, w: int) -> tuple[tf.Tensor, tf.Tensor]:
    """timm `rand_bbox` for a vector of lambdas: boxes of side int(size * sqrt(1 - lam)) at uniform centres, clipped.

    Returns (mask [N, h, w] True inside the box, corrected lambda [N] = 1 - box area / image area).
    """
    n = tf.shape(lam)[0]
    ratio = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(h * ratio, tf.int32)
    cut_w = tf.cast(w * ratio, tf.int32)
    cy = tf.random.stateless_uniform([n], tf.random.experimental.stateless_fold_in(seed, 0), 0, h, tf.int32)
    cx = tf.random.stateless_uniform([n], tf.random.experimental.stateless_fold_in(seed, 1), 0, w, tf.int32)
    yl, yh = tf.clip_by_value(cy - cut_h // 2, 0, h), tf.clip_by_value(cy + cut_h // 2, 0, h)
    xl, xh = tf.clip_by_value(cx - cut_w // 2, 0, w), tf.clip_by_value(cx + cut_w // 2, 0, w)
    rows = tf.range(h)[None, :, None]
    cols = tf.range(w)[None, None, :]
    mask = ((rows >= yl[:, None, None]) & (rows < yh[:, None, None]) & (cols >= xl[:, None, None])
            & (cols < xh[:, None, None]))
    lam = 1.0 - tf.cast((yh - yl) * (xh - xl), tf.float32) / float(h * w)
    return mask, lam


def mixup_batch(batch: Example, seed: tf.Tensor, num_classes: int, mixup_alpha: float = 0.8,
                cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5, mode: str = 'batch',
                correct_lam: bool = True, enabled: tf.Tensor | bool = True) -> Example:
    """timm Mixup/CutMix on a batch {'image': [B, H, W, C], 'label': [B]}; adds 'label_dist' [B, num_classes].

    Example i is mixed with example B-1-i. mode 'batch': one lambda and one mixup-or-CutMix choice for the batch;
    'elem': per example. With both alphas > 0, CutMix is chosen with probability `switch_prob`.
    """
    images = tf.cast(batch['image'], tf.float32)
    labels = tf.cast(batch['label'], tf.int32)
    b, h, w = images.shape[0], images.shape[1], images.shape[2]
    if b is None or h is None or w is None:
        raise ValueError('mixup needs static batch and image sizes (the training pipeline drops the remainder).')
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError('mixup: at least one of mixup_alpha and cutmix_alpha must be > 0.')
    n = 1 if mode == 'batch' else b
    if mode not in ('batch', 'elem'):
        raise ValueError(f"mixup mode must be 'batch' or 'elem', got {mode!r}.")
    u = _uniform(seed, 0, [n, 2])
    active = (u[:, 0] < prob) & tf.cast(enabled, tf.bool)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = u[:, 1] < switch_prob
    else:
        use_cutmix = tf.fill([n], cutmix_alpha > 0)
    lam_mix = _beta(tf.random.experimental.stateless_fold_in(seed, 1), max(mixup_alpha, 1e-6), [n])
    lam_cut = _beta(tf.random.experimental.stateless_fold_in(seed, 2), max(cutmix_alpha, 1e-6), [n])
    box, lam_box = cutmix_boxes(tf.random.experimental.stateless_fold_in(seed, 3), lam_cut, h, w)
    if correct_lam:
        lam_cut = lam_box
    lam = tf.where(active, tf.where(use_cutmix, lam_cut, lam_mix), 1.0)
    if mode == 'batch':
        lam, use_cutmix, active, box = (tf.repeat(lam, b), tf.repeat(use_cutmix, b), tf.repeat(active, b),
                                        tf.repeat(box, b, axis=0))
    partner = tf.reverse(images, [0])
    mixed = lam[:, None, None, None] * images + (1.0 - lam[:, None, None, None]) * partner
    pasted = tf.where(box[..., None], partner, images)
    out_images = tf.where((use_cutmix & active)[:, None, None, None], pasted, mixed)
    onehot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    dist = lam[:, None] * onehot + (1.0 - lam[:, None]) * tf.reverse(onehot, [0])
    out = dict(batch)
    out['image'] = tf.cast(out_images, batch['image'].dtype)
    out['label_dist'] = dist
    return out


@register('mixup', random=True, batch=True)
def mixup(batch: Example, ctx: Context, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
          switch_prob: float = 0.5, mode: str = 'batch', num_classes: int | None = None,
          off_step: int | None = None, correct_lam: bool = True) -> Example:
    """timm Mixup/CutMix with switching (defaults: DeiT / CCT / DHVT); `num_classes` (or data config
    `num_classes`) sizes `label_dist`; `off_step`: no mixing from that step on (timm mixup_off_epoch * steps/epoch)."""
    k = num_classes if num_classes is not None else ctx.get('num_classes')
    if k is None:
        raise ValueError('mixup needs num_classes (mixup(num_classes=10) or config.data.num_classes).')
    enabled = True
    if off_step is not None:
        if '_step' not in batch:
            raise ValueError('mixup(off_step=...) needs the training step, which this input pipeline does not pass.')
        enabled = tf.cast(batch['_step'], tf.int64) < int(off_step)
    return mixup_batch(batch, ctx.seed, int(k), float(mixup_alpha), float(cutmix_alpha), float(prob),
                       float(switch_prob), mode, bool(correct_lam), enabled)
