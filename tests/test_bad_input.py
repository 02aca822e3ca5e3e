"""Bad input: 0-byte, truncated, 1x1, 16-bit, CMYK, grayscale, RGBA, palette, huge and mislabelled image files.

Each case is decoded correctly (shape, dtype, pixel values) or reported clearly, by the image-folder pipeline
(`vit_jax.data`), by the trainer (skip count in the metrics, stop above `data.max_bad_fraction`) and by the predict
CLI (`vit_jax.predict`: per-file reasons, predictions for every good file).
"""

import io
import json
import logging
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageDraw

from vit_jax import checkpoint, config_utils, data, predict, train
from vit_jax.data import preprocess

tf = pytest.importorskip('tensorflow')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))
from _helpers import tiny_config  # noqa: E402

S = 16  # Side of the ordinary test images (and of the pipeline's output, so 'resize' keeps pixel values).
HUGE = 10_000
A, B = (250, 20, 100), (10, 200, 30)  # Colours of the huge image's left and right halves.


def _ref():
    """A smooth RGB image (JPEG keeps it close) and its grayscale."""
    y, x = np.mgrid[0:S, 0:S]
    rgb = np.stack([x * 255 // (S - 1), np.full_like(x, 128), y * 255 // (S - 1)], -1).astype(np.uint8)
    return rgb, np.asarray(Image.fromarray(rgb).convert('L'))


def _enc(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def _huge_jpeg():
    im = Image.new('RGB', (HUGE, HUGE), B)
    ImageDraw.Draw(im).rectangle([0, 0, HUGE // 2 - 1, HUGE - 1], fill=A)
    out = _enc(im, 'JPEG', quality=50)
    del im
    return out


def _cases():
    """{name: (file name, bytes, expected uint8 [S, S, 3] | None, atol)}; expected None: checked separately."""
    rgb, gray = _ref()
    gray3 = np.repeat(gray[..., None], 3, -1)
    rs = np.random.RandomState(0)
    ramp16 = np.linspace(0, 65535, S * S).round().astype(np.uint16).reshape(S, S)  # 0 .. 65535 exactly.
    rgb16 = np.stack([ramp16, ramp16[::-1], np.full_like(ramp16, 40000)], -1)
    rgba = np.dstack([rgb, rs.randint(0, 256, (S, S), np.uint8)])
    pal = Image.fromarray(rgb).convert('P', palette=Image.Palette.ADAPTIVE, colors=16)
    bits = rs.rand(S, S) > 0.5
    good = {
        'rgb_png': ('a.png', _enc(Image.fromarray(rgb), 'PNG'), rgb, 0),
        'rgb_jpg': ('a.jpg', _enc(Image.fromarray(rgb), 'JPEG', quality=95), rgb, 8),
        'gray_png': ('a.png', _enc(Image.fromarray(gray), 'PNG'), gray3, 0),
        'gray_jpg': ('a.jpeg', _enc(Image.fromarray(gray), 'JPEG', quality=95), gray3, 6),
        'la_png': ('a.png', _enc(Image.fromarray(rgb).convert('LA'), 'PNG'), gray3, 0),
        'rgba_png': ('a.png', _enc(Image.fromarray(rgba, 'RGBA'), 'PNG'), rgb, 0),  # Alpha dropped, not composited.
        'palette_png': ('a.png', _enc(pal, 'PNG'), np.asarray(pal.convert('RGB')), 0),
        'bilevel_png': ('a.png', _enc(Image.fromarray(bits), 'PNG'), np.repeat(bits[..., None] * 255, 3, -1), 0),
        'gray16_png': ('a.png', _enc(Image.fromarray(ramp16), 'PNG'), np.repeat((ramp16 >> 8)[..., None], 3, -1), 0),
        'rgb16_png': ('a.PNG', tf.io.encode_png(tf.constant(rgb16)).numpy(), (rgb16 >> 8).astype(np.uint8), 0),
        'cmyk_jpg': ('a.jpg', _enc(Image.fromarray(rgb).convert('CMYK'), 'JPEG', quality=95), rgb, 8),
        'png_named_jpg': ('a.jpg', _enc(Image.fromarray(rgb), 'PNG'), rgb, 0),
        'jpg_named_png': ('a.png', _enc(Image.fromarray(rgb), 'JPEG', quality=95), rgb, 8),
        'one_px_png': ('a.png', _enc(Image.fromarray(np.array([[A]], np.uint8)), 'PNG'),
                       np.broadcast_to(np.array(A, np.uint8), (S, S, 3)), 0),
        'gif_named_jpg': ('a.jpg', _enc(pal, 'GIF'), np.asarray(pal.convert('RGB')), 0),
        'huge_jpg': ('a.jpg', _huge_jpeg(), None, 0),
    }
    big = _enc(Image.fromarray(rs.randint(0, 256, (64, 64, 3), np.uint8)), 'JPEG', quality=90)
    bad = {  # name: (file, bytes, what the report says, found at construction (header) or while reading)
        'empty_jpg': ('a.jpg', b'', 'empty file (0 bytes)', 'build'),
        'truncated_jpg': ('a.jpg', big[:len(big) // 2], 'truncated JPEG', 'read'),
        'cut_header_jpg': ('a.jpg', big[:200], 'truncated file', 'build'),
        'garbage_png': ('a.png', rs.randint(0, 256, 300, np.uint8).tobytes(), 'not a readable image', 'build'),
        'tiff_named_png': ('a.png', _enc(Image.fromarray(rgb), 'TIFF'), 'TIFF data in a .png file', 'build'),
    }
    return good, bad


@pytest.fixture(scope='module')
def cases(tmp_path_factory):
    """A folder with one class per case (the label says which case an example is) + flat copies for predict."""
    good, bad = _cases()
    root = tmp_path_factory.mktemp('bad_input') / 'folder'
    flat = root.parent / 'flat'
    flat.mkdir()
    for name, (fn, content, *_) in {**good, **bad}.items():
        d = root / 'train' / name
        d.mkdir(parents=True)
        (d / fn).write_bytes(content)
        (flat / f'{name}{os.path.splitext(fn)[1]}').write_bytes(content)
    (root / 'train' / 'rgb_png' / 'notes.txt').write_text('not an image')
    (flat / 'notes.txt').write_text('not an image')
    return dict(root=root, flat=flat, good=good, bad=bad)


def _flat(cases, name):
    return str(next(p for p in cases['flat'].iterdir() if p.stem == name))


# ---------------------------------------------------------------------------------------------------------------
# The image-folder pipeline.


def test_pipeline_decodes_each_case_or_reports_it(cases, caplog):
    good, bad = cases['good'], cases['bad']
    with caplog.at_level(logging.WARNING):
        ds = data.get_dataset(f'folder:{cases["root"]}', 'train', batch_size=8, image_size=S, train=False,
                              data_config={'value_range': (0, 255)})
        classes = ds.class_names
        assert ds.num_skipped == sum(1 for b in bad.values() if b[3] == 'build')  # Header checks.
        seen = {}
        for batch in ds:
            for img, lbl, m in zip(batch['image'], batch['label'], batch['mask']):
                if m:
                    seen[classes[lbl]] = img
    log = caplog.text
    assert sorted(seen) == sorted(good)  # Every good case decoded, every bad one skipped ...
    assert ds.num_skipped == len(bad)  # ... and counted,
    for name, (fn, _, reason, _) in bad.items():  # ... and named in the log with the reason.
        assert f'{cases["root"] / "train" / name / fn} ({reason}' in log or (
            f'Cannot decode {cases["root"] / "train" / name / fn}: {reason}' in log), (name, log)
    assert "ignored 1 file(s) without a .jpg/.jpeg/.png extension: rgb_png/notes.txt" in log
    assert ds.bad_fraction == pytest.approx(len(bad) / (len(bad) + len(good)))
    for name, img in seen.items():
        assert img.shape == (S, S, 3) and img.dtype == np.float32, name
        want = good[name][2]
        if want is None:
            continue
        diff = np.abs(img - want.astype(np.float32))
        tol = good[name][3]
        assert diff.max() <= tol if tol == 0 else diff.mean() <= tol / 2 and diff.max() <= 4 * tol, (name, diff.max())
    # 16-bit: 65535 -> 255 and 256 -> 1, not clipped (a 16-bit value > 255 would be 255) nor wrapped (mod 256).
    g16 = seen['gray16_png'][..., 0]
    assert g16.min() == 0 and g16.max() == 255 and len(np.unique(g16)) > 200
    # The huge JPEG: the two halves' colours (JPEG at quality 50 keeps flat areas within a few levels).
    huge = seen['huge_jpg']
    np.testing.assert_allclose(huge[:, :S // 2 - 2].mean((0, 1)), A, atol=6)
    np.testing.assert_allclose(huge[:, S // 2 + 2:].mean((0, 1)), B, atol=6)


def test_huge_jpeg_is_decoded_downscaled(cases):
    """libjpeg DCT scaling: a 10000x10000 JPEG for a 16 px model is decoded at 1/8 (1250x1250x3 = 4.7 MB), not 300 MB;
    a 224 px model still gets 1/8 (1250 >= 4 * 224); ordinary images and PNGs are decoded at full size."""
    content = cases['good']['huge_jpg'][1]
    shape = lambda b, size: tuple(preprocess.decode_image(tf.constant(b), 3, min_size=size).shape)  # noqa: E731
    assert shape(content, (S, S)) == (1250, 1250, 3)
    assert shape(content, (224, 224)) == (1250, 1250, 3)
    assert shape(content, (384, 384)) == (2500, 2500, 3)  # 1250 < 4 * 384: only 1/4.
    assert shape(cases['good']['rgb_jpg'][1], (S, S)) == (S, S, 3)
    assert shape(cases['good']['cmyk_jpg'][1], (S, S)) == (S, S, 3)


def test_second_scan_of_the_same_folder_keeps_the_skip_count(tmp_path):
    """Known bug: the folder scan was cached on directory mtimes, so a second in-process run over the same folder
    could lose the construction-time skip count (files rewritten in place, nested folders, coarse mtimes)."""
    rs = np.random.RandomState(0)
    cat = tmp_path / 'train' / 'cat'
    (cat / 'sub').mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rs.randint(0, 256, (8, 8, 3), np.uint8)).save(cat / f'{i}.png')
    (cat / 'bad.jpg').write_bytes(b'')

    def skipped():
        return data.get_dataset(f'folder:{tmp_path}', 'train', batch_size=2, image_size=8, train=True).num_skipped

    assert skipped() == 1
    assert skipped() == 1  # The same folder again, in the same process.
    stamp = os.stat(cat).st_mtime_ns
    (cat / '0.png').write_bytes(b'')  # Rewritten in place: the directory's mtime does not change.
    assert os.stat(cat).st_mtime_ns == stamp
    assert skipped() == 2
    (cat / 'late.jpg').write_bytes(b'')  # Added within the directory's mtime resolution (coarse file systems).
    os.utime(cat, ns=(stamp, stamp))
    assert skipped() == 3
    (cat / 'sub' / 'nested.jpg').write_bytes(b'not a jpeg')  # A nested folder (not in the old stamp).
    assert skipped() == 4
    (cat / 'bad.jpg').write_bytes((cat / '1.png').read_bytes())  # Fixed in place: no longer skipped.
    assert skipped() == 3


# ---------------------------------------------------------------------------------------------------------------
# The trainer: skipped examples in the metrics, a stop above data.max_bad_fraction.


def _train_folder(root, good=22, empty=1, truncated=1):
    rs = np.random.RandomState(0)
    for i in range(good):
        d = root / 'train' / ('cat' if i % 2 else 'dog')
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rs.randint(0, 256, (8, 8, 3), np.uint8)).save(d / f'{i}.png')
    big = _enc(Image.fromarray(rs.randint(0, 256, (96, 96, 3), np.uint8)), 'JPEG')  # Half of it: a full header.
    for i in range(empty):
        (root / 'train' / 'cat' / f'empty{i}.jpg').write_bytes(b'')
    for i in range(truncated):
        (root / 'train' / 'dog' / f'trunc{i}.jpg').write_bytes(big[:len(big) // 2])


def _folder_config(root, steps, max_bad):
    c = tiny_config(steps)
    c.dataset = f'folder:{root}'
    c.model.num_classes = 2
    c.model.num_layers = 1
    c.batch_size = 4
    c.log_every = 3
    c.evals = {}
    c.data.max_bad_fraction = max_bad
    return c


@pytest.mark.slow  # Two training runs (~80 s on 2 busy cores); tests/test_reliability.py has a fast one.
def test_training_skips_and_counts_bad_examples_then_stops_above_the_fraction(tmp_path, caplog):
    _train_folder(tmp_path / 'imgs')  # 22 good, 1 empty (found at construction), 1 truncated (found reading).
    c = _folder_config(tmp_path / 'imgs', 9, 0.2)  # 36 examples read: every file at least once.
    with caplog.at_level(logging.WARNING):
        result = train.train_and_evaluate(c, str(tmp_path / 'ok'))
    assert result['step'] == 9
    assert f'Cannot decode {tmp_path / "imgs" / "train" / "dog" / "trunc0.jpg"}: truncated JPEG' in caplog.text
    rows = [json.loads(line) for line in open(tmp_path / 'ok' / 'metrics.jsonl')]
    last = [r for r in rows if 'train/skipped_examples' in r][-1]
    assert last['train/skipped_examples'] >= 2  # The empty file once + the truncated one each time it was read.
    assert 0.05 < last['train/bad_fraction'] < 0.12  # 2 of 24 files (8.3%), estimated from what was read.
    # The same folder, strict: only the empty file is known at construction (1/24 = 4.2% < 5%), the truncated one
    # pushes the estimate over 5% once it has been read: the run stops at a logging step with a clear error.
    c = _folder_config(tmp_path / 'imgs', 30, 0.05)
    with pytest.raises(RuntimeError, match=r'could not be decoded: \d+\.\d+% of the training data \(more than '
                                           r'data\.max_bad_fraction=0\.05\); stopped at step \d+'):
        train.train_and_evaluate(c, str(tmp_path / 'strict'))


def test_training_stops_before_the_first_step_when_many_files_are_unreadable(tmp_path):
    _train_folder(tmp_path / 'imgs', good=8, empty=2, truncated=0)  # 20% empty files.
    c = _folder_config(tmp_path / 'imgs', 5, 0.1)
    with pytest.raises(RuntimeError, match=r'2 training example\(s\) could not be decoded: 20\.00% .* stopped '
                                           r'before step 0'):
        train.train_and_evaluate(c, str(tmp_path / 'wd'))
    assert not os.path.exists(tmp_path / 'wd' / 'metrics.jsonl') or not open(tmp_path / 'wd' / 'metrics.jsonl').read()


# ---------------------------------------------------------------------------------------------------------------
# The predict CLI.


@pytest.fixture(scope='module')
def model_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('predict_bad')
    c = config_utils.load(os.path.join(ROOT, 'configs', 'quickstart.py'))
    c.model = dict(name='ViT-testing', num_classes=10, image_size=S, patch_size=4, hidden_size=16, mlp_dim=32,
                   num_heads=2, num_layers=1)
    model = train.build_model(c)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, S, S, 3)))['params']
    checkpoint.save_npz(str(tmp / 'model.npz'), jax.tree_util.tree_map(np.asarray, params))
    with open(tmp / 'config.json', 'w') as f:
        f.write(c.to_json_best_effort(indent=2))
    return ['--checkpoint', str(tmp / 'model.npz'), '--config', str(tmp / 'config.json')]


def test_read_image_matches_the_pipeline_decoder(cases):
    """predict.read_image (PIL) gives the pixels of the training pipeline's decoder (TF) for every good case."""
    for name, (_, content, want, tol) in cases['good'].items():
        path = _flat(cases, name)
        img = predict.read_image(path, min_size=(S, S))
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3, name
        if name == 'huge_jpg':
            assert img.shape == (1250, 1250, 3)  # PIL draft mode: decoded at 1/8.
            np.testing.assert_allclose(img[:, :600].mean((0, 1)), A, atol=6)
            np.testing.assert_allclose(img[:, 650:].mean((0, 1)), B, atol=6)
            continue
        tf_img = preprocess.decode_image(tf.constant(content), 3, min_size=(S, S)).numpy()
        assert img.shape == tf_img.shape, name
        diff = np.abs(img.astype(int) - tf_img.astype(int))
        if tol == 0:  # PNG: identical.
            assert diff.max() == 0, name
        else:  # JPEG: PIL's and TF's libjpeg settings (IDCT, chroma upsampling) differ by a few levels.
            assert diff.mean() <= 2 and diff.max() <= 10, (name, diff.mean(), diff.max())
        if want is not None and name != 'one_px_png':
            assert np.abs(img.astype(int) - want.astype(int)).mean() <= max(tol / 2, 0), name


def test_predict_cli_reports_each_bad_file_and_predicts_the_others(cases, model_files, capsys):
    good, bad = cases['good'], cases['bad']
    paths = [_flat(cases, n) for n in [*good, *bad]] + [str(cases['flat'] / 'notes.txt'),
                                                       str(cases['flat'] / 'missing.png')]
    rc = predict.main(model_files + ['--json'] + paths)
    out = capsys.readouterr()
    assert rc == 1  # Some files failed (the documented rule: 0 only when every file was predicted).
    predicted = [json.loads(line)['image'] for line in out.out.splitlines()]
    # TIFF is an image to PIL (the folder pipeline only takes what TensorFlow decodes).
    assert predicted == [_flat(cases, n) for n in good] + [_flat(cases, 'tiff_named_png')]
    for name in bad:
        if name != 'tiff_named_png':
            assert f'error: {_flat(cases, name)} is not an image (or a damaged one): ' in out.err, name
    err = {line.split(' is not an image')[0][len('error: '):]: line for line in out.err.splitlines()
           if ' is not an image' in line}
    assert 'empty file (0 bytes)' in err[_flat(cases, 'empty_jpg')]
    assert 'truncated JPEG' in err[_flat(cases, 'truncated_jpg')]
    assert 'unrecognised format' in err[_flat(cases, 'garbage_png')]
    assert 'unrecognised format' in err[str(cases['flat'] / 'notes.txt')]
    assert 'missing.png: no such file' in out.err
    assert f'{len(bad) + 1} of {len(paths)} file(s) could not be read' in out.err
    # All files bad: still exit status 1, nothing on stdout.
    rc = predict.main(model_files + [_flat(cases, 'empty_jpg'), _flat(cases, 'truncated_jpg')])
    out = capsys.readouterr()
    assert rc == 1 and out.out == '' and '2 of 2 file(s) could not be read' in out.err
    # All good: 0.
    assert predict.main(model_files + [_flat(cases, 'gray16_png'), _flat(cases, 'cmyk_jpg')]) == 0


def test_predict_refuses_images_beyond_the_pixel_limit_clearly(tmp_path, monkeypatch):
    """A non-JPEG too large to decode (PIL's bomb limit, lowered here) is refused with its size, not a crash."""
    path = tmp_path / 'big.png'
    Image.new('RGB', (300, 300)).save(path)
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 20_000)
    with pytest.raises(predict.NotAnImageError, match=r'too large \(300x300 PNG: 90000 pixels'):
        predict.read_image(str(path), min_size=(S, S))
    jpg = tmp_path / 'big.jpg'
    Image.new('RGB', (300, 300)).save(jpg)
    monkeypatch.setattr(predict, 'LARGE_JPEG_PIXELS', 1000)  # A JPEG is drafted first: 1/4 scale fits.
    assert predict.read_image(str(jpg), min_size=(16, 16)).shape == (75, 75, 3)
