"""Data sources: built-in datasets (a registry), image folders and TFDS, each giving examples in a fixed order.

A source is the raw, finite, deterministic list of examples of one base split (`train`, `test` ...); slicing
(`train[:90%]`), per-process sharding, shuffling, repeating, decoding and preprocessing are done on top of it by
`vit_jax.data.get_dataset`.

Register a built-in dataset::

    from vit_jax import data

    @data.register_dataset('my_set', flip=False)        # keyword arguments: data-config defaults for this dataset
    def my_set(split, *, data_dir=None):
        ...                                             # one base split: 'train' or 'test' ...
        return tf_dataset, num_classes, num_examples    # examples {'image': uint8 HxWx3 (or encoded bytes),
                                                        #           'label': int}, always in the same order

With `prefix=True` the name takes an argument: `register_dataset('folder', prefix=True)` serves
'folder:/path/to/root', and the function receives `arg='/path/to/root'`. A function may also accept `data_config`.
It may return a `Source` for more control (e.g. `decode_errors='skip'` for user files).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import difflib
import functools
import hashlib
import inspect
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from vit_jax import registry

log = logging.getLogger(__name__)


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset that has not been downloaded and prepared in the data_dir."""


@dataclasses.dataclass
class Source:
    """The examples of one base split, in a fixed order.

    Attributes:
        dataset: finite tf.data.Dataset of dicts with 'label' (int) and either 'image' (uint8 HxWxC, or encoded
            JPEG/PNG bytes) or 'image_path' (a file to read); other keys pass through.
        num_classes: number of classes.
        num_examples: number of examples of `dataset`.
        decode_errors: 'raise' or 'skip' (examples whose image fails to decode are dropped and counted).
        num_skipped: examples already left out when the source was built (e.g. unreadable files).
        defaults: data-config defaults of this dataset (explicit config values win).
        class_names: optional class names, index = label.
        select: optional `fn(start, stop) -> tf.data.Dataset` giving examples [start, stop) cheaply (without
            reading the ones before); `dataset.skip(start).take(stop - start)` otherwise.
    """

    dataset: tf.data.Dataset
    num_classes: int
    num_examples: int
    decode_errors: str = 'raise'
    num_skipped: int = 0
    defaults: dict = dataclasses.field(default_factory=dict)
    class_names: list[str] | None = None
    select: Callable[[int, int], tf.data.Dataset] | None = None

    def range(self, start: int, stop: int) -> tf.data.Dataset:
        """Examples [start, stop) of the split."""
        if self.select is not None:
            return self.select(start, stop)
        return self.dataset.skip(start).take(stop - start)


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """A registered built-in dataset."""

    name: str
    fn: Callable[..., Any]
    prefix: bool
    defaults: dict


# Built-in datasets; modules that register more are imported on first lookup.
_DATASETS: registry.Registry[DatasetEntry] = registry.Registry(
    'dataset', modules=('vit_jax.data.video', 'vit_jax.data.outpainting', 'vit_jax.data.dense'))


def register_dataset(name: str, *, prefix: bool = False, **defaults: Any) -> Callable[[Callable], Callable]:
    """Decorator registering a built-in dataset `fn(split, *, data_dir=None, [arg], [data_config])`.

    Args:
        name: dataset name used in config.dataset ('digits'), or a prefix ('folder' for 'folder:/path') when
            `prefix=True`.
        prefix: the name takes an argument after ':' passed to `fn` as `arg`.
        **defaults: data-config defaults for this dataset (e.g. flip=False); explicit config values win.

    `fn` returns `(tf.data.Dataset, num_classes, num_examples)` or a `Source`, for one base split name.
    """
    return _DATASETS.register(name, entry=lambda fn: DatasetEntry(name, fn, prefix, dict(defaults)))


def list_datasets() -> list[str]:
    """Names of the built-in datasets ('folder:' style prefixes end with ':')."""
    return sorted(n + (':' if e.prefix else '') for n, e in _DATASETS.items())


def find_builtin(name: str) -> tuple[DatasetEntry, str | None] | None:
    """(entry, arg) when `name` is a built-in ('digits') or a prefixed one ('folder:/x'); None otherwise."""
    if name in _DATASETS and not _DATASETS.get(name).prefix:
        return _DATASETS.get(name), None
    if ':' in name:
        head, arg = name.split(':', 1)
        if head in _DATASETS and _DATASETS.get(head).prefix:
            return _DATASETS.get(head), arg
    if name in _DATASETS:  # A prefix dataset named without its argument.
        raise ValueError(f'Dataset {name!r} needs an argument: {name}:ARG (e.g. folder:/path/to/images).')
    return None


def call_builtin(entry: DatasetEntry, arg: str | None, split: str, *, data_dir: str | None,
                 data_config: Mapping[str, Any]) -> Source:
    """Calls a registered dataset function for one base split and normalises its result to a `Source`."""
    params = inspect.signature(entry.fn).parameters
    takes_all = any(p.kind == p.VAR_KEYWORD for p in params.values())
    kwargs = {}
    for key, value in (('data_dir', data_dir), ('arg', arg), ('data_config', data_config)):
        if takes_all or key in params:
            kwargs[key] = value
    if entry.prefix and 'arg' not in kwargs:
        raise TypeError(f'Dataset function {entry.fn.__name__} is registered with prefix=True but takes no `arg`.')
    out = entry.fn(split, **kwargs)
    if not isinstance(out, Source):
        ds, num_classes, num_examples = out
        out = Source(ds, int(num_classes), int(num_examples))
    out.defaults = {**entry.defaults, **out.defaults}
    return out


# ---------------------------------------------------------------------------------------------------------------
# Built-in: the UCI handwritten digits shipped with scikit-learn.

DIGITS_TEST_FRACTION = 0.2  # Held-out test fraction (stratified); fixed, independent of any training seed.
DIGITS_SPLIT_SEED = 0  # Seed of the fixed train/test partition (part of the dataset's definition).
DIGITS_UPSAMPLE = 4  # 8x8 -> 32x32 by pixel repetition (no new information; finer crops for augmentation).


@functools.lru_cache(maxsize=1)
def digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{'train'|'test': (images uint8 [N, 32, 32, 3], labels int32 [N], indices into load_digits [N])}.

    The 1797 8x8 images with 17 grey levels (0..16, 0 = background) are scaled to 0..255 as round(v * 255 / 16)
    (16 -> 255 exactly), repeated to 3 channels and upsampled 4x by pixel repetition. The test split is a
    stratified 20% (360 images; 1437 train) drawn with a fixed seed: it never depends on the training seed.
    Each split is in the (fixed, pseudo-random) order of the partition, so 'train[:90%]' is a random subset.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)  # [1797, 8, 8]
    images = np.repeat(np.repeat(images, DIGITS_UPSAMPLE, axis=1), DIGITS_UPSAMPLE, axis=2)
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int32)
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION,
                                           stratify=labels, random_state=DIGITS_SPLIT_SEED)
    return {name: (images[idx], labels[idx], idx) for name, idx in (('train', idx_train), ('test', idx_test))}


@register_dataset('digits', flip=False)
def digits(split: str) -> Source:
    """UCI handwritten digits (scikit-learn `load_digits`): 10 classes, 1437 train / 360 test, 32x32 RGB uint8.

    No download needed. Horizontal flips are off by default (a mirrored digit is another glyph).
    """
    arrays = digits_arrays()
    if split not in arrays:
        raise ValueError(f"The 'digits' dataset has splits 'train' and 'test', not {split!r}.")
    images, labels, _ = arrays[split]

    def select(start: int, stop: int) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices({'image': images[start:stop], 'label': labels[start:stop]})

    return Source(select(0, len(labels)), 10, len(labels), select=select,
                  class_names=[str(i) for i in range(10)])


# ---------------------------------------------------------------------------------------------------------------
# Built-in: image folders, root/{train,test}/<class>/*.{jpg,jpeg,png}.

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
_PIL_FORMATS = ('JPEG', 'MPO', 'PNG', 'GIF', 'BMP')  # Contents TensorFlow decodes (the extension may be wrong).
_VERDICT_ROOTS = 8  # Folders whose per-file check results are kept in memory.
_verdicts: collections.OrderedDict[str, dict[str, tuple[int, int, str | None]]] = collections.OrderedDict()
_verdicts_lock = threading.Lock()


def _utf8(path: str) -> bool:
    try:
        path.encode('utf-8')
    except UnicodeEncodeError:  # Bytes that are not UTF-8, decoded by Python as surrogates.
        return False
    return True


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _os_reason(e: OSError) -> str:
    return f'{type(e).__name__}: {e.strerror or e}'.replace('Permission denied', 'permission denied')


class ImageWalk:
    """Lists the image files under class directories: no file is listed twice or under another class's label.

    Subdirectories are read in name order. A directory symlink is followed when its target lies outside the image
    folder and outside every class directory and was not read before (so a linked collection such as
    `cat/more -> /data/more_cats` is read once, and named in a warning); it is skipped, with a warning, when it
    points back into the image folder (`loop -> .`, `up -> ..`), into or above a class directory (its images would
    be relabelled or repeated) or to a directory already read. Files whose names are not UTF-8 (named by their
    bytes) and directories that cannot be read are skipped with a warning; hidden entries are ignored.
    """

    def __init__(self, root: str, class_dirs: Mapping[str, str]):
        self.root = os.path.realpath(root)
        self.owners = {os.path.realpath(d): c for c, d in class_dirs.items()}  # Real class directory -> class.
        self.visited: set[str] = set()
        self.notes: list[str] = []  # One warning line each.
        self.ignored: list[str] = []  # Files without an image extension.

    def _refuse_link(self, path: str, real: str, cls: str) -> str | None:
        """Why the directory symlink `path` (-> `real`) of class `cls` is not followed; None to follow it."""
        if real in self.visited:
            return 'its target was read already (a loop, or a second link to it)'
        if _inside(real, self.root) or _inside(self.root, real):
            return 'it points back into the image folder: its images would be repeated or relabelled'
        for owner_real, owner in self.owners.items():
            if _inside(real, owner_real) or _inside(owner_real, real):
                what = 'relabelled' if owner != cls else 'listed twice'
                return f'it points into or above the class directory of {owner!r}: its images would be {what}'
        return None

    def files(self, class_dir: str, cls: str, first_only: bool = False) -> list[str]:
        """Image files under `class_dir` (of class `cls`); with `first_only` at most one (is the class empty?)."""
        out: list[str] = []
        real = os.path.realpath(class_dir)
        if real in self.visited:
            self.notes.append(f'left out {class_dir}: the same directory as another class directory (a link)')
            return out
        self.visited.add(real)
        stack = [class_dir]
        while stack:
            d = stack.pop()
            try:
                with os.scandir(d) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                self.notes.append(f'cannot read the directory {d} ({_os_reason(e)}): its images are left out')
                continue
            subdirs = []
            for e in entries:
                if e.name.startswith('.'):
                    continue
                if not _utf8(e.path):
                    self.notes.append(f'skipped {os.fsencode(e.path)!r}: the name is not valid UTF-8 (rename it)')
                    continue
                try:
                    is_dir = e.is_dir()
                    is_link = is_dir and e.is_symlink()
                except OSError:
                    is_dir = is_link = False
                if is_dir:
                    real = os.path.realpath(e.path)
                    why = self._refuse_link(e.path, real, cls) if is_link else (
                        'read already' if real in self.visited else None)
                    if why is not None:
                        if is_link:
                            self.notes.append(f'did not follow the directory link {e.path} -> {real}: {why}')
                        continue
                    if is_link:
                        self.notes.append(f'followed the directory link {e.path} -> {real} (read once)')
                    self.visited.add(real)
                    subdirs.append(e.path)
                elif e.name.lower().endswith(IMAGE_EXTENSIONS):
                    out.append(e.path)
                    if first_only:
                        return out
                else:
                    self.ignored.append(e.path)
            stack.extend(reversed(subdirs))
        return out


def _class_dirs(split_dir: str, notes: list[str]) -> dict[str, str]:
    """{class name: directory} of a split (sorted; hidden entries and names that are not UTF-8 left out)."""
    out = {}
    for d in sorted(os.listdir(split_dir)):
        path = os.path.join(split_dir, d)
        if d.startswith('.') or not os.path.isdir(path):
            continue
        if not _utf8(d):
            notes.append(f'skipped the class directory {os.fsencode(path)!r}: the name is not valid UTF-8 (rename '
                         'it)')
            continue
        if not os.access(path, os.R_OK | os.X_OK):
            raise PermissionError(f'Image folder: cannot read the class directory {path} (permission denied). Fix '
                                  'its permissions, or move it out of the image folder.')
        out[d] = path
    return out


def _classes(train_dir: str, root: str, notes: list[str]) -> list[str]:
    """The classes: the train/ class directories holding at least one image file (empty ones named in `notes`)."""
    dirs = _class_dirs(train_dir, notes)
    walk = ImageWalk(root, dirs)
    classes = []
    for c, d in dirs.items():
        if walk.files(d, c, first_only=True):
            classes.append(c)
        else:
            notes.append(f'the class directory {d} holds no .jpg/.jpeg/.png file: it is not a class')
    return classes


def _check_file(path: str) -> str | None:
    """None when `path` opens as a JPEG or PNG image (header only); a short reason otherwise."""
    import warnings

    from PIL import Image

    try:
        if os.path.getsize(path) == 0:
            return 'empty file (0 bytes)'
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.format not in _PIL_FORMATS:
                    ext = os.path.splitext(path)[1]
                    return f'{im.format} data in a {ext} file (only JPEG, PNG, GIF and BMP contents are read)'
    except Image.DecompressionBombError as e:
        return f'too large: {e}'
    except Exception as e:  # noqa: BLE001 - any failure to open means "not an image we can use".
        msg = str(e).replace(f"'{path}'", '').replace(path, '').strip()
        if 'truncat' in msg.lower():
            return f'truncated file ({msg})'
        return f'not a readable image ({type(e).__name__}{": " + msg if msg else ""})'
    return None


def _check_files(root: str, paths: list[str]) -> list[str | None]:
    """`_check_file` of each path, reusing earlier results for files whose size and mtime did not change.

    Verdicts are keyed on (path, size, mtime_ns) rather than on directory mtimes, so a file rewritten in place,
    or added within the mtime resolution of its directory, is checked again.
    """
    stats: list[tuple[int, int] | None] = []
    for p in paths:
        try:
            st = os.stat(p)
            stats.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append(None)
    with _verdicts_lock:
        old = _verdicts.pop(root, {})
    out: list[str | None] = [None] * len(paths)
    todo = []
    for i, (p, st) in enumerate(zip(paths, stats)):
        prev = old.get(p)
        if st is None:
            out[i] = 'cannot stat the file'
        elif prev is not None and prev[:2] == st:
            out[i] = prev[2]
        else:
            todo.append(i)
    if todo:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for i, reason in zip(todo, pool.map(_check_file, [paths[i] for i in todo])):
                out[i] = reason
    new = {p: (*st, r) for p, st, r in zip(paths, stats, out) if st is not None}
    with _verdicts_lock:
        _verdicts[root] = new
        while len(_verdicts) > _VERDICT_ROOTS:
            _verdicts.popitem(last=False)
    return out


def decode_problem(path: str) -> str:
    """Why the image file at `path` cannot be decoded, in a few words (for error messages; reads the whole file).

    E.g. 'empty file (0 bytes)', 'truncated JPEG (image file is truncated ...)', 'not a readable image (...)'.
    """
    import warnings

    from PIL import Image

    reason = _check_file(path)
    if reason is not None:
        return reason
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt = im.format
                if fmt in ('JPEG', 'MPO'):
                    im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))  # Reads every byte, fast.
                im.load()
    except Exception as e:  # noqa: BLE001
        msg = str(e)
        kind = f'truncated {fmt}' if 'truncated' in msg.lower() else f'damaged {fmt}'
        return f'{kind} ({msg})'
    return f'{fmt} that TensorFlow cannot decode (PIL can: an unusual variant of the format)'


def _order_key(root: str, path: str) -> str:
    """A fixed pseudo-random order (hash of the relative path), so that slices like 'train[:90%]' mix classes."""
    return hashlib.sha1(os.path.relpath(path, root).encode('utf-8')).hexdigest()


def _scan_folder(root: str, split: str, check: bool) -> tuple[list[str], list[int], list[str],
                                                             list[tuple[str, str]], list[str], list[str]]:
    """(files, labels, classes, [(bad file, reason)], ignored non-image files, warnings) of root/split.

    The listing is redone on every call (cheap next to reading images); header checks are cached per file.
    Directory symlinks, names that are not UTF-8 and unreadable directories are handled as `ImageWalk` says.
    """
    split_dir = os.path.join(root, split)
    train_dir = os.path.join(root, 'train')
    notes: list[str] = []
    base = train_dir if os.path.isdir(train_dir) else split_dir
    classes = _classes(base, root, notes)
    if not classes:
        raise ValueError(f'Image folder {root!r}: no class directories with images in {base!r}. '
                         'Expected ROOT/train/<class>/*.jpg (and optionally ROOT/test/<class>/*.jpg).'
                         + (' ' + '; '.join(notes) if notes else ''))
    split_notes: list[str] = []
    dirs = _class_dirs(split_dir, split_notes) if split_dir != base else {c: os.path.join(base, c) for c in classes}
    walk = ImageWalk(root, dirs)
    extra = sorted(c for c, d in dirs.items() if c not in classes and walk.files(d, c, first_only=True))
    if extra:
        raise ValueError(f'Image folder {root!r}: classes {extra} in {split!r} are not in train/ '
                         f'(train classes: {classes}; a train/ class directory without images is not a class).')
    if split_dir != base:
        notes = split_notes + [n for n in notes if 'not a class' in n]
    walk = ImageWalk(root, {c: d for c, d in dirs.items() if c in classes})
    items = []
    for label, cls in enumerate(classes):
        cdir = os.path.join(split_dir, cls)
        if os.path.isdir(cdir):
            items.extend((f, label) for f in walk.files(cdir, cls))
    notes += walk.notes
    ignored = walk.ignored
    items.sort(key=lambda t: _order_key(root, t[0]))
    bad: list[tuple[str, str]] = []
    if check and items:
        reasons = _check_files(root, [f for f, _ in items])
        bad = [(f, r) for (f, _), r in zip(items, reasons) if r is not None]
        items = [it for it, r in zip(items, reasons) if r is None]
    return [f for f, _ in items], [lbl for _, lbl in items], classes, bad, sorted(ignored), notes


@register_dataset('folder', prefix=True)
def folder(split: str, *, arg: str, data_config: Mapping[str, Any]) -> Source:
    """Your own images: 'folder:/path/to/root' with root/train/<class>/*.jpg and root/test/<class>/*.jpg.

    JPEG and PNG files (any extension case: .jpg .jpeg .png) in each class directory (subdirectories included);
    the content decides the format (PNG bytes named .jpg are read as PNG; GIF and BMP contents are read too, the
    first frame of an animation). Classes are the train/ subdirectories
    in alphabetical order (label 0 = first). test/ is optional: without it use a slice of train as held-out data
    (e.g. train split 'train[:90%]', eval split 'train[90%:]'; files are in a fixed pseudo-random order, so slices
    mix classes).

    Modes (see `preprocess.decode_image`): grayscale -> RGB, alpha dropped (not composited), palette expanded,
    16-bit PNG scaled to 8 bits (65535 -> 255), CMYK JPEG -> RGB, 1x1 images upsampled like any other. JPEGs over
    16.8 MP are decoded at 1/2-1/8 scale by libjpeg (a 10000x10000 photo never takes 300 MB).

    Files that are not readable JPEG/PNG images are skipped and counted: at construction (the header of every
    file is checked; data config `check_images=False` turns this off; the files and reasons are logged) and
    while reading (files whose content fails to decode, e.g. truncated JPEGs; logged by name). Files with other
    extensions (.txt, .gif ...) are ignored, with one warning. `Dataset.num_skipped` reports the total.

    Never silently: a class directory without image files is not a class; names that are not UTF-8 and
    unreadable subdirectories are skipped; directory symlinks are read once and never back into the folder or
    into another class (`ImageWalk`); each with a warning naming the path.
    """
    root = os.path.abspath(os.path.expanduser(arg))
    if not os.path.isdir(root):
        raise FileNotFoundError(f'Image folder {root!r} does not exist. Expected ROOT/train/<class>/*.jpg and '
                                'optionally ROOT/test/<class>/*.jpg.')
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        have = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        raise FileNotFoundError(
            f'Image folder {root!r} has no {split!r} directory (it has: {have}). Expected {split_dir}/<class>/*.jpg. '
            "Without a test/ directory, hold out part of train instead: e.g. train split 'train[:90%]' and eval "
            "split 'train[90%:]'.")
    check = data_config.get('check_images', None)
    check = True if check is None else bool(check)
    files, labels, classes, bad, ignored, notes = _scan_folder(root, split, check)
    for note in notes:
        log.warning('Image folder %s/%s: %s.', root, split, note)
    if bad:
        shown = '; '.join(f'{f} ({r})' for f, r in bad[:5])
        log.warning('Image folder %s/%s: skipped %d unreadable file(s): %s%s', root, split, len(bad), shown,
                    ' ...' if len(bad) > 5 else '')
    if ignored and check:
        shown = ', '.join(os.path.relpath(f, split_dir) for f in ignored[:5])
        log.warning('Image folder %s/%s: ignored %d file(s) without a .jpg/.jpeg/.png extension: %s%s', root, split,
                    len(ignored), shown, ' ...' if len(ignored) > 5 else '')
    if not files:
        raise ValueError(f'Image folder {split_dir!r} has no readable .jpg/.jpeg/.png images in its class '
                         f'directories ({classes}).' + (f' {len(bad)} file(s) could not be read.' if bad else ''))
    files_a = np.array(files)
    labels_a = np.array(labels, np.int32)

    def select(start: int, stop: int) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices({'image_path': files_a[start:stop], 'label': labels_a[start:stop]})

    return Source(select(0, len(files)), len(classes), len(files), decode_errors='skip', num_skipped=len(bad),
                  class_names=classes, select=select)


# ---------------------------------------------------------------------------------------------------------------
# TFDS.


def tfds_builder(name: str, data_dir: str | None):
    """The TFDS builder of `name`, with clear errors for unknown and unprepared datasets."""
    import tensorflow_datasets as tfds

    def unknown() -> ValueError:
        builtins = ', '.join(repr(n) for n in list_datasets())
        close = difflib.get_close_matches(name, tfds.list_builders() + _DATASETS.names(), n=3, cutoff=0.6)
        hint = f' Did you mean: {", ".join(close)}?' if close else ''
        return ValueError(f'Unknown dataset {name!r}: not a built-in dataset ({builtins}) nor a TFDS dataset.'
                          f'{hint} Use a TFDS name (e.g. cifar10, imagenet2012, oxford_iiit_pet), the built-in '
                          "'digits', or your own images with 'folder:/path/to/root'.")

    base = name.split(':', 1)[0].split('/', 1)[0]
    if ':' not in name and base not in tfds.list_builders():  # Do not let TFDS look for it online.
        raise unknown()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise unknown() from None
    if not builder.is_prepared():
        raise DatasetNotPreparedError(not_prepared_message(name, builder, data_dir))
    return builder


def not_prepared_message(name: str, builder: Any, data_dir: str | None) -> str:
    """How to prepare a TFDS dataset, and the built-in alternative."""
    import tensorflow_datasets as tfds

    root = data_dir or tfds.core.constants.DATA_DIR
    dd = f'--data_dir={data_dir} ' if data_dir else ''
    dd_py = f', data_dir={data_dir!r}' if data_dir else ''
    lines = [
        f'TFDS dataset {name!r} is not prepared in data_dir {root!r} (expected {builder.data_dir}).',
        ('Prepare it once (this downloads it); --config.data.data_dir must name the same directory:' if data_dir
         else 'Prepare it once (this downloads it) into the default data_dir (elsewhere: add --data_dir=DIR to '
              'tfds build and pass --config.data.data_dir=DIR to vit_jax.main):'),
        f'    tfds build {name} {dd}'.rstrip(),
        f'    python -c "import tensorflow_datasets as tfds; tfds.builder({name!r}{dd_py}).download_and_prepare()"',
    ]
    manual = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
    if manual:
        lines += [
            f'{name} needs a manual download first: put its files in {os.path.join(str(root), "downloads", "manual")}'
            f' or pass --manual_dir=DIR to tfds build (python: download_and_prepare(download_config='
            'tfds.download.DownloadConfig(manual_dir=DIR))). TFDS says: ' + ' '.join(str(manual).split()),
        ]
    lines.append("No download possible? Train on the built-in dataset 'digits' (config.dataset='digits', no "
                 "download) or on your own images with config.dataset='folder:/path/to/root' "
                 '(root/train/<class>/*.jpg, root/test/<class>/*.jpg).')
    return '\n'.join(lines)
