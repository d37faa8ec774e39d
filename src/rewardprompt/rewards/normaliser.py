"""Map a reward model's raw scores to [0, 1] by their empirical CDF on the training responses.

Raw Bradley-Terry scores have an arbitrary offset and scale (only differences are trained), so
the policy cannot be conditioned on them directly. The empirical CDF turns a raw score into "the
fraction of training responses this one beats": monotone, in [0, 1], and roughly uniform on the
training distribution, which is what reward-conditioned prompts need.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: At most this many knots are stored: enough for a smooth CDF, small enough for a readable JSON.
MAX_KNOTS = 1001


def finite_scores(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    """``values`` as a 1-D float array; NaN or infinite entries raise a ValueError naming them."""
    arr = np.asarray(values, dtype=float).reshape(-1)
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.flatnonzero(bad)
        kinds = sorted({"NaN" if np.isnan(arr[i]) else "infinite" for i in idx})
        raise ValueError(f"{what}: {len(idx)} {' and '.join(kinds)} score(s), first at index "
                         f"{int(idx[0])}; raw reward scores must be finite")
    return arr


@dataclass
class EmpiricalCDFNormaliser:
    """Piecewise-linear empirical CDF of raw scores.

    ``knots_x`` are raw-score quantiles (strictly increasing) and ``knots_q`` their CDF levels
    (non-decreasing, in [0, 1]). Scores between knots are linearly interpolated; scores below the
    smallest training score map to 0 and above the largest to 1.
    """

    knots_x: list[float]
    knots_q: list[float]
    n_fit: int = 0
    _x: np.ndarray = field(init=False, repr=False)
    _q: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        x = finite_scores(self.knots_x, "normaliser knots_x")
        q = finite_scores(self.knots_q, "normaliser knots_q")
        if x.size == 0 or x.size != q.size:
            raise ValueError(f"normaliser needs equally many knots_x and knots_q (got {x.size} and "
                             f"{q.size}), at least one")
        if np.any(np.diff(x) <= 0):
            raise ValueError("normaliser knots_x must be strictly increasing")
        if np.any(np.diff(q) < 0) or q.min() < 0 or q.max() > 1:
            raise ValueError("normaliser knots_q must be non-decreasing and within [0, 1]")
        self._x, self._q = x, q
        self.knots_x, self.knots_q = x.tolist(), q.tolist()

    @classmethod
    def fit(cls, raw_scores: Sequence[float] | np.ndarray) -> EmpiricalCDFNormaliser:
        """Fit on the raw scores of the reward model's training responses."""
        raw = finite_scores(raw_scores, "fitting the normaliser")
        if raw.size == 0:
            raise ValueError("fitting the normaliser: no scores given")
        levels = np.linspace(0.0, 1.0, min(raw.size, MAX_KNOTS))
        x = np.quantile(raw, levels)
        # Tied quantiles (repeated raw scores) would make the interpolation ill-defined; collapse
        # each run of equal x to one knot at the mean level, which keeps the map monotone.
        ux, inverse = np.unique(x, return_inverse=True)
        uq = np.bincount(inverse, weights=levels) / np.bincount(inverse)
        if ux.size == 1:  # constant scores: every input is "typical"
            uq = np.array([0.5])
        return cls(knots_x=ux.tolist(), knots_q=uq.tolist(), n_fit=int(raw.size))

    def __call__(self, raw_scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """Normalised scores in [0, 1], same length as ``raw_scores``."""
        raw = finite_scores(raw_scores, "normalising reward scores")
        if self._x.size == 1:
            return np.full(raw.shape, self._q[0])
        out = np.interp(raw, self._x, self._q, left=0.0, right=1.0)
        return np.clip(out, 0.0, 1.0)

    transform = __call__

    def to_dict(self) -> dict[str, Any]:
        return {"type": "empirical_cdf", "n_fit": self.n_fit, "knots_x": self.knots_x,
                "knots_q": self.knots_q}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmpiricalCDFNormaliser:
        if d.get("type", "empirical_cdf") != "empirical_cdf":
            raise ValueError(f"unknown normaliser type {d.get('type')!r} "
                             "(expected 'empirical_cdf')")
        try:
            return cls(knots_x=d["knots_x"], knots_q=d["knots_q"], n_fit=int(d.get("n_fit", 0)))
        except KeyError as exc:
            raise ValueError(f"normaliser is missing the field {exc.args[0]!r}") from None
