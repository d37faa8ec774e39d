"""Controllability metrics with cluster-bootstrap confidence intervals.

Several generations share one prompt, so rows are not independent: resampling rows would make the
intervals too narrow whenever prompts differ. Every interval here therefore resamples *groups*
(prompts) with replacement. A resample is a vector of multinomial counts over groups, so any
statistic built from per-group sums (Pearson r, OLS slope, bin means) is one matrix product for
all resamples at once; Spearman needs the ranks of each resample, which a cumulative sum of the
resampled row weights in sorted order gives without re-sorting.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from scipy import stats

from ..stats import CHUNK_CELLS, boot_counts, group_index, percentile_ci


# ---------------------------------------------------------------- resampling
def _r_and_slope(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r and OLS slope (y on x) from columns n, Σx, Σy, Σxx, Σyy, Σxy."""
    n, sx, sy, sxx, syy, sxy = s.T
    cov = n * sxy - sx * sy
    vx = n * sxx - sx * sx
    vy = n * syy - sy * sy
    # Sums of squares cancel to rounding noise, not exactly zero, when a resample is constant.
    vx = np.where(vx > 1e-12 * np.maximum(n * sxx, 1e-300), vx, np.nan)
    vy = np.where(vy > 1e-12 * np.maximum(n * syy, 1e-300), vy, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(cov / np.sqrt(vx * vy), -1.0, 1.0), cov / vx


def _group_moments(x: np.ndarray, y: np.ndarray, gidx: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group n, Σx, Σy, Σxx, Σyy, Σxy; centring first keeps the sums well conditioned."""
    x = x - x.mean()
    y = y - y.mean()
    cols = [np.ones_like(x), x, y, x * x, y * y, x * y]
    return np.stack([np.bincount(gidx, weights=c, minlength=n_groups) for c in cols], axis=1)


def _weighted_midranks(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average ranks of ``values`` in each resample, where row i appears ``w[b, i]`` times."""
    order = np.argsort(values, kind="stable")
    uniq, first = np.unique(values[order], return_index=True)
    last = np.r_[first[1:], len(values)] - 1
    inverse = np.searchsorted(uniq, values)
    cum = np.cumsum(w[:, order], axis=1)[:, last]             # weight at or below each value
    count = np.diff(cum, axis=1, prepend=0.0)                  # weight of each tied value
    return (cum - count + (count + 1) / 2)[:, inverse]


def _weighted_pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Row-wise weighted Pearson r of (B, n) arrays ``a`` and ``b`` with weights ``w``."""
    s = np.stack([w.sum(1), (w * a).sum(1), (w * b).sum(1), (w * a * a).sum(1),
                  (w * b * b).sum(1), (w * a * b).sum(1)], axis=1)
    return _r_and_slope(s)[0]


# ---------------------------------------------------------------- controllability
def _none_if_nan(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _bin_index(targets: np.ndarray, n_bins: int) -> np.ndarray:
    """The equal-width bin over [0, 1] of each target (1.0 falls in the last bin)."""
    return np.clip(np.floor(np.clip(targets, 0.0, 1.0) * n_bins).astype(int), 0, n_bins - 1)


def _bins(targets: np.ndarray, actuals: np.ndarray, lengths: np.ndarray, gidx: np.ndarray,
          n_groups: int, n_bins: int, boots: list[np.ndarray]) -> list[dict[str, Any]]:
    """Equal-width target bins over [0, 1] with cluster-bootstrap CIs of each bin's mean actual."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = _bin_index(targets, n_bins)
    flat = gidx * n_bins + which
    size = n_groups * n_bins
    counts = np.bincount(flat, minlength=size).reshape(n_groups, n_bins).astype(float)
    sums = np.bincount(flat, weights=actuals, minlength=size).reshape(n_groups, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot_means = np.concatenate([(w @ sums) / (w @ counts) for w in boots]) if boots else None
    out = []
    for k in range(n_bins):
        m = which == k
        lo = hi = None
        if m.any() and boot_means is not None:
            lo, hi = percentile_ci(boot_means[:, k])
        out.append({"lo": round(float(edges[k]), 10), "hi": round(float(edges[k + 1]), 10),
                    "n": int(m.sum()),
                    "mean_target": float(targets[m].mean()) if m.any() else None,
                    "mean_actual": float(actuals[m].mean()) if m.any() else None,
                    "actual_ci_low": lo, "actual_ci_high": hi,
                    "mean_length": float(lengths[m].mean()) if m.any() else None})
    return out


OTHER_OPENER = "other"


def opener_shares(targets: np.ndarray, responses: list[str], openers: list[str],
                  n_bins: int = 5) -> list[dict[str, Any]]:
    """Per equal-width target bin, the share of responses that start with each opener.

    It shows how a policy trained on steered samples hits its targets: by which opener it picks.
    Replies and openers are compared whitespace-normalised (runs of spaces and newlines count as
    one space, leading and trailing ones are dropped) and with their case kept. A reply counts
    for an opener when it starts with the opener's first min(3, n) words (n: the opener's word
    count), so a reply that begins the opener and then goes on in its own words still counts, or
    when the whole reply is a prefix of the opener (a reply cut off inside it). Words are
    compared whole, except that the last of them may carry punctuation in the reply: "I'm
    sorry, but" starts with "I'm sorry", while "I can't" does not start with "I can", nor
    "Surely" with "Sure". Among the openers a reply counts for, it goes to the one it shares the
    longest start with (in characters), on a tie to the shorter opener, then to the one listed
    first; a reply that counts for none is ``"other"``. Each reply counts once.
    """
    x = np.asarray(targets, dtype=float).reshape(-1)
    if x.size != len(responses):
        raise ValueError(f"{x.size} targets but {len(responses)} responses")
    norm = {o: " ".join(o.split()) for o in openers if o.split()}
    heads = {o: o.split()[:3] for o in norm}

    def starts_with(words: list[str], head: list[str]) -> bool:
        if len(words) < len(head) or words[:len(head) - 1] != head[:-1]:
            return False
        last, want = words[len(head) - 1], head[-1]
        return last.startswith(want) and not any(c.isalnum() for c in last[len(want):])

    def opener_of(response: str) -> str:
        words = response.split()
        r = " ".join(words)
        if not r:
            return OTHER_OPENER
        best, best_key = OTHER_OPENER, None
        for rank, (o, full) in enumerate(norm.items()):
            if not (starts_with(words, heads[o]) or full.startswith(r)):
                continue
            key = (len(os.path.commonprefix([r, full])), -len(full), -rank)
            if best_key is None or key > best_key:
                best, best_key = o, key
        return best

    names = [opener_of(r) for r in responses]
    which = _bin_index(x, n_bins)
    out = []
    for k in range(n_bins):
        sel = [nm for nm, w in zip(names, which) if w == k]
        share = {o: (sel.count(o) / len(sel) if sel else None)
                 for o in [o for o in openers if o] + [OTHER_OPENER]}
        out.append({"lo": k / n_bins, "hi": (k + 1) / n_bins, "n": len(sel), "share": share})
    return out


def controllability(targets: np.ndarray, actuals: np.ndarray, lengths: np.ndarray, *,
                    groups: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
                    n_bins: int = 5) -> dict[str, Any]:
    """How well the achieved reward follows the requested one, with cluster-bootstrap CIs.

    ``targets`` and ``actuals`` are rewards in [0, 1], ``lengths`` response lengths in tokens and
    ``groups`` the prompt id of each row (``None``: rows are independent). Returns plain JSON
    values; statistics that are undefined (fewer than 3 rows, a constant input) are ``None`` and
    ``note`` says why. ``length_r`` is the correlation of target with length: a model that hits
    high targets only by writing more shows it here.
    """
    x = np.asarray(targets, dtype=float).reshape(-1)
    y = np.asarray(actuals, dtype=float).reshape(-1)
    ln = np.asarray(lengths, dtype=float).reshape(-1)
    n = x.size
    if y.size != n or ln.size != n:
        raise ValueError(f"targets, actuals and lengths differ in length: {n}, {y.size}, {ln.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all() and np.isfinite(ln).all()):
        raise ValueError("targets, actuals and lengths must be finite")
    gidx, g = group_index(groups, n)
    notes: list[str] = []
    res: dict[str, Any] = {
        "n": int(n), "n_groups": int(g), "n_boot": int(n_boot), "seed": int(seed),
        "pearson_r": None, "ci_low": None, "ci_high": None,
        "spearman_r": None, "spearman_ci_low": None, "spearman_ci_high": None,
        "slope": None, "slope_ci_low": None, "slope_ci_high": None, "intercept": None,
        "mean_actual": float(y.mean()) if n else None,
        "std_actual": float(y.std(ddof=1)) if n > 1 else None,
        "within_prompt_r": None, "length_r": None, "length_ci_low": None, "length_ci_high": None,
    }
    boots = list(boot_counts(g, n_boot, seed)) if g >= 2 and n_boot > 0 else []
    res["bins"] = _bins(x, y, ln, gidx, g, n_bins, boots) if n else []
    if n < 3:
        res["note"] = f"n={n} < 3: correlations undefined"
        return res
    const_x, const_y, const_len = np.ptp(x) == 0, np.ptp(y) == 0, np.ptp(ln) == 0
    if const_x:
        notes.append("constant targets: correlations and slope undefined")
    if const_y:
        notes.append("constant actuals: correlations undefined")
    if g < 2:
        notes.append("fewer than 2 groups: no bootstrap CIs")

    if not const_x:
        fit = stats.linregress(x, y)
        res.update(slope=float(fit.slope), intercept=float(fit.intercept))
    if not (const_x or const_y):
        res["pearson_r"] = float(stats.pearsonr(x, y).statistic)
        res["spearman_r"] = _none_if_nan(float(stats.spearmanr(x, y).statistic))
    if not (const_x or const_len):
        res["length_r"] = float(stats.pearsonr(x, ln).statistic)

    if boots and not const_x:
        moments = _group_moments(x, y, gidx, g)
        r_b, slope_b = _r_and_slope(np.concatenate([w @ moments for w in boots]))
        if not const_y:
            res["ci_low"], res["ci_high"] = percentile_ci(r_b)
            rho = []
            for w in boots:
                for sub in np.array_split(w, max(1, w.shape[0] * n // CHUNK_CELLS)):
                    row_w = sub[:, gidx]  # each row weighs as often as its group was drawn
                    rho.append(_weighted_pearson(_weighted_midranks(x, row_w),
                                                 _weighted_midranks(y, row_w), row_w))
            res["spearman_ci_low"], res["spearman_ci_high"] = percentile_ci(np.concatenate(rho))
        res["slope_ci_low"], res["slope_ci_high"] = percentile_ci(slope_b)
        if not const_len:
            len_moments = _group_moments(x, ln, gidx, g)
            len_b, _ = _r_and_slope(np.concatenate([w @ len_moments for w in boots]))
            res["length_ci_low"], res["length_ci_high"] = percentile_ci(len_b)

    # Within-prompt r removes each prompt's mean, so it measures steering *for a fixed prompt*,
    # free of the between-prompt differences that can drive the pooled r.
    if groups is None:
        notes.append("no groups: within-prompt r undefined")
    else:
        size = np.bincount(gidx, minlength=g)
        xd = x - np.bincount(gidx, weights=x, minlength=g)[gidx] / size[gidx]
        yd = y - np.bincount(gidx, weights=y, minlength=g)[gidx] / size[gidx]
        if np.ptp(xd) > 1e-12 and np.ptp(yd) > 1e-12:
            res["within_prompt_r"] = float(stats.pearsonr(xd, yd).statistic)
        else:
            notes.append("no within-prompt variation: within-prompt r undefined")
    res["note"] = "; ".join(notes) or None
    return res


def seed_prompt_bootstrap(cells: dict[str, dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]],
                          n_groups: int, *, primary: str | None = None, n_boot: int = 1000,
                          seed: int = 0) -> dict[str, dict[str, Any]]:
    """Mean Pearson r over seeds per model, with a CI from a bootstrap over prompts and seeds,
    and the paired difference of the primary model against every other.

    ``cells[model][seed] = (targets, actuals, prompt_index)``, the prompt index in
    ``0..n_groups-1`` shared by every model. Each resample draws the prompts with replacement
    (one draw for every model and seed, so that differences are paired by prompt) and the seeds
    with replacement; a model's statistic is the mean over the drawn seeds of r computed on the
    drawn prompts. Returns per model ``r`` (the mean over its seeds), ``ci_low``, ``ci_high``,
    ``per_seed`` and, for the others, ``diff_vs_primary`` (primary minus model) with its CI.
    """
    seeds = sorted({s for per in cells.values() for s in per})
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot).astype(float)
    c = rng.multinomial(len(seeds), np.full(len(seeds), 1.0 / len(seeds)), size=n_boot).astype(float)
    boot: dict[str, np.ndarray] = {}
    out: dict[str, dict[str, Any]] = {}
    for model, per in cells.items():
        rs, point = np.full((n_boot, len(seeds)), np.nan), {}
        for k, s in enumerate(seeds):
            if s not in per:
                continue
            x, y, g = per[s]
            if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
                point[s] = None
                continue
            point[s] = float(stats.pearsonr(x, y).statistic)
            rs[:, k] = _r_and_slope(w @ _group_moments(x, y, g, n_groups))[0]
        have = ~np.isnan(rs)
        weights = c * have
        with np.errstate(invalid="ignore", divide="ignore"):
            boot[model] = np.nansum(rs * weights, axis=1) / weights.sum(axis=1)
        vals = [v for v in point.values() if v is not None]
        lo, hi = percentile_ci(boot[model])
        out[model] = {"r": float(np.mean(vals)) if vals else None, "ci_low": lo, "ci_high": hi,
                      "per_seed": {str(s): point.get(s) for s in seeds if s in per},
                      "n_seeds": len([s for s in seeds if s in per]), "n_boot": n_boot}
    if primary in boot:
        for model in out:
            if model == primary or out[model]["r"] is None or out[primary]["r"] is None:
                continue
            lo, hi = percentile_ci(boot[primary] - boot[model])
            out[model]["diff_vs_primary"] = {"diff": out[primary]["r"] - out[model]["r"],
                                             "ci_low": lo, "ci_high": hi}
    return out


def satisficing(thresholds: np.ndarray, actuals: np.ndarray, groups: np.ndarray,
                n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """What a ``>= x`` target asks for: the share of responses whose actual reward is at least
    x, and their mean reward, each with a CI from a bootstrap over prompts."""
    from ..stats import bootstrap_mean_ci

    x, y = np.asarray(thresholds, dtype=float), np.asarray(actuals, dtype=float)
    met = (y >= x).astype(float)
    lo, hi = bootstrap_mean_ci(met, n_boot, seed, groups=groups)
    mlo, mhi = bootstrap_mean_ci(y, n_boot, seed, groups=groups)
    return {"n": int(x.size), "share_met": float(met.mean()), "share_ci_low": lo,
            "share_ci_high": hi, "mean_actual": float(y.mean()), "mean_ci_low": mlo,
            "mean_ci_high": mhi}
