r"""The tf.data image pipeline alone: JPEG folder -> ImageNet-style decode, inception crop, flip -> batches.

    python -m benchmarks.input_pipeline --images 512 --batch 128 --res 224 --batches 20
    python -m benchmarks.input_pipeline --root /data/imagenet_folder     # your own folder:ROOT (ROOT/train/<class>)

Without `--root` it writes a JPEG folder of `--images` photographs (random 500x375 crops, ImageNet's typical size,
of scikit-learn's two sample photographs, quality 90) under a temporary directory. It then iterates the trainer's
own pipeline (`vit_jax.data.get_dataset('folder:ROOT', 'train', train=True, ...)`, default data config: decode,
inception crop to `--res`, random flip, value range, batching, prefetch) and reports images/s after `--warmup`
batches, and images/s per core (tf.data's threads over `os.cpu_count()` cores). Compare with the train step's
images/s from `benchmarks.bench` / `benchmarks.gpu`: the pipeline keeps up when it is faster on the cores the
host gives it per accelerator. No timing is asserted anywhere; `tests/test_benchmarks.py` runs a tiny case.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time


def make_jpeg_folder(root: str, n: int, *, classes: int = 8, size: tuple[int, int] = (375, 500), seed: int = 0) -> str:
    """ROOT/train/class_k/*.jpg: `n` random crops (h, w = `size`) of scikit-learn's sample photographs."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # 427x640 RGB (china, flower).
    rs = np.random.RandomState(seed)
    h, w = size
    for i in range(n):
        photo = photos[i % len(photos)]
        scale = rs.uniform(1.0, 1.5)
        img = Image.fromarray(photo).resize((int(photo.shape[1] * scale), int(photo.shape[0] * scale)))
        a = np.asarray(img)
        y, x = rs.randint(0, a.shape[0] - h + 1), rs.randint(0, a.shape[1] - w + 1)
        d = os.path.join(root, 'train', f'class_{i % classes}')
        os.makedirs(d, exist_ok=True)
        Image.fromarray(a[y:y + h, x:x + w]).save(os.path.join(d, f'{i:06d}.jpg'), quality=90)
    return root


def run(root: str, *, batch: int, res: int, batches: int, warmup: int) -> dict:
    from vit_jax import data

    ds = data.get_dataset(f'folder:{root}', 'train', batch_size=batch, image_size=res, train=True,
                          data_config={'cache': False}, process_index=0, process_count=1)
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    times = []
    for _ in range(batches):
        t = time.perf_counter()
        b = next(it)
        times.append(time.perf_counter() - t)
    assert b['image'].shape == (batch, res, res, 3)
    total = sum(times)
    cores = os.cpu_count() or 1
    return {'images_per_s': batch * batches / total, 'images_per_s_per_core': batch * batches / total / cores,
            'median_batch_s': statistics.median(times), 'batch': batch, 'res': res, 'batches': batches,
            'cores': cores, 'load_avg': os.getloadavg(), 'examples': ds.num_examples}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog='python -m benchmarks.input_pipeline', description=__doc__.split('\n\n')[0])
    p.add_argument('--root', default=None, help='An existing image folder (ROOT/train/<class>/*.jpg).')
    p.add_argument('--images', type=int, default=512, help='Images to generate without --root.')
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--res', type=int, default=224)
    p.add_argument('--batches', type=int, default=20)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--out', default=None, help='Write the result as JSON here.')
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or make_jpeg_folder(tmp, args.images)
        r = run(root, batch=args.batch, res=args.res, batches=args.batches, warmup=args.warmup)
    print(f"input pipeline: {r['images_per_s']:.1f} images/s ({r['images_per_s_per_core']:.1f} per core, "
          f"{r['cores']} cores, load avg {r['load_avg'][0]:.1f}), batch {r['batch']} at {r['res']} px")
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(r, f, indent=1)
    return r


if __name__ == '__main__':
    main()
