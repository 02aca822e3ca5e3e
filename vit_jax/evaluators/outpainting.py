"""Outpainting quality: PSNR, SSIM, FID and Inception Score (`type='outpainting'` in config.evals).

Figures (images mapped from the data value range to [0, 1] and clipped):
  psnr        mean over images of 10 log10(1 / MSE) on the full outpainted image (centre = input);
  psnr_outer  the same on the outer ring only (the generated pixels);
  l1_outer    mean |output - target| on the outer ring;
  ssim        mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, data range 1, per
              channel, over the valid window positions) on the full image;
  fid, is     FID between the generated and the ground-truth full images and the Inception Score of the generated
              ones (`is_splits` splits, default 10 as torch-fidelity, which the official evaluate.py calls), both
              from `vit_jax.models.inception.InceptionFeatures` with converted pytorch-fid weights. Without weights
              the network is a frozen random-init stand-in and the figures are named `fid_random_features` and
              `is_random_features`: never comparable with published FID / IS.

Config (one entry of config.evals):
    dict(type='outpainting', split='test', every=..., batch_size=None, max_examples=None,
         inception=dict(kind='inception', weights=None, variant='fid', resize=299, unbiased_logits=True,
                        is_splits=10),          # kind None: no FID / IS; 'tiny_random': a cheap test stand-in
         grid=8)                                # >0: write the first `grid` examples as a PNG under the workdir

Differences from the official protocol: pytorch-fid / torch-fidelity read 8-bit PNGs written from the outputs;
here the float outputs are used directly (no 8-bit quantisation), and resizing to 299 is PyTorch-style bilinear
(pytorch-fid's), not torch-fidelity's TF1-compatible resize.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import evaluators
from vit_jax.evaluators.base import Evaluator, to_host

log = logging.getLogger(__name__)

Array = jax.Array


# ----------------------------------------------------------------------------------------------------------------
# Metrics (pure functions, images in [0, 1], NHWC).
# ----------------------------------------------------------------------------------------------------------------
def mse_per_image(x: Array, y: Array, mask: Optional[Array] = None) -> Array:
    """Mean squared error per image [B] (over the pixels where `mask` [1|B, H, W, 1] is 1, and channels)."""
    err = (x - y) ** 2
    if mask is None:
        return jnp.mean(err, axis=(1, 2, 3))
    mask = jnp.broadcast_to(mask, x.shape[:3] + (1,))
    return jnp.sum(err * mask, axis=(1, 2, 3)) / (jnp.sum(mask, axis=(1, 2, 3)) * x.shape[-1])


def psnr(x: Array, y: Array, data_range: float = 1.0, mask: Optional[Array] = None) -> Array:
    """Peak signal-to-noise ratio per image [B]: 10 log10(data_range^2 / MSE) (inf for identical images)."""
    return 10.0 * jnp.log10(data_range ** 2 / mse_per_image(x, y, mask))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian of `size` taps."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(r ** 2) / (2.0 * sigma ** 2))
    return (g / g.sum()).astype(np.float32)


def _filter_valid(x: Array, window: np.ndarray) -> Array:
    """Separable 'valid' filtering of every channel of x [B, H, W, C] with the 1-D `window`."""
    c = x.shape[-1]
    k = len(window)
    wy = jnp.asarray(window.reshape(k, 1, 1, 1)) * jnp.ones((1, 1, 1, c))
    wx = jnp.asarray(window.reshape(1, k, 1, 1)) * jnp.ones((1, 1, 1, c))
    dn = ('NHWC', 'HWIO', 'NHWC')
    x = jax.lax.conv_general_dilated(x, wy, (1, 1), 'VALID', dimension_numbers=dn, feature_group_count=c,
                                     precision=jax.lax.Precision.HIGHEST)
    return jax.lax.conv_general_dilated(x, wx, (1, 1), 'VALID', dimension_numbers=dn, feature_group_count=c,
                                        precision=jax.lax.Precision.HIGHEST)


def ssim(x: Array, y: Array, data_range: float = 1.0, *, window_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> Array:
    """Structural similarity per image [B] (Wang et al. 2004), averaged over channels and valid windows.

    SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)) with Gaussian-weighted
    local statistics (population covariances), C1 = (k1 L)^2, C2 = (k2 L)^2. Equal to skimage's
    `structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=L,
    channel_axis=-1)`, which averages over the same valid positions.
    """
    w = gaussian_window(window_size, sigma)
    x = x.astype(jnp.float32)
    y = y.astype(jnp.float32)
    mx, my = _filter_valid(x, w), _filter_valid(y, w)
    # (Co)variances are shift-invariant: compute them on per-image centred values (less float32 cancellation).
    xc = x - jnp.mean(x, axis=(1, 2), keepdims=True)
    yc = y - jnp.mean(y, axis=(1, 2), keepdims=True)
    mxc, myc = _filter_valid(xc, w), _filter_valid(yc, w)
    sxx = _filter_valid(xc * xc, w) - mxc * mxc
    syy = _filter_valid(yc * yc, w) - myc * myc
    sxy = _filter_valid(xc * yc, w) - mxc * myc
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return jnp.mean(s, axis=(1, 2, 3))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (the FID formula; pytorch-fid's numerics).

    When the product is near-singular (too few samples for the feature dimension) `eps` is added to both
    diagonals before the square root; an imaginary part from round-off is dropped.
    """
    import warnings

    import scipy.linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    diff = mu1 - mu2
    with warnings.catch_warnings():  # Singular products (few samples) are expected; handled below.
        warnings.simplefilter('ignore')
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID between two feature sets [N, D] (means and unbiased covariances, as pytorch-fid)."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    return frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `splits` of exp(E_x KL(p(y|x) || p(y))), p(y|x) = softmax(logits)."""
    logits = np.asarray(logits, np.float64)
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    n = len(p)
    splits = max(1, min(int(splits), n))
    scores = []
    for k in range(splits):
        part = p[k * n // splits:(k + 1) * n // splits]
        py = part.mean(axis=0, keepdims=True)
        kl = np.sum(part * (np.log(np.maximum(part, 1e-30)) - np.log(np.maximum(py, 1e-30))), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------------------------------------------
# Feature networks behind the InceptionFeatures interface: net(images01) -> (pool [B, D], logits [B, K]).
# ----------------------------------------------------------------------------------------------------------------
class _TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i, c in enumerate((16, 32, 64)):
            x = nn.relu(nn.Conv(c, (3, 3), strides=(2, 2), name=f'conv_{i}')(x))
        pool = jnp.mean(x, axis=(1, 2))
        return pool, nn.Dense(10, name='fc')(pool)


class TinyRandomFeatures:
    """A cheap frozen random CNN with the InceptionFeatures interface, for tests (always `frozen_random`)."""

    frozen_random = True

    def __init__(self, seed: int = 0, **_):
        self.model = _TinyCNN()
        self.variables = self.model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3)))
        self._fn = jax.jit(self.model.apply)

    def __call__(self, images01: Array) -> tuple[Array, Array]:
        return self._fn(self.variables, 2.0 * images01 - 1.0)


def build_feature_net(cfg: Any) -> Any:
    """The FID / IS feature network of an evaluator config's `inception` entry (None when disabled)."""
    if cfg is None:
        return None
    kind = cfg.get('kind', 'inception')
    if kind is None or kind == 'none':
        return None
    if kind == 'tiny_random':
        return TinyRandomFeatures(seed=int(cfg.get('seed', 0) or 0))
    if kind == 'inception':
        from vit_jax.models.inception import InceptionFeatures

        return InceptionFeatures(cfg.get('weights', None), variant=cfg.get('variant', 'fid') or 'fid',
                                 resize=int(cfg.get('resize', 299) or 299),
                                 unbiased_logits=bool(cfg.get('unbiased_logits', True)),
                                 seed=int(cfg.get('seed', 0) or 0))
    raise ValueError(f"evals.*.inception.kind must be 'inception', 'tiny_random' or None, got {kind!r}.")


# ----------------------------------------------------------------------------------------------------------------
# The evaluator.
# ----------------------------------------------------------------------------------------------------------------
@evaluators.register('outpainting')
class OutpaintingEvaluator(Evaluator):
    """PSNR / SSIM / FID / IS of an outpainting model over a split (see the module docstring)."""

    def __init__(self, name: str, cfg: Any, ctx: Any):
        super().__init__(name, cfg, ctx)
        self.lo, self.hi = self.data.value_range  # The pipeline's (outpaint_samples: (0, 1)).
        self.max_examples = cfg.get('max_examples', None)
        icfg = cfg.get('inception', dict(kind='inception'))
        self.icfg = icfg
        self.features = build_feature_net(icfg)
        self.is_splits = int((icfg or {}).get('is_splits', 10) or 10)
        self.grid = int(cfg.get('grid', 8) or 0)

    @functools.cached_property
    def _step(self):
        objective = self.ctx.objective
        outer = jnp.asarray(objective.model.outer_pixel_mask())
        lo, hi = self.lo, self.hi

        @jax.jit
        def step(state, batch):
            out = objective.predict(state, batch)['outpainted']
            x = jnp.clip((out - lo) / (hi - lo), 0.0, 1.0)
            y = jnp.clip((batch['target'] - lo) / (hi - lo), 0.0, 1.0)
            return {'x': x, 'y': y, 'psnr': psnr(x, y), 'psnr_outer': psnr(x, y, mask=outer),
                    'l1_outer': jnp.sum(jnp.abs(x - y) * outer, axis=(1, 2, 3)) / (jnp.sum(outer) * x.shape[-1]),
                    'ssim': ssim(x, y)}

        return step

    def run(self, state: Any) -> dict[str, float]:
        sums: dict[str, float] = {}
        count = 0
        feats_fake, feats_real, logits_fake = [], [], []
        first = None
        for batch in self.batches():
            m = self._step(state, batch)
            mask = to_host(batch['mask']).astype(bool)
            if self.max_examples is not None:
                room = int(self.max_examples) - count
                if room <= 0:
                    break
                keep = np.cumsum(mask) <= room
                mask = mask & keep
            host = {k: to_host(m[k]) for k in ('psnr', 'psnr_outer', 'l1_outer', 'ssim')}
            for k, v in host.items():
                sums[k] = sums.get(k, 0.0) + float(np.sum(np.where(mask, v, 0.0)))
            count += int(mask.sum())
            if self.features is not None or (self.grid and first is None):
                x, y = to_host(m['x'])[mask], to_host(m['y'])[mask]
                if self.grid and first is None and len(x):
                    first = (to_host(batch['image'])[mask][:self.grid], x[:self.grid], y[:self.grid])
                if self.features is not None and len(x):
                    pf, lf = self.features(jnp.asarray(x))
                    pr, _ = self.features(jnp.asarray(y))
                    feats_fake.append(np.asarray(pf))
                    feats_real.append(np.asarray(pr))
                    logits_fake.append(np.asarray(lf))
        n = max(count, 1)
        results = {k: v / n for k, v in sums.items()}
        results['num_examples'] = count
        if self.features is not None and count >= 2:
            suffix = '_random_features' if self.features.frozen_random else ''
            results['fid' + suffix] = fid_from_features(np.concatenate(feats_fake), np.concatenate(feats_real))
            mean, std = inception_score(np.concatenate(logits_fake), self.is_splits)
            results['is' + suffix] = mean
            results['is_std' + suffix] = std
        if first is not None and self.ctx.workdir and jax.process_index() == 0:
            from vit_jax.tools import outpaint_grid

            inputs = np.clip((first[0] - self.lo) / (self.hi - self.lo), 0.0, 1.0)
            step = int(jax.device_get(state.step))
            path = os.path.join(self.ctx.workdir, f'outpaint_{self.name}_{step:07d}.png')
            outpaint_grid.write_grid(path, inputs, first[1], first[2])
        return results
