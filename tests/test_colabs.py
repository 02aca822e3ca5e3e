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
    for cell in nb.cells:  # The stored notebooks hold their outputs (see test_stored_notebooks_are_executed).
        if cell.cell_type == 'code':
            cell.outputs, cell.execution_count = [], None
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


def _generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location('make_colabs', os.path.join(COLABS, 'make_colabs.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('name', FAST + SLOW)
def test_stored_notebooks_are_executed(name):
    """Each stored notebook is colabs/make_colabs.py's source, executed (`make_colabs.py --execute`): every code cell
    ran, in order, and the figures are there for a reader on GitHub; no stderr noise or local absolute paths."""
    make = _generator()
    stored = nbformat.read(os.path.join(COLABS, name), as_version=4)
    fresh = make.build(make.NOTEBOOKS[name], name)
    assert [c.source for c in stored.cells] == [c.source for c in fresh.cells], (
        f'{name} differs from colabs/make_colabs.py: run python colabs/make_colabs.py --execute {name}')
    code = [c for c in stored.cells if c.cell_type == 'code']
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), f'{name} is not executed in order'
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == 'error'], f'{name} stored with an error'
    assert any('image/png' in o.get('data', {}) for o in outputs), f'{name} stored without a figure'
    text = ''.join(o.get('text', '') for o in outputs)
    assert not [o for o in outputs if o.get('name') == 'stderr'] and REPO not in text
