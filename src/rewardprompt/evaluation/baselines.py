"""The baselines a sceptic would run beside a reward-conditioned policy, on the same prompts,
targets and sampling settings:

- ``uncond_sft``: the same replies and steps, no reward block (trained by the recipe);
- ``prompted``: the base model told the targets in words in its system prompt (no training;
  ``GenerateConfig.system`` with ``PROMPTED_SYSTEM``);
- ``opener_rule``: no training; the opener whose mean training label is nearest the target
  starts the reply and the base policy continues it (``GenerateConfig.opener_rule``, with the
  means from ``opener_means``);
- ``best_of_N``: N samples of the unconditioned policy, keeping the one whose labelling-RM
  rewards are nearest the target (``run_best_of``): inference-time control at N times the cost.

Each generations row carries its cost: policy samples and reward-model calls per response.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runs import read_jsonl, read_rows, recorded, write_jsonl

#: The prompted-target baseline's system message ({targets}: "helpful 0.42, harmless 0.75").
PROMPTED_SYSTEM = ("Every reply you write is scored by reward models from 0 (worst) to 1 (best) "
                   "for each of: {dimensions}. Write your reply so that its scores are: {targets}.")
BASELINES = ("uncond_sft", "prompted", "opener_rule")
_BEST_OF = re.compile(r"best_of_([1-9][0-9]*)")


def best_of_n(name: str) -> int | None:
    """N of a ``best_of_N`` baseline name, else None."""
    m = _BEST_OF.fullmatch(name)
    return int(m.group(1)) if m else None


def check_baselines(names: list[str]) -> None:
    bad = [n for n in names if n not in BASELINES and best_of_n(n) is None]
    if bad:
        raise ValueError(f"unknown baseline(s) {bad}: choose from {', '.join(BASELINES)} or "
                         "best_of_N (N >= 1)")
    if best_of_n_list(names) and "uncond_sft" not in names:
        raise ValueError("best_of_N samples the unconditioned policy: add uncond_sft")


def best_of_n_list(names: list[str]) -> list[int]:
    return sorted({n for n in map(best_of_n, names) if n is not None})


def opener_means(labels: str | Path, openers: list[str], dims: list[str]) -> dict[str, dict[str, float]]:
    """Per opener, the mean training label of each dimension over the steered replies it started
    (the rows of ``labels`` whose ``prefill`` is that opener). An opener with no row is left out."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in read_jsonl(labels):
        if r.get("prefill") in openers:
            for d in dims:
                sums[r["prefill"]][d].append(float(r["rewards"][d]))
    return {o: {d: round(float(np.mean(sums[o][d])), 4) for d in dims}
            for o in openers if o in sums}


@dataclass
class BestOfConfig:
    """Best-of-N toward the target: for each target row, the pool sample whose labelling-RM
    rewards are nearest (squared distance summed over the dimensions)."""

    targets: str
    """Generations whose rows (prompt id, targets) best-of-N answers: the unconditioned
    baseline's, which meet the conditioned policy's targets."""
    pool: str
    """Samples of the same policy on the same prompts, at least N per prompt."""
    scorers: dict[str, str] = field(default_factory=dict)
    """Dimension -> the labelling scorer that picks (never the held-out test RM)."""
    n: list[int] = field(default_factory=lambda: [4, 16])
    """The N of each best-of-N."""
    out: str = ""
    """Where to write, with {n} for N (e.g. RUN/generate/best_of_{n}_s0.jsonl)."""
    run: str | None = None
    """A run directory (the stage records itself in its manifest)."""


@recorded("best_of")
def run_best_of(cfg: BestOfConfig) -> dict:
    """Write one generations file per N. Where a prompt has k target rows and its pool holds at
    least k * N samples, each row draws from its own N (independent picks); otherwise every row
    of the prompt picks from the same first N samples, so that each pick is still a best-of-N of
    independent samples while picks for one prompt share them (the intervals resample prompts,
    which keeps that dependence inside one resampled unit)."""
    from ..rewards.scorer import scorer_for, scorer_identity
    from .controllability import GENERATION_FIELDS

    if not cfg.scorers or not cfg.n or "{n}" not in cfg.out:
        raise ValueError("best_of needs scorers, n and an out path with {n}")
    rows = read_rows(cfg.targets, GENERATION_FIELDS, what="generations")
    pool = read_rows(cfg.pool, GENERATION_FIELDS, what="generations")
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for s in pool:
        by_prompt[str(s["id"])].append(s)
    targets_of: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        targets_of[str(r["id"])].append(i)
    need = max(cfg.n)
    short = sorted(p for p in targets_of if len(by_prompt[p]) < need)
    if short:
        raise ValueError(f"{cfg.pool}: {len(short)} prompt(s) have fewer than {need} samples "
                         f"(e.g. id {short[0]})")
    scores = {d: scorer_for(spec).score([s["prompt"] for s in pool], [s["response"] for s in pool])
              for d, spec in cfg.scorers.items()}
    # Which scorer (by content) each picked_by score comes from: evaluate reuses the scores
    # when it judges with the same one.
    picked_with = {d: scorer_identity(spec) for d, spec in cfg.scorers.items()}
    for j, s in enumerate(pool):
        s["_score"] = {d: float(scores[d][j]) for d in cfg.scorers}
    summary = {}
    for n in cfg.n:
        out_rows, independent = [], 0
        for pid, idx in targets_of.items():
            cands = by_prompt[pid]
            own = len(cands) >= len(idx) * n
            independent += own * len(idx)
            for k, i in enumerate(idx):
                r = rows[i]
                group = cands[k * n:(k + 1) * n] if own else cands[:n]
                best = min(group, key=lambda s: sum((s["_score"][d] - r["targets"][d]) ** 2
                                                    for d in cfg.scorers))
                out_rows.append({**{k2: v for k2, v in r.items() if k2 not in ("response",)},
                                 "model": f"best_of_{n}", "response": best["response"],
                                 "n_tokens": best["n_tokens"], "finished": best.get("finished"),
                                 "picked_by": {d: round(best["_score"][d], 4) for d in cfg.scorers},
                                 "picked_with": picked_with,
                                 "cost": {"samples": n, "rm_calls": n * len(cfg.scorers)},
                                 "independent_pool": own})
        write_jsonl(cfg.out.format(n=n), out_rows)
        summary[f"best_of_{n}"] = {"n": len(out_rows), "independent_share": independent / len(rows)}
    return summary
