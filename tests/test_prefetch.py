"""The trainer's input prefetch: batches reach the devices ahead of the step, in order, none lost."""

import jax
import numpy as np

from vit_jax import sharding


def test_prefetch_to_device_order_and_lookahead():
    mesh = sharding.make_mesh({'data': -1, 'fsdp': 1})
    n = len(jax.devices())
    pulled = []

    def batches():
        for i in range(5):
            pulled.append(i)
            yield {'image': np.full((n * 2, 3), i, np.float32), 'label': np.arange(n * 2, dtype=np.int32) + i}

    it = sharding.prefetch_to_device(batches(), mesh, size=2)
    first = next(it)
    assert pulled == [0, 1]  # Batch 1 was read and transferred before step 0 ran.
    assert isinstance(first['image'], jax.Array) and first['image'].sharding.is_equivalent_to(
        sharding.batch_sharding(mesh), 2)
    rest = list(it)
    got = [int(b['image'][0, 0]) for b in [first] + rest]
    assert got == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(rest[-1]['label'], np.arange(n * 2) + 4)
