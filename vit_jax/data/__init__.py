"""Input pipelines: TFDS, image folders and built-in datasets, with the ViT release's preprocessing.

    from vit_jax import data
    ds = data.get_dataset('cifar10', 'train[:98%]', data_config=config.data, batch_size=512 // nproc,
                          image_size=(384, 384), train=True, seed=0, start_step=step)
    for batch in ds:   # {'image': float32 [B, h, w, 3] in value_range, 'label': int32 [B]} (+ 'mask' in eval)
        ...
    ds.num_classes, ds.num_examples, ds.num_examples_local, ds.num_batches (eval)

Datasets: 'digits' (built-in UCI handwritten digits from scikit-learn, no download; fixed 20% test split),
'folder:/path/to/root' (root/train/<class>/*.jpg, root/test/<class>/*.jpg), or any prepared TFDS dataset.
Register more with `@data.register_dataset(name)` (see `vit_jax.data.datasets`) and preprocessing ops with
`@data.preprocess.register(name)` (see `vit_jax.data.preprocess`).
"""

from vit_jax.data import datasets, preprocess
from vit_jax.data.datasets import (
    DatasetNotPreparedError,
    Source,
    list_datasets,
    register_dataset,
)
from vit_jax.data.pipeline import DEFAULTS, Dataset, dataset_info, get_dataset

__all__ = [
    'DEFAULTS', 'Dataset', 'DatasetNotPreparedError', 'Source', 'dataset_info', 'datasets', 'get_dataset',
    'list_datasets', 'preprocess', 'register_dataset',
]
