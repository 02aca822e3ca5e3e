"""`get_dataset`: batched, preprocessed, per-process input pipelines with exact resume and exact evaluation.

Training (`train=True`): each process takes its contiguous 1/process_count share of the split, shuffles it every
epoch with a seed drawn from (seed, process, epoch), repeats forever, and preprocesses example number i (counted
from the start of training) with stateless random ops seeded by (seed, process, i). So the stream of batches is a
pure function of the seed: a run resumed with `start_step=k` yields exactly the batches k, k+1, ... of an
uninterrupted run (it skips at most one epoch of raw records, which are not decoded).

Evaluation (`train=False`): one pass over the process's share in a fixed order, every example exactly once; the
last batch is padded to `batch_size` and extra fully padded batches are appended so that every process yields the
same number of batches (`num_batches`); the boolean 'mask' is False on padding.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from vit_jax.data import datasets as datasets_lib
from vit_jax.data import preprocess

log = logging.getLogger(__name__)

try:  # The input pipeline must never take accelerator memory.
    tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):  # Already initialised, or no GPU support.
    pass

TRAIN_PP = {  # train_pp short names -> pipe strings (any pipe string of registered ops is accepted too).
    'inception_crop': 'inception_crop',
    'resize_crop': 'resize_crop',
    'resize': 'resize',
}
EVAL_PP = {'resize': 'resize', 'resize_crop': 'resize_crop'}

DEFAULTS = {  # Data-config defaults (a dataset's own defaults override these; explicit config values win).
    'data_dir': None,  # TFDS data_dir (None: TFDS default, $TFDS_DATA_DIR or ~/tensorflow_datasets).
    'train_pp': 'inception_crop',  # 'inception_crop' | 'resize_crop' | 'resize' | any pipe string of registered ops.
    'eval_pp': 'resize',  # 'resize' (the ViT release) | 'resize_crop' (short side to size/crop_pct, central crop).
    'value_range': (-1.0, 1.0),  # Model input range ([0, 255] mapped linearly).
    'flip': True,  # Random horizontal flip in training (appended unless the pipe already has 'flip').
    'inception_crop_area': (0.05, 1.0),  # Area range of inception_crop (the ViT release: 5%-100%).
    'crop_pct': 0.875,  # resize_crop: crop size / resized short side.
    'shuffle_buffer': 10_000,  # Examples in the shuffle buffer (capped at the process's share of the split).
    'cache': None,  # Cache the raw (undecoded) examples in memory; None: auto (share <= 1 GiB or <= 100k examples).
    'prefetch': 2,  # Batches prefetched.
    'device_prefetch': 2,  # Training batches put on the devices ahead of the step (sharding.prefetch_to_device).
    'image_key': 'image',  # TFDS feature holding the image.
    'label_key': 'label',  # TFDS feature holding the class label.
    'check_images': True,  # Image folders: check every file's header at construction (skip and count bad ones).
    'downscale_large_jpegs': True,  # Decode JPEGs over 16.8 MP at 1/2-1/8 scale (short side stays >= 4x model size).
    'exif_orientation': True,  # Turn images upright by their EXIF orientation (as predict does); False: stored pixels.
    'train_batch_pp': None,  # Optional pipe string of batch ops applied to training batches (e.g. mixup).
    'repeated_aug': None,  # k > 1: each example of an epoch appears k times, augmented independently (DeiT's RA).
}
AUTO_CACHE_MAX_EXAMPLES = 100_000  # Auto cache when the size in bytes is unknown.
AUTO_CACHE_MAX_BYTES = 1 << 30  # Auto cache when the share's stored size is known.


def _to_dict(config: Any) -> dict:
    if config is None:
        return {}
    if hasattr(config, 'to_dict'):
        return dict(config.to_dict())
    return dict(config)


def _hw(image_size: Any) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return (int(image_size), int(image_size))
    h, w = image_size
    return (int(h), int(w))


@dataclasses.dataclass
class _Plan:
    """This process's raw examples and the split's sizes."""

    raw: tf.data.Dataset
    num_classes: int
    num_examples: int
    local_counts: list[int]  # Examples of every process's share.
    decode_errors: str = 'raise'
    num_skipped: int = 0
    defaults: dict = dataclasses.field(default_factory=dict)
    class_names: list[str] | None = None
    local_bytes: int | None = None  # Stored (encoded) size of this process's share, when known.


def _split_names(split: str) -> list[str]:
    names = []
    for part in split.split('+'):
        name = part.split('[', 1)[0].strip()
        if name and name not in names:
            names.append(name)
    return names


def _builtin_plan(entry: datasets_lib.DatasetEntry, arg: str | None, split: str, cfg: Mapping[str, Any],
                  pi: int, pc: int) -> _Plan:
    names = _split_names(split)
    if not names:
        raise ValueError(f'Empty split {split!r}.')
    sources = {n: datasets_lib.call_builtin(entry, arg, n, data_dir=cfg.get('data_dir'), data_config=cfg)
               for n in names}
    if len(names) == 1 and '[' not in split:
        segments = [(names[0], 0, sources[names[0]].num_examples)]
    else:
        import tensorflow_datasets as tfds

        try:
            ri = tfds.core.ReadInstruction.from_spec(split)
            abs_instr = ri.to_absolute({n: types.SimpleNamespace(num_examples=s.num_examples)
                                        for n, s in sources.items()})
        except (ValueError, AssertionError, KeyError) as e:
            raise ValueError(f'Bad split {split!r}: {e} (use e.g. "train", "train[:90%]", "train[100:200]").') from None
        segments = [(a.splitname, a.from_ or 0, sources[a.splitname].num_examples if a.to is None else a.to)
                    for a in abs_instr]
    total = sum(b - a for _, a, b in segments)
    bounds = [total * p // pc for p in range(pc + 1)]
    lo, hi = bounds[pi], bounds[pi + 1]
    parts, offset = [], 0
    for name, a, b in segments:  # Intersect [lo, hi) of the concatenated segments with each segment.
        s, e = max(lo, offset), min(hi, offset + b - a)
        if s < e:
            parts.append(sources[name].range(a + s - offset, a + e - offset))
        offset += b - a
    first = sources[names[0]]
    if parts:
        raw = parts[0]
        for p in parts[1:]:
            raw = raw.concatenate(p)
    else:
        raw = first.range(0, 0)
    return _Plan(raw, first.num_classes, total, [bounds[p + 1] - bounds[p] for p in range(pc)],
                 decode_errors=first.decode_errors, num_skipped=sum(s.num_skipped for s in sources.values()),
                 defaults=dict(first.defaults), class_names=first.class_names)


def _tfds_plan(name: str, split: str, cfg: Mapping[str, Any], pi: int, pc: int) -> _Plan:
    import tensorflow_datasets as tfds

    builder = datasets_lib.tfds_builder(name, cfg.get('data_dir'))
    info = builder.info
    image_key, label_key = cfg.get('image_key') or 'image', cfg.get('label_key') or 'label'
    features = info.features
    for key, what in ((image_key, 'image_key'), (label_key, 'label_key')):
        if key not in features:
            raise ValueError(f'TFDS dataset {name!r} has no feature {key!r} (features: {list(features.keys())}); '
                             f'set config.data.{what}.')
    try:
        num_examples = info.splits[split].num_examples
    except (KeyError, ValueError, AssertionError) as e:
        raise ValueError(f'TFDS dataset {name!r} has no split {split!r} ({e}). Its splits: '
                         f'{", ".join(info.splits.keys())}; slices like "train[:98%]" work too.') from None
    subsplits = tfds.even_splits(split, n=pc, drop_remainder=False) if pc > 1 else [split]
    counts = [info.splits[s].num_examples for s in subsplits] if pc > 1 else [num_examples]
    image_feature = features[image_key]
    is_image = isinstance(image_feature, tfds.features.Image)
    decoders = {image_key: tfds.decode.SkipDecoding()} if is_image else None
    raw = builder.as_dataset(split=subsplits[pi], decoders=decoders, shuffle_files=False,
                             read_config=tfds.ReadConfig(try_autocache=False, add_tfds_id=False))

    def select(ex):
        return {'image': ex[image_key], 'label': ex[label_key]}

    raw = raw.map(select, num_parallel_calls=tf.data.AUTOTUNE)
    label_feature = features[label_key]
    if not hasattr(label_feature, 'num_classes'):
        raise ValueError(f'TFDS feature {label_key!r} of {name!r} is not a ClassLabel; set config.data.label_key.')
    names = getattr(label_feature, 'names', None)
    try:
        split_bytes = int(info.splits[split].num_bytes)
    except (KeyError, ValueError, TypeError, AttributeError):
        split_bytes = 0
    local_bytes = split_bytes * counts[pi] // max(num_examples, 1) if split_bytes > 0 else None
    return _Plan(raw, int(label_feature.num_classes), int(num_examples), [int(c) for c in counts],
                 class_names=list(names) if names else None, local_bytes=local_bytes)


def _plan(name: str, split: str, cfg: Mapping[str, Any], pi: int, pc: int) -> _Plan:
    found = datasets_lib.find_builtin(name)
    if found is not None:
        return _builtin_plan(found[0], found[1], split, cfg, pi, pc)
    tfds_name = name.removeprefix('tfds:')
    return _tfds_plan(tfds_name, split, cfg, pi, pc)


def _stateless_seed(*values: Any) -> tf.Tensor:
    """A [2] int32 stateless seed from integers/tensors (folded in order)."""
    seed = tf.constant([0, 0x5EED], tf.int32)
    for v in values:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(v, tf.int64))
    return seed


def _finalize(example: dict, image_size: tuple[int, int], pipe: str) -> dict:
    if 'label' in example:
        example['label'] = tf.cast(example['label'], tf.int32)
    if 'image' not in example:
        return example
    image = example['image']
    if image.dtype != tf.float32:
        image = tf.cast(image, tf.float32)
    if image.shape.rank == 3:
        want = [image_size[0], image_size[1], 3]
        if not image.shape.is_compatible_with(want):
            raise ValueError(f'Preprocessing {pipe!r} gives images of shape {image.shape}, the model wants {want}: '
                             'end the pipe with an op that resizes or crops to the model size (resize, '
                             'resize_crop, inception_crop, random_shift ...).')
        image = tf.ensure_shape(image, want)
    example['image'] = image
    return example


class Dataset:
    """A batched input pipeline; iterate it for dicts of numpy arrays.

    Attributes:
        name, split: what was asked for.
        num_classes: number of classes.
        num_examples: examples in the whole split (all processes).
        num_examples_local: examples in this process's share.
        batch_size: per-process batch size.
        image_size: (height, width).
        train: training (infinite, shuffled, augmented) or evaluation (one padded pass).
        num_batches: evaluation only: batches per pass, the same on every process (None in training).
        class_names: class names when the source knows them.
        config: the effective data config (defaults filled in).
        tf_dataset: the underlying tf.data.Dataset (its batches also hold '_index': the example's index in this
            process's stream, -1 on padding).
    """

    def __init__(self, *, tf_dataset: tf.data.Dataset, name: str, split: str, plan: _Plan, batch_size: int,
                 image_size: tuple[int, int], train: bool, seed: int, process_index: int, process_count: int,
                 start_step: int, num_batches: int | None, config: dict,
                 paths_dataset: tf.data.Dataset | None = None):
        self.tf_dataset = tf_dataset
        self.name, self.split = name, split
        self.num_classes = plan.num_classes
        self.num_examples = plan.num_examples
        self.num_examples_local = plan.local_counts[process_index]
        self.batch_size, self.image_size, self.train = batch_size, image_size, train
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        self.start_step = start_step
        self.num_batches = num_batches
        self.class_names = plan.class_names
        self.config = config
        self._skipped_at_build = plan.num_skipped
        self._last_iter: _NumpyIterator | None = None
        self._paths_dataset = paths_dataset
        self._reported: set[str] = set()  # Undecodable files named in the log (shared by this Dataset's iterators).

    @property
    def num_skipped(self) -> int:
        """Examples skipped because their image could not be read: at construction + by the latest iterator.

        Files left out at construction count once; a file that fails to decode while reading counts each time it
        is read (once per epoch in training).
        """
        return self._skipped_at_build + (self._last_iter.num_skipped if self._last_iter else 0)

    @property
    def bad_fraction(self) -> float:
        """Estimated fraction of the split's examples that cannot be decoded.

        (files left out at construction + r * readable files) / all files, where r is the fraction of the examples
        read so far by the latest iterator that failed to decode. Unlike num_skipped it does not grow with epochs.
        """
        built, n = self._skipped_at_build, self.num_examples
        it = self._last_iter
        rate = it.num_skipped / it.num_read if it is not None and it.num_read else 0.0
        return (built + rate * n) / max(built + n, 1)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        first = self.start_step * self.batch_size if self.train else 0
        it = _NumpyIterator(self.tf_dataset, first, None if self.train else self.num_examples_local,
                            paths=self._paths_dataset, reported=self._reported, where=f'{self.name} {self.split}',
                            name_until=first + self.num_examples_local)
        self._last_iter = it
        return it

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError('A training Dataset is infinite; it has no len().')
        return self.num_batches

    def __repr__(self) -> str:
        kind = 'train' if self.train else f'eval, {self.num_batches} batches'
        return (f'Dataset({self.name!r}, {self.split!r}, {kind}, batch {self.batch_size}, image {self.image_size}, '
                f'{self.num_classes} classes, {self.num_examples} examples, process {self.process_index}/'
                f'{self.process_count} with {self.num_examples_local})')


MAX_NAMED_DECODE_ERRORS = 10  # Undecodable files named in the log per Dataset (later ones are only counted).


class _NumpyIterator:
    """Yields numpy batches without '_index'; counts examples dropped by decode errors (gaps in '_index').

    With `paths` (a dataset of {'_index', 'image_path'} in the order of the stream, before decoding), dropped
    examples of the first epoch read (indices < `name_until`) are named in the log with the reason PIL gives,
    each file once and at most `MAX_NAMED_DECODE_ERRORS` files; later ones are only counted.
    """

    def __init__(self, ds: tf.data.Dataset, first_index: int, expected_total: int | None,
                 paths: tf.data.Dataset | None = None, reported: set[str] | None = None, where: str = '',
                 name_until: int | None = None):
        self._it = ds.as_numpy_iterator()
        self._first = first_index
        self._next = first_index
        self._expected = expected_total
        self.num_skipped = 0
        self._paths = paths
        self._paths_it = None
        self._paths_buf: tuple[np.ndarray, np.ndarray] | None = None
        self._reported = reported if reported is not None else set()
        self._where = where
        self._name_until = name_until

    @property
    def num_read(self) -> int:
        """Examples of the stream consumed so far (decoded or skipped)."""
        return self._next - self._first

    def __iter__(self) -> _NumpyIterator:
        return self

    def _path_of(self, index: int) -> str | None:
        """The file of stream example `index` (indices asked for must not decrease)."""
        if self._paths_it is None:
            self._paths_it = self._paths.batch(4096).as_numpy_iterator()
        while self._paths_buf is None or self._paths_buf[0][-1] < index:
            try:
                b = next(self._paths_it)
            except StopIteration:
                return None
            self._paths_buf = (b['_index'], b['image_path'])
        idx, paths = self._paths_buf
        pos = int(np.searchsorted(idx, index))
        if pos < len(idx) and idx[pos] == index:
            p = paths[pos]
            return p.decode('utf-8', 'replace') if isinstance(p, bytes) else str(p)
        return None

    def _report(self, missing: list[int]) -> None:
        for index in missing:
            if len(self._reported) >= MAX_NAMED_DECODE_ERRORS or (
                    self._name_until is not None and index >= self._name_until):
                return
            path = self._path_of(index) if self._paths is not None else None
            key = path if path is not None else f'#{index}'
            if key in self._reported:
                continue
            self._reported.add(key)
            last = len(self._reported) == MAX_NAMED_DECODE_ERRORS
            more = ' Further ones are only counted (Dataset.num_skipped, train/skipped_examples).' if last else ''
            if path is None:
                log.warning('%s: example %d of the stream could not be decoded; skipped.%s', self._where, index, more)
            else:
                log.warning('Cannot decode %s: %s; skipped.%s', path, datasets_lib.decode_problem(path), more)

    def _skip(self, missing: list[int]) -> None:
        self.num_skipped += len(missing)
        if missing and len(self._reported) < MAX_NAMED_DECODE_ERRORS:
            try:
                self._report(missing)
            except Exception as e:  # noqa: BLE001 - naming the file is best effort; counting is what matters.
                log.warning('%s: %d example(s) could not be decoded (%s while naming them).', self._where,
                            len(missing), e)

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            batch = next(self._it)
        except StopIteration:
            if self._expected is not None and self._next < self._expected:
                self._skip(list(range(self._next, self._expected)))
                self._next = self._expected
            raise
        idx = batch.pop('_index')
        valid = idx[idx >= 0]
        if valid.size:
            last = int(valid[-1])
            if (last - self._next + 1) != int(valid.size):
                self._skip(sorted(set(range(self._next, last + 1)) - set(valid.tolist())))
            self._next = last + 1
        return batch


def get_dataset(name: str, split: str, *, data_config: Any = None, batch_size: int, image_size: Any, train: bool,
                seed: int = 0, process_index: int | None = None, process_count: int | None = None,
                start_step: int = 0) -> Dataset:
    """Builds the input pipeline of one split.

    Args:
        name: 'digits' (built-in), 'folder:/path/to/root' (root/train/<class>/*.jpg, root/test/<class>/*.jpg) or a
            TFDS name ('cifar10', 'imagenet2012', 'oxford_iiit_pet' ...; 'tfds:NAME' forces TFDS).
        split: 'train', 'test', 'validation', or a TFDS-style slice ('train[:98%]', 'train[90%:]', 'a+b').
        data_config: dict/ConfigDict; keys in `DEFAULTS` (data_dir, train_pp, eval_pp, value_range, flip,
            inception_crop_area, crop_pct, shuffle_buffer, cache, prefetch ...); unknown keys are ignored (ops may
            read their own options from it).
        batch_size: per-process batch size (the global batch / process_count).
        image_size: model input size, int or (height, width).
        train: True: infinite, shuffled, augmented, resumable; False: one exact pass, padded, with 'mask'.
        seed: data order and augmentation seed.
        process_index, process_count: this process and the number of processes (default: from JAX).
        start_step: training only: batches already consumed (resume); the first batch is batch `start_step`.

    Returns:
        A `Dataset`: iterate it for {'image': float32 [B, h, w, 3] in value_range, 'label': int32 [B]} (+ 'mask':
        bool [B] in evaluation); it has num_classes, num_examples, num_examples_local, num_batches (eval).

    Raises:
        DatasetNotPreparedError: a TFDS dataset that is not downloaded/prepared (the message says how).
        ValueError / FileNotFoundError: unknown dataset or split, bad options, missing folders.
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    pi, pc = int(process_index), int(process_count)
    if pc < 1 or not 0 <= pi < pc:
        raise ValueError(f'Bad process_index={process_index} / process_count={process_count}.')
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f'batch_size must be positive, got {batch_size}.')
    start_step = int(start_step)
    if start_step < 0:
        raise ValueError(f'start_step must be >= 0, got {start_step}.')
    if not isinstance(name, str) or not name:
        raise ValueError(f'Dataset name must be a non-empty string, got {name!r}.')
    image_size = _hw(image_size)
    user_cfg = {k: v for k, v in _to_dict(data_config).items() if v is not None}

    plan = _plan(name, split, {**DEFAULTS, **user_cfg}, pi, pc)
    cfg = {**DEFAULTS, **plan.defaults, **user_cfg}
    n_local = plan.local_counts[pi]
    cache = cfg.get('cache')
    if cache is None:
        cache = (plan.local_bytes <= AUTO_CACHE_MAX_BYTES if plan.local_bytes is not None
                 else n_local <= AUTO_CACHE_MAX_EXAMPLES)
    cache = cfg['cache'] = bool(cache)
    raw = plan.raw.cache() if cache else plan.raw

    pipe = _pipe(cfg, train)
    pp_fn = preprocess.build(pipe, image_size=image_size, train=train, config=cfg)
    decode_fn = preprocess.build('decode', image_size=image_size, train=train, config=cfg)
    skip_errors = plan.decode_errors == 'skip'
    aug_seed = _stateless_seed(seed, pi, 1)

    def with_index(i, ex):
        return {**ex, '_index': i}

    def decode(ex):
        return decode_fn(ex)

    def pp(ex):
        ex = dict(ex)
        example_seed = tf.random.experimental.stateless_fold_in(aug_seed, ex['_index']) if train else None
        return _finalize(pp_fn(ex, example_seed), image_size, pipe)

    def decode_pp(ex):
        return pp(decode(ex))

    if train:
        if n_local == 0:
            raise ValueError(f'Process {pi} of {pc} has no training examples of {name!r} split {split!r} '
                             f'({plan.num_examples} examples in all).')
        consumed = start_step * batch_size
        first_epoch, offset = divmod(consumed, n_local)
        buffer = max(1, min(int(cfg.get('shuffle_buffer') or 1), n_local))
        shuffle_base = _stateless_seed(seed, pi, 2)

        repeats = int(cfg.get('repeated_aug') or 1)

        def epoch(e):
            s = tf.random.stateless_uniform([], seed=tf.random.experimental.stateless_fold_in(shuffle_base, e),
                                            minval=0, maxval=2**62, dtype=tf.int64)
            shuffled = raw.shuffle(buffer, seed=s, reshuffle_each_iteration=False)
            if repeats > 1:  # Repeated augmentation: epochs keep their length with 1/k as many distinct images.
                shuffled = shuffled.flat_map(lambda ex: tf.data.Dataset.from_tensors(ex).repeat(repeats))
                shuffled = shuffled.take(n_local)
            return shuffled

        ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch)
        ds = ds.skip(offset).enumerate(start=consumed).map(with_index)
    else:
        ds = raw.enumerate().map(with_index)

    paths_ds = None
    if skip_errors:
        if isinstance(ds.element_spec, dict) and 'image_path' in ds.element_spec:  # Image folders: name bad files.
            paths_ds = ds.map(lambda ex: {'_index': ex['_index'], 'image_path': ex['image_path']})
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
        ds = ds.map(pp, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(decode_pp, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    num_batches = None
    if train:
        ds = ds.batch(batch_size, drop_remainder=True)
        if cfg.get('train_batch_pp'):
            batch_fn = preprocess.build(cfg['train_batch_pp'], image_size=image_size, train=True, config=cfg,
                                        batch=True)
            batch_seed = _stateless_seed(seed, pi, 3)

            def batch_pp(step, batch):
                # Batch ops may read the training step as '_step' (e.g. mixup's off_step); it is removed after.
                out = batch_fn({**batch, '_step': step}, tf.random.experimental.stateless_fold_in(batch_seed, step))
                out.pop('_step', None)
                return out

            ds = ds.enumerate(start=start_step).map(batch_pp, num_parallel_calls=tf.data.AUTOTUNE,
                                                    deterministic=True)
    else:
        ds = ds.map(lambda ex: {**ex, 'mask': tf.constant(True)})
        ds = ds.batch(batch_size)
        num_batches = math.ceil(max(plan.local_counts) / batch_size)
        spec = ds.element_spec

        def pad(batch):
            n = tf.shape(batch['mask'])[0]
            out = {}
            for k, v in batch.items():
                fill = -1 if k == '_index' else 0
                padded = tf.pad(v, [[0, batch_size - n]] + [[0, 0]] * (v.shape.rank - 1),
                                constant_values=tf.cast(fill, v.dtype))
                out[k] = tf.ensure_shape(padded, [batch_size] + v.shape[1:].as_list())
            return out

        def empty_batch():
            out = {}
            for k, s in spec.items():
                shape = [batch_size] + s.shape[1:].as_list()
                if None in shape:
                    raise ValueError(f'Evaluation padding needs static shapes; {k!r} has {s.shape}.')
                out[k] = tf.cast(tf.fill(shape, -1 if k == '_index' else 0), s.dtype)
            return out

        ds = ds.map(pad).concatenate(tf.data.Dataset.from_tensors(empty_batch()).repeat()).take(num_batches)
    prefetch = cfg.get('prefetch')
    if prefetch:
        ds = ds.prefetch(int(prefetch) if int(prefetch) > 0 else tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    return Dataset(tf_dataset=ds, name=name, split=split, plan=plan, batch_size=batch_size, image_size=image_size,
                   train=train, seed=int(seed), process_index=pi, process_count=pc, start_step=start_step,
                   num_batches=num_batches, config=cfg, paths_dataset=paths_ds)


def _pipe(cfg: Mapping[str, Any], train: bool) -> str:
    """The pipe string of the train/eval preprocessing named in the config (+ flip and value_range)."""
    key = 'train_pp' if train else 'eval_pp'
    spec = cfg.get(key)
    names = TRAIN_PP if train else EVAL_PP
    pipe = names.get(spec, spec) if isinstance(spec, str) else '|'.join(spec)
    if not pipe:
        raise ValueError(f'config.data.{key} is empty.')
    if not any(c in pipe for c in '|(') and pipe not in names and pipe not in preprocess.list_ops():
        raise ValueError(f'Unknown config.data.{key} {spec!r}: use one of {sorted(names)} or a pipe string of '
                         f'registered ops ({", ".join(preprocess.list_ops())}).')
    if train and cfg.get('flip') and not preprocess.has_op(pipe, 'flip'):
        pipe += '|flip'
    if not preprocess.has_op(pipe, 'value_range'):
        pipe += '|value_range'
    return pipe


def dataset_info(name: str, split: str, data_config: Any = None) -> dict[str, Any]:
    """{'num_classes', 'num_examples'} of a split without building a pipeline (cheap for TFDS)."""
    user_cfg = {k: v for k, v in _to_dict(data_config).items() if v is not None}
    cfg = {**DEFAULTS, 'check_images': False, **user_cfg}
    plan = _plan(name, split, cfg, 0, 1)
    return {'num_classes': plan.num_classes, 'num_examples': plan.num_examples, 'class_names': plan.class_names}

