"""vit_jax.predict: top-5 labels for image files of any size and mode, clear errors for non-images."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vit_jax import checkpoint, config_utils, data, models, predict, train
from vit_jax.objectives.base import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(image_size=16):
    c = config_utils.load(os.path.join(REPO, 'configs', 'quickstart.py'))
    c.model = dict(name='ViT-testing', num_classes=10, image_size=image_size, patch_size=4, hidden_size=32,
                   mlp_dim=64, num_heads=2, num_layers=1)
    return c


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('predict')
    config = _config()
    model = train.build_model(config)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))['params']
    # Random weights give near-uniform probabilities; sharpen the head so the ranking is clear.
    params = jax.tree_util.tree_map(np.asarray, params)
    params['head']['kernel'] = np.random.RandomState(0).normal(0, 3.0, params['head']['kernel'].shape).astype(
        np.float32)
    npz = str(tmp / 'model.npz')
    checkpoint.save_npz(npz, params)
    with open(tmp / 'config.json', 'w') as f:
        f.write(config.to_json_best_effort(indent=2))
    # A run workdir as the trainer leaves it: config.json + an Orbax checkpoint (with EMA weights).
    wd = tmp / 'run'
    wd.mkdir()
    with open(wd / 'config.json', 'w') as f:
        f.write(config.to_json_best_effort(indent=2))
    state = TrainState(step=jnp.asarray(5), params=params, opt_state={}, model_state={}, rng=jax.random.PRNGKey(1),
                       ema_params=params)
    mngr = checkpoint.Manager(str(wd))
    mngr.save(5, state, force=True)
    mngr.close()
    # Images of several sizes and modes, and files that are not images.
    imgs = tmp / 'imgs'
    imgs.mkdir()
    rs = np.random.RandomState(1)
    Image.fromarray(rs.randint(0, 255, (50, 70, 3), np.uint8)).save(imgs / 'rgb.jpg')
    Image.fromarray(rs.randint(0, 255, (13, 9), np.uint8), 'L').save(imgs / 'gray.png')
    Image.fromarray(rs.randint(0, 255, (40, 40, 4), np.uint8), 'RGBA').save(imgs / 'rgba.png')
    Image.fromarray(rs.randint(0, 255, (20, 30, 3), np.uint8)).convert('P').save(imgs / 'palette.gif')
    Image.fromarray(rs.randint(0, 65535, (17, 23), np.uint16)).save(imgs / 'gray16.png')
    Image.fromarray(rs.randint(0, 255, (300, 20, 3), np.uint8)).save(imgs / 'tall.bmp')
    (imgs / 'notes.txt').write_text('not an image')
    (imgs / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated jpeg')
    digits_image = data.datasets.digits_arrays()['test'][0][0]  # uint8 [32, 32, 3]
    Image.fromarray(digits_image).save(imgs / 'digit.png')
    return dict(tmp=tmp, npz=npz, config_json=str(tmp / 'config.json'), workdir=str(wd), imgs=imgs, model=model,
                params=params, config=config, digit=digits_image)


def _parse(text):
    """{image: [(prob, label), ...]} from the text output."""
    out, cur = {}, None
    for line in text.splitlines():
        if line.endswith(':') and not line.startswith(' '):
            cur = line[:-1]
            out[cur] = []
        elif line.startswith('  '):
            p, label = line.split()
            out[cur].append((float(p), label))
    return out


def test_predict_images_of_any_size_and_mode(setup, capsys):
    imgs = setup['imgs']
    names = ['rgb.jpg', 'gray.png', 'rgba.png', 'palette.gif', 'gray16.png', 'tall.bmp']
    rc = predict.main(['--checkpoint', setup['npz'], '--config', setup['config_json']] + [str(imgs / n) for n in names])
    assert rc == 0
    res = _parse(capsys.readouterr().out)
    assert sorted(res) == sorted(str(imgs / n) for n in names)
    for rows in res.values():
        probs = [p for p, _ in rows]
        assert len(rows) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        assert all(label in [str(i) for i in range(10)] for _, label in rows)  # The digits' class names.


def test_predict_matches_the_eval_pipeline(setup):
    """A digits test image saved as PNG gets exactly the probabilities of the evaluation input pipeline."""
    predictor = predict.Predictor(setup['config'], setup['npz'])
    probs = predictor([predict.read_image(str(setup['imgs'] / 'digit.png'))])[0]
    ds = data.get_dataset('digits', 'test', data_config=setup['config'].data, batch_size=4, image_size=16,
                          train=False)
    batch = next(iter(ds))
    logits, _ = setup['model'].apply({'params': setup['params']}, jnp.asarray(batch['image'][:1]))
    np.testing.assert_allclose(probs, np.asarray(jax.nn.softmax(logits[0])), atol=1e-6)


def test_non_images_are_reported_and_skipped(setup, capsys):
    imgs = setup['imgs']
    rc = predict.main(['--checkpoint', setup['npz'], '--config', setup['config_json'], str(imgs / 'notes.txt'),
                       str(imgs / 'rgb.jpg'), str(imgs / 'broken.jpg'), str(imgs / 'missing.png'), str(imgs)])
    captured = capsys.readouterr()
    assert rc == 1
    assert f'{imgs / "notes.txt"} is not an image' in captured.err
    assert f'{imgs / "broken.jpg"} is not an image' in captured.err
    assert 'missing.png: no such file' in captured.err
    assert 'is a directory' in captured.err
    assert list(_parse(captured.out)) == [str(imgs / 'rgb.jpg')]


def test_workdir_checkpoint_config_json_labels_and_json_output(setup, capsys, tmp_path):
    labels = tmp_path / 'labels.txt'
    labels.write_text('\n'.join(f'digit_{i}' for i in range(10)) + '\n')
    img = str(setup['imgs'] / 'rgb.jpg')
    assert predict.main(['--checkpoint', setup['workdir'], '--labels', str(labels), '--json', '--top_k', '3',
                         img]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row['image'] == img and len(row['top_k']) == 3
    assert all(r['label'] == f'digit_{r["index"]}' for r in row['top_k'])
    # The same weights from the .npz give the same probabilities.
    assert predict.main(['--checkpoint', setup['npz'], '--config', setup['config_json'], '--json', img]) == 0
    row2 = json.loads(capsys.readouterr().out.strip())
    assert row2['top_k'][0]['index'] == row['top_k'][0]['index']
    np.testing.assert_allclose(row2['top_k'][0]['probability'], row['top_k'][0]['probability'], atol=1e-6)


def test_resolution_override_resamples_position_embeddings(setup, capsys):
    img = str(setup['imgs'] / 'rgb.jpg')
    assert predict.main(['--checkpoint', setup['npz'], '--config', setup['config_json'],
                         '--config.model.image_size=24', img]) == 0
    assert len(_parse(capsys.readouterr().out)[img]) == 5


def test_errors(setup, capsys, tmp_path):
    img = str(setup['imgs'] / 'rgb.jpg')
    assert predict.main(['--checkpoint', setup['npz'], img]) == 2
    assert 'pass the config' in capsys.readouterr().err
    bad_labels = tmp_path / 'l.txt'
    bad_labels.write_text('a\nb\n')
    assert predict.main(['--checkpoint', setup['npz'], '--config', setup['config_json'], '--labels',
                         str(bad_labels), img]) == 2
    assert 'has 2 labels but the model has 10 classes' in capsys.readouterr().err
    assert predict.main(['--checkpoint', str(tmp_path / 'nowhere'), img]) == 2
    assert 'No checkpoint' in capsys.readouterr().err
    assert predict.main(['--checkpoint', setup['npz'], '--config', setup['config_json'],
                         '--config.model.num_layers=3', img]) == 2
    assert 'missing in the checkpoint' in capsys.readouterr().err


def test_command_line(setup):
    """`python -m vit_jax.predict` as a user runs it."""
    imgs = setup['imgs']
    proc = subprocess.run([sys.executable, '-m', 'vit_jax.predict', '--checkpoint', setup['workdir'],
                           str(imgs / 'gray.png'), str(imgs / 'notes.txt')], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert 'notes.txt is not an image' in proc.stderr
    res = _parse(proc.stdout)
    assert len(res[str(imgs / 'gray.png')]) == 5
    assert models  # Imported for the registry.


def test_more_errors(setup, capsys, tmp_path):
    img = str(setup['imgs'] / 'rgb.jpg')
    # A features-only model (no head).
    assert predict.main(['--checkpoint', setup['npz'], '--config', setup['config_json'],
                         '--config.model.num_classes=0', img]) == 2
    assert 'no classification head' in capsys.readouterr().err
    # A BatchNorm model needs its statistics, which a .npz of params does not hold.
    config = _config()
    config.model = dict(name='ViTC-1GF', num_classes=10, image_size=16, conv_channels=(8, 16, 32, 32),
                        hidden_size=32, mlp_dim=64, num_heads=2, num_layers=1)
    model = train.build_model(config)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))['params']
    checkpoint.save_npz(str(tmp_path / 'bn.npz'), params)
    with pytest.raises(ValueError, match='batch_stats'):
        predict.Predictor(config, str(tmp_path / 'bn.npz'))
    # A workdir without config.json.
    wd = tmp_path / 'noconfig'
    mngr = checkpoint.Manager(str(wd))
    mngr.save(1, TrainState(step=jnp.asarray(1), params=setup['params'], opt_state={}, model_state={},
                            rng=jax.random.PRNGKey(0)), force=True)
    mngr.close()
    assert predict.main(['--checkpoint', str(wd), img]) == 2
    assert 'No config.json' in capsys.readouterr().err


def test_predict_streams_batches_instead_of_keeping_every_image(setup, capsys, monkeypatch):
    """Files are read, predicted and printed batch by batch: at most --batch_size preprocessed images are held."""
    imgs = [str(setup['imgs'] / n) for n in ('rgb.jpg', 'gray.png', 'rgba.png', 'palette.gif', 'gray16.png',
                                             'tall.bmp', 'digit.png', 'notes.txt', 'rgb.jpg', 'gray.png')]
    events = []
    read_image, predict_inputs = predict.read_image, predict.Predictor.predict_inputs
    monkeypatch.setattr(predict, 'read_image', lambda p, **kw: (events.append('read'), read_image(p, **kw))[1])

    def counting(self, inputs, *a, **kw):
        events.append(len(inputs))
        return predict_inputs(self, inputs, *a, **kw)

    monkeypatch.setattr(predict.Predictor, 'predict_inputs', counting)
    rc = predict.main(['--checkpoint', setup['npz'], '--config', setup['config_json'], '--batch_size', '4'] + imgs)
    out = capsys.readouterr()
    assert rc == 1 and 'notes.txt is not an image' in out.err
    assert events == ['read'] * 4 + [4] + ['read'] * 5 + [4] + ['read'] + [1]  # notes.txt (8th) is not held.
    assert len(out.out.splitlines()) == 9 * 6  # Every readable file printed (a name line + 5 labels), in order.
    assert [line[:-1] for line in out.out.splitlines() if line.endswith(':')] == [p for p in imgs if 'notes' not in p]


def test_predict_names_permission_errors(setup, capsys, monkeypatch):
    # Tests run as root here (chmod cannot lock a file), so opening the file raises as it would for a user.
    locked = str(setup['imgs'] / 'rgb.jpg')
    import builtins

    real_open = builtins.open

    def fake_open(file, *a, **kw):
        if isinstance(file, (str, bytes, os.PathLike)) and os.fsdecode(file) == locked:
            raise PermissionError(13, 'Permission denied', locked)
        return real_open(file, *a, **kw)

    monkeypatch.setattr(builtins, 'open', fake_open)
    rc = predict.main(['--checkpoint', setup['npz'], '--config', setup['config_json'], locked,
                       str(setup['imgs'] / 'gray.png')])
    err = capsys.readouterr().err
    assert rc == 1
    assert f'{locked}: permission denied' in err and 'unrecognised' not in err and 'not an image' not in err
