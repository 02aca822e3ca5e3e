"""The 19 VTAB-1k tasks (Zhai et al., 2019) as used by the ViT paper (App. B.1.1, Table 9), read from TFDS.

Every task has 1000 training examples: `train800` (the first 800 of the task's train split) and `val200` (the first
200 of its validation split) for hyper-parameter selection, and `train800val200` (their union) for the final run,
which is evaluated on the task's test split. The splits and label definitions are those of
google-research/task_adaptation (`task_adaptation/data/*.py`): where TFDS has no validation split, the validation
set is a slice of train (or of test for sNORB) at the same percentages.

The tasks are served as the built-in dataset `vtab1k:<task>` (registered on import of this module), with TFDS base
splits (`train`, `validation`, `test`) and slices of them, e.g. `vtab1k:clevr_count` split `train[:800]`. Derived
labels (CLEVR count / distance, dSprites bins, KITTI distance) are computed from the TFDS features as the
reference code does; dSprites images (0/1) are scaled to 0/255; grayscale images become RGB in decoding.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np

NATURAL, SPECIALIZED, STRUCTURED = 'natural', 'specialized', 'structured'
GROUPS = (NATURAL, SPECIALIZED, STRUCTURED)


@dataclasses.dataclass(frozen=True)
class Task:
    """One VTAB-1k task: where its data is and how its 1k splits are cut."""

    name: str  # Short name used in tables ('caltech101', 'clevr_count' ...).
    group: str  # 'natural', 'specialized' or 'structured'.
    tfds_name: Optional[str]  # TFDS dataset (with config), e.g. 'diabetic_retinopathy_detection/btgraham-300'.
    num_classes: int  # Classes of the task's label.
    train: str  # The TFDS split whose first 800 examples are train800.
    val: str  # The split (or slice start) whose first 200 examples are val200: 'validation' or 'train[N:]'.
    test: str  # The evaluation split of the final run.
    label: str = 'label'  # TFDS feature holding the label, or the name of a derived label in LABEL_FNS.
    image_key: str = 'image'  # TFDS feature holding the image.
    dataset: Optional[str] = None  # Override the dataset name (tests: a built-in dataset such as 'digits').

    @property
    def dataset_name(self) -> str:
        """The `config.dataset` of this task."""
        return self.dataset or f'vtab1k:{self.name}'

    @property
    def train800(self) -> str:
        return f'{self.train}[:800]'

    @property
    def val200(self) -> str:
        base, start = _split_start(self.val)
        return f'{base}[{start}:{start + 200}]'

    @property
    def train800val200(self) -> str:
        return f'{self.train800}+{self.val200}'


def _split_start(split: str) -> tuple[str, int]:
    """'train[2754:]' -> ('train', 2754); 'validation' -> ('validation', 0)."""
    if '[' not in split:
        return split, 0
    base, rest = split.split('[', 1)
    start = rest.split(':', 1)[0]
    return base, int(start or 0)


# (name, group, TFDS name, classes, train, val, test, label). Counts for the percentage splits of
# task_adaptation: caltech101 train 3060 (90% = 2754), cifar100 50000 (90%), oxford_iiit_pet 3680 (80% = 2944),
# svhn_cropped 73257 (90% = 65931), eurosat 27000 (60/20/20), resisc45 31500 (60/20/20), clevr 70000 (90%),
# dsprites 737280 (80/10/10), smallnorb test 24300 (validation = first half).
TASKS = [
    Task('caltech101', NATURAL, 'caltech101', 102, 'train', 'train[2754:]', 'test'),
    Task('cifar100', NATURAL, 'cifar100', 100, 'train', 'train[45000:]', 'test'),
    Task('dtd', NATURAL, 'dtd', 47, 'train', 'validation', 'test'),
    Task('oxford_flowers102', NATURAL, 'oxford_flowers102', 102, 'train', 'validation', 'test'),
    Task('oxford_iiit_pet', NATURAL, 'oxford_iiit_pet', 37, 'train', 'train[2944:]', 'test'),
    Task('svhn', NATURAL, 'svhn_cropped', 10, 'train', 'train[65931:]', 'test'),
    Task('sun397', NATURAL, 'sun397/tfds', 397, 'train', 'validation', 'test'),
    Task('patch_camelyon', SPECIALIZED, 'patch_camelyon', 2, 'train', 'validation', 'test'),
    Task('eurosat', SPECIALIZED, 'eurosat/rgb', 10, 'train', 'train[16200:]', 'train[21600:]'),
    Task('resisc45', SPECIALIZED, 'resisc45', 45, 'train', 'train[18900:]', 'train[25200:]'),
    Task('diabetic_retinopathy', SPECIALIZED, 'diabetic_retinopathy_detection/btgraham-300', 5, 'train',
         'validation', 'test'),
    Task('clevr_count', STRUCTURED, 'clevr', 8, 'train', 'train[63000:]', 'validation', label='clevr_count'),
    Task('clevr_dist', STRUCTURED, 'clevr', 6, 'train', 'train[63000:]', 'validation', label='clevr_dist'),
    Task('dmlab', STRUCTURED, 'dmlab', 6, 'train', 'validation', 'test'),
    Task('dsprites_loc', STRUCTURED, 'dsprites', 16, 'train', 'train[589824:]', 'train[663552:]',
         label='dsprites_loc'),
    Task('dsprites_ori', STRUCTURED, 'dsprites', 16, 'train', 'train[589824:]', 'train[663552:]',
         label='dsprites_ori'),
    Task('kitti_dist', STRUCTURED, 'kitti', 4, 'train', 'validation', 'test', label='kitti_dist'),
    Task('smallnorb_azi', STRUCTURED, 'smallnorb', 18, 'train', 'test', 'test[12150:]', label='label_azimuth'),
    Task('smallnorb_ele', STRUCTURED, 'smallnorb', 9, 'train', 'test', 'test[12150:]', label='label_elevation'),
]
TASKS_BY_NAME = {t.name: t for t in TASKS}


# ----------------------------------------------------------------------------------------------------------------
# Derived labels (TensorFlow functions of a TFDS example), as task_adaptation.
# ----------------------------------------------------------------------------------------------------------------
def _bin(value, thresholds):
    """Index of the last threshold below `value` (task_adaptation's `reduce_max(where(thrs - v < 0))`)."""
    import tensorflow as tf

    below = tf.cast(tf.constant(np.asarray(thresholds, np.float32)) < tf.cast(value, tf.float32), tf.int64)
    return tf.reduce_sum(below) - 1


def clevr_count(ex):
    """Number of objects - 3 (CLEVR scenes hold 3 to 10 objects): 8 classes."""
    import tensorflow as tf

    return tf.size(ex['objects']['size'], out_type=tf.int64) - 3


def clevr_dist(ex):
    """Depth of the closest object, binned at (0, 8, 8.5, 9, 9.5, 10, 100): 6 classes."""
    import tensorflow as tf

    return _bin(tf.reduce_min(ex['objects']['pixel_coords'][:, 2]), [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])


def kitti_dist(ex):
    """Distance of the closest car/van/truck, binned at (-100, 8, 20, 999); 'no vehicle' is class 3: 4 classes."""
    import tensorflow as tf

    z = ex['objects']['location'][:, 2]
    vehicles = ex['objects']['type'] < 3  # Car, Van, Truck.
    z = tf.concat([tf.boolean_mask(z, vehicles), tf.constant([1000.0], z.dtype)], axis=0)
    return _bin(tf.reduce_min(z), [-100.0, 8.0, 20.0, 999.0])


def dsprites_loc(ex):
    """x position (32 values) in 16 bins."""
    import tensorflow as tf

    return tf.cast(tf.math.floordiv(tf.cast(ex['label_x_position'], tf.float32), 32.0 / 16.0), tf.int64)


def dsprites_ori(ex):
    """Orientation (40 values) in 16 bins."""
    import tensorflow as tf

    return tf.cast(tf.math.floordiv(tf.cast(ex['label_orientation'], tf.float32), 40.0 / 16.0), tf.int64)


LABEL_FNS: dict[str, Callable[[Any], Any]] = {
    'clevr_count': clevr_count, 'clevr_dist': clevr_dist, 'kitti_dist': kitti_dist, 'dsprites_loc': dsprites_loc,
    'dsprites_ori': dsprites_ori,
}


def example_fn(task: Task) -> Callable[[dict], dict]:
    """TFDS example (image left encoded) -> {'image': bytes or uint8 image, 'label': int64} for `task`."""
    import tensorflow as tf

    def fn(ex):
        label = LABEL_FNS[task.label](ex) if task.label in LABEL_FNS else tf.cast(ex[task.label], tf.int64)
        image = ex[task.image_key]
        if task.tfds_name == 'dsprites':  # Binary 0/1 images: scale to 0/255 as task_adaptation.
            image = tf.io.decode_png(image, channels=1) * 255
        return {'image': image, 'label': label}

    return fn


_registered = False


def register() -> None:
    """Registers the built-in dataset `vtab1k:<task>` (idempotent)."""
    global _registered
    from vit_jax.data import datasets

    if _registered or 'vtab1k' in datasets._DATASETS:
        _registered = True
        return
    _registered = True

    @datasets.register_dataset('vtab1k', prefix=True, flip=False)
    def vtab1k(split: str, *, arg: str, data_dir: Optional[str] = None) -> datasets.Source:
        import tensorflow as tf
        import tensorflow_datasets as tfds

        if arg not in TASKS_BY_NAME:
            raise ValueError(f'Unknown VTAB-1k task {arg!r}; tasks: {", ".join(TASKS_BY_NAME)}.')
        task = TASKS_BY_NAME[arg]
        builder = datasets.tfds_builder(task.tfds_name, data_dir)
        if split not in builder.info.splits:
            raise ValueError(f'{task.tfds_name} has no split {split!r} (it has {list(builder.info.splits.keys())}).')
        n = builder.info.splits[split].num_examples
        decoders = {task.image_key: tfds.decode.SkipDecoding()}
        fn = example_fn(task)

        def select(start: int, stop: int) -> tf.data.Dataset:
            ds = builder.as_dataset(split=f'{split}[{start}:{stop}]', decoders=decoders, shuffle_files=False,
                                    read_config=tfds.ReadConfig(try_autocache=False))
            return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)

        return datasets.Source(select(0, n), task.num_classes, n, select=select)


register()
