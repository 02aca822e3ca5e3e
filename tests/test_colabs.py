"""The notebooks in colabs/ run top to bottom (headless, nbclient) with the smoke settings (VIT_JAX_COLAB_SMOKE=1)."""

import os
import sys

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(REPO, 'colabs')
FAST = ['tour.ipynb']
SLOW = ['model_zoo.ipynb', 'finetune_own_images.ipynb', 'robustness.ipynb', 'dense_prediction.ipynb']


def _run(name, tmp_path, monkeypatch):
    monkeypatch.setenv('VIT_JAX_COLAB_SMOKE', '1')
    monkeypatch.setenv('VIT_JAX_COLAB_WORKDIR', str(tmp_path))
    monkeypatch.setenv('MPLBACKEND', 'Agg')
    # The kernelspec runs `python`; jupyter_client substitutes sys.executable for it, so the kernel is this venv's.
    monkeypatch.setenv('PATH', os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''))
    nb = nbformat.read(os.path.join(COLABS, name), as_version=4)
    assert not any(c.get('outputs') for c in nb.cells if c.cell_type == 'code'), f'{name}: commit without outputs'
    nb.cells.insert(0, nbformat.v4.new_code_cell('import sys; print(sys.executable)'))
    client = nbclient.NotebookClient(nb, kernel_name='python3', timeout=600, resources={'metadata': {'path': REPO}})
    client.execute()
    if os.environ.get('VIT_JAX_COLAB_SAVE'):  # Keep the executed notebook (with its pictures) for inspection.
        os.makedirs(os.environ['VIT_JAX_COLAB_SAVE'], exist_ok=True)
        nbformat.write(nb, os.path.join(os.environ['VIT_JAX_COLAB_SAVE'], name))
    assert nb.cells[0].outputs[0]['text'].strip() == sys.executable
    images = sum(1 for c in nb.cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {}))
    return nb, images


@pytest.mark.parametrize('name', FAST)
def test_notebook_runs(name, tmp_path, monkeypatch):
    _, images = _run(name, tmp_path, monkeypatch)
    assert images >= 1, f'{name} drew no picture'


@pytest.mark.slow
@pytest.mark.parametrize('name', SLOW)
def test_notebook_runs_slow(name, tmp_path, monkeypatch):
    _, images = _run(name, tmp_path, monkeypatch)
    assert images >= 1, f'{name} drew no picture'


def test_every_notebook_is_tested():
    assert sorted(f for f in os.listdir(COLABS) if f.endswith('.ipynb')) == sorted(FAST + SLOW)
