"""Reward-model evaluation: pairwise accuracy with a bootstrap CI, calibration, a figure.

``evaluate_reward_model(RMEvalConfig)`` is the ``rm eval`` stage; the helpers (``pair_raw``,
``pair_report``, ``bradley_terry_ece``) also report the held-out accuracy of ``rm train``.
Accuracy is compared on raw scores: the normaliser is monotone, so the order is the same, but
its clipping at the ends of the training range would turn some wins into ties.
"""
from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import PairSource, drop_identical
from ..errors import DataError
from ..runs import atomic_write_bytes
from ..stats import accuracy_ci

if TYPE_CHECKING:
    from .model import BaseRewardModel, RewardEnsemble

    #: What ``score_raw`` and friends accept: one reward model or an ensemble of them.
    Scoring = BaseRewardModel | RewardEnsemble

BOOTSTRAP_RESAMPLES = 1000
#: Equal-width probability bins of the expected calibration error.
ECE_BINS = 10


def pair_field(pair: Any, name: str) -> Any:
    """``PreferencePair`` attribute, or the key of an equivalent dict."""
    return pair[name] if isinstance(pair, dict) else getattr(pair, name)


def accuracy_from_raw(chosen_raw: np.ndarray, rejected_raw: np.ndarray) -> dict[str, Any]:
    # Compared on raw scores: the normaliser is monotone, so the order is the same, but its
    # clipping at the ends of the training range would turn some wins into ties.
    wins = (np.asarray(chosen_raw) > np.asarray(rejected_raw)).astype(float)
    return accuracy_ci(wins, n_boot=BOOTSTRAP_RESAMPLES)


def pair_raw(model: Scoring, pairs: Sequence[Any],
              batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores of the chosen and of the rejected replies, in one scoring pass."""
    prompts = [pair_field(p, "prompt") for p in pairs]
    raw = model.score_raw(prompts + prompts,
                          [pair_field(p, "chosen") for p in pairs]
                          + [pair_field(p, "rejected") for p in pairs], batch_size=batch_size)
    return raw[:len(pairs)], raw[len(pairs):]


def pairwise_accuracy(model: Scoring, pairs: Sequence[Any],
                      batch_size: int = 32) -> dict[str, Any]:
    """Fraction of pairs whose chosen response outscores the rejected one, with a 95% CI."""
    return accuracy_from_raw(*pair_raw(model, pairs, batch_size))


def bradley_terry_ece(chosen_raw: np.ndarray, rejected_raw: np.ndarray,
                      n_bins: int = ECE_BINS) -> float | None:
    """Expected calibration error of P(chosen > rejected) = sigmoid(r_chosen - r_rejected).

    The standard ECE, sum over ``n_bins`` equal-width bins of [0, 1] of (bin size / N) x
    |observed frequency - mean forecast|. Which reply of a pair is "first" is arbitrary, so each
    pair enters in both orientations, (p, outcome 1) and (1 - p, outcome 0); otherwise every
    outcome would be 1 and the "ECE" would only be the mean of 1 - p. This equals the top-label
    ECE of the binary classifier (confidence max(p, 1 - p), correct when p > 1/2; a tie scores
    half). ``None`` for no pairs.
    """
    diff = np.asarray(chosen_raw, dtype=float) - np.asarray(rejected_raw, dtype=float)
    if diff.size == 0:
        return None
    from scipy.special import expit

    p = expit(diff)
    forecast = np.concatenate([p, 1.0 - p])
    outcome = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    which = np.minimum((forecast * n_bins).astype(int), n_bins - 1)  # p = 1 goes to the last bin
    # |sum of (outcome - forecast)| over a bin = bin size x |frequency - mean forecast|.
    gaps = np.bincount(which, weights=outcome - forecast, minlength=n_bins)
    return float(np.abs(gaps).sum() / forecast.size)


def pair_report(model: Scoring, chosen_raw: np.ndarray,
                rejected_raw: np.ndarray) -> dict[str, Any]:
    """Accuracy with its 95% CI and n, ECE, and the mean raw and normalised rewards of each side."""
    chosen_raw, rejected_raw = np.asarray(chosen_raw), np.asarray(rejected_raw)
    out = {**accuracy_from_raw(chosen_raw, rejected_raw),
           "ece": bradley_terry_ece(chosen_raw, rejected_raw)}
    if chosen_raw.size == 0:
        return out | dict.fromkeys(("mean_raw_chosen", "mean_raw_rejected", "mean_reward_chosen",
                                    "mean_reward_rejected"))
    out |= {"mean_raw_chosen": float(chosen_raw.mean()),
            "mean_raw_rejected": float(rejected_raw.mean())}
    norm = model.normaliser
    out |= {"mean_reward_chosen": float(norm(chosen_raw).mean()) if norm else None,
            "mean_reward_rejected": float(norm(rejected_raw).mean()) if norm else None}
    return out


# ---------------------------------------------------------------- evaluation
@dataclass
class RMEvalConfig(PairSource):
    """Accuracy and calibration of a reward model (or ensemble) folder on preference pairs."""

    rm: str
    """The reward-model folder."""
    data: str
    """Preference pairs: a file, a shipped name or a Hub id."""
    batch_size: int = 32
    """Pairs per scoring batch."""
    json: bool = False
    """Print the result as one JSON object instead of a sentence."""
    figure: str | None = None
    """Write a PNG of the chosen and rejected reward distributions here."""
    drop_identical: bool = True
    """Skip and count pairs whose chosen equals rejected, or raise."""


def reward_figure(chosen: np.ndarray, rejected: np.ndarray, path: str | Path, *,
                  title: str) -> Path:
    """Histograms of the normalised rewards of chosen and rejected replies, as an atomic PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    fig = Figure(figsize=(6, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for values, label, colour in ((chosen, "chosen", "C2"), (rejected, "rejected", "C3")):
        ax.hist(values, bins=20, range=(0, 1), alpha=0.5, color=colour,
                label=f"{label} (mean {np.mean(values):.3f})")
        ax.axvline(float(np.mean(values)), color=colour, ls="--", lw=1)
    ax.set(xlim=(0, 1), xlabel="normalised reward", ylabel="pairs", title=title)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def evaluate_reward_model(cfg: RMEvalConfig) -> dict[str, Any]:
    """Accuracy = fraction of pairs where score(chosen) > score(rejected), 95% bootstrap CI; ECE
    of the Bradley-Terry probability sigmoid(r_c - r_r) on raw scores; mean raw and normalised
    rewards of chosen and rejected; optionally a figure of their distributions."""
    from .model import RewardModel

    model = RewardModel.load(cfg.rm)
    pairs = cfg.read_pairs(cfg.data)[0]
    pairs, n_identical = drop_identical(pairs, cfg.data, cfg.drop_identical)
    if not pairs:
        raise DataError(f"no preference pairs to evaluate on ({n_identical} identical pair(s) "
                        "skipped)", file=str(cfg.data), code="empty")
    t0 = time.perf_counter()
    chosen_raw, rejected_raw = pair_raw(model, pairs, batch_size=cfg.batch_size)
    result = {"rm": model.name, "data": str(cfg.data),
              **pair_report(model, chosen_raw, rejected_raw),
              "skipped_identical": n_identical, "seconds": round(time.perf_counter() - t0, 2),
              "figure": None}
    if cfg.figure:
        title = (f"{model.name} on {Path(str(cfg.data)).name}: accuracy {result['accuracy']:.3f}, "
                 f"ECE {result['ece']:.3f}, n={result['n']}")
        result["figure"] = str(reward_figure(model.normaliser(chosen_raw),
                                             model.normaliser(rejected_raw), cfg.figure,
                                             title=title))
    if cfg.json:
        print(json.dumps(result), flush=True)
    else:
        print(f"{result['rm']} on {result['data']}: accuracy {result['accuracy']:.3f} "
              f"(95% CI {result['ci_low']:.3f}-{result['ci_high']:.3f}, n={result['n']}), "
              f"ECE {result['ece']:.3f}; mean reward chosen {result['mean_reward_chosen']:.3f} vs "
              f"rejected {result['mean_reward_rejected']:.3f} (raw {result['mean_raw_chosen']:.3f} "
              f"vs {result['mean_raw_rejected']:.3f})", flush=True)
    return result
