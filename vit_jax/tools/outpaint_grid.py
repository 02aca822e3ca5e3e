"""Writes outpainting results as a PNG grid: one row per example with input | output | ground truth.

    python -m vit_jax.tools.outpaint_grid --workdir=workdirs/queryotr_tiny --out=grid.png [--split=test] [--num=8]

The run's config.json (or --config=FILE[:ARG], --dataset=NAME) names the model and the data; the weights are the
workdir's latest checkpoint (or --checkpoint=PATH: a workdir, step directory or .npz, e.g. a converted official
checkpoint: `--config=configs/queryotr.py:scenery --checkpoint=queryotr_scenery.npz --dataset=flat_folder:/data`).
The input column shows the known centre on a grey canvas of the output size. Library use:
`write_grid(path, inputs, outputs, targets)` with images in [0, 1].
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

GREY = 0.5


def make_grid(inputs: np.ndarray, outputs: np.ndarray, targets: np.ndarray, *, margin: int = 2,
              upscale: int = 1) -> np.ndarray:
    """uint8 [rows * (H + m) + m, 3 * (W + m) + m, 3]: rows of (input centred on grey, output, target).

    Args:
      inputs: [N, h, w, 3] known centres in [0, 1].
      outputs: [N, H, W, 3] outpainted images in [0, 1].
      targets: [N, H, W, 3] ground truth in [0, 1].
      margin: white pixels between cells.
      upscale: integer nearest-neighbour magnification (small images).
    """
    inputs, outputs, targets = (np.clip(np.asarray(a, np.float32), 0.0, 1.0) for a in (inputs, outputs, targets))
    n, big_h, big_w = outputs.shape[:3]
    if targets.shape != outputs.shape or len(inputs) != n:
        raise ValueError(f'make_grid: shapes differ: inputs {inputs.shape}, outputs {outputs.shape}, targets '
                         f'{targets.shape}.')
    h, w = inputs.shape[1:3]
    top, left = (big_h - h) // 2, (big_w - w) // 2
    canvas = np.full((n, big_h, big_w, 3), GREY, np.float32)
    canvas[:, top:top + h, left:left + w] = inputs
    cells = [canvas, outputs, targets]
    if upscale > 1:
        cells = [np.repeat(np.repeat(c, upscale, axis=1), upscale, axis=2) for c in cells]
        big_h, big_w = big_h * upscale, big_w * upscale
    grid = np.ones((n * (big_h + margin) + margin, 3 * (big_w + margin) + margin, 3), np.float32)
    for i in range(n):
        for j, cell in enumerate(cells):
            y, x = margin + i * (big_h + margin), margin + j * (big_w + margin)
            grid[y:y + big_h, x:x + big_w] = cell[i]
    return np.round(grid * 255.0).astype(np.uint8)


def write_grid(path: str, inputs: np.ndarray, outputs: np.ndarray, targets: np.ndarray, **kw) -> str:
    """Writes `make_grid(...)` as a PNG at `path` (folders created); returns the path."""
    from PIL import Image

    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    Image.fromarray(make_grid(inputs, outputs, targets, **kw)).save(path)
    return path


def _load_config(workdir: Optional[str], config: Optional[str]):
    import ml_collections

    from vit_jax import config_utils

    if config:
        return config_utils.load(config)
    path = os.path.join(workdir, 'config.json')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} not found: pass --config=FILE[:ARG] (the config the run used).')
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def outpaint_examples(config, checkpoint_path: str, *, split: str = 'test', num: int = 8, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, outputs, targets) in [0, 1] for the first `num` examples of `split` with the checkpoint's weights."""
    import jax

    from vit_jax import data, models
    from vit_jax.evaluators.base import eval_data_config

    model, variables = models.load(dict(model=config.model, weights=checkpoint_path))
    size = models.input_shape(model, 1)[1:3]
    ds = data.get_dataset(config.dataset, split, data_config=config.get('data', None), batch_size=num,
                          image_size=size, train=False, seed=seed, process_index=0, process_count=1)
    batch = next(iter(ds))
    if 'target' not in batch:
        raise ValueError('The eval pipeline gives no "target": set data.eval_pp to the outpainting pipe '
                         "('outpaint_crop|value_range|outpaint_split').")
    out, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, batch['image'])
    lo, hi = (float(v) for v in eval_data_config(config.dataset, config.get('data', None))['value_range'])
    keep = batch['mask'].astype(bool)
    to01 = lambda a: np.clip((np.asarray(a)[keep] - lo) / (hi - lo), 0.0, 1.0)  # noqa: E731
    return to01(batch['image']), to01(out), to01(batch['target'])


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m vit_jax.tools.outpaint_grid', description=__doc__.split('\n')[0])
    p.add_argument('--workdir', help='Training workdir (config.json + checkpoints).')
    p.add_argument('--config', default=None, help='Config FILE[:ARG] (default: WORKDIR/config.json).')
    p.add_argument('--checkpoint', default=None, help='Weights (default: the workdir latest checkpoint).')
    p.add_argument('--dataset', default=None, help="Override config.dataset (e.g. 'flat_folder:/data/scenery').")
    p.add_argument('--split', default='test')
    p.add_argument('--num', type=int, default=8, help='Examples (rows).')
    p.add_argument('--upscale', type=int, default=1, help='Nearest-neighbour magnification of the PNG.')
    p.add_argument('--out', default=None, help='PNG path (default: WORKDIR/outpaint_grid.png).')
    args = p.parse_args(argv)
    if not args.workdir and not (args.config and args.checkpoint):
        p.error('pass --workdir (or --config and --checkpoint)')
    try:
        config = _load_config(args.workdir, args.config)
        if args.dataset:
            config.dataset = args.dataset
        inputs, outputs, targets = outpaint_examples(config, args.checkpoint or args.workdir, split=args.split,
                                                     num=args.num)
    except (OSError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    out = args.out or os.path.join(args.workdir or '.', 'outpaint_grid.png')
    write_grid(out, inputs, outputs, targets, upscale=args.upscale)
    print(f'Wrote {out} ({len(outputs)} rows: input | output | ground truth).')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
