"""Shared test set-up: the repository root is importable (configs/ and experiments/ are packages), and the helpers
several modules use (tests/_helpers.py) are fixtures, so that no test module imports another."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # `from configs import common`, `from experiments.vtab1k import config` (plain `pytest`).

import _helpers  # noqa: E402  (tests/ is on sys.path: pytest puts a conftest's folder there.)


@pytest.fixture
def tiny_config():
    """`tiny_config(steps=120)`: the quickstart ViT shrunk to train in seconds on the digits."""
    return _helpers.tiny_config


@pytest.fixture
def run_worker():
    """`run_worker(out, jobs, devices=1, distributed=None, wait=True)`: tests/scale_worker.py in a subprocess."""
    return _helpers.run_worker


@pytest.fixture
def torch_dtn():
    """DTN restated in PyTorch after the official code (skips the test when torch is missing)."""
    pytest.importorskip('torch')
    return _helpers.torch_dtn
