"""Robustness evaluators: adversarial accuracy, occlusion (PatchDrop), patch shuffle, corrupted benchmarks (mCE),
off-the-shelf feature ensembles and the perturbation-semantics score.

    config.evals = dict(
        pgd=dict(type='adversarial', attack='pgd', eps=(1 / 255, 2 / 255, 4 / 255), num_steps=10),
        drop=dict(type='patchdrop', mode='random'),              # also 'salient' / 'non_salient'
        shuffle=dict(type='patch_shuffle'),
        c10c=dict(type='corruption', dataset='cifar10_corrupted'),
        ens=dict(type='feature_ensemble', num_blocks=(1, 4)),
        sem=dict(type='perturbation_semantics', judge=dict(model=dict(name=...), checkpoint='path')),
    )

Protocols ("Intriguing Properties of Vision Transformers", Naseer et al. 2021, official `evaluate.py`):
- Occlusion and shuffling act on pixels before normalisation: a dropped cell is black (value_range[0]).
- Random PatchDrop: the image is a grid of cells aligned with the patches (14 x 14 at 224 px / patch 16); for
  k = 0..9 it drops floor(k * N / 10) cells, ONE random cell set per batch (shared by its images).
- Salient / non-salient PatchDrop: class-token attention of the last block (a head, or the heads' mean) over the
  patches, per image; sorted ascending, normalised, cumulated; the patches whose cumulative mass exceeds 1 - lambda
  (the smallest set of top patches holding a fraction lambda of the mass) are "salient". 'salient' drops them
  (foreground removal), 'non_salient' keeps only them (background removal); lambda = 0.1 .. 1.0. Saliency comes
  from the evaluated model or from another model (`saliency=dict(model=..., checkpoint=...)`; the paper uses
  DINO ViT-S/16, head 1).
- Patch shuffle: the image cut into an (h, w) grid of cells permuted by one random permutation per batch, at the
  paper's grids (2x2, 2x4, 4x4, 4x8, 8x8, 14x14, 16x16) that divide the image.

Every evaluator returns its curve as figures (e.g. 'accuracy_50') and writes it as JSON and as a PNG plot under
`<workdir>/robustness/` (or `out_dir` of its config), named `<eval name>_step<step>`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from vit_jax import attacks, evaluators
from vit_jax.evaluators.base import Evaluator, to_host

# The 15 ImageNet-C / CIFAR-10-C corruptions of the mCE (Hendrycks & Dietterich, 2019) and the 4 held-out extras.
CORRUPTIONS = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur', 'motion_blur',
               'zoom_blur', 'snow', 'frost', 'fog', 'brightness', 'contrast', 'elastic_transform', 'pixelate',
               'jpeg_compression')
EXTRA_CORRUPTIONS = ('gaussian_blur', 'saturate', 'spatter', 'speckle_noise')
# AlexNet's top-1 error on each ImageNet-C corruption, averaged over the 5 severities (hendrycks/robustness); the
# mCE divides a model's errors by these.
ALEXNET_ERRORS = {
    'gaussian_noise': 0.886428, 'shot_noise': 0.894468, 'impulse_noise': 0.922640, 'defocus_blur': 0.819880,
    'glass_blur': 0.826268, 'motion_blur': 0.785948, 'zoom_blur': 0.798360, 'snow': 0.866816, 'frost': 0.826572,
    'fog': 0.819324, 'brightness': 0.564592, 'contrast': 0.853204, 'elastic_transform': 0.646056,
    'pixelate': 0.717840, 'jpeg_compression': 0.606500,
}
SHUFFLE_GRIDS = ((2, 2), (2, 4), (4, 4), (4, 8), (8, 8), (14, 14), (16, 16))


# ----------------------------------------------------------------------------------------------------------------
# Image operations (pure functions; tests and notebooks use them directly).
# ----------------------------------------------------------------------------------------------------------------
def upsample_cells(cell_mask: jax.Array, image_hw: Sequence[int]) -> jax.Array:
    """A [..., gh, gw] cell mask repeated to [..., H, W] pixels (H, W multiples of gh, gw)."""
    gh, gw = cell_mask.shape[-2:]
    h, w = image_hw
    if h % gh or w % gw:
        raise ValueError(f'A {gh}x{gw} cell grid does not divide the image {h}x{w}.')
    return jnp.repeat(jnp.repeat(cell_mask, h // gh, axis=-2), w // gw, axis=-1)


def drop_cells(images: jax.Array, drop: jax.Array, fill: float | Sequence[float]) -> jax.Array:
    """Sets the pixels of dropped cells to `fill` (a value, or one per channel); `drop` is a bool [gh, gw] (whole
    batch) or [B, gh, gw] grid."""
    pix = upsample_cells(drop, images.shape[1:3])
    pix = pix[None, ..., None] if pix.ndim == 2 else pix[..., None]
    return jnp.where(pix, jnp.asarray(fill, images.dtype), images)


def random_drop_mask(rng: jax.Array, grid: Sequence[int], num_drop: int) -> jax.Array:
    """A bool [gh, gw] grid with exactly `num_drop` random cells set."""
    n = grid[0] * grid[1]
    order = jax.random.permutation(rng, n)
    return (jnp.zeros((n,), bool).at[order[:num_drop]].set(True)).reshape(grid)


def salient_mask(attention: jax.Array, mass: float) -> jax.Array:
    """The paper's saliency rule on a [B, N] attention map: True for the smallest set of top patches holding a
    fraction `mass` of the (normalised) attention, i.e. cumulative mass of the ascending sort > 1 - mass."""
    order = jnp.argsort(attention, axis=-1)
    sorted_att = jnp.take_along_axis(attention, order, axis=-1)
    sorted_att = sorted_att / jnp.maximum(jnp.sum(sorted_att, -1, keepdims=True), 1e-12)
    keep_sorted = jnp.cumsum(sorted_att, axis=-1) > 1.0 - mass
    inverse = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(keep_sorted, inverse, axis=-1)


def shuffle_cells(images: jax.Array, grid: Sequence[int], perm: jax.Array) -> jax.Array:
    """Permutes the cells of an (h, w) grid of every image with the same permutation `perm` of h * w cells."""
    b, hh, ww, c = images.shape
    gh, gw = grid
    if hh % gh or ww % gw:
        raise ValueError(f'A {gh}x{gw} grid does not divide the image {hh}x{ww}.')
    ch, cw = hh // gh, ww // gw
    cells = images.reshape(b, gh, ch, gw, cw, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, ch, cw, c)
    cells = cells[:, perm]
    return cells.reshape(b, gh, gw, ch, cw, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hh, ww, c)


def last_block_attention(intermediates: Any) -> jax.Array:
    """Attention weights [B, heads, T, T] of the last encoder block from a model's 'intermediates' collection."""
    flat = traverse_util.flatten_dict(dict(intermediates))  # Sown values are tuples: leaves here.
    found = [(k, v) for k, v in flat.items() if k and k[-1] == 'attention_weights']
    if not found:
        raise ValueError('The model sowed no attention weights; its attention must be vit_jax.models.layers.'
                         'MultiHeadAttention (apply with mutable=["intermediates"]).')

    def block_index(path):
        for part in path:
            if part.startswith('encoderblock_') and part[len('encoderblock_'):].isdigit():
                return int(part[len('encoderblock_'):])
        return -1

    in_blocks = [kv for kv in found if any(p.startswith('encoderblock') for p in kv[0])]
    pool = in_blocks or found
    path, value = max(pool, key=lambda kv: (block_index(kv[0]), kv[0]))
    w = value[-1] if isinstance(value, tuple) else value
    if w.ndim == 5:  # Scanned encoder: [layers, B, heads, T, T].
        w = w[-1]
    return w


def cls_attention(model: Any, variables: dict, images: jax.Array, head: int | str = 'mean',
                  grid: Optional[Sequence[int]] = None, query: int = 0) -> jax.Array:
    """Last-block attention of the class token over the patch tokens, [B, gh * gw] (eval mode).

    `head`: an index (the paper: head 1 of DINO ViT-S/16) or 'mean' over heads. `query`: the prefix token whose
    attention is read (0: the class token; 1: DeiT's distillation / "shape" token). Prefix tokens are the first
    T - gh * gw tokens; without any (e.g. 'gap' models) the patches' mean received attention over all queries is
    used instead.
    """
    _, state = model.apply(variables, images, train=False, mutable=['intermediates'])
    w = last_block_attention(state['intermediates']).astype(jnp.float32)
    t = w.shape[-1]
    if grid is None:
        grid = getattr(model, 'grid_size', None) or (int(math.isqrt(t - 1)),) * 2
    n = int(grid[0]) * int(grid[1])
    prefix = t - n
    if prefix < 0:
        raise ValueError(f'The attention has {t} tokens, fewer than the {grid} patch grid.')
    w = jnp.mean(w, axis=1) if head == 'mean' else w[:, int(head)]
    if prefix > 0 and not 0 <= query < prefix:
        raise ValueError(f'query={query} is not one of the {prefix} prefix tokens.')
    return w[:, query, prefix:] if prefix > 0 else jnp.mean(w, axis=1)


def write_curve(out_dir: Optional[str], stem: str, *, title: str, xlabel: str, ylabel: str,
                x: Sequence[float], curves: dict[str, Sequence[float]], extra: Optional[dict] = None) -> Optional[str]:
    """Writes `<out_dir>/<stem>.json` (the numbers) and `<stem>.png` (a line plot); returns the PNG path."""
    if not out_dir or jax.process_index() != 0:
        return None
    os.makedirs(out_dir, exist_ok=True)
    record = {'title': title, 'xlabel': xlabel, 'ylabel': ylabel, 'x': [float(v) for v in x],
              'curves': {k: [float(v) for v in vs] for k, vs in curves.items()}, **(extra or {})}
    with open(os.path.join(out_dir, f'{stem}.json'), 'w') as f:
        json.dump(record, f, indent=1)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, ys in curves.items():
        ax.plot(list(x)[:len(ys)], list(ys), marker='o', label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, f'{stem}.png')
    fig.savefig(path)
    return path


def write_image_grid(out_dir: Optional[str], stem: str, images: np.ndarray, value_range: Sequence[float],
                     ncols: int = 8) -> Optional[str]:
    """Writes a PNG grid of [N, H, W, 3] images in `value_range`."""
    if not out_dir or jax.process_index() != 0 or len(images) == 0:
        return None
    from matplotlib.image import imsave

    os.makedirs(out_dir, exist_ok=True)
    lo, hi = value_range
    imgs = np.clip((np.asarray(images, np.float32) - lo) / (hi - lo), 0, 1)
    n, h, w, c = imgs.shape
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    canvas = np.ones((nrows * (h + 1) - 1, ncols * (w + 1) - 1, c), np.float32)
    for i, im in enumerate(imgs):
        r, q = divmod(i, ncols)
        canvas[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = im
    path = os.path.join(out_dir, f'{stem}.png')
    imsave(path, canvas)
    return path


def load_aux_model(spec: Any) -> tuple[Any, dict]:
    """(model, variables) of another model (a judge, a saliency model, a teacher): `models.load(spec)`, with the
    weights required: spec = dict(model=dict(name=..., **options), weights=PATH) (`checkpoint=PATH` too).

    Variables are numpy arrays: safe to close over inside a trace.
    """
    from vit_jax import models

    if spec is None or models.as_spec(spec).weights is None:
        raise ValueError("Another model is given as dict(model=dict(name=..., ...), weights=PATH); got "
                         f'{spec!r}. Without weights its judgements would be meaningless.')
    return models.load(spec)


# ----------------------------------------------------------------------------------------------------------------
# Base class.
# ----------------------------------------------------------------------------------------------------------------
class RobustnessEvaluator(Evaluator):
    """Shared plumbing: eval-mode logits, value range, example limits, output folder."""

    @property
    def value_range(self) -> tuple[float, float]:
        """The range of the model inputs before any `normalize`: an explicit `value_range(a, b)` op of the eval
        pipeline, else the data config's `value_range`."""
        from vit_jax.data import preprocess

        data_cfg = self.data.config
        pipe = data_cfg.get('eval_pp', None)
        if isinstance(pipe, str) and '(' in pipe:
            for call in preprocess.parse(pipe):
                if call.name == 'value_range':
                    args = list(call.args) + [call.kwargs.get('vmin'), call.kwargs.get('vmax')]
                    vals = [a for a in args if a is not None]
                    if len(vals) >= 2:
                        return float(vals[0]), float(vals[1])
        return self.data.value_range

    @property
    def black(self) -> float | tuple[float, ...]:
        """A black pixel in model inputs: the range's low end, normalised when the pipeline applies `normalize`
        (PatchDrop zeroes pixels before normalisation, as the paper)."""
        data_cfg = self.data.config
        lo = self.value_range[0]
        pipe = str(data_cfg.get('eval_pp', ''))
        if 'normalize' in pipe:
            mean, std = data_cfg.get('norm_mean', None), data_cfg.get('norm_std', None)
            if mean is None or std is None:
                raise ValueError('The eval pipeline normalises but data.norm_mean / norm_std are not set: cannot '
                                 'tell which input value is a black pixel.')
            return tuple((lo - m) / s for m, s in zip(mean, std))
        return lo

    @property
    def out_dir(self) -> Optional[str]:
        if self.cfg.get('out_dir', None):
            return str(self.cfg['out_dir'])
        return os.path.join(self.ctx.workdir, 'robustness') if self.ctx.workdir else None

    def logits(self, params: Any, model_state: Any, images: jax.Array, *, train: bool = False,
               rng: Optional[jax.Array] = None) -> jax.Array:
        (logits, _), _ = self.ctx.objective.apply_model(params, model_state, images, train=train, rng=rng)
        return logits

    def weights(self, state: Any) -> tuple[Any, Any]:
        return self.ctx.objective.eval_params(state), state.model_state

    def limited_batches(self, split: Optional[str] = None, dataset: Optional[str] = None) -> Iterator[dict]:
        """The evaluator's batches; `num_examples` (config) caps the number of real examples seen."""
        limit = self.cfg.get('num_examples', None)
        seen = 0
        for batch in self.batches(split, dataset=dataset):
            if limit is not None:
                if seen >= int(limit):
                    break
                mask = to_host(batch['mask']).astype(bool)
                mask &= (seen + np.cumsum(mask)) <= int(limit)
                seen += int(mask.sum())
                batch = dict(batch, mask=jnp.asarray(mask))
            yield batch

    def step_of(self, state: Any) -> int:
        return int(jax.device_get(state.step))

    def run(self, state: Any) -> dict[str, float]:
        raise NotImplementedError


def _fmt(v: float) -> str:
    return f'{v:g}'


# ----------------------------------------------------------------------------------------------------------------
# Adversarial accuracy.
# ----------------------------------------------------------------------------------------------------------------
@evaluators.register('adversarial')
class AdversarialAccuracy(RobustnessEvaluator):
    """Accuracy under an attack at several radii.

    Config: attack ('pgd' | 'fgsm' | 'apgd_ce'), eps (pixel scale, a number or a list; default 1, 2, 4, 8 /255),
    num_steps (10), step_size (pixel scale; default step_factor * eps / num_steps with step_factor 2.5, Madry's
    choice; FGSM: eps), norm ('linf' | 'l2'), random_start (True), num_examples (None: the whole split), seed,
    split, batch_size. Figures: 'clean_accuracy' and 'accuracy_eps<eps x 255>' (L-inf; e.g. accuracy_eps4 for
    4/255) or 'accuracy_l2eps<eps>' (L2), plus 'max_distance' (pixel scale, a sanity check).
    """

    def _eps_list(self) -> list[float]:
        eps = self.cfg.get('eps', (1 / 255, 2 / 255, 4 / 255, 8 / 255))
        return [float(e) for e in (eps if isinstance(eps, (list, tuple)) else [eps])]

    def _key(self, eps: float) -> str:
        if self.cfg.get('norm', 'linf') == 'linf':
            return f'accuracy_eps{round(eps * 255, 4):g}'
        return f'accuracy_l2eps{eps:g}'

    def _make_step(self) -> Callable:
        cfg = self.cfg
        if not isinstance(self.black, float):
            raise ValueError("Attacks need model inputs in a plain box (data.value_range); the eval pipeline applies "
                             "'normalize'. Evaluate with an un-normalised pipeline (normalise inside the model).")
        name = cfg.get('attack', 'pgd')
        attack = attacks.get_attack(name)
        norm = cfg.get('norm', 'linf')
        num_steps = int(cfg.get('num_steps', 10))
        factor = float(cfg.get('step_factor', 2.5))
        fixed_step = cfg.get('step_size', None)
        vr = self.value_range
        random_start = bool(cfg.get('random_start', True))

        @jax.jit
        def step(params, model_state, batch, eps, rng):
            fn = lambda x: self.logits(params, model_state, x)  # noqa: E731
            x, y = batch['image'], batch['label']
            if name == 'apgd_ce':
                x_adv = attack(fn, x, y, eps=eps, num_steps=num_steps, rng=rng, norm=norm, value_range=vr,
                               random_start=random_start)
            elif name == 'fgsm':
                x_adv = attack(fn, x, y, eps=eps, rng=rng, norm=norm, value_range=vr, random_start=random_start,
                               step_size=eps if fixed_step is None else fixed_step)
            else:
                step_size = factor * eps / num_steps if fixed_step is None else fixed_step
                x_adv = attack(fn, x, y, eps=eps, step_size=step_size, num_steps=num_steps, rng=rng, norm=norm,
                               value_range=vr, random_start=random_start)
            mask = batch['mask'].astype(jnp.float32)
            dist = (attacks.linf_distance if norm == 'linf' else attacks.l2_distance)(x_adv, x, vr)
            return {'clean': jnp.sum((jnp.argmax(fn(x), -1) == y) * mask),
                    'adv': jnp.sum((jnp.argmax(fn(x_adv), -1) == y) * mask),
                    'count': jnp.sum(mask), 'max_distance': jnp.max(dist * mask)}

        return step

    def run(self, state: Any) -> dict[str, float]:
        step = self._make_step()
        params, model_state = self.weights(state)
        eps_list = self._eps_list()
        rng = jax.random.PRNGKey(int(self.cfg.get('seed', 0)))
        clean = count = 0.0
        adv = np.zeros(len(eps_list))
        max_dist = 0.0
        for bi, batch in enumerate(self.limited_batches()):
            for ei, eps in enumerate(eps_list):
                m = jax.device_get(step(params, model_state, batch, jnp.float32(eps),
                                        jax.random.fold_in(jax.random.fold_in(rng, bi), ei)))
                adv[ei] += float(m['adv'])
                max_dist = max(max_dist, float(m['max_distance']))
                if ei == 0:
                    clean += float(m['clean'])
                    count += float(m['count'])
        n = max(count, 1.0)
        out = {'clean_accuracy': clean / n, 'num_examples': int(count), 'max_distance': max_dist}
        for eps, a in zip(eps_list, adv):
            out[self._key(eps)] = float(a) / n
        norm = self.cfg.get('norm', 'linf')
        xs = [0.0] + [e * 255 if norm == 'linf' else e for e in eps_list]
        write_curve(self.out_dir, f'{self.name}_step{self.step_of(state)}',
                    title=f'{self.cfg.get("attack", "pgd").upper()} ({norm}) accuracy',
                    xlabel='eps (/255)' if norm == 'linf' else 'eps (L2, pixel scale)', ylabel='accuracy', x=xs,
                    curves={'accuracy': [out['clean_accuracy']] + [float(a) / n for a in adv]})
        return out


# ----------------------------------------------------------------------------------------------------------------
# PatchDrop and patch shuffle.
# ----------------------------------------------------------------------------------------------------------------
@evaluators.register('patchdrop')
class PatchDrop(RobustnessEvaluator):
    """Occlusion robustness (random / salient / non-salient PatchDrop).

    Config: mode ('random' | 'salient' | 'non_salient'), grid (cells (gh, gw); default the model's patch grid),
    fractions (random: the information-loss fractions, default k/10 for k = 0..9; salient modes: the attention
    mass lambda, default 0.1..1.0), saliency (None: the evaluated model; or dict(model=..., checkpoint=...)),
    saliency_head ('mean' or an index), saliency_query (0: class token; 1: a DeiT distillation / shape token),
    seed, num_examples, split, batch_size. Dropped cells are black (normalised if the pipeline normalises).
    Figures: 'accuracy_<percent>' per fraction (e.g. accuracy_50: half the cells dropped / lambda 0.5); salient
    modes also give 'dropped_<percent>', the mean fraction of cells dropped.
    """

    def _grid(self, model: Any) -> tuple[int, int]:
        g = self.cfg.get('grid', None)
        if g:
            return (int(g), int(g)) if isinstance(g, int) else tuple(int(v) for v in g)
        grid = getattr(model, 'grid_size', None)
        if grid:
            return tuple(int(v) for v in grid)
        h, w = self.ctx.image_size
        return h // 16, w // 16

    def run(self, state: Any) -> dict[str, float]:
        mode = self.cfg.get('mode', 'random')
        if mode not in ('random', 'salient', 'non_salient'):
            raise ValueError(f"patchdrop mode must be 'random', 'salient' or 'non_salient', got {mode!r}.")
        default = [k / 10 for k in range(10)] if mode == 'random' else [k / 10 for k in range(1, 11)]
        fractions = [float(f) for f in (self.cfg.get('fractions', None) or default)]
        params, model_state = self.weights(state)
        fill = self.black
        seed = int(self.cfg.get('seed', 0))

        @jax.jit
        def correct(params, model_state, images, labels, mask):
            hit = jnp.argmax(self.logits(params, model_state, images), -1) == labels
            return jnp.sum(hit * mask.astype(jnp.float32))

        if mode == 'random':
            grid = self._grid(self.ctx.model)
            n = grid[0] * grid[1]

            apply = jax.jit(lambda images, drop: drop_cells(images, drop, fill))
        else:
            if self.cfg.get('saliency', None):
                sal_model, sal_vars = load_aux_model(self.cfg['saliency'])
            else:
                sal_model, sal_vars = self.ctx.model, {'params': params, **model_state}
            grid = self._grid(sal_model)
            head = self.cfg.get('saliency_head', 'mean')
            query = int(self.cfg.get('saliency_query', 0))
            saliency = jax.jit(lambda v, x: cls_attention(sal_model, v, x, head=head, grid=grid, query=query))

        hits = np.zeros(len(fractions))
        dropped = np.zeros(len(fractions))
        count = 0.0
        for bi, batch in enumerate(self.limited_batches()):
            x, y, m = batch['image'], batch['label'], batch['mask']
            nb = float(jax.device_get(jnp.sum(m)))
            if mode != 'random':
                att = saliency(sal_vars, x)
            for fi, f in enumerate(fractions):
                if mode == 'random':
                    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), bi), fi)
                    drop = random_drop_mask(key, grid, int(math.floor(f * n + 1e-9)))
                    xd = apply(x, drop)
                    dropped[fi] += nb * float(jnp.mean(drop))
                else:
                    sal = salient_mask(att, f).reshape(-1, *grid)
                    drop = sal if mode == 'salient' else ~sal
                    xd = drop_cells(x, drop, fill)
                    dropped[fi] += float(jnp.sum(jnp.mean(drop.astype(jnp.float32), (1, 2)) * m))
                hits[fi] += float(correct(params, model_state, xd, y, m))
            count += nb
        n_ex = max(count, 1.0)
        out = {'num_examples': int(count)}
        for f, h, d in zip(fractions, hits, dropped):
            out[f'accuracy_{round(f * 100):d}'] = float(h) / n_ex
            if mode != 'random':
                out[f'dropped_{round(f * 100):d}'] = float(d) / n_ex
        xlabel = 'information loss (fraction of cells dropped)' if mode == 'random' else \
            'attention mass lambda of the salient patches'
        write_curve(self.out_dir, f'{self.name}_step{self.step_of(state)}', title=f'PatchDrop ({mode}, grid '
                    f'{grid[0]}x{grid[1]})', xlabel=xlabel, ylabel='accuracy', x=fractions,
                    curves={'accuracy': [float(h) / n_ex for h in hits]},
                    extra={'dropped_fraction': [float(d) / n_ex for d in dropped], 'mode': mode})
        return out


@evaluators.register('patch_shuffle')
class PatchShuffle(RobustnessEvaluator):
    """Accuracy when the image's cells are permuted (one random permutation per batch).

    Config: grids (default the paper's (2, 2), (2, 4), (4, 4), (4, 8), (8, 8), (14, 14), (16, 16); those that do
    not divide the image are skipped), seed, num_examples. Figures: 'accuracy_1x1' (unshuffled) and
    'accuracy_<h>x<w>' per grid.
    """

    def run(self, state: Any) -> dict[str, float]:
        h, w = self.ctx.image_size
        grids = [tuple(int(v) for v in g) for g in (self.cfg.get('grids', None) or SHUFFLE_GRIDS)]
        grids = [(1, 1)] + [g for g in grids if h % g[0] == 0 and w % g[1] == 0 and g != (1, 1)]
        params, model_state = self.weights(state)
        seed = int(self.cfg.get('seed', 0))

        @jax.jit
        def correct(params, model_state, images, labels, mask):
            hit = jnp.argmax(self.logits(params, model_state, images), -1) == labels
            return jnp.sum(hit * mask.astype(jnp.float32))

        hits = np.zeros(len(grids))
        count = 0.0
        for bi, batch in enumerate(self.limited_batches()):
            for gi, g in enumerate(grids):
                perm = jax.random.permutation(jax.random.fold_in(jax.random.PRNGKey(seed + gi), bi), g[0] * g[1])
                xs = shuffle_cells(batch['image'], g, perm)
                hits[gi] += float(correct(params, model_state, xs, batch['label'], batch['mask']))
            count += float(jax.device_get(jnp.sum(batch['mask'])))
        n = max(count, 1.0)
        out = {'num_examples': int(count)}
        for g, hh in zip(grids, hits):
            out[f'accuracy_{g[0]}x{g[1]}'] = float(hh) / n
        write_curve(self.out_dir, f'{self.name}_step{self.step_of(state)}', title='Patch shuffle',
                    xlabel='number of shuffled cells', ylabel='accuracy', x=[g[0] * g[1] for g in grids],
                    curves={'accuracy': [float(hh) / n for hh in hits]},
                    extra={'grids': [list(g) for g in grids]})
        return out


# ----------------------------------------------------------------------------------------------------------------
# Corrupted benchmarks.
# ----------------------------------------------------------------------------------------------------------------
def mean_corruption_error(errors: dict[str, Sequence[float]], baseline: Optional[dict[str, float]] = None
                          ) -> tuple[float, dict[str, float]]:
    """(mCE, CE per corruption) from per-severity errors. With `baseline` (AlexNet's mean error per corruption)
    CE_c = sum_s E_{s,c} / sum_s E^AlexNet_{s,c} (the ImageNet-C protocol); without, CE_c is the mean error."""
    ce = {}
    for c, errs in errors.items():
        mean = float(np.mean(errs))
        ce[c] = mean / baseline[c] if baseline is not None else mean
    return float(np.mean(list(ce.values()))) if ce else float('nan'), ce


@evaluators.register('corruption')
class Corruption(RobustnessEvaluator):
    """Accuracy on the TFDS corrupted benchmarks and the mean corruption error.

    Config: dataset ('cifar10_corrupted' | 'imagenet2012_corrupted'), template ('{dataset}/{corruption}_{severity}',
    the TFDS config names; any dataset name pattern works), corruptions (default the 15 of the mCE), severities
    (1..5), split ('test' for CIFAR-10-C, 'validation' for ImageNet-C by default), normalize ('alexnet' for
    ImageNet-C by default: the standard mCE; None: the unnormalised mean error), num_examples, batch_size.
    Figures: 'accuracy_<corruption>_<severity>', 'error_<corruption>' (mean over severities), 'mean_error',
    'mce' (a fraction: the papers' "41.4 mCE" is 0.414 here).
    """

    def data_specs(self) -> list[dict]:
        """The first corruption and severity (the others are the same TFDS dataset's configs)."""
        cfg = self.cfg
        base = cfg.get('dataset', 'cifar10_corrupted')
        c = (list(cfg.get('corruptions', None) or CORRUPTIONS))[0]
        s = int((cfg.get('severities', None) or (1,))[0])
        split = cfg.get('split', None) or ('validation' if str(base).startswith('imagenet') else 'test')
        name = cfg.get('template', '{dataset}/{corruption}_{severity}').format(dataset=base, corruption=c, severity=s)
        return [dict(split=split, dataset=name, data_config=cfg.get('data', None))]

    def run(self, state: Any) -> dict[str, float]:
        cfg = self.cfg
        base = cfg.get('dataset', 'cifar10_corrupted')
        template = cfg.get('template', '{dataset}/{corruption}_{severity}')
        corruptions = list(cfg.get('corruptions', None) or CORRUPTIONS)
        severities = [int(s) for s in (cfg.get('severities', None) or (1, 2, 3, 4, 5))]
        is_imagenet = str(base).startswith('imagenet')
        split = cfg.get('split', None) or ('validation' if is_imagenet else 'test')
        normalize = cfg.get('normalize', 'alexnet' if is_imagenet else None)
        baseline = None  # Checked before any evaluation.
        if normalize == 'alexnet':
            unknown = [c for c in corruptions if c not in ALEXNET_ERRORS]
            if unknown:
                raise ValueError(f'No AlexNet error for {unknown}: the mCE is defined on {list(ALEXNET_ERRORS)}; '
                                 'set normalize=None for an unnormalised mean error.')
            baseline = ALEXNET_ERRORS
        elif normalize is not None:
            raise ValueError(f"corruption normalize must be 'alexnet' or None, got {normalize!r}.")
        params, model_state = self.weights(state)

        @jax.jit
        def correct(params, model_state, images, labels, mask):
            hit = jnp.argmax(self.logits(params, model_state, images), -1) == labels
            return jnp.sum(hit * mask.astype(jnp.float32)), jnp.sum(mask.astype(jnp.float32))

        out: dict[str, float] = {}
        errors: dict[str, list[float]] = {}
        for c in corruptions:
            for s in severities:
                name = template.format(dataset=base, corruption=c, severity=s)
                hit = cnt = 0.0
                for batch in self.limited_batches(split, dataset=name):
                    h, n = jax.device_get(correct(params, model_state, batch['image'], batch['label'],
                                                  batch['mask']))
                    hit += float(h)
                    cnt += float(n)
                acc = hit / max(cnt, 1.0)
                out[f'accuracy_{c}_{s}'] = acc
                errors.setdefault(c, []).append(1.0 - acc)
        mce, ce = mean_corruption_error(errors, baseline)
        for c, errs in errors.items():
            out[f'error_{c}'] = float(np.mean(errs))
            if baseline is not None:
                out[f'ce_{c}'] = ce[c]
        out['mean_error'] = float(np.mean([np.mean(e) for e in errors.values()]))
        out['mce'] = mce
        write_curve(self.out_dir, f'{self.name}_step{self.step_of(state)}', title=f'{base}: error per severity',
                    xlabel='severity', ylabel='error', x=severities, curves=errors,
                    extra={'mce': mce, 'normalize': normalize, 'ce': ce})
        return out


# ----------------------------------------------------------------------------------------------------------------
# Off-the-shelf feature ensemble (Intriguing Properties, section "ViT features as an ensemble").
# ----------------------------------------------------------------------------------------------------------------
def _find_subtree(params: Any, name: str) -> Any:
    flat = traverse_util.flatten_dict(dict(params))
    prefixes = sorted({k[:k.index(name) + 1] for k in flat if name in k}, key=len)
    if not prefixes:
        raise ValueError(f'The model has no {name!r} parameters (the final norm the feature ensemble applies).')
    sub = params
    for p in prefixes[0]:
        sub = sub[p]
    return sub


def ensemble_features(model: Any, variables: dict, images: jax.Array, num_blocks: int,
                      patch_mean: bool = False) -> jax.Array:
    """Class tokens of the last `num_blocks` encoder blocks, each through the model's final norm, concatenated
    ([B, num_blocks * D]); `patch_mean` appends the mean patch token of the last block (the paper's 5th part).

    Needs a model whose `out` holds 'encoder/block_XX' tokens and whose params hold an 'encoder_norm' (the ViT
    family). Without a class token the mean token of each block is used.
    """
    from vit_jax.models import layers

    _, out = model.apply(variables, images, train=False)
    keys = sorted(k for k in out if k.startswith('encoder/block_'))
    if len(keys) < num_blocks:
        raise ValueError(f'The model exposes {len(keys)} encoder blocks, fewer than num_blocks={num_blocks}.')
    norm = layers.make_norm(getattr(model, 'norm', 'layernorm'), eps=getattr(model, 'norm_eps', 1e-6),
                            dtype=jnp.float32, name=None, num_heads=getattr(model, 'num_heads', 1))
    norm_params = _find_subtree(variables['params'], 'encoder_norm')
    has_cls = getattr(model, 'classifier', 'token') in ('token', 'token_unpooled')
    feats = []
    for k in keys[-num_blocks:]:
        t = norm.apply({'params': norm_params}, out[k].astype(jnp.float32))
        feats.append(t[:, 0] if has_cls else jnp.mean(t, axis=1))
    if patch_mean:
        t = norm.apply({'params': norm_params}, out[keys[-1]].astype(jnp.float32))
        feats.append(jnp.mean(t[:, int(has_cls):], axis=1))
    return jnp.concatenate(feats, axis=-1)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                 num_classes: int, epochs: int = 10, lr: float = 5e-4, weight_decay: float = 0.05,
                 batch_size: int = 256, seed: int = 0) -> list[float]:
    """A linear classifier trained with AdamW and plain cross-entropy (no schedule, as the paper's script);
    returns the test accuracy after each epoch."""
    d = train_x.shape[1]
    params = {'w': jnp.zeros((d, num_classes)), 'b': jnp.zeros((num_classes,))}
    tx = optax.adamw(lr, weight_decay=weight_decay)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, x, y):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(x @ p['w'] + p['b'], y).mean()

        g = jax.grad(loss)(params)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt

    @jax.jit
    def accuracy(params, x, y):
        return jnp.mean(jnp.argmax(x @ params['w'] + params['b'], -1) == y)

    rng = np.random.default_rng(seed)
    accs = []
    for _ in range(int(epochs)):
        order = rng.permutation(len(train_x))
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            params, opt = step(params, opt, jnp.asarray(train_x[idx]), jnp.asarray(train_y[idx]))
        accs.append(float(accuracy(params, jnp.asarray(test_x), jnp.asarray(test_y))))
    return accs


@evaluators.register('feature_ensemble')
class FeatureEnsemble(RobustnessEvaluator):
    """Linear probes on the off-the-shelf feature ensemble of a frozen model.

    Config: num_blocks (a number or a list; default (1, 4): the last class token alone, and the paper's ensemble
    of the last 4), patch_mean (False), train_split ('train'), split ('test'), dataset (default the run's),
    epochs (10), lr (5e-4), weight_decay (0.05), probe_batch_size (256), num_examples / num_train_examples.
    Figures: 'accuracy_last<N>' (best test accuracy over the epochs, as the paper reports) and
    'final_accuracy_last<N>'.
    """

    def data_specs(self) -> list[dict]:
        return [dict(split=self.cfg.get(k, d), dataset=self.cfg.get('dataset', None),
                     data_config=self.cfg.get('data', None)) for k, d in (('train_split', 'train'), ('split', 'test'))]

    def _features(self, variables: dict, split: str, blocks: list[int], limit: Optional[int]
                  ) -> tuple[dict[int, np.ndarray], np.ndarray]:
        model = self.ctx.model
        patch_mean = bool(self.cfg.get('patch_mean', False))
        top = max(blocks)
        fn = jax.jit(lambda v, x: ensemble_features(model, v, x, top, patch_mean))
        feats, labels = [], []
        seen = 0
        for batch in self.batches(split):
            m = to_host(batch['mask']).astype(bool)
            f = to_host(fn(variables, batch['image']))[m]
            feats.append(f)
            labels.append(to_host(batch['label'])[m])
            seen += int(m.sum())
            if limit is not None and seen >= limit:
                break
        f = np.concatenate(feats)[:limit]
        y = np.concatenate(labels)[:limit]
        d = f.shape[1] // (top + int(patch_mean))  # Token width.
        out = {}
        for n in blocks:  # The last n of the `top` class tokens (+ the patch mean).
            parts = [f[:, (top - n) * d:top * d]]
            if patch_mean:
                parts.append(f[:, top * d:])
            out[n] = np.concatenate(parts, axis=1)
        return out, y

    def run(self, state: Any) -> dict[str, float]:
        cfg = self.cfg
        nb = cfg.get('num_blocks', (1, 4))
        blocks = sorted({int(n) for n in (nb if isinstance(nb, (list, tuple)) else [nb])})
        params, model_state = self.weights(state)
        variables = {'params': params, **model_state}
        ntr = cfg.get('num_train_examples', None)
        nte = cfg.get('num_examples', None)
        train_f, train_y = self._features(variables, cfg.get('train_split', 'train'), blocks, ntr)
        test_f, test_y = self._features(variables, cfg.get('split', 'test'), blocks, nte)
        num_classes = int(self.ctx.model.num_classes or (max(train_y.max(), test_y.max()) + 1))
        out: dict[str, float] = {}
        curves = {}
        for n in blocks:
            accs = linear_probe(train_f[n], train_y, test_f[n], test_y, num_classes=num_classes,
                                epochs=int(cfg.get('epochs', 10)), lr=float(cfg.get('lr', 5e-4)),
                                weight_decay=float(cfg.get('weight_decay', 0.05)),
                                batch_size=int(cfg.get('probe_batch_size', 256)), seed=int(cfg.get('seed', 0)))
            out[f'accuracy_last{n}'] = max(accs)
            out[f'final_accuracy_last{n}'] = accs[-1]
            curves[f'last {n} class tokens'] = accs
        write_curve(self.out_dir, f'{self.name}_step{self.step_of(state)}', title='Feature-ensemble linear probe',
                    xlabel='epoch', ylabel='test accuracy', x=list(range(1, int(cfg.get('epochs', 10)) + 1)),
                    curves=curves)
        return out


# ----------------------------------------------------------------------------------------------------------------
# Perturbation semantics (the light recipe's analysis).
# ----------------------------------------------------------------------------------------------------------------
@evaluators.register('perturbation_semantics')
class PerturbationSemantics(RobustnessEvaluator):
    """How class-evocative a model's adversarial perturbations are.

    Untargeted PGD (eval mode, random start) on the evaluated model; each perturbation becomes an image
    p = (x - x_adv + eps) / (2 eps) (labelled with the true class) and a separate classifier, the judge, classifies
    it. Config: judge (dict(model=dict(name=..., ...), checkpoint=PATH), required: the paper uses standard
    ImageNet classifiers; 'self' uses the evaluated model and is named so in the figures), eps (4/255),
    num_steps (100), step_size (default 1.5 eps / num_steps, the official script), num_examples, num_images (16,
    written as a PNG grid). Figures: 'judge_accuracy' ('self_judge_accuracy' for judge='self'),
    'judge_clean_accuracy', 'adv_accuracy'.
    """

    def run(self, state: Any) -> dict[str, float]:
        cfg = self.cfg
        judge_spec = cfg.get('judge', None)
        if judge_spec is None:
            raise ValueError("perturbation_semantics needs a judge: dict(model=dict(name=...), checkpoint=PATH) "
                             "(or judge='self', reported as self_judge_accuracy).")
        params, model_state = self.weights(state)
        if judge_spec == 'self':
            judge_model, judge_vars, prefix = self.ctx.model, {'params': params, **model_state}, 'self_judge'
        else:
            judge_model, judge_vars = load_aux_model(judge_spec)
            prefix = 'judge'
        if not isinstance(self.black, float):
            raise ValueError("Attacks need model inputs in a plain box (data.value_range); the eval pipeline applies "
                             "'normalize'. Evaluate with an un-normalised pipeline (normalise inside the model).")
        eps = float(cfg.get('eps', 4 / 255))
        num_steps = int(cfg.get('num_steps', 100))
        step_size = float(cfg.get('step_size', None) or 1.5 * eps / num_steps)
        vr = self.value_range

        @jax.jit
        def step(params, model_state, judge_vars, batch, rng):
            fn = lambda x: self.logits(params, model_state, x)  # noqa: E731
            x, y = batch['image'], batch['label']
            x_adv = attacks.pgd(fn, x, y, eps=eps, step_size=step_size, num_steps=num_steps, rng=rng, norm='linf',
                                value_range=vr, random_start=True)
            p = attacks.perturbation_image(x, x_adv, eps=eps, value_range=vr)
            judge = lambda im: judge_model.apply(judge_vars, im, train=False)[0]  # noqa: E731
            mask = batch['mask'].astype(jnp.float32)
            hit = lambda logits: jnp.sum((jnp.argmax(logits, -1) == y) * mask)  # noqa: E731
            return {'judge': hit(judge(p)), 'judge_clean': hit(judge(x)), 'adv': hit(fn(x_adv)),
                    'count': jnp.sum(mask)}, p

        totals = {'judge': 0.0, 'judge_clean': 0.0, 'adv': 0.0, 'count': 0.0}
        pictures = []
        rng = jax.random.PRNGKey(int(cfg.get('seed', 0)))
        for bi, batch in enumerate(self.limited_batches()):
            m, p = step(params, model_state, judge_vars, batch, jax.random.fold_in(rng, bi))
            for k, v in jax.device_get(m).items():
                totals[k] += float(v)
            want = int(cfg.get('num_images', 16)) - sum(len(q) for q in pictures)
            if want > 0:
                keep = to_host(batch['mask']).astype(bool)
                pictures.append(to_host(p)[keep][:want])
        n = max(totals['count'], 1.0)
        out = {f'{prefix}_accuracy': totals['judge'] / n, f'{prefix}_clean_accuracy': totals['judge_clean'] / n,
               'adv_accuracy': totals['adv'] / n, 'num_examples': int(totals['count'])}
        if pictures:
            write_image_grid(self.out_dir, f'{self.name}_step{self.step_of(state)}_perturbations',
                             np.concatenate(pictures), vr)
        return out


__all__ = ['ALEXNET_ERRORS', 'AdversarialAccuracy', 'CORRUPTIONS', 'Corruption', 'EXTRA_CORRUPTIONS',
           'FeatureEnsemble', 'PatchDrop', 'PatchShuffle', 'PerturbationSemantics', 'SHUFFLE_GRIDS', 'cls_attention',
           'drop_cells', 'ensemble_features', 'last_block_attention', 'linear_probe', 'load_aux_model',
           'mean_corruption_error', 'random_drop_mask', 'salient_mask', 'shuffle_cells', 'upsample_cells',
           'write_curve', 'write_image_grid']
