"""Semantic segmentation: mIoU, pixel accuracy and mean class accuracy from one confusion matrix per split.

    config.evals.val = dict(type='segmentation', split='validation', every=1000,
                            window=None, stride=None, scales=(1.0,), flip=False,   # Segmenter inference
                            eval_size=None, png_dir=None, png_count=4)

The confusion matrix (ground truth x prediction, K x K) is summed over every pixel of the whole split (padding
examples and `ignore_label` pixels excluded) before any ratio is taken, so the figures do not depend on the batch
size: IoU_k = TP / (TP + FP + FN) over classes that occur in the ground truth or the prediction (NaN otherwise,
left out of the mean, as mmseg), pixel accuracy = sum TP / number of valid pixels, mean accuracy = mean over
ground-truth classes of TP / GT.

Inference (`vit_jax.models.segmenter.inference`): sliding windows of `window` (default: the model's image size)
with `stride` (default: the window, i.e. non-overlapping plus the final flush window), averaged logits, optional
multi-scale `scales` and `flip` with averaged softmax maps. With the default window equal to the eval image size
this is a single forward pass. Evaluation images are resized/padded to `eval_size` (default: the model's image
size) by the eval preprocessing; when the pipeline reports each image's valid size ('valid_hw', e.g. the dense
ops `seg_fit`), every image is cropped to it and inferred on the host one by one, exactly like the official
per-image sliding window (no window sees padding); otherwise whole batches are inferred on the device.

`png_dir`: writes `<png_dir>/<name>_step<N>_<i>.png` with image | prediction | ground truth side by side for the
first `png_count` examples.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import evaluators
from vit_jax.evaluators.base import Evaluator, to_host
from vit_jax.models import segmenter


def confusion_matrix(pred: jax.Array, label: jax.Array, num_classes: int, ignore_label: int = 255,
                     weights: Optional[jax.Array] = None) -> jax.Array:
    """[K, K] int32 counts of (ground truth, prediction) pairs; ignored / out-of-range labels do not count."""
    label = label.astype(jnp.int32)
    valid = (label != ignore_label) & (label >= 0) & (label < num_classes)
    if weights is not None:
        valid = valid & (weights > 0)
    idx = jnp.where(valid, label * num_classes + pred.astype(jnp.int32), 0)
    counts = jnp.bincount(idx.reshape(-1), weights=valid.reshape(-1).astype(jnp.int32),
                          length=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def confusion_matrix_np(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_label: int = 255) -> np.ndarray:
    """Host version of `confusion_matrix` (int64)."""
    label = label.astype(np.int64).reshape(-1)
    pred = pred.astype(np.int64).reshape(-1)
    valid = (label != ignore_label) & (label >= 0) & (label < num_classes)
    return np.bincount(label[valid] * num_classes + pred[valid], minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def metrics_from_confusion(cm: np.ndarray) -> dict[str, Any]:
    """mIoU, pixel accuracy, mean accuracy and per-class IoU from a [K, K] (ground truth x prediction) matrix."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    gt = cm.sum(1)
    predicted = cm.sum(0)
    union = gt + predicted - tp
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    total = cm.sum()
    return {
        'miou': float(np.nanmean(iou)) if np.any(union > 0) else 0.0,
        'pixel_accuracy': float(tp.sum() / total) if total else 0.0,
        'mean_accuracy': float(np.nanmean(acc)) if np.any(gt > 0) else 0.0,
        'per_class_iou': iou,
        'num_pixels': int(total),
    }


@evaluators.register('segmentation')
class Segmentation(Evaluator):
    """Config: split, batch_size, every, dataset, data, ignore_label, window, stride, scales, flip, window_batch,
    eval_size, png_dir, png_count."""

    def __init__(self, name: str, cfg: Any, ctx: Any):
        super().__init__(name, cfg, ctx)
        self.ignore_label = int(cfg.get('ignore_label', ctx.config.objective.get('ignore_label', 255)))
        size = cfg.get('eval_size', None)
        self.eval_size = tuple(ctx.image_size) if size is None else _pair(size)
        window = cfg.get('window', None)
        self.window = tuple(ctx.image_size) if window is None else _pair(window)
        stride = cfg.get('stride', None)
        self.stride = self.window if stride is None else _pair(stride)
        self.scales = tuple(float(s) for s in (cfg.get('scales', None) or (1.0,)))
        self.flip = bool(cfg.get('flip', False))
        self.window_batch = int(cfg.get('window_batch', 0) or 0)

    # ------------------------------------------------------------------------------------------------------------
    def _apply(self, state: Any, images: jax.Array) -> jax.Array:
        return self.ctx.objective.predict(state, {'image': images})['logits']

    @functools.cached_property
    def _batch_step(self):
        k_fn = self._num_classes

        @jax.jit
        def step(state, batch):
            probs = segmenter.inference(lambda w: self._apply(state, w), batch['image'], window=self.window,
                                        stride=self.stride, scales=self.scales, flip=self.flip,
                                        window_batch=self.window_batch)
            pred = jnp.argmax(probs, -1)
            weights = jnp.broadcast_to(batch['mask'][:, None, None], pred.shape)
            return confusion_matrix(pred, batch['label'], k_fn(), self.ignore_label, weights), pred

        return step

    @functools.cached_property
    def _window_fn(self):
        return jax.jit(self._apply)

    def _num_classes(self) -> int:
        k = self.cfg.get('num_classes', None) or getattr(self.ctx.model, 'num_classes', None)
        if not k:
            raise ValueError(f'evals.{self.name}: set num_classes (the model has none).')
        return int(k)

    def _dataset(self, split: str):
        """The eval pipeline at `eval_size` (which may differ from the model's image size)."""
        from vit_jax import data, sharding

        d = self.data
        dcfg = {**d.run_data, **(d.data_config or {})}
        ds = data.get_dataset(d.dataset, split, data_config=dcfg, batch_size=d.batch_size // jax.process_count(),
                              image_size=self.eval_size, train=False, seed=d.seed, process_index=jax.process_index(),
                              process_count=jax.process_count())
        for b in ds:
            yield b, sharding.to_global(b, self.ctx.mesh)

    def run(self, state: Any) -> dict[str, Any]:
        k = self._num_classes()
        cm = np.zeros((k, k), np.int64)
        png_left = int(self.cfg.get('png_count', 4)) if self.cfg.get('png_dir', None) else 0
        pngs = []
        for host_batch, batch in self._dataset(self.data.split):
            if 'valid_hw' in host_batch:
                preds = self._per_image(state, host_batch, cm, k)
            else:
                m, pred = self._batch_step(state, batch)
                cm += np.asarray(jax.device_get(m), np.int64)
                preds = to_host(pred) if png_left > 0 else None
            if png_left > 0:
                for i in range(len(host_batch['mask'])):
                    if png_left <= 0 or not host_batch['mask'][i]:
                        continue
                    pngs.append((host_batch['image'][i], preds[i], host_batch['label'][i]))
                    png_left -= 1
        if pngs:
            self._write_pngs(pngs, k, int(jax.device_get(getattr(state, 'step', 0))))
        res = metrics_from_confusion(cm)
        out = {'miou': res['miou'], 'pixel_accuracy': res['pixel_accuracy'], 'mean_accuracy': res['mean_accuracy'],
               'num_pixels': res['num_pixels']}
        self.last_confusion = cm
        self.last_per_class_iou = res['per_class_iou']
        return out

    def _per_image(self, state: Any, host_batch: dict, cm: np.ndarray, k: int) -> list[np.ndarray]:
        """Official per-image inference on each image's valid region (host loop, fixed window batch)."""
        fn = lambda w: np.asarray(self._window_fn(state, jnp.asarray(w)))  # noqa: E731
        preds = []
        for i in range(len(host_batch['mask'])):
            label = host_batch['label'][i]
            if not host_batch['mask'][i]:
                preds.append(np.full(label.shape, 0, np.int64))
                continue
            h, w = (int(v) for v in host_batch['valid_hw'][i])
            image = np.asarray(host_batch['image'][i:i + 1, :h, :w], np.float32)
            probs = segmenter.inference(fn, image, window=self.window, stride=self.stride, scales=self.scales,
                                        flip=self.flip, window_batch=self.window_batch or 4)
            pred = np.argmax(probs[0], -1)
            cm += confusion_matrix_np(pred, label[:h, :w], k, self.ignore_label)
            full = np.zeros(label.shape, np.int64)
            full[:h, :w] = pred
            preds.append(full)
        return preds

    def _write_pngs(self, items: list, k: int, step: int) -> None:
        from vit_jax.tools import dense_vis

        d = self.cfg.png_dir
        os.makedirs(d, exist_ok=True)
        vr = self.data.value_range
        for i, (image, pred, label) in enumerate(items):
            panel = dense_vis.side_by_side([
                dense_vis.image_to_uint8(image, vr),
                dense_vis.colorize_labels(pred, k, self.ignore_label),
                dense_vis.colorize_labels(label, k, self.ignore_label)])
            dense_vis.save_png(os.path.join(d, f'{self.name}_step{step}_{i}.png'), panel)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    return (int(v[0]), int(v[1]))
