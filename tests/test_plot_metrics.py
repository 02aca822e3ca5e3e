"""Training-curve PNGs from metrics.jsonl (tools/plot_metrics) and the trainer's curves.png."""

import json
import os

import numpy as np
from PIL import Image

from vit_jax.tools import plot_metrics


def _write_run(workdir, losses, lr=0.1):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
        for i, loss in enumerate(losses):
            f.write(json.dumps({'step': 10 * (i + 1), 'train/loss': loss, 'train/accuracy': 1 - loss / 3,
                                'train/lr': lr * (i + 1), 'train/img_per_sec': 100.0}) + '\n')
        f.write(json.dumps({'step': 10 * len(losses), 'val/accuracy': 0.5, 'val/seconds': 1.0,
                            'val/note': 'text'}) + '\n')
        f.write('{"step": 5, "train/lo')  # A line being written.


def test_read_and_select(tmp_path):
    wd = str(tmp_path / 'run')
    _write_run(wd, [2.0, 1.0, 0.5])
    series = plot_metrics.read_metrics(wd)
    steps, values = series['train/loss']
    assert list(steps) == [10, 20, 30] and list(values) == [2.0, 1.0, 0.5]
    assert 'val/note' not in series
    names = plot_metrics.select_metrics(list(series))
    assert names == ['train/loss', 'train/accuracy', 'val/accuracy', 'train/lr']
    assert plot_metrics.select_metrics(list(series), 'loss') == ['train/loss']


def test_png_size_and_content_follow_the_metrics(tmp_path, capsys):
    a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
    _write_run(a, [2.0, 1.0, 0.5])
    _write_run(b, [2.0, 1.5, 1.4, 1.3])
    outs = {}
    for name, dirs in (('a', [a]), ('b', [b]), ('ab', [a, b])):
        out = str(tmp_path / f'{name}.png')
        assert plot_metrics.main(dirs + ['--out', out]) == 0
        outs[name] = np.asarray(Image.open(out).convert('RGB'))
    assert 'Wrote' in capsys.readouterr().out
    # 4 panels (loss, accuracy, val accuracy, lr), 3 per row: 2 rows of 4 x 3 inches at 100 dpi.
    assert outs['a'].shape == outs['b'].shape == (600, 1200, 3)
    assert np.abs(outs['a'].astype(int) - outs['b']).sum() > 1000
    assert not np.array_equal(outs['a'], outs['ab'])
    out = str(tmp_path / 'loss.png')
    assert plot_metrics.main([a, '--metrics', 'loss', '--out', out]) == 0
    assert np.asarray(Image.open(out)).shape[:2] == (300, 400)
    assert plot_metrics.main([str(tmp_path / 'nothing'), '--out', out]) == 2
    assert 'metrics.jsonl' in capsys.readouterr().err
    assert plot_metrics.main([a, '--metrics', 'nomatch', '--out', out]) == 2


def test_trainer_writes_curves_png(tmp_path, capsys):
    from vit_jax import config_utils, train

    c = config_utils.load(os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs', 'quickstart.py:tiny'))
    c.model.num_layers = 1
    c.total_steps = 4
    c.log_every = 2
    c.checkpoint_every = 0
    c.batch_size = 16
    c.evals = {}
    wd = str(tmp_path / 'run')
    train.train_and_evaluate(c, wd)
    assert f'Curves: {os.path.join(wd, "curves.png")}' in capsys.readouterr().out
    png = np.asarray(Image.open(os.path.join(wd, 'curves.png')))
    assert png.shape[0] >= 300 and png.shape[1] >= 400
