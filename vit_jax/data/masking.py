"""Patch masks for masked image modelling: BEiT blockwise, MAE uniform random, MILAN semantic-aware.

Host side (numpy, usable in tf.data through the registered preprocessing ops):

    m = masking.blockwise_mask(seed, grid=(14, 14), num_masking_patches=75, min_num_patches=16, min_aspect=0.3)
    m = masking.random_mask(seed, grid=(14, 14), mask_ratio=0.75)          # bool [14, 14], True = masked

    config.data.train_pp = 'inception_crop|flip|beit_mask(grid=14, num_masking_patches=75)'
    # -> every example gets 'patch_mask': bool [h*w] (row-major), a pure function of (seed, example index)

Device side (JAX, inside the train step; masks that depend on the model or are drawn per step):

    ids_shuffle = masking.random_ids_shuffle(rng, batch, num_patches)            # MAE
    ids_shuffle = masking.semantic_ids_shuffle(rng, importance)                  # MILAN (Gumbel-top-k)
    mask, ids_restore = masking.mask_from_shuffle(ids_shuffle, num_keep)          # True = masked

The first `num_keep` entries of `ids_shuffle` are the visible patches.
"""

from __future__ import annotations

import math
import random as _random
from typing import Optional, Sequence

import numpy as np

# ----------------------------------------------------------------------------------------------------------------
# BEiT blockwise masking (host side).
# ----------------------------------------------------------------------------------------------------------------


def _grid(grid: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(grid, (int, np.integer)):
        return int(grid), int(grid)
    h, w = grid
    return int(h), int(w)


def seed_to_int(seed: int | Sequence[int] | np.ndarray) -> int:
    """An int from an int or a stateless [2] seed (as tf.data hands out)."""
    a = np.asarray(seed).astype(np.int64).reshape(-1)
    if a.size == 1:
        return int(a[0])
    return int(((int(a[0]) & 0xFFFFFFFF) << 32) | (int(a[1]) & 0xFFFFFFFF))


def _place_block(rng: _random.Random, mask: np.ndarray, budget: int, min_num_patches: int,
                 log_aspect: tuple[float, float], blocks: Optional[list]) -> int:
    """One BEiT block: up to 10 attempts; returns how many patches it newly masked (0 = give up)."""
    height, width = mask.shape
    delta = 0
    for _ in range(10):
        target_area = rng.uniform(min_num_patches, budget)  # Bounds may be reversed near the end (as BEiT).
        aspect = math.exp(rng.uniform(*log_aspect))
        h = int(round(math.sqrt(target_area * aspect)))
        w = int(round(math.sqrt(target_area / aspect)))
        if w < width and h < height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            already = int(mask[top:top + h, left:left + w].sum())
            if 0 < h * w - already <= budget:
                delta = h * w - already
                mask[top:top + h, left:left + w] = True
                if blocks is not None:
                    blocks.append((top, left, h, w))
            if delta > 0:
                break
    return delta


def blockwise_mask(seed: int | Sequence[int] | np.ndarray, grid: int | Sequence[int] = (14, 14),
                   num_masking_patches: int = 75, min_num_patches: int = 16, min_aspect: float = 0.3,
                   max_num_patches: Optional[int] = None, max_aspect: Optional[float] = None,
                   return_blocks: bool = False):
    """BEiT's blockwise mask: a boolean grid (True = masked) with at most `num_masking_patches` masked.

    The algorithm of `unilm/beit/masking_generator.py`: while fewer than the target are masked, place a
    rectangle of area ~ U(min_num_patches, remaining budget) and aspect ratio log-uniform in
    [min_aspect, 1/min_aspect] (both sides strictly inside the grid, up to 10 attempts); a block must add between
    1 and `budget` new patches; when a block adds nothing the generator stops, so the count may end below the
    target. Randomness is Python's `random.Random(seed)`, drawn in the same order as BEiT, so the mask equals
    BEiT's generator after `random.seed(seed)`.

    Args:
        seed: an int, or a stateless [2] seed (per example in tf.data).
        grid: (h, w) patch grid.
        num_masking_patches: target number of masked patches (BEiT: 75 of 196).
        min_num_patches: minimum block area (BEiT pretraining script: 16).
        min_aspect: aspect ratios are log-uniform in [min_aspect, max_aspect or 1/min_aspect].
        max_num_patches: maximum block area (None: the target).
        max_aspect: see min_aspect.
        return_blocks: also return the placed blocks [(top, left, h, w), ...].

    Returns:
        bool [h, w] (and the blocks when asked).
    """
    height, width = _grid(grid)
    if not 0 <= num_masking_patches <= height * width:
        raise ValueError(f'num_masking_patches={num_masking_patches} does not fit a {height}x{width} grid.')
    rng = _random.Random(seed_to_int(seed))
    max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
    max_aspect = max_aspect or 1.0 / min_aspect
    log_aspect = (math.log(min_aspect), math.log(max_aspect))
    mask = np.zeros((height, width), bool)
    blocks: Optional[list] = [] if return_blocks else None
    count = 0
    while count < num_masking_patches:
        budget = min(num_masking_patches - count, max_num_patches)
        delta = _place_block(rng, mask, budget, min_num_patches, log_aspect, blocks)
        if delta == 0:
            break
        count += delta
    return (mask, blocks) if return_blocks else mask


def random_mask(seed: int | Sequence[int] | np.ndarray, grid: int | Sequence[int] = (14, 14),
                mask_ratio: float = 0.75) -> np.ndarray:
    """MAE's uniform random mask: exactly `N - int(N * (1 - mask_ratio))` patches masked (True), bool [h, w]."""
    h, w = _grid(grid)
    n = h * w
    keep = int(n * (1.0 - mask_ratio))
    order = np.random.default_rng(seed_to_int(seed) & (2**63 - 1)).permutation(n)
    mask = np.ones(n, bool)
    mask[order[:keep]] = False
    return mask.reshape(h, w)


# ----------------------------------------------------------------------------------------------------------------
# tf.data ops (per example; 'patch_mask': bool [h*w], row-major).
# ----------------------------------------------------------------------------------------------------------------
def _register_ops() -> None:
    import tensorflow as tf

    from vit_jax.data import preprocess

    def example_seed(example, ctx, salt):
        if ctx.seed is not None:
            return tf.random.experimental.stateless_fold_in(ctx.seed, salt)
        # Evaluation: a fixed mask per example index, so repeated evaluations see the same masks.
        index = tf.cast(example.get('_index', tf.constant(0, tf.int64)), tf.int64)
        return tf.random.experimental.stateless_fold_in(tf.constant([0x6D61, salt], tf.int32), index)

    def grid_of(ctx, grid, patch_size):
        if grid is not None:
            return _grid(grid)
        p = _grid(patch_size if patch_size is not None else ctx.get('mask_patch_size', 16))
        return ctx.image_size[0] // p[0], ctx.image_size[1] // p[1]

    @preprocess.register('beit_mask', random=True, eval_ok=True)
    def beit_mask(example, ctx, grid=None, num_masking_patches=75, min_num_patches=16, min_aspect=0.3,
                  max_num_patches=None, patch_size=None, key='patch_mask'):
        """BEiT blockwise mask -> example[key] (bool [h*w]); grid from `grid` or image_size // patch_size."""
        h, w = grid_of(ctx, grid, patch_size)

        def fn(s):
            return blockwise_mask(s, (h, w), num_masking_patches, min_num_patches, min_aspect,
                                  max_num_patches).reshape(-1)

        m = tf.numpy_function(fn, [example_seed(example, ctx, 1)], tf.bool, stateful=False)
        example[key] = tf.ensure_shape(m, [h * w])
        return example

    @preprocess.register('random_mask', random=True, eval_ok=True)
    def random_mask_op(example, ctx, grid=None, mask_ratio=0.75, patch_size=None, key='patch_mask'):
        """MAE uniform random mask -> example[key] (bool [h*w])."""
        h, w = grid_of(ctx, grid, patch_size)

        def fn(s):
            return random_mask(s, (h, w), mask_ratio).reshape(-1)

        m = tf.numpy_function(fn, [example_seed(example, ctx, 2)], tf.bool, stateful=False)
        example[key] = tf.ensure_shape(m, [h * w])
        return example


try:
    _register_ops()
except ImportError:  # TensorFlow absent: the numpy and JAX functions still work.
    pass


# ----------------------------------------------------------------------------------------------------------------
# Device side (JAX).
# ----------------------------------------------------------------------------------------------------------------
def random_ids_shuffle(rng, batch: int, num_patches: int):
    """MAE: a uniformly random permutation of the patches per example (the first num_keep stay visible)."""
    import jax

    noise = jax.random.uniform(rng, (batch, num_patches))
    return jax.numpy.argsort(noise, axis=1)


def semantic_ids_shuffle(rng, importance, eps: float = 1e-12):
    """MILAN's semantic-aware sampling: a permutation drawn without replacement with probability ∝ importance.

    Gumbel-top-k: sorting log(importance) + Gumbel noise in decreasing order gives the Plackett-Luce order of
    sequential multinomial sampling without replacement (torch.multinomial(importance, N) in MILAN's code), so
    high-importance patches tend to come first, i.e. to stay *visible*.

    Args:
        rng: a JAX key.
        importance: [B, N] non-negative weights (e.g. the teacher's class-token attention over the patches).
        eps: floor inside the log (zero-importance patches come last).
    """
    import jax
    import jax.numpy as jnp

    g = jax.random.gumbel(rng, importance.shape, jnp.float32)
    keys = jnp.log(jnp.maximum(importance.astype(jnp.float32), eps)) + g
    return jnp.argsort(-keys, axis=1)


def mask_from_shuffle(ids_shuffle, num_keep: int):
    """(mask [B, N] bool, True = masked, in patch order; ids_restore [B, N]) from a per-example permutation."""
    import jax.numpy as jnp

    ids_restore = jnp.argsort(ids_shuffle, axis=1)
    n = ids_shuffle.shape[1]
    shuffled_mask = jnp.arange(n)[None, :] >= num_keep
    mask = jnp.take_along_axis(jnp.broadcast_to(shuffled_mask, ids_shuffle.shape), ids_restore, axis=1)
    return mask, ids_restore


def num_keep_for(num_patches: int, mask_ratio: float) -> int:
    """MAE's count of visible patches: int(N * (1 - mask_ratio)) (49 of 196 at 0.75)."""
    return int(num_patches * (1.0 - mask_ratio))
