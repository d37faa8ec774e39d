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
    split: str | None = None
    """The split the prompts come from (dev or test), recorded with the figures."""
    goal_r: dict[str, float] = field(default_factory=dict)
    """Dimension -> the r the goal asks for (default 0.5)."""
    n_boot: int = 1000
    """Bootstrap resamples (over prompts, and seeds where there are several) for every interval."""
    seed: int = 0
    """Seed of the bootstrap."""


#: What evaluate needs of every generation row.
GENERATION_FIELDS = {"id": (str, int), "model": str, "prompt": messages_error, "response": str,
                     "targets": dict, "n_tokens": int}
#: What a generation row may carry: the sampling seed, the operators of its targets, the range
#: its targets were drawn from, and its cost per response.
GENERATION_OPTIONAL = {"seed": int, "target_ops": dict, "target_range": list, "cost": dict,
                       "finished": bool, "picked_by": dict, "picked_with": dict}


@recorded("evaluate")
def run_evaluate(cfg: EvaluateConfig) -> dict:
    from ..rewards.scorer import scorer_for, scorer_identity
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
            for r in read_rows(path, {**GENERATION_FIELDS, **dim_fields}, what="generations",
                              optional=GENERATION_OPTIONAL)]
    prompts = [r["prompt"] for r in rows]
    responses = [r["response"] for r in rows]
    for key, specs in (("actual", cfg.scorers), ("actual_test", cfg.test_scorers)):
        for dim, spec in specs.items():
            # A best-of-N row carries the score its pick was chosen by (picked_by); when that
            # scorer is this one, by content, the score is taken rather than computed again.
            ident = scorer_identity(spec) if any("picked_with" in r for r in rows) else None
            known = [r["picked_by"][dim] if ident is not None
                     and (r.get("picked_with") or {}).get(dim) == ident
                     and dim in (r.get("picked_by") or {}) else None for r in rows]
            todo = [i for i, k in enumerate(known) if k is None]
            if todo:
                scored = scorer_for(spec).score([prompts[i] for i in todo],
                                                [responses[i] for i in todo])
                for i, s in zip(todo, scored):
                    known[i] = round(float(s), 4)
            for r, s in zip(rows, known):
                r.setdefault(key, {})[dim] = s
    write_jsonl(out / SCORES, rows)

    # Rows that ask for an exact target in every dimension over the whole range measure control;
    # satisficing rows ('>= x', or exact targets drawn from [x, 1]) are judged by what they ask.
    control = [r for r in rows if is_control_row(r)]
    groups = np.array([r["id"] for r in control])
    models = np.array([r["model"] for r in control])
    lengths = np.array([r["n_tokens"] for r in control], dtype=float)
    columns = {(key, dim): np.array([r[key][dim] for r in control])
               for key, specs in (("targets", cfg.scorers), ("actual", cfg.scorers),
                                  ("actual_test", cfg.test_scorers)) for dim in specs}
    per_model: dict[str, dict] = {}
    for model in dict.fromkeys(models):
        sel = models == model
        texts = [r["response"] for r, keep in zip(control, sel) if keep]
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
    judged = control_over_seeds(control, cfg)
    replies = reply_stats(rows)
    satisficed = satisficing_section(rows, cfg)

    def replace_sections(metrics: dict) -> None:
        # This stage owns the controllability sections: drop any from an earlier evaluation.
        for dim in metrics.get("dimensions", []):
            metrics.pop(dim, None)
        metrics.update(per_model.get(cfg.primary, {}), dimensions=list(cfg.scorers),
                       primary=cfg.primary,
                       baselines={m: v for m, v in per_model.items() if m != cfg.primary},
                       control=judged, replies=replies, satisficing=satisficed,
                       eval_split=cfg.split)
        metrics["goal"] = goal(metrics, list(cfg.scorers), cfg)

    metrics = update_json(out / "metrics.json", replace_sections)
    return {d: {k: (metrics["control"]["dimensions"].get(d, {}).get(cfg.primary) or {}).get(k)
                for k in ("r", "ci_low", "ci_high")} | {"judge": judge_of(metrics["control"], d)}
            for d in cfg.scorers}


def is_control_row(row: dict) -> bool:
    ops = (row.get("target_ops") or {}).values()
    return all(op == "=" for op in ops) and "target_range" not in row


def control_over_seeds(rows: list[dict], cfg: EvaluateConfig) -> dict:
    """Per dimension and model, r under the judge (the held-out test RM where there is one,
    else the labelling scorer) as the mean over seeds, with a bootstrap over prompts and seeds,
    and the primary model's paired difference against each other model; the same under the
    labelling scorer beside it. Also each model's cost per response."""
    from ..stats import group_index
    from .metrics import seed_prompt_bootstrap

    gidx, n_groups = group_index(np.array([str(r["id"]) for r in rows]), len(rows))
    # Each dimension is judged by its held-out test RM where it has one, else by its labelling
    # scorer (a ready scorer such as synthetic:length has no second model to hold out).
    judges = {dim: "test_rm" if dim in cfg.test_scorers else "labelling_rm" for dim in cfg.scorers}
    cell_rows: dict[tuple[str, int], list[int]] = {}  # (model, seed) -> its rows, in order
    for i, r in enumerate(rows):
        cell_rows.setdefault((r["model"], int(r.get("seed", 0))), []).append(i)
    out: dict = {"judge": "test_rm" if cfg.test_scorers else "labelling_rm", "judges": judges,
                 "seeds": sorted({int(r.get("seed", 0)) for r in rows}),
                 "n_prompts": n_groups, "dimensions": {}, "cost": {}}
    for dim in cfg.scorers:
        section = {}
        for key, name in (("actual_test", "test_rm"), ("actual", "labelling_rm")):
            if key == "actual_test" and dim not in cfg.test_scorers:
                continue
            cells: dict[str, dict[int, tuple]] = {}
            for (model, s), idx in cell_rows.items():
                cells.setdefault(model, {})[s] = (
                    np.array([rows[i]["targets"][dim] for i in idx], dtype=float),
                    np.array([rows[i][key][dim] for i in idx], dtype=float), gidx[idx])
            section[name] = seed_prompt_bootstrap(cells, n_groups, primary=cfg.primary,
                                                  n_boot=cfg.n_boot, seed=cfg.seed)
        judge = judges[dim]
        out["dimensions"][dim] = {m: {**v, "labelling_rm": section["labelling_rm"].get(m)}
                                  if judge != "labelling_rm" else v
                                  for m, v in section[judge].items()}
    for model in dict.fromkeys(r["model"] for r in rows):
        costs = [r.get("cost") or {"samples": 1, "rm_calls": 0} for r in rows if r["model"] == model]
        out["cost"][model] = {"samples_per_response": float(np.mean([c["samples"] for c in costs])),
                              "rm_calls_per_response": float(np.mean([c["rm_calls"] for c in costs]))}
    return out


def judge_of(control: dict, dim: str) -> str:
    """Who judged ``dim`` in a control section: its own judge, or the section's (metrics written
    before judges were recorded per dimension)."""
    return (control.get("judges") or {}).get(dim, control["judge"])


def reply_stats(rows: list[dict]) -> dict:
    """Per model: the share of replies that ended by themselves (not at the token cap), and
    their mean length; length is the obvious confound of a reward."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        sel = [r for r in rows if r["model"] == model]
        fin = [bool(r.get("finished")) for r in sel]
        out[model] = {"n": len(sel), "finished_share": float(np.mean(fin)),
                      "mean_tokens": float(np.mean([r["n_tokens"] for r in sel]))}
    return out


def satisficing_section(rows: list[dict], cfg: EvaluateConfig) -> dict:
    """Per satisficing model and dimension: the share of replies that meet the threshold x
    (from the '>= x' target, or the low end of target_range) and their mean reward, under the
    judge and the labelling scorer."""
    from .metrics import satisficing

    out: dict = {}
    sat = [r for r in rows if not is_control_row(r)]
    for model in dict.fromkeys(r["model"] for r in sat):
        sel = [r for r in sat if r["model"] == model]
        per_dim = {}
        for dim in cfg.scorers:
            x = np.array([threshold(r, dim) for r in sel], dtype=float)
            g = np.array([str(r["id"]) for r in sel])
            per_dim[dim] = {name: satisficing(x, np.array([r[key][dim] for r in sel]), g,
                                              cfg.n_boot, cfg.seed)
                            for key, name in (("actual_test", "test_rm"), ("actual", "labelling_rm"))
                            if key == "actual" or dim in cfg.test_scorers}
        ops = {op for r in sel for op in (r.get("target_ops") or {}).values()}
        out[model] = {"asks": "at_least" if ">=" in ops else "exact_in_range",
                      "threshold": threshold(sel[0], next(iter(cfg.scorers))),
                      "dimensions": per_dim}
    return out


def threshold(row: dict, dim: str) -> float:
    """The x a satisficing row asks for: the low end of its target range, else its target."""
    return float(row["target_range"][0] if "target_range" in row else row["targets"][dim])


#: The baselines whose CIs the primary model's CI must lie above for the goal.
GOAL_BASELINES = ("uncond_sft", "prompted")


def goal(metrics: dict, dims: list[str], cfg: EvaluateConfig) -> dict:
    """Per dimension, what was asked, what was measured and whether it was met: r (mean over
    seeds, under the judge) at least goal_r, and its CI above those of the unconditioned and
    prompted baselines by the paired bootstrap (the difference's CI above 0) and with the two
    CIs apart. The other baselines stand beside it."""
    control = metrics["control"]
    out = {}
    for dim in dims:
        want = cfg.goal_r.get(dim, 0.5)
        per = control["dimensions"].get(dim, {})
        m = per.get(cfg.primary) or {}
        vs = {}
        for model, b in per.items():
            if model == cfg.primary:
                continue
            d = b.get("diff_vs_primary") or {}
            vs[model] = {"r": b.get("r"), "ci_low": b.get("ci_low"), "ci_high": b.get("ci_high"),
                         "diff": d.get("diff"), "diff_ci_low": d.get("ci_low"),
                         "diff_ci_high": d.get("ci_high"),
                         "above_by_paired_bootstrap": None if d.get("ci_low") is None
                         else d["ci_low"] > 0,
                         "cis_apart": None if m.get("ci_low") is None or b.get("ci_high") is None
                         else m["ci_low"] > b["ci_high"]}
        required = [b for b in GOAL_BASELINES if b in vs]
        r_ok = m.get("r") is not None and m["r"] >= want
        above = all(vs[b]["above_by_paired_bootstrap"] and vs[b]["cis_apart"] for b in required)
        out[dim] = {"asked": {"r_at_least": want, "judge": judge_of(control, dim),
                              "split": cfg.split, "seeds": control["seeds"],
                              "above": required},
                    "measured": {"r": m.get("r"), "ci_low": m.get("ci_low"),
                                 "ci_high": m.get("ci_high")},
                    "r_met": r_ok, "above_met": above if required else None,
                    "met": r_ok and (above or not required), "vs": vs}
    return out
