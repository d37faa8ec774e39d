"""The evaluate stage: score generations with each dimension's scorer, compute controllability.

For every model (the conditioned policy and each baseline) and every reward dimension: how well
the actual reward tracks the target (Pearson/Spearman with cluster-bootstrap CIs, slope), the mean
actual reward and response length per target bin (length is the obvious confound). Baselines were
sampled with the same recorded targets but without the block, so their correlation is the floor.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runs import SCORES, messages_error, read_rows, recorded, run_generations, update_json, write_jsonl


@dataclass
class EvaluateConfig:
    """Score generations with each dimension's scorer and measure how actual tracks target."""

    generations: list[str] = field(default_factory=list)
    """Generate-stage JSONL files (default: every RUN/generate/*.jsonl but the steered samples)."""
    scorers: dict[str, str] = field(default_factory=dict)
    """Dimension -> the labelling scorer (RM folder, synthetic:..., module:function)."""
    test_scorers: dict[str, str] = field(default_factory=dict)
    """Dimension -> a held-out scorer that never labelled (the over-optimisation check)."""
    out: str | None = None
    """Folder for eval/scores.jsonl and metrics.json (default: the run directory)."""
    run: str | None = None
    """A run directory: the stage records itself in its manifest and writes its metrics there."""
    primary: str = "conditioned"
    """The model whose metrics go at the top level; the others are baselines."""
    openers: list[str] = field(default_factory=list)
    """Openers (e.g. the steering prefills of the training samples): per target bin, the share
    of replies that start with each, as DIM.openers. Empty: not computed."""
    n_boot: int = 1000
    """Bootstrap resamples (over prompts) for every interval."""
    seed: int = 0
    """Seed of the bootstrap."""


#: What evaluate needs of every generation row.
GENERATION_FIELDS = {"id": (str, int), "model": str, "prompt": messages_error, "response": str,
                     "targets": dict, "n_tokens": int}


@recorded("evaluate")
def run_evaluate(cfg: EvaluateConfig) -> dict:
    from ..rewards.scorer import load_scorer
    from .metrics import controllability, opener_shares

    if not cfg.scorers:
        raise ValueError("evaluate needs at least one scorer (--scorers DIM SPEC ...)")
    out = Path(cfg.out or cfg.run or "")
    if not (cfg.out or cfg.run):
        raise ValueError("give --out or --run")
    generations = cfg.generations or run_generations(cfg.run)
    if not generations:
        raise ValueError("no generations given (--generations) and none in RUN/generate")
    dim_fields = {f"targets.{d}": float for d in cfg.scorers}
    rows = [r for path in generations
            for r in read_rows(path, {**GENERATION_FIELDS, **dim_fields}, what="generations")]
    prompts = [r["prompt"] for r in rows]
    responses = [r["response"] for r in rows]
    for key, specs in (("actual", cfg.scorers), ("actual_test", cfg.test_scorers)):
        for dim, spec in specs.items():
            scores = load_scorer(spec).score(prompts, responses)
            for r, s in zip(rows, scores):
                r.setdefault(key, {})[dim] = round(float(s), 4)
    write_jsonl(out / SCORES, rows)

    groups = np.array([r["id"] for r in rows])
    models = np.array([r["model"] for r in rows])
    lengths = np.array([r["n_tokens"] for r in rows], dtype=float)
    columns = {(key, dim): np.array([r[key][dim] for r in rows])
               for key, specs in (("targets", cfg.scorers), ("actual", cfg.scorers),
                                  ("actual_test", cfg.test_scorers)) for dim in specs}
    per_model: dict[str, dict] = {}
    for model in dict.fromkeys(models):
        sel = models == model
        texts = [r for r, keep in zip(responses, sel) if keep]
        per_dim = {}
        for dim in cfg.scorers:
            t = columns["targets", dim][sel]
            stats = lambda actual: controllability(t, actual[sel], lengths[sel], groups=groups[sel],
                                                   n_boot=cfg.n_boot, seed=cfg.seed)
            per_dim[dim] = stats(columns["actual", dim])
            if dim in cfg.test_scorers:
                per_dim[dim]["test_rm"] = stats(columns["actual_test", dim])
            if cfg.openers:
                per_dim[dim]["openers"] = opener_shares(t, texts, cfg.openers)
        per_model[str(model)] = per_dim

    def replace_sections(metrics: dict) -> None:
        # This stage owns the controllability sections: drop any from an earlier evaluation.
        for dim in metrics.get("dimensions", []):
            metrics.pop(dim, None)
        metrics.update(per_model.get(cfg.primary, {}), dimensions=list(cfg.scorers),
                       primary=cfg.primary,
                       baselines={m: v for m, v in per_model.items() if m != cfg.primary})
        metrics["goal"] = goal(metrics, list(cfg.scorers))

    metrics = update_json(out / "metrics.json", replace_sections)
    return {d: {k: metrics.get(d, {}).get(k) for k in ("pearson_r", "ci_low", "ci_high")}
            for d in cfg.scorers}


#: The baseline the goal is stated against: the same replies and steps, no reward block.
GOAL_BASELINE = "uncond_sft"


def goal(metrics: dict, dims: list[str]) -> dict:
    """Per dimension, whether the primary model met the bar, stated from the measured figures:
    r >= 0.5, its CI above the unconditioned baseline's, and its top target bin above the
    baseline's (None where the baseline or a figure is missing)."""
    out = {}
    for dim in dims:
        m = metrics.get(dim, {})
        b = metrics.get("baselines", {}).get(GOAL_BASELINE, {}).get(dim, {})
        r, lo, b_hi = m.get("pearson_r"), m.get("ci_low"), b.get("ci_high")
        top_c = (m.get("bins") or [{}])[-1].get("mean_actual")
        top_b = (b.get("bins") or [{}])[-1].get("mean_actual")
        out[dim] = {"r_at_least_0.5": r is not None and r >= 0.5,
                    "ci_above_baseline_ci": None if lo is None or b_hi is None else lo > b_hi,
                    "top_bin_above_baseline": None if top_c is None or top_b is None
                    else top_c > top_b}
    return out
