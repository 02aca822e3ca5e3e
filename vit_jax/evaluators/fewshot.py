"""Few-shot linear evaluation (the ViT paper's "few-shot accuracy"; big_vision's `fewshot_lsr`).

Frozen features (by default `out['pre_logits']`) of a train split and a test split are computed once per run. For
each seed and each shot count k, k examples per class are drawn from the train split; the features are standardised
with the statistics of those examples, a constant bias feature is appended, and a regularised least-squares
regression onto {-1, 1} one-hot targets is solved in closed form:

    W = (X^T X + l2 I)^-1 X^T Y        (or X^T (X X^T + l2 I)^-1 Y when there are fewer examples than features)

The test accuracy of argmax(X_test W), averaged over seeds, is reported as `<dataset>_<k>shot`.

    config.evals.fewshot = dict(type='fewshot', every=1000, shots=(1, 5, 10, 25), l2_reg=2.0 ** 10, seeds=3,
                                datasets={'digits': dict(dataset='digits', train_split='train', test_split='test')})

Any dataset the pipeline reads works ('digits', 'folder:/path', TFDS names); without `datasets` the training
dataset is used. Preprocessing is the run's evaluation preprocessing (`config.data.eval_pp`), overridable per
dataset with `data=dict(...)`. `FEWSHOT_DATASETS` lists the datasets of the ViT paper's few-shot figures.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import numpy as np

from vit_jax import evaluators, sharding
from vit_jax.evaluators.base import Evaluator, to_host

BIAS_CONSTANT = 100.0  # The appended bias feature: large, so its weight is almost unregularised (as big_vision).
DEFAULT_L2_REG = 2.0**10  # big_vision's default regularisation for fewshot_lsr.

# The ViT paper's few-shot datasets (Fig. 2/3/5, App. D): name -> (TFDS name, train split, test split).
FEWSHOT_DATASETS = {
    'imagenet': ('imagenet2012', 'train', 'validation'),
    'cifar10': ('cifar10', 'train', 'test'),
    'cifar100': ('cifar100', 'train', 'test'),
    'pets': ('oxford_iiit_pet', 'train', 'test'),
    'flowers': ('oxford_flowers102', 'train', 'test'),
    'caltech': ('caltech101', 'train', 'test'),
}


def fit_least_squares(x: np.ndarray, y: np.ndarray, num_classes: int, l2_reg: float) -> dict[str, np.ndarray]:
    """Closed-form L2-regularised least squares from features `x` [N, D] to {-1, 1} one-hot targets of labels `y`.

    Returns {'w': [D + 1, C], 'mean': [1, D], 'std': [1, D]}: standardisation statistics and weights (the last row
    multiplies the constant bias feature).
    """
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0, keepdims=True)
    std = x.std(axis=0, keepdims=True) + 1e-5
    xs = np.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)
    targets = 2.0 * np.eye(num_classes)[np.asarray(y, np.int64)] - 1.0
    n, d = xs.shape
    if n >= d:
        w = np.linalg.solve(xs.T @ xs + l2_reg * np.eye(d), xs.T @ targets)
    else:  # Fewer examples than features: the dual form, an N x N system.
        w = xs.T @ np.linalg.solve(xs @ xs.T + l2_reg * np.eye(n), targets)
    return {'w': w, 'mean': mean, 'std': std}


def predict_least_squares(fit: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Class predictions [N] of a `fit_least_squares` model."""
    xs = (np.asarray(x, np.float64) - fit['mean']) / fit['std']
    xs = np.pad(xs, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)
    return np.argmax(xs @ fit['w'], axis=1)


def sample_shots(labels: np.ndarray, shots: int, num_classes: int, seed: int) -> np.ndarray:
    """Indices of `shots` examples per class (all of a class's examples if it has fewer), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in range(num_classes)]
    return np.concatenate(idx).astype(np.int64) if idx else np.zeros((0,), np.int64)


def fewshot_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                     shots: Sequence[int] = (1, 5, 10, 25), num_classes: int | None = None,
                     l2_reg: float = DEFAULT_L2_REG, seeds: int = 3) -> dict[int, float]:
    """{k: test accuracy averaged over `seeds`} of the k-shot least-squares classifier on given features."""
    num_classes = int(num_classes or max(int(np.max(train_y)), int(np.max(test_y))) + 1)
    results = {}
    for k in shots:
        accs = []
        for seed in range(seeds):
            idx = sample_shots(train_y, int(k), num_classes, seed)
            fit = fit_least_squares(train_x[idx], train_y[idx], num_classes, l2_reg)
            accs.append(float(np.mean(predict_least_squares(fit, test_x) == test_y)))
        results[int(k)] = float(np.mean(accs))
    return results


@evaluators.register('fewshot')
class FewShot(Evaluator):
    """Config: shots, l2_reg, seeds, representation ('pre_logits'), batch_size, every, and `datasets`:
    {name: dict(dataset=..., train_split='train', test_split='test', data=None)} (default: the training dataset)."""

    def __init__(self, name: str, cfg: Any, ctx: Any):
        super().__init__(name, cfg, ctx)
        self.shots = tuple(int(k) for k in cfg.get('shots', (1, 5, 10, 25)))
        if not self.shots or min(self.shots) < 1:
            raise ValueError(f'config.evals.{name}.shots must be positive integers, got {self.shots}.')
        self.l2_reg = float(cfg.get('l2_reg', DEFAULT_L2_REG))
        self.seeds = int(cfg.get('seeds', 3))
        self.representation = cfg.get('representation', 'pre_logits')
        datasets = cfg.get('datasets', None)
        if not datasets:
            datasets = {self.data.dataset.split(':')[0].split('/')[0]: dict(dataset=self.data.dataset)}
        self.datasets = {}
        for ds_name, spec in dict(datasets).items():
            if isinstance(spec, str):
                spec = dict(dataset=spec)
            elif isinstance(spec, (tuple, list)):
                spec = dict(zip(('dataset', 'train_split', 'test_split'), spec))
            spec = dict(spec)
            unknown = set(spec) - {'dataset', 'train_split', 'test_split', 'data'}
            if unknown:
                raise ValueError(f'config.evals.{name}.datasets.{ds_name} has unknown keys {sorted(unknown)}; use '
                                 'dataset, train_split, test_split, data.')
            spec.setdefault('dataset', self.data.dataset)
            spec.setdefault('train_split', 'train')
            spec.setdefault('test_split', 'test')
            self.datasets[str(ds_name)] = spec

    @functools.cached_property
    def _features(self):
        model, rep = self.ctx.model, self.representation

        @jax.jit
        def features(params, model_state, images):
            _, out = model.apply({'params': params, **model_state}, images, train=False)
            if rep not in out:
                raise KeyError(f'The model outputs no {rep!r}; config.evals.fewshot.representation must be one of '
                               f'{sorted(out)}.')
            x = out[rep]
            return x.reshape(x.shape[0], -1)

        return features

    def data_specs(self) -> list[dict]:
        return [dict(split=spec[k], dataset=spec['dataset'], data_config=spec.get('data', None))
                for spec in self.datasets.values() for k in ('train_split', 'test_split')]

    def _extract(self, state: Any, spec: dict, split: str) -> tuple[np.ndarray, np.ndarray, int]:
        ds = self.dataset(split, dataset=spec['dataset'], data_config=spec.get('data', None) or {})
        params = self.ctx.objective.eval_params(state)
        feats, labels = [], []
        for batch in ds:
            g = sharding.to_global(batch, self.ctx.mesh)
            x = to_host(self._features(params, state.model_state, g['image']))
            mask = to_host(g['mask']).astype(bool)  # Global (all processes), in the order of the features.
            feats.append(x[mask])
            labels.append(to_host(g['label'])[mask])
        return np.concatenate(feats), np.concatenate(labels), int(ds.num_classes)

    def run(self, state: Any) -> dict[str, float]:
        results = {}
        for ds_name, spec in self.datasets.items():
            train_x, train_y, num_classes = self._extract(state, spec, spec['train_split'])
            test_x, test_y, _ = self._extract(state, spec, spec['test_split'])
            accs = fewshot_accuracy(train_x, train_y, test_x, test_y, shots=self.shots, num_classes=num_classes,
                                    l2_reg=self.l2_reg, seeds=self.seeds)
            for k, acc in accs.items():
                results[f'{ds_name}_{k}shot'] = acc
        return results
