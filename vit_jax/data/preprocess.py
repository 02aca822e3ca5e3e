"""Preprocessing ops: pure TensorFlow functions on single examples, and a registry of them by name.

A preprocessing pipeline is a pipe string of registered ops, applied in order to each example::

    'inception_crop|flip|value_range(-1, 1)'
    'resize_crop(crop_pct=0.9)|value_range(0, 1)'

Each op is called as ``op(example, ctx, *args, **kwargs)`` on the example dict (``{'image': ..., 'label': ...}``)
and returns the new dict. ``ctx`` (a `Context`) carries the model input size, whether this is training, the data
config (defaults for the ops' options) and, for training, a per-example, per-op stateless seed, so every random
choice is a pure function of (training seed, example index): deterministic with a parallel map and on resume.

Inside a pipeline images are float32 (or uint8 before the first resize) with values in [0, 255]; `value_range`
maps them to the model's range and is normally the last op (`build` appends it when a pipe string lacks it).

Add an op::

    from vit_jax.data import preprocess

    @preprocess.register('solarize', random=True)
    def solarize(example, ctx, threshold=128.0):
        ...
        return example

`random=True` marks ops that draw from ``ctx.seed`` in training; unless `eval_ok=True` they are refused in
evaluation pipelines (where ``ctx.seed`` is None). `batch=True` registers a batch op (every value has a leading
batch axis, e.g. mixup), used in the data config's ``train_batch_pp`` with one seed per training step.
Image ops below are also available as plain functions (``inception_crop_image``, ``resize_image`` ...).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tensorflow as tf

from vit_jax import registry

Example = dict[str, tf.Tensor]


@dataclasses.dataclass(frozen=True)
class Context:
    """What an op may read besides the example."""

    image_size: tuple[int, int]  # (height, width) of the model input.
    train: bool  # Training (random augmentation) or evaluation.
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # The data config: op option defaults.
    seed: tf.Tensor | None = None  # Stateless seed, shape [2] int32, unique per (example, op); None in eval.

    def get(self, key: str, default: Any = None) -> Any:
        """`config[key]`, or `default` when missing or None."""
        value = self.config.get(key, None) if self.config is not None else None
        return default if value is None else value


@dataclasses.dataclass(frozen=True)
class OpEntry:
    """A registered op."""

    name: str
    fn: Callable[..., Example]
    random: bool  # Gets a per-example ctx.seed in training.
    eval_ok: bool  # Usable in evaluation pipelines (where ctx.seed is None).
    batch: bool = False  # Works on whole batches (leading batch axis), e.g. mixup; used in train_batch_pp.


# The ops; modules that register more are imported on first lookup.
_OPS: registry.Registry[OpEntry] = registry.Registry('preprocessing op', plural='ops', modules=(
    'vit_jax.data.augment', 'vit_jax.data.video', 'vit_jax.data.outpainting', 'vit_jax.data.dense',
    'vit_jax.data.color'))


def register(name: str, *, random: bool = False, eval_ok: bool | None = None,
             batch: bool = False) -> Callable[[Callable[..., Example]], Callable[..., Example]]:
    """Decorator: registers `fn(example, ctx, *args, **kwargs) -> example` as the op `name`.

    Args:
        name: the op's name in pipe strings.
        random: the op draws random numbers in training from `ctx.seed`.
        eval_ok: the op may appear in evaluation pipelines, where `ctx.seed` is None (default: `not random`).
        batch: the op works on a whole batch (every value has a leading batch axis; e.g. mixup). Batch ops go in
            the data config's `train_batch_pp` and get one seed per batch (from the seed and the step).
    """
    return _OPS.register(name, entry=lambda fn: OpEntry(name, fn, random, (not random) if eval_ok is None else eval_ok,
                                                        batch))


def list_ops() -> list[str]:
    """Names of the registered ops."""
    return sorted(_OPS.names())


def get_op(name: str) -> OpEntry:
    """The registered op `name`; a ValueError listing close matches otherwise."""
    return _OPS.get(name)


# ---------------------------------------------------------------------------------------------------------------
# Pipe strings.


@dataclasses.dataclass(frozen=True)
class OpCall:
    """One parsed element of a pipe string: `name(*args, **kwargs)`."""

    name: str
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)


def parse(pipe: str | Sequence[str]) -> list[OpCall]:
    """Parses 'op1|op2(3, x=(1, 2))|...' (or a list of such strings) into `OpCall`s; arguments are literals."""
    parts = [p for item in ([pipe] if isinstance(pipe, str) else pipe) for p in str(item).split('|')]
    calls = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        try:
            node = ast.parse(part, mode='eval').body
            if isinstance(node, ast.Name):
                calls.append(OpCall(node.id))
                continue
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                raise TypeError('not an op call')
            args = tuple(ast.literal_eval(a) for a in node.args)
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        except (SyntaxError, ValueError, TypeError) as e:
            raise ValueError(f'Cannot parse preprocessing op {part!r} (expected name or name(literal args)): '
                             f'{e}') from None
        calls.append(OpCall(node.func.id, args, kwargs))
    return calls


def build(pipe: str | Sequence[str], *, image_size: tuple[int, int], train: bool,
          config: Mapping[str, Any] | None = None,
          batch: bool = False) -> Callable[[Example, tf.Tensor | None], Example]:
    """Returns `fn(example, seed) -> example` applying the ops of `pipe` in order.

    Args:
        pipe: pipe string (or list of them) of registered ops.
        image_size: (height, width) of the model input.
        train: training pipeline (random ops allowed) or evaluation.
        config: data config (op option defaults such as crop_pct, inception_crop_area, value_range).
        batch: a pipeline of batch ops (train_batch_pp) instead of per-example ops.

    `seed` (shape [2] int32, stateless) is required when `pipe` has random ops; each op gets its own seed folded
    from it. Every op is looked up now, so a typo fails before any data is read.
    """
    calls = parse(pipe)
    entries = [get_op(c.name) for c in calls]
    wrong = [e.name for e in entries if e.batch != batch]
    if wrong:
        where = ('per-example ops; put them in train_pp/eval_pp' if batch
                 else 'batch ops; put them in the data config key train_batch_pp')
        raise ValueError(f'Preprocessing ops {wrong} in {pipe!r} are {where}.')
    if not train:
        bad = [e.name for e in entries if not e.eval_ok]
        if bad:
            raise ValueError(f'Random preprocessing ops {bad} cannot be used in an evaluation pipeline '
                             f'(pipe {pipe!r}); use them in train_pp.')
    base = Context(image_size=tuple(int(s) for s in image_size), train=train, config=dict(config or {}))

    def apply(example: Example, seed: tf.Tensor | None = None) -> Example:
        example = dict(example)
        for i, (call, entry) in enumerate(zip(calls, entries)):
            op_seed = None
            if entry.random and train:
                if seed is None:
                    raise ValueError(f'Op {call.name!r} is random and needs a seed.')
                op_seed = tf.random.experimental.stateless_fold_in(seed, i)
            ctx = dataclasses.replace(base, seed=op_seed)
            example = entry.fn(example, ctx, *call.args, **call.kwargs)
        return example

    return apply


def has_op(pipe: str | Sequence[str], name: str) -> bool:
    """Whether the pipe string uses op `name`."""
    return any(c.name == name for c in parse(pipe))


# ---------------------------------------------------------------------------------------------------------------
# Pure image functions (HxWxC tensors; uint8 or float32 in [0, 255]).


def _size(size: Any, ctx: Context) -> tuple[int, int]:
    if size is None:
        return ctx.image_size
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


LARGE_JPEG_PIXELS = 1 << 24  # JPEGs above this many pixels (16.8 MP, e.g. 4096x4096) may be decoded downscaled.
JPEG_DOWNSCALE_MARGIN = 4  # ... keeping the short side >= this many times the model input's long side.


def decode_image(data: tf.Tensor, channels: int = 3, min_size: Sequence[int] | None = None,
                 orient: bool = False) -> tf.Tensor:
    """Decodes JPEG/PNG/GIF/BMP bytes to uint8 HxWx`channels`.

    Modes: grayscale is repeated to RGB, alpha is dropped (the colour channels are kept as stored, not composited),
    palette images are expanded, 16-bit PNGs are scaled to 8 bits (v >> 8, i.e. 65535 -> 255), CMYK/YCCK JPEGs are
    converted to RGB by libjpeg.

    Args:
        data: the encoded bytes (scalar tf.string).
        channels: output channels.
        min_size: (h, w) the image will be used at. When given, a JPEG of more than `LARGE_JPEG_PIXELS` pixels is
            decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling: fast, and a 10000x10000 photo takes
            1250x1250x3 bytes instead of 300 MB) as long as its short side stays >= `JPEG_DOWNSCALE_MARGIN` times
            max(min_size). Smaller images, and all non-JPEG formats, are decoded at full size.
        orient: apply the EXIF orientation (`exif_orientation`), so the image is upright as viewers (and
            `vit_jax.predict`) show it. The 'decode' op does (data config `exif_orientation`, default True).
    """
    if orient:
        return apply_orientation(decode_image(data, channels, min_size), exif_orientation(data))
    if min_size is None:
        image = tf.io.decode_image(data, channels=channels, expand_animations=False, dtype=tf.uint8)
        image.set_shape([None, None, channels])
        return image
    need = JPEG_DOWNSCALE_MARGIN * max(int(min_size[0]), int(min_size[1]))

    def jpeg():
        hw = tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64)
        short, pixels = tf.reduce_min(hw), hw[0] * hw[1]
        branch = tf.constant(0, tf.int32)
        for i, r in enumerate((2, 4, 8), start=1):
            ok = tf.logical_and(pixels > LARGE_JPEG_PIXELS, short // r >= need)
            branch = tf.where(ok, tf.constant(i, tf.int32), branch)
        return tf.switch_case(branch, [lambda r=r: tf.io.decode_jpeg(data, channels=channels, ratio=r)
                                       for r in (1, 2, 4, 8)])

    def other():
        return tf.io.decode_image(data, channels=channels, expand_animations=False, dtype=tf.uint8)

    is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), b'\xff\xd8\xff')
    image = tf.cond(is_jpeg, jpeg, other)
    image.set_shape([None, None, channels])
    return image


EXIF_SCAN_BYTES = 1 << 13  # Where the EXIF header is looked for (right after SOI, or after JFIF's APP0).
_ORIENTATION_TAG = 0x0112
_TIFF_BYTES = 1024  # The TIFF header and IFD0 are read from the block's first KiB.
_IFD_ENTRIES = 64  # Entries of IFD0 looked at for the orientation.


def exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (int32 1-8; 1 when absent or unreadable) of encoded image bytes (scalar tf.string).

    Read from a JPEG's `Exif` APP1 segment or a PNG's `eXIf` chunk (before the image data), in pure TensorFlow
    (no Python per image, no loop: the first APP1 `Exif` header in the first `EXIF_SCAN_BYTES`, where libjpeg's
    entropy-coded data cannot hold the marker, as PIL finds it). 1 is "as stored"; 2-8 as in the EXIF standard
    (6: rotate 90 degrees clockwise to display, the usual upright phone photo). Damaged headers give 1, never an
    error.
    """
    head = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 0, EXIF_SCAN_BYTES), tf.uint8), tf.int32)
    n = tf.size(head)
    padded = tf.concat([head, tf.zeros([_TIFF_BYTES + 16], tf.int32)], 0)  # Reads past the end give 0.

    def find(pattern: Sequence[int | None]) -> tf.Tensor:  # First offset of `pattern` (None: any byte), else n.
        hit = tf.ones([n], tf.bool)
        for k, byte in enumerate(pattern):
            if byte is not None:
                hit &= tf.equal(padded[k:k + n], byte)
        return tf.reduce_min(tf.where(hit, tf.range(n), n))

    # The TIFF block: after FF E1 <length> 'Exif\0\0' in a JPEG, or after the 'eXIf' chunk type in a PNG
    # (before its first 'IDAT'). A few vector ops on the first bytes: no per-byte loop, few ops per image.
    app1 = find([0xFF, 0xE1, None, None, 0x45, 0x78, 0x69, 0x66, 0, 0])
    exif_chunk, idat = find([0x65, 0x58, 0x49, 0x66]), find([0x49, 0x44, 0x41, 0x54])
    is_jpeg = (padded[0] == 0xFF) & (padded[1] == 0xD8)
    is_png = (padded[0] == 0x89) & (padded[1] == 0x50) & (padded[2] == 0x4E) & (padded[3] == 0x47)
    t = tf.where(is_jpeg & (app1 < n), app1 + 10, tf.where(is_png & (exif_chunk < tf.minimum(idat, n)),
                                                              exif_chunk + 4, -1))
    tiff = tf.slice(padded, [tf.maximum(t, 0)], [_TIFF_BYTES])
    little = (tiff[0] == 0x49) & (tiff[1] == 0x49)  # 'II'; 'MM' is big-endian.

    def u16(lo_hi: tf.Tensor) -> tf.Tensor:  # [..., 2] bytes -> their 16-bit value in the block's byte order.
        return tf.where(little, lo_hi[..., 0] + 256 * lo_hi[..., 1], 256 * lo_hi[..., 0] + lo_hi[..., 1])

    head16 = u16(tf.reshape(tiff[:8], [4, 2]))  # Byte order, 42, IFD0 offset (two halves).
    ifd = tf.where(little, head16[2] + 65536 * head16[3], 65536 * head16[2] + head16[3])
    valid = (t >= 0) & (little | ((tiff[0] == 0x4D) & (tiff[1] == 0x4D))) & (head16[1] == 42)
    valid &= (ifd >= 8) & (ifd <= _TIFF_BYTES - 2 - 12 * _IFD_ENTRIES)
    ifd = tf.where(valid, ifd, 8)
    count = u16(tf.reshape(tf.slice(tiff, [ifd], [2]), [1, 2]))[0]
    entries = tf.reshape(tf.slice(tiff, [ifd + 2], [12 * _IFD_ENTRIES]), [_IFD_ENTRIES, 6, 2])
    words = u16(entries)  # [entries, 6]: tag, type, count (2 words), value (2 words).
    hit = (words[:, 0] == _ORIENTATION_TAG) & (tf.range(_IFD_ENTRIES) < count)
    value = tf.reduce_max(tf.where(hit, words[:, 4], 0))
    return tf.where(valid & (value >= 1) & (value <= 8), value, 1)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turns an [H, W, C] image stored with EXIF `orientation` (1-8) upright, as viewers show it (PIL's
    `ImageOps.exif_transpose`); orientations 5-8 swap height and width."""
    t = lambda: tf.transpose(image, [1, 0, 2])  # noqa: E731
    branches = [  # tf.reverse, not [::-1] slices (a negative-stride slice of uint8 costs ~10x the decode).
        lambda: image,  # 1: as stored.
        lambda: tf.reverse(image, [1]),  # 2: mirrored left-right.
        lambda: tf.reverse(image, [0, 1]),  # 3: rotated 180.
        lambda: tf.reverse(image, [0]),  # 4: mirrored top-bottom.
        t,  # 5: transposed.
        lambda: tf.reverse(t(), [1]),  # 6: rotate 90 clockwise.
        lambda: tf.reverse(t(), [0, 1]),  # 7: transverse.
        lambda: tf.reverse(t(), [0]),  # 8: rotate 90 counter-clockwise.
    ]
    out = tf.switch_case(tf.clip_by_value(tf.cast(orientation, tf.int32), 1, 8) - 1, branches)
    out.set_shape([None, None, image.shape[-1]])
    return out


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Grayscale (HxWx1) to RGB; RGBA drops alpha; RGB unchanged (static channel count required)."""
    c = image.shape[-1]
    if c == 1:
        return tf.image.grayscale_to_rgb(image)
    if c == 4:
        return image[..., :3]
    return image


def resize_image(image: tf.Tensor, size: tuple[int, int], method: str = 'bilinear',
                 antialias: bool = False) -> tf.Tensor:
    """Resizes to exactly `size` (h, w); returns float32 in the input's value scale."""
    out = tf.image.resize(image, size, method=method, antialias=antialias)
    return tf.cast(out, tf.float32)


def resize_small_image(image: tf.Tensor, size: tuple[int, int], method: str = 'bilinear',
                       antialias: bool = False) -> tf.Tensor:
    """Resizes keeping the aspect ratio so that the image just covers `size` (h, w) (the short side matches)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.maximum(size[0] / shape[0], size[1] / shape[1])
    new = tf.cast(tf.math.ceil(shape * scale - 1e-3), tf.int32)
    new = tf.maximum(new, tf.constant(size, tf.int32))
    out = tf.image.resize(image, new, method=method, antialias=antialias)
    return tf.cast(out, tf.float32)


def central_crop_image(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """The central `size` (h, w) window (the image must be at least that large)."""
    shape = tf.shape(image)
    top = (shape[0] - size[0]) // 2
    left = (shape[1] - size[1]) // 2
    return tf.image.crop_to_bounding_box(image, top, left, size[0], size[1])


def random_crop_image(image: tf.Tensor, size: tuple[int, int], seed: tf.Tensor) -> tf.Tensor:
    """A random `size` (h, w) window, chosen by the stateless `seed`."""
    channels = image.shape[-1] if image.shape[-1] is not None else tf.shape(image)[-1]
    return tf.image.stateless_random_crop(image, [size[0], size[1], channels], seed=seed)


def inception_crop_image(image: tf.Tensor, size: tuple[int, int], seed: tf.Tensor,
                         area_range: tuple[float, float] = (0.05, 1.0),
                         aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3), method: str = 'bilinear',
                         antialias: bool = False) -> tf.Tensor:
    """Inception-style crop (a random box of `area_range` of the area and `aspect_ratio_range`), resized to `size`.

    The ViT release's train augmentation (`tf.image.sample_distorted_bounding_box`, area 5-100%, no minimum
    object coverage), here with the stateless op.
    """
    channels = image.shape[-1]
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=seed, area_range=tuple(area_range),
        aspect_ratio_range=tuple(aspect_ratio_range), min_object_covered=0.0, use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, crop_size)
    crop.set_shape([None, None, channels])
    return resize_image(crop, size, method=method, antialias=antialias)


def random_flip_image(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Left-right flip with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed=seed)


def value_range_image(image: tf.Tensor, vmin: float, vmax: float, in_min: float = 0.0,
                      in_max: float = 255.0) -> tf.Tensor:
    """Maps [in_min, in_max] linearly to [vmin, vmax] (float32)."""
    image = tf.cast(image, tf.float32)
    return (image - in_min) / (in_max - in_min) * (vmax - vmin) + vmin


# ---------------------------------------------------------------------------------------------------------------
# Registered ops (on the 'image' key).


def _resize_opts(ctx: Context) -> dict:
    return {'method': ctx.get('resize_method', 'bilinear'), 'antialias': bool(ctx.get('antialias', False))}


@register('decode')
def decode(example: Example, ctx: Context, channels: int = 3) -> Example:
    """Encoded bytes (or an 'image_path' to read) -> uint8 RGB; already-decoded images are made RGB.

    Huge JPEGs are decoded downscaled (see `decode_image`; data config `downscale_large_jpegs=False` turns it off).
    The EXIF orientation is applied (as `vit_jax.predict` does, so a file is the same image in training, evaluation
    and predict; data config `exif_orientation=False` decodes the stored pixels as the ViT release did).
    """
    if 'image_path' in example:
        example['image'] = tf.io.read_file(example.pop('image_path'))
    if 'image' not in example:  # E.g. a video dataset: its own ops decode it.
        return example
    image = example['image']
    if image.dtype == tf.string:
        large = ctx.get('downscale_large_jpegs', True)
        example['image'] = decode_image(image, channels, min_size=ctx.image_size if large else None,
                                        orient=bool(ctx.get('exif_orientation', True)))
    else:
        example['image'] = to_rgb(image)
    return example


@register('resize')
def resize(example: Example, ctx: Context, size: Any = None) -> Example:
    """Resizes to the model input size (the ViT release's eval preprocessing: no crop, aspect ratio not kept)."""
    example['image'] = resize_image(example['image'], _size(size, ctx), **_resize_opts(ctx))
    return example


@register('resize_small')
def resize_small(example: Example, ctx: Context, size: Any = None) -> Example:
    """Keeps the aspect ratio: the short side to `size` (default: the model input size)."""
    example['image'] = resize_small_image(example['image'], _size(size, ctx), **_resize_opts(ctx))
    return example


@register('central_crop')
def central_crop(example: Example, ctx: Context, size: Any = None) -> Example:
    """The central window of the model input size."""
    example['image'] = central_crop_image(example['image'], _size(size, ctx))
    return example


@register('random_crop', random=True)
def random_crop(example: Example, ctx: Context, size: Any = None) -> Example:
    """A random window of the model input size."""
    example['image'] = random_crop_image(example['image'], _size(size, ctx), ctx.seed)
    return example


@register('resize_crop', random=True, eval_ok=True)
def resize_crop(example: Example, ctx: Context, crop_pct: float | None = None) -> Example:
    """Short side to size / crop_pct (data config `crop_pct`, default 0.875), then a crop of the model input size.

    Central crop in evaluation; in training a random crop (seeded per example).
    """
    crop_pct = float(crop_pct if crop_pct is not None else ctx.get('crop_pct', 0.875))
    h, w = ctx.image_size
    big = (round(h / crop_pct), round(w / crop_pct))
    image = resize_small_image(example['image'], big, **_resize_opts(ctx))
    if ctx.train:
        if ctx.seed is None:
            raise ValueError('resize_crop in training needs a seed.')
        image = random_crop_image(image, (h, w), ctx.seed)
    else:
        image = central_crop_image(image, (h, w))
    example['image'] = image
    return example


@register('inception_crop', random=True)
def inception_crop(example: Example, ctx: Context, area_range: Sequence[float] | None = None,
                   aspect_ratio_range: Sequence[float] | None = None) -> Example:
    """Inception crop resized to the model input size (data config `inception_crop_area`, default (0.05, 1))."""
    area_range = tuple(area_range if area_range is not None else ctx.get('inception_crop_area', (0.05, 1.0)))
    aspect = tuple(aspect_ratio_range if aspect_ratio_range is not None
                   else ctx.get('inception_crop_aspect', (3 / 4, 4 / 3)))
    example['image'] = inception_crop_image(example['image'], ctx.image_size, ctx.seed, area_range=area_range,
                                            aspect_ratio_range=aspect, **_resize_opts(ctx))
    return example


@register('random_shift', random=True)
def random_shift(example: Example, ctx: Context, pad: int | None = None) -> Example:
    """Resize to the model input size, zero-pad `pad` pixels each side (default size/8), random crop back.

    The CIFAR-style 'RandomCrop(size, padding)' augmentation: shifts the image by up to `pad` pixels.
    """
    h, w = ctx.image_size
    pad = int(pad if pad is not None else ctx.get('shift_pad', max(1, round(min(h, w) / 8))))
    image = resize_image(example['image'], (h, w), **_resize_opts(ctx))
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    example['image'] = random_crop_image(image, (h, w), ctx.seed)
    return example


@register('flip', random=True)
def flip(example: Example, ctx: Context) -> Example:
    """Random horizontal flip (probability 1/2)."""
    example['image'] = random_flip_image(example['image'], ctx.seed)
    return example


@register('value_range')
def value_range(example: Example, ctx: Context, vmin: float | None = None,
                vmax: float | None = None) -> Example:
    """[0, 255] -> [vmin, vmax] (default: data config `value_range`, else (-1, 1) as in the ViT release)."""
    if vmin is None or vmax is None:
        vmin, vmax = (float(v) for v in ctx.get('value_range', (-1.0, 1.0)))
    example['image'] = value_range_image(example['image'], float(vmin), float(vmax))
    return example
