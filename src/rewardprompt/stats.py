"""Bootstrap confidence intervals, shared by every stage that reports one.

Rows that share a prompt are not independent, so intervals resample *groups* (prompts) with
replacement. A resample is a vector of multinomial counts over groups, so a statistic built from
per-group sums is one matrix product for all resamples at once.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

ALPHA = 0.05
# Groups x resamples held in memory at once (about 16 MB of float64).
CHUNK_CELLS = 2_000_000


def group_index(groups: np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """Map arbitrary group labels to 0..G-1; ``None`` makes every row its own group."""
    if groups is None:
        return np.arange(n), n
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups has shape {groups.shape}, expected ({n},)")
    _, idx = np.unique(groups, return_inverse=True)
    idx = idx.reshape(-1)
    return idx, int(idx.max()) + 1 if n else 0


def boot_counts(n_groups: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield blocks of resample counts, shape (block, n_groups); each row sums to n_groups.

    Blocks keep memory bounded for large inputs; drawing them in order from one generator keeps
    the result identical for a given seed whatever the block size.
    """
    rng = np.random.default_rng(seed)
    p = np.full(n_groups, 1.0 / n_groups)
    block = max(1, CHUNK_CELLS // max(n_groups, 1))
    for start in range(0, n_boot, block):
        yield rng.multinomial(n_groups, p, size=min(block, n_boot - start)).astype(float)


def percentile_ci(samples: np.ndarray) -> tuple[float | None, float | None]:
    """95% percentile interval, ignoring resamples where the statistic is undefined."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None, None
    lo, hi = np.percentile(finite, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return float(lo), float(hi)


def bootstrap_mean_ci(x: np.ndarray, n_boot: int = 1000, seed: int = 0, *,
                      groups: np.ndarray | None = None) -> tuple[float, float]:
    """95% percentile bootstrap CI of the mean of ``x`` (resampling ``groups`` when given)."""
    x = np.asarray(x, dtype=float).reshape(-1)
    if x.size == 0:
        raise ValueError("bootstrap_mean_ci needs at least one value")
    gidx, g = group_index(groups, x.size)
    sums = np.bincount(gidx, weights=x, minlength=g)
    sizes = np.bincount(gidx, minlength=g).astype(float)
    means = np.concatenate([(w @ sums) / (w @ sizes) for w in boot_counts(g, n_boot, seed)])
    lo, hi = percentile_ci(means)
    return float(lo), float(hi)  # every resample has n > 0 rows, so the CI always exists


def accuracy_ci(correct: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Reward-model pairwise accuracy with a 95% bootstrap CI over test pairs."""
    c = np.asarray(correct, dtype=float).reshape(-1)
    if c.size == 0:
        return {"accuracy": None, "ci_low": None, "ci_high": None, "n": 0}
    lo, hi = bootstrap_mean_ci(c, n_boot=n_boot, seed=seed)
    return {"accuracy": float(c.mean()), "ci_low": lo, "ci_high": hi, "n": int(c.size)}
