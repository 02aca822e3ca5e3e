"""Inference from the command line: top-k labels with probabilities for image files.

    python -m vit_jax.predict --checkpoint workdirs/run1 image.jpg other.png
    python -m vit_jax.predict --checkpoint ViT-B_16-ft.npz --config configs/vit_b16.py:cifar10 cat.jpg
    python -m vit_jax.predict --checkpoint model.npz --config configs/quickstart.py --labels labels.txt *.png

`--checkpoint` is a run's workdir (or one of its checkpoints; the EMA weights are used when the run kept them) or
a `.npz` parameter file. `--config` is the training config (a config file `path.py[:arg]`, or a run's
`config.json`); it defaults to the workdir's `config.json`. Overrides such as `--config.model.image_size=384` work
as in `vit_jax.main`. Images of any size and mode (grayscale, RGBA, palette, 16-bit) are converted to RGB and
preprocessed like the config's evaluation data. Labels come from `--labels` (one per line), else from the
dataset of the config (class names of 'digits', an image folder or a TFDS dataset), else `class_<i>`.

Each file that cannot be read is reported on stderr with the reason (`error: x.jpg is not an image (or a damaged
one): truncated JPEG (...)`; also empty files, unknown formats, directories, missing files, images too large to
decode) and skipped; the others still get their predictions. Exit status: 0 when every file was predicted, 1 when
at least one file could not be read (whatever the others did), 2 when nothing could run (bad checkpoint, config or
labels). JPEGs over 16.8 MP are decoded at 1/2-1/8 scale (PIL draft mode, like the training pipeline's libjpeg
scaling), so a 10000x10000 photo needs about 5 MB. Files are read, predicted and printed `--batch_size` at a time,
so memory does not grow with the number of files. A file that cannot be opened says so (`permission denied`).

The EXIF orientation is applied with the training pipeline's own parser (`vit_jax.data.preprocess.
exif_orientation`), so a photo is the same upright image here as in training and evaluation (unless the config
sets `data.exif_orientation=False`, which both then follow).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional, Sequence

import numpy as np


def load_config(config_spec: Optional[str], checkpoint_path: str, overrides: Sequence[tuple[str, str]] = ()) -> Any:
    """The run config: a config file (`path.py[:arg]`), a `config.json`, or the checkpoint workdir's config.json."""
    import ml_collections

    from vit_jax import checkpoint, config_utils

    if config_spec is None:
        source = checkpoint._split_subtree(checkpoint_path)[0]
        if source.endswith('.npz') or os.path.isfile(source):
            raise ValueError(f'{checkpoint_path} is a parameter file: pass the config it was trained with '
                             '(--config configs/NAME.py[:arg]) so the model can be built.')
        step_dir = checkpoint.find_checkpoint_step(source)
        candidates = [os.path.join(os.path.dirname(os.path.dirname(step_dir)), 'config.json'),
                      os.path.join(os.path.dirname(step_dir), 'config.json')]
        config_spec = next((c for c in candidates if os.path.isfile(c)), None)
        if config_spec is None:
            raise ValueError(f'No config.json next to {checkpoint_path}; pass --config.')
    if config_spec.endswith('.json'):
        with open(config_spec) as f:
            config = ml_collections.ConfigDict(json.load(f))
        model = config.model.to_dict()
        with config.unlocked():
            config.model = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items()}
            if 'data' in config and isinstance(config.data.get('value_range', None), list):
                config.data.value_range = tuple(config.data.value_range)
    else:
        config = config_utils.load(config_spec)
    for k, v in overrides:
        config_utils.override(config, k, v)
    return config


def class_names(config: Any, labels_file: Optional[str], num_classes: int) -> list[str]:
    """Label names: from `labels_file`, else the config's dataset, else `class_<i>`."""
    names = None
    if labels_file:
        with open(labels_file) as f:
            names = [line.strip() for line in f if line.strip()]
        if len(names) != num_classes:
            raise ValueError(f'{labels_file} has {len(names)} labels but the model has {num_classes} classes.')
        return names
    dataset = config.get('dataset', None)
    if isinstance(dataset, str):
        try:
            from vit_jax import data

            names = data.dataset_info(dataset, 'train', config.get('data', None)).get('class_names')
        except Exception:  # Unprepared TFDS data, a moved folder ...: fall back to the TFDS metadata or indices.
            try:
                import tensorflow_datasets as tfds

                names = tfds.builder(dataset.removeprefix('tfds:')).info.features['label'].names
            except Exception:
                names = None
    if not names or len(names) != num_classes:
        names = [f'class_{i}' for i in range(num_classes)]
    return list(names)


class NotAnImageError(ValueError):
    """A file that PIL cannot read as an image."""


LARGE_JPEG_PIXELS = 1 << 24  # As the training pipeline (vit_jax.data.preprocess): JPEGs above this are drafted,
JPEG_DOWNSCALE_MARGIN = 4  # ... keeping the short side >= this many times the model input's long side.


def _damage(fmt: Optional[str], e: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return 'unrecognised format (not JPEG, PNG, GIF, BMP, TIFF, WebP ...)'
    msg = str(e).strip() or type(e).__name__
    if 'truncat' in msg.lower() or isinstance(e, EOFError):
        return f'truncated {fmt or "file"} ({msg})'
    return f'damaged {fmt} ({type(e).__name__}: {msg})' if fmt else f'unrecognised format ({type(e).__name__}: {msg})'


_orientation_fn = None


def exif_orientation(head: bytes) -> int:
    """The EXIF orientation (1-8) of encoded image bytes, by the training pipeline's parser."""
    global _orientation_fn
    import tensorflow as tf

    from vit_jax.data import preprocess

    if _orientation_fn is None:
        _orientation_fn = tf.function(preprocess.exif_orientation,
                                      input_signature=[tf.TensorSpec([], tf.string)])
    return int(_orientation_fn(tf.constant(head)))


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """`preprocess.apply_orientation` on a numpy image (the same eight cases)."""
    t = a.transpose(1, 0, *range(2, a.ndim)) if orientation >= 5 else a
    return np.ascontiguousarray({1: t, 2: t[:, ::-1], 3: t[::-1, ::-1], 4: t[::-1], 5: t, 6: t[:, ::-1],
                                 7: t[::-1, ::-1], 8: t[::-1]}[orientation])


def read_image(path: str, min_size: Optional[Sequence[int]] = None, orient: bool = True) -> np.ndarray:
    """Any image file -> uint8 RGB [H, W, 3], converted as the training pipeline does.

    EXIF orientation is applied (with `orient`, by the training pipeline's parser); grayscale (L, LA, 1-bit) is
    repeated to RGB; alpha is dropped (colours as stored, not composited); palette images are expanded; 16-bit
    images are scaled to 8 bits (v >> 8: 65535 -> 255, as TensorFlow's decoder); CMYK (Adobe JPEGs too) is
    converted to RGB.

    Args:
        path: the image file.
        orient: apply the EXIF orientation (the training pipeline's data config `exif_orientation`).
        min_size: (h, w) the image will be used at. JPEGs of more than `LARGE_JPEG_PIXELS` pixels are then decoded
            at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling, PIL's draft mode) keeping the short side >= 4 *
            max(min_size), so a 10000x10000 photo takes ~5 MB instead of 300 MB. Other formats are decoded fully
            up to PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`, 89 MP; twice that is refused).

    Raises:
        FileNotFoundError: no such file.
        PermissionError: the file cannot be opened (permission denied); the message names it.
        NotAnImageError: a directory, an empty file, not an image, a truncated/damaged one, or one too large;
            the message says which.
    """
    import warnings

    from PIL import Image

    if not os.path.exists(path):
        raise FileNotFoundError(f'{path}: no such file.')
    if os.path.isdir(path):
        raise NotAnImageError(f'{path} is a directory, not an image.')

    def fail(reason: str) -> NotAnImageError:
        return NotAnImageError(f'{path} is not an image (or a damaged one): {reason}')

    if os.path.getsize(path) == 0:
        raise fail('empty file (0 bytes)')
    try:
        with open(path, 'rb') as f:
            head = f.read(1 << 17)  # preprocess.EXIF_SCAN_BYTES: where the orientation is read.
    except PermissionError:
        raise PermissionError(f'{path}: permission denied (the file cannot be opened; check its permissions).'
                              ) from None
    except OSError as e:
        raise NotAnImageError(f'{path} cannot be read ({type(e).__name__}: {e.strerror or e}).') from None
    orientation = exif_orientation(head) if orient else 1
    limit = Image.MAX_IMAGE_PIXELS
    fmt = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None  # Checked below, after drafting JPEGs down.
            try:
                im = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
            with im:
                fmt = im.format
                w, h = im.size
                if min_size is not None and fmt in ('JPEG', 'MPO') and w * h > LARGE_JPEG_PIXELS:
                    need = JPEG_DOWNSCALE_MARGIN * max(int(min_size[0]), int(min_size[1]))
                    im.draft(im.mode, (min(w, need), min(h, need)))  # Largest DCT scale keeping both sides >= need.
                if limit and im.size[0] * im.size[1] > 2 * limit:
                    raise fail(f'too large ({im.size[0]}x{im.size[1]} {fmt}: {im.size[0] * im.size[1]} pixels, '
                               f'more than twice PIL.Image.MAX_IMAGE_PIXELS={limit})')
                im.load()
                if im.mode in ('I;16', 'I;16B', 'I;16L', 'I;16N'):  # 16-bit grayscale: top 8 bits, as TF.
                    a = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
                    return _orient(np.repeat(a[..., None], 3, axis=-1), orientation)
                if im.mode in ('I', 'F'):  # 32-bit integer / float: 16-bit data if it exceeds 255, else 8-bit.
                    a = np.asarray(im, np.float64)
                    a = np.clip(a, 0, 65535) / 256.0 if a.max() > 255 else np.clip(a, 0, 255)
                    return _orient(np.repeat(np.floor(a).astype(np.uint8)[..., None], 3, axis=-1), orientation)
                if im.mode == 'P':
                    im = im.convert('RGBA')
                return _orient(np.asarray(im.convert('RGB'), np.uint8), orientation)
    except NotAnImageError:
        raise
    except PermissionError:
        raise PermissionError(f'{path}: permission denied (the file cannot be opened; check its permissions).'
                              ) from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise fail(_damage(fmt, e)) from None


class Predictor:
    """A model with its weights and the config's eval preprocessing; `__call__(uint8 RGB images) -> probabilities`."""

    def __init__(self, config: Any, checkpoint_path: str):
        import jax
        import jax.numpy as jnp

        from vit_jax import models, train
        from vit_jax.data import pipeline, preprocess
        from vit_jax.evaluators.base import eval_data_config

        self.config = config
        spec = models.as_spec(dict(model=config.model, weights=checkpoint_path))
        self.model = models.get_model(spec.name, **spec.overrides)
        self.num_classes = int(getattr(self.model, 'num_classes', 0) or 0)
        if not self.num_classes:
            raise ValueError('The model has no classification head (num_classes is 0/None): nothing to predict.')
        self.variables = models.load_variables(self.model, checkpoint_path)  # As models.load(spec).
        self.image_size = train.model_image_size(self.model)
        cfg = eval_data_config(config.get('dataset', ''), config.get('data', None))
        pp = preprocess.build(pipeline._pipe(cfg, train=False), image_size=self.image_size, train=False, config=cfg)
        self.exif_orientation = bool(cfg.get('exif_orientation', True))  # As the training pipeline's 'decode'.
        import tensorflow as tf

        self._pp = lambda im: pp({'image': tf.convert_to_tensor(im)}, None)['image'].numpy()
        sigmoid = (config.get('objective', None) or {}).get('loss', 'softmax') == 'sigmoid'

        @jax.jit
        def probs(variables, images):
            logits, _ = self.model.apply(variables, images, train=False)
            return jax.nn.sigmoid(logits) if sigmoid else jax.nn.softmax(logits, axis=-1)

        self._probs = probs
        self._jnp = jnp

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB [H, W, 3] -> float32 model input [h, w, 3] (the config's eval preprocessing)."""
        return np.asarray(self._pp(image), np.float32)

    def __call__(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Probabilities [N, num_classes] of uint8 RGB images of any size."""
        return self.predict_inputs([self.preprocess(im) for im in images], batch_size)

    def predict_inputs(self, inputs: Sequence[np.ndarray], batch_size: int = 32,
                       pad: Optional[bool] = None) -> np.ndarray:
        """Probabilities [N, num_classes] of already preprocessed inputs (`preprocess`).

        A last partial batch is padded to `batch_size` (one compiled shape) when `pad`, or by default when there
        are more than `batch_size` inputs.
        """
        images = inputs
        pad = len(images) > batch_size if pad is None else pad
        out = []
        for i in range(0, len(images), batch_size):
            chunk = np.stack(images[i:i + batch_size])
            n = len(chunk)
            if n < batch_size and pad:  # Keep one compiled shape.
                chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), chunk.dtype)])
            out.append(np.asarray(self._probs(self.variables, self._jnp.asarray(chunk)))[:n])
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    from vit_jax import config_utils

    return config_utils.split_overrides(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, overrides = _split_overrides(argv)
    p = argparse.ArgumentParser(prog='python -m vit_jax.predict', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('images', nargs='+', help='Image files (JPEG, PNG, GIF, BMP, TIFF, WebP ...).')
    p.add_argument('--checkpoint', required=True, help='A run workdir / Orbax checkpoint, or a .npz parameter file.')
    p.add_argument('--config', default=None, help="The run's config: path.py[:arg] or config.json (default: the "
                                                  "workdir's config.json).")
    p.add_argument('--labels', default=None, help='A text file with one label per line (class order).')
    p.add_argument('--top_k', type=int, default=5, help='How many labels to print per image (default 5).')
    p.add_argument('--json', action='store_true', help='Print one JSON object per image instead of text.')
    p.add_argument('--batch_size', type=int, default=32, help='Images read and predicted at a time (default 32).')
    args = p.parse_args(argv)
    try:
        config = load_config(args.config, args.checkpoint, overrides)
        predictor = Predictor(config, args.checkpoint)
        names = class_names(config, args.labels, predictor.num_classes)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    batch_size = max(1, int(args.batch_size))
    k = max(1, min(args.top_k, predictor.num_classes))
    inputs, paths, failed, done, full = [], [], 0, 0, False

    def flush() -> None:  # Predicts and prints the files read so far, then lets them go (bounded memory).
        nonlocal inputs, paths, done
        if not inputs:
            return
        probs = predictor.predict_inputs(inputs, batch_size, pad=full)
        for path, pr in zip(paths, probs):
            top = np.argsort(-pr, kind='stable')[:k]
            if args.json:
                print(json.dumps({'image': path, 'top_k': [{'label': names[i], 'index': int(i),
                                                            'probability': float(pr[i])} for i in top]}))
            else:
                print(f'{path}:')
                for i in top:
                    print(f'  {pr[i]:.4f}  {names[i]}')
        sys.stdout.flush()
        done += len(paths)
        inputs, paths = [], []

    for path in args.images:  # Each file is read and brought to the model size at once (big images are not kept).
        try:
            image = read_image(path, min_size=predictor.image_size, orient=predictor.exif_orientation)
            inputs.append(predictor.preprocess(image))
            paths.append(path)
        except (NotAnImageError, FileNotFoundError, PermissionError) as e:
            print(f'error: {e}', file=sys.stderr)
            failed += 1
        except Exception as e:  # noqa: BLE001 - one odd file must not stop the others.
            print(f'error: {path}: cannot preprocess it ({type(e).__name__}: {e})', file=sys.stderr)
            failed += 1
        if len(inputs) == batch_size:
            full = True
            flush()
    flush()
    if failed:
        print(f'{failed} of {len(args.images)} file(s) could not be read; predictions were printed for the other '
              f'{done}.', file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    import sys

    from vit_jax import console

    verbose = '--verbose' in sys.argv  # Library logging back on (TensorFlow, Orbax, absl).
    if verbose:
        sys.argv.remove('--verbose')
    console.setup(verbose=verbose)  # Before TensorFlow is imported.
    raise SystemExit(main())
