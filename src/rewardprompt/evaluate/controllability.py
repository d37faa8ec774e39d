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

from ..rewards.scorer import load_scorer
from ..runs import atomic_write_json, read_json, read_jsonl, write_jsonl
from .metrics import controllability


@dataclass
class EvaluateConfig:
    generations: list[str] = field(default_factory=list)  # generate-stage JSONL files
    scorers: dict[str, str] = field(default_factory=dict)  # dimension -> RM folder / synthetic:...
    test_scorers: dict[str, str] = field(default_factory=dict)  # held-out RMs (over-optimisation)
    out: str = "runs/demo"                # writes OUT/eval/scores.jsonl and OUT/metrics.json
    primary: str = "conditioned"          # the model whose metrics go at the top level
    n_boot: int = 1000
    seed: int = 0


def run_evaluate(cfg: EvaluateConfig) -> dict:
    out = Path(cfg.out)
    rows = [r for path in cfg.generations for r in read_jsonl(path)]
    if not rows:
        raise ValueError(f"no generations in {cfg.generations}")
    prompts = [r["prompt"] for r in rows]
    responses = [r["response"] for r in rows]
    for key, specs in (("actual", cfg.scorers), ("actual_test", cfg.test_scorers)):
        for dim, spec in specs.items():
            scores = load_scorer(spec).score(prompts, responses)
            for r, s in zip(rows, scores):
                r.setdefault(key, {})[dim] = round(float(s), 4)
    write_jsonl(out / "eval" / "scores.jsonl", rows)

    metrics_path = out / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    # This stage owns the controllability sections: drop any from an earlier evaluation.
    for dim in metrics.get("dimensions", []):
        metrics.pop(dim, None)
    metrics["dimensions"] = list(cfg.scorers)
    metrics["primary"] = cfg.primary
    metrics["baselines"] = {}
    groups_all = np.array([r["id"] for r in rows])
    for model in dict.fromkeys(r["model"] for r in rows):
        sel = np.array([r["model"] == model for r in rows])
        per_dim = {}
        for dim in cfg.scorers:
            t = np.array([r["targets"][dim] for r in rows])[sel]
            a = np.array([r["actual"][dim] for r in rows])[sel]
            n = np.array([r["n_tokens"] for r in rows], dtype=float)[sel]
            per_dim[dim] = controllability(t, a, n, groups=groups_all[sel], n_boot=cfg.n_boot,
                                           seed=cfg.seed)
            if dim in cfg.test_scorers:
                at = np.array([r["actual_test"][dim] for r in rows])[sel]
                per_dim[dim]["test_rm"] = controllability(t, at, n, groups=groups_all[sel],
                                                          n_boot=cfg.n_boot, seed=cfg.seed)
        if model == cfg.primary:
            metrics.update(per_dim)
        else:
            metrics["baselines"][model] = per_dim
    atomic_write_json(metrics_path, metrics)
    return {d: {k: metrics.get(d, {}).get(k) for k in ("pearson_r", "ci_low", "ci_high")}
            for d in cfg.scorers}
