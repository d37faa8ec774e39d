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
from ..runs import read_jsonl, update_json, write_jsonl
from .metrics import controllability, opener_shares


@dataclass
class EvaluateConfig:
    generations: list[str] = field(default_factory=list)  # generate-stage JSONL files
    scorers: dict[str, str] = field(default_factory=dict)  # dimension -> RM folder / synthetic:...
    test_scorers: dict[str, str] = field(default_factory=dict)  # held-out RMs (over-optimisation)
    out: str = "runs/demo"                # writes OUT/eval/scores.jsonl and OUT/metrics.json
    primary: str = "conditioned"          # the model whose metrics go at the top level
    # Openers (e.g. the steering prefills of the training samples): per target bin, the share of
    # responses that start with each, as DIM.openers. [] = not computed.
    openers: list[str] = field(default_factory=list)
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

    metrics = update_json(out / "metrics.json", replace_sections)
    return {d: {k: metrics.get(d, {}).get(k) for k in ("pearson_r", "ci_low", "ci_high")}
            for d in cfg.scorers}
