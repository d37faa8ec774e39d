"""The registered experiments: each a question, its variants per scale, and its analysis.

Every figure comes from the variants' own files (``metrics.json``, ``eval/scores.jsonl``, the
manifest): r is the recipe's (under the held-out test RM on the locked test split, the mean over
seeds with a bootstrap over prompts and seeds), and binned rewards carry a bootstrap over
prompts. Numbers are measured, never written here; docs/results.md records them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..runs import MANIFEST, SCORES, read_json, read_jsonl
from .registry import BASE_POLICY, Experiment, Variant, register

#: Target bins of the binned figures.
BINS = np.linspace(0.0, 1.0, 6)


# ---------------------------------------------------------------- reading a variant
def _metrics(run: Path) -> dict:
    return read_json(run / "metrics.json")


def _dims(run: Path) -> list[str]:
    return [str(d) for d in _metrics(run).get("dimensions", [])]


def r_cell(run: Path, dim: str, model: str = "conditioned", judge: str | None = None) -> list:
    """``[r, ci_low, ci_high]`` of ``model`` in ``dim``: under the run's judge (the held-out
    test RM; for a dimension with a ready scorer, that scorer), or under the labelling RM with
    ``judge='labelling_rm'``."""
    cell = (_metrics(run)["control"]["dimensions"].get(dim) or {}).get(model) or {}
    if judge == "labelling_rm" and "labelling_rm" in cell:
        cell = cell["labelling_rm"] or {}
    return [cell.get("r"), cell.get("ci_low"), cell.get("ci_high")]


def first_seed(run: Path) -> int:
    """The run's first policy seed: the one whose policies the analyses read and train beside."""
    config = read_json(run / MANIFEST)["config"]
    return int((config.get("seeds") or [config.get("seed", 0)])[0])


def score_rows(rows: list[dict], run: Path, dims: Any, judged: bool = True) -> None:
    """Score generated rows with the run's reward models, in place: ``actual_test`` under the
    held-out test RMs (``judged``), else ``actual`` under the labelling RMs."""
    from ..rewards.scorer import load_scorer

    key, suffix = ("actual_test", "-test") if judged else ("actual", "")
    for dim in dims:
        scores = load_scorer(run / "rm" / f"{dim}{suffix}").score(
            [r["prompt"] for r in rows], [r["response"] for r in rows])
        for r, v in zip(rows, scores):
            r.setdefault(key, {})[dim] = float(v)


def _rows(run: Path, model: str = "conditioned") -> list[dict]:
    return [r for r in read_jsonl(run / SCORES) if r["model"] == model
            and all(op == "=" for op in (r.get("target_ops") or {}).values())
            and "target_range" not in r]


def binned(rows: list[dict], dim: str, key: str, n_boot: int = 1000, seed: int = 0) -> list[list]:
    """Per target bin: ``[bin centre, mean actual, ci_low, ci_high, n]``, the CI a bootstrap
    over prompts (every row of a prompt drawn together)."""
    from ..stats import bootstrap_mean_ci

    t = np.array([r["targets"][dim] for r in rows], dtype=float)
    a = np.array([r[key][dim] for r in rows], dtype=float)
    g = np.array([str(r["id"]) for r in rows], dtype=object)
    out = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        sel = (t >= lo) & ((t < hi) | (hi == BINS[-1]))
        if sel.sum() == 0:
            out.append([round((lo + hi) / 2, 2), None, None, None, 0])
            continue
        c_lo, c_hi = bootstrap_mean_ci(a[sel], n_boot, seed, groups=g[sel])
        out.append([round((lo + hi) / 2, 2), float(a[sel].mean()), c_lo, c_hi, int(sel.sum())])
    return out


def spread_rows(rows: list[dict], max_rows: int) -> list[dict]:
    """At most ``max_rows`` rows: whole prompts, evenly spaced through ``rows`` (the first rows
    of an evaluation file are one dimension's prompts only)."""
    if len(rows) <= max_rows:
        return rows
    ids = list(dict.fromkeys(str(r["id"]) for r in rows))
    k = max(1, int(max_rows // (len(rows) / len(ids))))
    keep = {ids[i] for i in np.linspace(0, len(ids) - 1, k).round().astype(int)}
    return [r for r in rows if str(r["id"]) in keep][:max_rows]


def r_table(dirs: dict[str, Path], models: tuple[str, ...] = ("conditioned", "uncond_sft")
            ) -> dict[str, Any]:
    """r per variant, model and dimension, under the test RM and the labelling RM."""
    rows = [[v, m, d, r_cell(run, d, m), r_cell(run, d, m, "labelling_rm")]
            for v, run in dirs.items() for m in models for d in _dims(run)
            if r_cell(run, d, m)[0] is not None]
    return {"columns": ["variant", "model", "dimension", "r, test RM [95% CI]",
                        "r, labelling RM [95% CI]"], "rows": rows}


def _bar_figure(result: dict[str, Any], title: str) -> Any:
    """Bars of r (test RM) with their CIs: one group per variant, one bar per dimension/model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["table"]["rows"]
    variants = list(dict.fromkeys(r[0] for r in rows))
    series = list(dict.fromkeys(f"{r[2]} ({r[1]})" for r in rows))
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(variants), 3.2))
    width = 0.8 / max(len(series), 1)
    for k, s in enumerate(series):
        for i, v in enumerate(variants):
            cell = next((r[3] for r in rows if r[0] == v and f"{r[2]} ({r[1]})" == s), None)
            if not cell or cell[0] is None:
                continue
            err = [[cell[0] - (cell[1] if cell[1] is not None else cell[0])],
                   [(cell[2] if cell[2] is not None else cell[0]) - cell[0]]]
            ax.bar(i + k * width, cell[0], width, yerr=err, capsize=3, color=f"C{k}",
                   label=s if i == 0 else None)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(variants))], variants)
    ax.set_ylabel("r, test RM (95% CI)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return fig


def _binned_figure(result: dict[str, Any], title: str) -> Any:
    """Mean actual reward per target bin, one panel per dimension, one line per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = result["binned"]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, (dim, series) in zip(axes[0], panels.items()):
        for k, (name, pts) in enumerate(series.items()):
            pts = [p for p in pts if p[1] is not None]
            x = [p[0] for p in pts]
            ax.errorbar(x, [p[1] for p in pts], yerr=[[p[1] - p[2] for p in pts],
                                                      [p[3] - p[1] for p in pts]],
                        marker="o", capsize=3, color=f"C{k}", label=name)
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
        ax.set_xlabel(f"target {dim}")
        ax.set_ylabel("actual reward (95% CI)")
        ax.set_xlim(0, 1)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig


# ---------------------------------------------------------------- position
def _position_variants(scale: str) -> list[Variant]:
    return [Variant(p, {"template": {"position": p}}) for p in ("top", "bottom", "reply")]


def prefix_cache_tokens(run: Path) -> dict[str, Any]:
    """The caching argument: sampling several targets for one prompt, how many prompt tokens
    must be computed again with a prefix cache (vLLM's automatic prefix caching), per target
    after the first. The block at the top changes the first tokens, so nothing is shared; at the
    bottom or opening the reply the dialogue before it is computed once."""
    from ..models import load_tokenizer
    from ..policy.meta import read_policy_meta
    from ..policy.tokenise import fit_prompt, render_prompt
    from ..template import RewardTemplate, row_targets

    rows = _rows(run)
    seed = first_seed(run)
    policy = run / "sft" / f"conditioned_s{seed}" / "final"
    meta = read_policy_meta(policy)
    template = RewardTemplate.from_dict(meta["template"])
    tok = load_tokenizer(str(policy))
    by_prompt: dict[str, list[list[int]]] = {}
    for r in rows:
        if int(r.get("seed", 0)) != seed:
            continue
        shown = fit_prompt(tok, r["prompt"], template, row_targets(r),
                           int(meta.get("max_prompt_tokens", 192)))
        ids = tok(render_prompt(tok, shown), add_special_tokens=False)["input_ids"]
        by_prompt.setdefault(str(r["id"]), []).append(ids)
    total, again, extra = 0, 0, 0
    for seqs in by_prompt.values():
        first = seqs[0]
        total += sum(len(s) for s in seqs)
        for s in seqs[1:]:
            common = next((i for i, (a, b) in enumerate(zip(first, s)) if a != b),
                          min(len(first), len(s)))
            again += len(s) - common
            extra += len(s)
    n_extra = max(1, sum(len(s) - 1 for s in by_prompt.values()))
    return {"prompts": len(by_prompt), "prompt_tokens": total,
            "tokens_per_extra_target": round(extra / n_extra, 1),
            "recomputed_per_extra_target": round(again / n_extra, 1),
            "share_recomputed": round(again / extra, 4) if extra else None}


def _position(dirs: dict[str, Path]) -> dict[str, Any]:
    table = r_table(dirs)
    caching = {v: prefix_cache_tokens(run) for v, run in dirs.items()}
    return {"table": table, "caching": caching}


# ---------------------------------------------------------------- duplication
def _duplication_variants(scale: str) -> list[Variant]:
    return [Variant(f"x{k}", {"template": {"duplicate": k}}) for k in (1, 2, 4)]


# ---------------------------------------------------------------- temperature
TEMPERATURES = (0.5, 0.7, 1.0)


def _temperature_variants(scale: str) -> list[Variant]:
    return [Variant(f"T{t:g}", {"sampling": {"temperature": t}, **UNCOND}) for t in TEMPERATURES]


def sample_entropy(policy: Path, rows: list[dict], temperature: float,
                   max_rows: int = 64) -> list[float | None]:
    """Mean per-token entropy (nats) of the sampling distribution (temperature applied) along
    the sampled replies, teacher-forced on what the policy was shown, with a bootstrap CI over
    prompts: ``[mean, ci_low, ci_high]``. At most ``max_rows`` rows (``spread_rows``)."""
    import torch

    from ..evaluation.kl import completion_logprobs
    from ..models import load_policy, load_tokenizer
    from ..policy.meta import read_policy_meta
    from ..policy.tokenise import fit_prompt
    from ..stats import bootstrap_mean_ci
    from ..template import RewardTemplate, row_targets

    meta = read_policy_meta(policy)
    template = RewardTemplate.from_dict(meta["template"]) if "template" in meta else None
    tok, model = load_tokenizer(str(policy)), load_policy(str(policy)).eval()
    per_row, groups = [], []
    for r in spread_rows(rows, max_rows):
        targets = (row_targets(r) if meta.get("conditioned") and template is not None
                   else None)
        shown = fit_prompt(tok, r["prompt"], template or RewardTemplate(), targets,
                           int(meta.get("max_prompt_tokens", 192)))
        ids = tok(r["response"], add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        if temperature <= 0:  # greedy: the sampling distribution is one token
            per_row.append(0.0)
            groups.append(str(r["id"]))
            continue
        lp = torch.log_softmax(completion_logprobs(model, tok, shown, ids) / temperature, dim=-1)
        ent = -(lp.exp() * lp).nan_to_num().sum(-1)
        per_row.append(float(ent.mean()))
        groups.append(str(r["id"]))
    if not per_row:
        return [None, None, None]
    lo, hi = bootstrap_mean_ci(np.array(per_row), 1000, 0, groups=np.array(groups, dtype=object))
    return [float(np.mean(per_row)), lo, hi]


def _temperature(dirs: dict[str, Path]) -> dict[str, Any]:
    from ..stats import bootstrap_mean_ci

    table = r_table(dirs)
    entropy: dict[str, dict[str, Any]] = {}
    reward: dict[str, dict[str, Any]] = {}
    for v, run in dirs.items():
        t = float(read_json(run / MANIFEST)["config"]["sampling"]["temperature"])
        for model in ("conditioned", "uncond_sft"):
            rows = _rows(run, model)
            seed = first_seed(run)
            entropy.setdefault(v, {})[model] = sample_entropy(
                run / "sft" / f"{model}_s{seed}" / "final",
                [r for r in rows if int(r.get("seed", 0)) == seed], t)
            g = np.array([str(r["id"]) for r in rows], dtype=object)
            for dim in _dims(run):
                a = np.array([r["actual_test"][dim] for r in rows], dtype=float)
                lo, hi = bootstrap_mean_ci(a, 1000, 0, groups=g)
                reward.setdefault(v, {}).setdefault(model, {})[dim] = [float(a.mean()), lo, hi]
    return {"table": table, "entropy_per_token": entropy, "mean_reward_test_rm": reward}


def _temperature_figure(result: dict[str, Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["table"]["rows"]
    dims = list(dict.fromkeys(r[2] for r in rows))
    fig, axes = plt.subplots(1, len(dims), figsize=(3.8 * len(dims), 3.2), squeeze=False)
    for ax, dim in zip(axes[0], dims):
        for k, model in enumerate(("conditioned", "uncond_sft")):
            pts = [(result["entropy_per_token"][r[0]][model][0], r[3][0], r[0]) for r in rows
                   if r[1] == model and r[2] == dim and r[3][0] is not None
                   and result["entropy_per_token"][r[0]][model][0] is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{k}", label=model)
                for x, y, name in pts:
                    ax.annotate(name, (x, y), fontsize=7)
        ax.set_xlabel("entropy per token (nats)")
        ax.set_ylabel(f"r {dim}, test RM")
        ax.legend(fontsize=7)
    fig.suptitle("temperature: entropy against control")
    return fig


# ---------------------------------------------------------------- target-vs-actual
#: The unconditioned SFT beside the conditioned policy (the full scale has it anyway).
UNCOND = {"baselines": ["uncond_sft"]}


def _one_variant(scale: str) -> list[Variant]:
    return [Variant("recipe", UNCOND)]


def _target_vs_actual(dirs: dict[str, Path]) -> dict[str, Any]:
    run = dirs["recipe"]
    models = [m for m in ("conditioned", "uncond_sft") if _rows(run, m)]
    binned_ = {d: {m: binned(_rows(run, m), d, "actual_test") for m in models} for d in _dims(run)}
    return {"table": r_table(dirs), "binned": binned_, "judge": "test_rm"}


# ---------------------------------------------------------------- overoptimisation
def _overoptimisation(dirs: dict[str, Path]) -> dict[str, Any]:
    from ..stats import bootstrap_mean_ci

    run = dirs["recipe"]
    rows = _rows(run)
    binned_ = {d: {"labelling RM": binned(rows, d, "actual"), "test RM": binned(rows, d, "actual_test")}
               for d in _dims(run)}
    g = np.array([str(r["id"]) for r in rows], dtype=object)
    gap = {}
    for d in _dims(run):
        diff = np.array([r["actual"][d] - r["actual_test"][d] for r in rows], dtype=float)
        lo, hi = bootstrap_mean_ci(diff, 1000, 0, groups=g)
        gap[d] = [float(diff.mean()), lo, hi]
    return {"table": r_table(dirs), "binned": binned_,
            "labelling_minus_test_mean_reward": gap}


# ---------------------------------------------------------------- satisficing
SATISFICE_AT = 0.7


def _satisficing_variants(scale: str) -> list[Variant]:
    return [Variant("trained_exact", {"satisficing": [SATISFICE_AT]}),
            Variant("trained_at_least", {"satisficing": [SATISFICE_AT],
                                         "sft": {"targets": "at_least"}})]


def _satisficing(dirs: dict[str, Path]) -> dict[str, Any]:
    rows, entropy, by_variant = [], {}, {}
    for v, run in dirs.items():
        sat = by_variant[v] = _metrics(run).get("satisficing") or {}
        t = float(read_json(run / MANIFEST)["config"]["sampling"]["temperature"])
        seed = first_seed(run)
        policy = run / "sft" / f"conditioned_s{seed}" / "final"
        scored = read_jsonl(run / SCORES)
        for key, cell_by_dim in sat.items():
            asked = [r for r in scored if r["model"] == key and int(r.get("seed", 0)) == seed]
            ent = sample_entropy(policy, asked, t)
            entropy.setdefault(v, {})[key] = ent
            for dim, cell in (cell_by_dim.get("dimensions") or {}).items():
                for judge, c in cell.items():
                    if isinstance(c, dict) and "share_met" in c:
                        rows.append([v, key, dim, judge,
                                     [c["share_met"], c.get("share_ci_low"), c.get("share_ci_high")],
                                     [c.get("mean_actual"), c.get("mean_ci_low"),
                                      c.get("mean_ci_high")], ent])
    return {"table": {"columns": ["trained on", "asks", "dimension", "judge",
                                  "share >= x [95% CI]", "mean reward [95% CI]",
                                  "entropy per token, nats [95% CI]"], "rows": rows},
            "entropy_per_token": entropy, "exact_targets": r_table(dirs, ("conditioned",)),
            "satisficing": by_variant}


def _satisficing_figure(result: dict[str, Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["table"]["rows"] if r[3] == "test_rm"]
    fig, ax = plt.subplots(figsize=(5.5, 0.32 * len(rows) + 1))
    for i, r in enumerate(rows):
        v, lo, hi = r[4]
        ax.barh(i, v, xerr=[[v - (lo if lo is not None else v)], [(hi if hi is not None else v) - v]],
                color="C0" if r[1].startswith("at_least") else "C1",
                hatch="//" if r[0] == "trained_at_least" else None, capsize=3)
    ax.set_yticks(range(len(rows)), [f"{r[0]}: {r[1]} {r[2]}" for r in rows], fontsize=7)
    ax.set_xlabel("share of replies >= x, test RM (95% CI); blue: asked '>= x', orange: exact "
                  "targets from [x, 1]", fontsize=7)
    return fig


# ---------------------------------------------------------------- cost
def _cost(dirs: dict[str, Path]) -> dict[str, Any]:
    from ..cost import stage_costs

    run = dirs["recipe"]
    manifest = read_json(run / MANIFEST)
    rows = stage_costs(manifest, run)
    table = [[r["stage"], r["compute_s"], r["wall_s"], r["restored"], r["trained_tokens"],
              r["prompt_tokens"], r["completion_tokens"], r["usd"], r["priced_as"]] for r in rows]
    return {"table": {"columns": ["stage", "compute s", "wall s in this run", "restored from cache",
                                  "trained tokens", "prompt tokens", "completion tokens",
                                  "USD (price table)", "priced as"], "rows": table},
            "compute_s": round(sum(r["compute_s"] for r in rows), 1),
            "usd": round(sum(r["usd"] or 0.0 for r in rows), 6),
            "unpriced": [r["stage"] for r in rows if r["usd"] is None],
            "total_wall_s": manifest.get("total_wall_s"),
            "peak_rss_mib": manifest.get("peak_rss_mib")}


def _cost_figure(result: dict[str, Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["table"]["rows"] if r[1]]
    fig, ax = plt.subplots(figsize=(5, 0.3 * len(rows) + 1))
    ax.barh(range(len(rows)), [r[1] for r in rows], color=["C1" if r[3] else "C0" for r in rows])
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
    ax.set_xlabel("compute s (orange: made by an earlier run, restored from the stage cache)")
    return fig


# ---------------------------------------------------------------- sample-efficiency
#: Labelled prompts per dimension. The demo's larger size is the demo recipe's own (a test holds
#: them equal), so that the variant is restored from the stage cache when another experiment
#: (target-vs-actual) made it at the same commit.
SAMPLE_SIZES = {"demo": (10, 30), "full": (10, 25, 85, 250)}


#: The second policy size: Gemma-3-270M (a base model) against the default SmolLM2-135M-Instruct,
#: at the scale's own number of pairs, trained on the very same labelled replies (SmolLM2's), so
#: that only the size differs.
SECOND_POLICY = "gemma3-270m"


def _sample_efficiency_variants(scale: str) -> list[Variant]:
    return [Variant(f"pairs{n}", {"label_pairs": n}) for n in SAMPLE_SIZES[scale]] + [
        Variant(SECOND_POLICY, {"policy": SECOND_POLICY, "steer_policy": BASE_POLICY})]


def _sample_efficiency(dirs: dict[str, Path]) -> dict[str, Any]:
    from ..runs import LABELS

    table = r_table(dirs)
    examples = {v: sum(1 for _ in (run / LABELS).open()) for v, run in dirs.items()}
    policies = {v: read_json(run / MANIFEST)["config"]["policy"] for v, run in dirs.items()}
    for row in table["rows"]:
        row.insert(1, examples[row[0]])
    table["columns"].insert(1, "training examples")
    return {"table": table, "examples": examples, "policies": policies}


def _sample_efficiency_figure(result: dict[str, Any]) -> Any:
    """r against the training examples for the default policy (lines), the second policy size
    as its own points (squares)."""
    sizes = {**result, "table": {**result["table"], "rows": [
        r for r in result["table"]["rows"] if r[0] != SECOND_POLICY]}}
    fig = _r_by_x_figure(sizes, "training examples", log_x=True)
    ax = fig.axes[0]
    dims = list(dict.fromkeys(r[3] for r in sizes["table"]["rows"]))
    for r in result["table"]["rows"]:
        if r[0] == SECOND_POLICY and r[2] == "conditioned" and r[4][0] is not None:
            k = dims.index(r[3]) if r[3] in dims else len(dims)
            ax.errorbar([r[1]], [r[4][0]], yerr=[[r[4][0] - r[4][1]], [r[4][2] - r[4][0]]],
                        marker="s", ls="none", capsize=3, color=f"C{k}",
                        label=f"{r[3]}, {SECOND_POLICY}")
    ax.legend(fontsize=7)
    return fig


def _r_by_x_figure(result: dict[str, Any], xlabel: str, *, log_x: bool = False,
                   spread: float = 0.0) -> Any:
    """r (test RM, 95% CI) of the conditioned policy against the table's column 1 (a number per
    variant), one line per dimension; ``spread`` shifts the dimensions apart along x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["table"]["rows"]
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for k, dim in enumerate(dict.fromkeys(r[3] for r in rows)):
        pts = sorted((r[1], r[4]) for r in rows
                     if r[3] == dim and r[2] == "conditioned" and r[4][0] is not None)
        ax.errorbar([p[0] + spread * k for p in pts], [p[1][0] for p in pts],
                    yerr=[[p[1][0] - p[1][1] for p in pts], [p[1][2] - p[1][0] for p in pts]],
                    marker="o", capsize=3, color=f"C{k}", label=dim)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("r, test RM (95% CI)")
    ax.axhline(0, color="k", lw=0.6)
    ax.legend(fontsize=7)
    return fig


# ---------------------------------------------------------------- reward-distribution
def _reward_distribution(dirs: dict[str, Path], max_pairs: int = 200) -> dict[str, Any]:
    """The labelling RMs' rewards of their training data's chosen and rejected replies (the
    first ``max_pairs`` training pairs), and of the labels the policy trained on: how often
    they reach the extremes (the original RM rarely went below 0.1 or above 0.9)."""
    from ..data.preference import read_preferences
    from ..rewards.scorer import load_scorer
    from ..rewards.train import select_half
    from ..runs import LABELS
    from ..stats import bootstrap_mean_ci

    run = dirs["recipe"]
    labels = read_jsonl(run / LABELS)
    out: dict[str, Any] = {"dimensions": {}}
    rows = []
    for dim in _dims(run):
        # The pairs the labelling RM trained on: its limit, then its half (the test RM has the other).
        rm = read_json(run / MANIFEST)["stages"][f"rm_{dim}"]["config"]
        pairs, _ = read_preferences(str(run / "data" / f"{dim}-train.jsonl"), skip_bad=True,
                                    limit=rm.get("limit"))
        pairs = select_half(pairs, rm.get("half"))[:max_pairs]
        scorer = load_scorer(run / "rm" / dim)
        chosen = np.asarray(scorer.score([p.prompt for p in pairs], [p.chosen for p in pairs]))
        rejected = np.asarray(scorer.score([p.prompt for p in pairs], [p.rejected for p in pairs]))
        lab = np.array([r["rewards"][dim] for r in labels], dtype=float)
        diff_lo, diff_hi = bootstrap_mean_ci(chosen - rejected, 1000, 0)
        cell = {"pairs": len(pairs), "chosen": chosen.round(4).tolist(),
                "rejected": rejected.round(4).tolist(), "labels": lab.round(4).tolist(),
                "chosen_minus_rejected": [float((chosen - rejected).mean()), diff_lo, diff_hi],
                "accuracy_on_its_training_pairs": float(np.mean(chosen > rejected))}
        out["dimensions"][dim] = cell
        for name, v in (("chosen", chosen), ("rejected", rejected), ("labels", lab)):
            rows.append([dim, name, int(v.size), float(v.mean()), float(v.std()),
                         float(np.mean(v < 0.1)), float(np.mean(v > 0.9))])
        rows.append([dim, "chosen - rejected", len(pairs), cell["chosen_minus_rejected"], None,
                     None, None])
    out["table"] = {"columns": ["dimension", "rewards of", "n", "mean", "std", "share < 0.1",
                                "share > 0.9"], "rows": rows}
    return out


def _reward_distribution_figure(result: dict[str, Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = result["dimensions"]
    fig, axes = plt.subplots(1, len(dims), figsize=(3.8 * len(dims), 3.0), squeeze=False)
    for ax, (dim, cell) in zip(axes[0], dims.items()):
        for k, name in enumerate(("chosen", "rejected", "labels")):
            ax.hist(cell[name], bins=20, range=(0, 1), histtype="step", color=f"C{k}",
                    density=True, label=name)
        ax.set_xlabel(f"{dim} reward (labelling RM)")
        ax.legend(fontsize=7)
    return fig


# ---------------------------------------------------------------- kl
def policy_kl(policy: Path, reference: str, rows: list[dict], max_rows: int = 48) -> list[dict]:
    """Exact KL(policy || reference) of each reply, summed over its tokens: the policy reads
    the prompt as it was shown it (with the block if it is conditioned), the reference the same
    dialogue without;
    both score the same reply tokens. Rows whose reply the two tokenizers split differently
    are skipped (none where the policy adds only the block's own tokens)."""
    from ..evaluation.kl import completion_logprobs, exact_kl
    from ..models import load_policy, load_tokenizer
    from ..policy.meta import read_policy_meta
    from ..policy.tokenise import fit_prompt
    from ..template import RewardTemplate, row_targets

    meta = read_policy_meta(policy)
    template = RewardTemplate.from_dict(meta["template"])
    budget = int(meta.get("max_prompt_tokens", 192))
    ptok, pol = load_tokenizer(str(policy)), load_policy(str(policy)).eval()
    rtok, ref = load_tokenizer(reference), load_policy(reference).eval()
    out = []
    for r in spread_rows(rows, max_rows):
        ids = ptok(r["response"], add_special_tokens=False)["input_ids"]
        if not ids or ids != rtok(r["response"], add_special_tokens=False)["input_ids"]:
            continue
        shown = fit_prompt(ptok, r["prompt"], template,
                           row_targets(r) if meta.get("conditioned") else None, budget)
        plain = fit_prompt(rtok, r["prompt"], template, None, budget)
        pl = completion_logprobs(pol, ptok, shown, ids).double()
        rl = completion_logprobs(ref, rtok, plain, ids).double()
        pl = pl[:, :rl.shape[1]].log_softmax(-1)  # the block's added tokens: never in a reply
        out.append({"id": str(r["id"]), "kl": float(exact_kl(pl, rl).sum()), "n_tokens": len(ids),
                    "targets": r["targets"], "actual_test": r["actual_test"]})
    return out


def _kl(dirs: dict[str, Path]) -> dict[str, Any]:
    from ..stats import bootstrap_mean_ci

    run = dirs["recipe"]
    config = read_json(run / MANIFEST)["config"]
    result: dict[str, Any] = {"models": {}}
    rows_out = []
    for model in ("conditioned", "uncond_sft"):
        rows = _rows(run, model)
        if not rows:
            continue
        seed = first_seed(run)
        per = policy_kl(run / "sft" / f"{model}_s{seed}" / "final", config["policy"],
                        [r for r in rows if int(r.get("seed", 0)) == seed])
        kl = np.array([p["kl"] for p in per])
        g = np.array([p["id"] for p in per], dtype=object)
        lo, hi = bootstrap_mean_ci(kl, 1000, 0, groups=g)
        cell: dict[str, Any] = {"n": len(per), "kl_per_reply": [float(kl.mean()), lo, hi],
                                "kl_per_token": float(kl.sum() / sum(p["n_tokens"] for p in per)),
                                "replies": per}
        for dim in _dims(run):
            a = np.array([p["actual_test"][dim] for p in per])
            cell[f"r_kl_vs_actual_{dim}"] = (float(np.corrcoef(kl, a)[0, 1])
                                             if np.ptp(kl) > 0 and np.ptp(a) > 0 else None)
        result["models"][model] = cell
        rows_out.append([model, len(per), cell["kl_per_reply"], cell["kl_per_token"]]
                        + [cell[f"r_kl_vs_actual_{d}"] for d in _dims(run)])
    result["reference"] = config["policy"]
    result["table"] = {"columns": ["model", "replies", "KL per reply, nats [95% CI]",
                                   "KL per token"] + [f"r(KL, {d} test RM)" for d in _dims(run)],
                       "rows": rows_out}
    return result


def _kl_figure(result: dict[str, Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    dims = list(next(iter(models.values()))["replies"][0]["actual_test"]) if models else []
    fig, axes = plt.subplots(1, max(len(dims), 1), figsize=(3.8 * max(len(dims), 1), 3.0),
                             squeeze=False)
    for ax, dim in zip(axes[0], dims):
        for k, (model, cell) in enumerate(models.items()):
            ax.scatter([p["kl"] for p in cell["replies"]],
                       [p["actual_test"][dim] for p in cell["replies"]], s=8, color=f"C{k}",
                       label=model)
        ax.set_xlabel("KL(policy || reference), nats per reply")
        ax.set_ylabel(f"actual {dim}, test RM")
        ax.legend(fontsize=7)
    return fig


# ---------------------------------------------------------------- reward-mixing
#: The reward function chosen after training: 2 x helpful + 3 x harmless (as a weighted mean).
MIX = {"helpful": 2.0, "harmless": 3.0}
MIX_GRID = (0.1, 0.5, 0.9)
MIX_TARGET = 0.9


def _mix(rewards: dict[str, float]) -> float:
    return sum(w * rewards[d] for d, w in MIX.items()) / sum(MIX.values())


def _mixing_prepare(run: Any, dirs: dict[str, Path]) -> dict[str, Path]:
    """The conditioned policy asked every pair of a target grid on the test prompts; and a
    policy trained on the mixture alone (the same replies and SFT settings, one dimension
    ``mix`` = the weighted mean of the labels), asked for a high mixture."""
    from dataclasses import replace

    from ..backends.base import SamplingConfig
    from ..config import from_dict
    from ..policy.sft import SFTConfig, run_sft
    from ..recipe import EVAL_PROMPTS
    from ..runs import LABELS, write_jsonl
    from ..sampling import GenerateConfig, run_generate

    src = dirs["recipe"]
    manifest = read_json(src / MANIFEST)
    config = manifest["config"]
    seed = first_seed(src)
    out = run.path("mixing")
    sampling = from_dict(SamplingConfig, dict(config["sampling"], seed=seed))
    prompts = src / "data" / EVAL_PROMPTS
    grid_out = out / "grid.jsonl"
    policy = src / "sft" / f"conditioned_s{seed}" / "final"
    run.stage("mixing_grid", lambda: _sample_grid(policy, prompts, grid_out, sampling),
              config={"policy": str(policy), "grid": MIX_GRID, "sampling": config["sampling"]},
              inputs=[prompts, policy], outputs=[grid_out])
    labels = out / "mix_labels.jsonl"
    write_jsonl(labels, [dict(r, rewards={"mix": round(_mix(r["rewards"]), 4)})
                         for r in read_jsonl(src / LABELS)])
    sft_cfg = from_dict(SFTConfig, manifest["stages"][f"sft_conditioned_s{seed}"]["config"])
    sft = replace(sft_cfg, data=str(labels), out=str(out / "sft_mix"), run=None,
                  template={**sft_cfg.template, "dimensions": ["mix"]})
    run.stage("mixing_sft", lambda: run_sft(sft), config=sft, inputs=[labels],
              outputs=[out / "sft_mix" / "final"])
    gen = GenerateConfig(prompts=str(prompts), model=str(out / "sft_mix" / "final"),
                         out=str(out / "mix_policy.jsonl"), label="mix_policy",
                         targets=[f"{MIX_TARGET:g}"], sampling=sampling)
    run.stage("mixing_generate", lambda: run_generate(gen), config=gen,
              inputs=[prompts, out / "sft_mix" / "final"], outputs=[gen.out])
    return {"mixing": out}


def _sample_grid(policy: Path, prompts: Path, out: Path, sampling: Any) -> dict[str, Any]:
    """One reply per test prompt and pair of targets of the grid (every dimension's value from
    MIX_GRID), with the prompt the policy trained with."""
    from itertools import product

    from ..backends.local import LocalBackend
    from ..policy.meta import read_policy_meta
    from ..policy.tokenise import fit_prompt
    from ..runs import write_jsonl
    from ..template import RewardTemplate, Target

    meta = read_policy_meta(policy)
    template = RewardTemplate.from_dict(meta["template"])
    dims = template.dimensions
    backend = LocalBackend(str(policy))
    rows = read_jsonl(prompts)
    jobs = [(r, dict(zip(dims, values))) for values in product(MIX_GRID, repeat=len(dims))
            for r in rows]
    shown = [fit_prompt(backend.tokenizer, r["prompt"], template,
                        {d: Target(v) for d, v in t.items()}, int(meta.get("max_prompt_tokens", 192)))
             for r, t in jobs]
    done = backend.generate(shown, sampling)
    write_jsonl(out, [{"id": r["id"], "prompt": r["prompt"], "targets": t, "model": "grid",
                       "response": template.strip_reply_block(c.text, t), "n_tokens": c.n_tokens}
                      for (r, t), c in zip(jobs, done)])
    return {"n": len(jobs)}


def _reward_mixing(dirs: dict[str, Path]) -> dict[str, Any]:
    from ..probes.compare import paired_diff
    from ..stats import bootstrap_mean_ci

    src, out = dirs["recipe"], dirs["mixing"]
    grid = read_jsonl(out / "grid.jsonl")
    mixed = read_jsonl(out / "mix_policy.jsonl")
    rows = grid + mixed
    for judged in (True, False):
        score_rows(rows, src, MIX, judged)
    points, table = {}, []
    for key in dict.fromkeys(json_key(r) for r in grid):
        sel = [r for r in grid if json_key(r) == key]
        points[key] = _point(sel, bootstrap_mean_ci)
    points["mix_policy"] = _point(mixed, bootstrap_mean_ci)
    chosen = max((k for k in points if k != "mix_policy"), key=lambda k: points[k]["mix_labelling"])
    for k, pt in points.items():
        table.append([k, pt["n"], pt["helpful"], pt["harmless"], pt["mix"], pt["mix_labelling"]])
    pick = [r for r in grid if json_key(r) == chosen]
    both = pick + mixed
    values = np.array([_mix(r["actual_test"]) for r in both])
    models = np.array(["grid"] * len(pick) + ["mix_policy"] * len(mixed), dtype=object)
    groups = np.array([str(r["id"]) for r in both], dtype=object)
    diff = paired_diff(values, models, groups, "grid", "mix_policy", 1000, 0)
    return {"mix": MIX, "grid": list(MIX_GRID), "mix_target": MIX_TARGET, "points": points,
            "chosen_by_labelling_rm": chosen, "chosen_minus_mix_policy_test_rm": diff,
            "table": {"columns": ["targets (or policy)", "n", "helpful, test RM [95% CI]",
                                  "harmless, test RM [95% CI]", "(2h + 3s) / 5, test RM [95% CI]",
                                  "(2h + 3s) / 5, labelling RM"], "rows": table}}


def json_key(row: dict) -> str:
    return ", ".join(f"{d} {v:g}" for d, v in row["targets"].items())


def _point(rows: list[dict], ci: Any) -> dict[str, Any]:
    g = np.array([str(r["id"]) for r in rows], dtype=object)
    out: dict[str, Any] = {"n": len(rows)}
    for name, values in (("helpful", [r["actual_test"]["helpful"] for r in rows]),
                         ("harmless", [r["actual_test"]["harmless"] for r in rows]),
                         ("mix", [_mix(r["actual_test"]) for r in rows])):
        v = np.array(values, dtype=float)
        lo, hi = ci(v, 1000, 0, groups=g)
        out[name] = [float(v.mean()), lo, hi]
    out["mix_labelling"] = float(np.mean([_mix(r["actual"]) for r in rows]))
    return out


def _reward_mixing_figure(result: dict[str, Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4))
    for k, pt in result["points"].items():
        h, s = pt["helpful"], pt["harmless"]
        style = dict(color="C3", marker="*", ms=12) if k == "mix_policy" else dict(color="C0", marker="o")
        ax.errorbar(h[0], s[0], xerr=[[h[0] - h[1]], [h[2] - h[0]]],
                    yerr=[[s[0] - s[1]], [s[2] - s[0]]], capsize=2, **style)
        ax.annotate(k.replace("helpful ", "h").replace("harmless ", "s"), (h[0], s[0]), fontsize=6)
    ax.set_xlabel("helpful, test RM")
    ax.set_ylabel("harmless, test RM")
    ax.set_title("targets set after training (blue) vs a policy trained on 2h + 3s (star)",
                 fontsize=8)
    return fig


# ---------------------------------------------------------------- split
#: One combined reward, then 2, 3 and 4 dimensions from HH-RLHF's four subsets.
SPLITS = {
    "1-combined": {"combined": "hh-all"},
    "2-dims": {"helpful": "hh-helpful", "harmless": "hh-harmless"},
    "3-dims": {"helpful_base": "hh-helpful-base", "helpful_online": "hh-helpful-online",
               "harmless": "hh-harmless"},
    "4-dims": {"helpful_base": "hh-helpful-base", "helpful_online": "hh-helpful-online",
               "helpful_rs": "hh-helpful-rejection-sampled", "harmless": "hh-harmless"},
}


#: Where every split variant's training and evaluation prompts come from, whatever its reward
#: dimensions: the same prompts, so the same steered replies, labelled by 1, 2, 3 or 4 RMs.
SPLIT_PROMPTS = {"helpful": "hh-helpful", "harmless": "hh-harmless"}


def _split_variants(scale: str) -> list[Variant]:
    # Every variant trains on the same replies to the same prompts and is judged on the same test
    # prompts; only the reward models that label and judge them, and so the block, differ. At the
    # scale's own sizes, the 2-dims variant is the scale's recipe: restored from the stage cache
    # when another experiment (target-vs-actual) made it at the same commit.
    return [Variant(name, {"data": data, "prompts": SPLIT_PROMPTS}) for name, data in SPLITS.items()]


def _split(dirs: dict[str, Path]) -> dict[str, Any]:
    table = r_table(dirs)
    for row in table["rows"]:
        row.insert(1, len(_dims(dirs[row[0]])))
    table["columns"].insert(1, "dimensions")
    # Who judged each row's "test RM" column (a ready scorer's dimension judges itself).
    judges = {v: _metrics(run)["control"].get("judges") or {} for v, run in dirs.items()}
    return {"table": table, "judges": judges}



# ---------------------------------------------------------------- baselines
#: The policies trained beside the conditioned one, on the same prompts and for the same steps.
TRAINED_BASELINES = ("chosen_sft", "best_of_n_sft", "dpo")


def _baselines_prepare(run: Any, dirs: dict[str, Path]) -> dict[str, Path]:
    """Train chosen-only SFT (the human chosen replies of the labelled prompts), SFT on each
    prompt's top labelled reply (best-of-n / rejection-sampling fine-tuning, "FeedME") and DPO
    (TRL's DPOTrainer, LoRA, on each prompt's best vs worst labelled reply), each with the
    steps of the recipe's SFT and as many sequences per step (DPO: half as many pairs); sample
    each on the test prompts."""
    from dataclasses import replace

    from ..backends.base import SamplingConfig
    from ..config import from_dict
    from ..policy.sft import SFTConfig, run_sft
    from ..recipe import EVAL_PROMPTS, LABEL_PAIRS
    from ..runs import LABELS, write_jsonl
    from ..sampling import GenerateConfig, run_generate

    src = dirs["recipe"]
    manifest = read_json(src / MANIFEST)
    config = manifest["config"]
    seed = first_seed(src)
    out = run.path("baselines")
    uncond = from_dict(SFTConfig, manifest["stages"][f"sft_uncond_sft_s{seed}"]["config"])
    labels = read_jsonl(src / LABELS)
    by_prompt: dict[str, list[dict]] = {}
    for r in labels:
        by_prompt.setdefault(json_prompt(r["prompt"]), []).append(r)
    mean = lambda r: float(np.mean(list(r["rewards"].values())))  # noqa: E731
    data = {
        "chosen_sft": [{"prompt": p["prompt"], "response": p["chosen"]}
                       for p in read_jsonl(src / "data" / LABEL_PAIRS)],
        "best_of_n_sft": [{"prompt": rs[0]["prompt"], "response": max(rs, key=mean)["response"]}
                          for rs in by_prompt.values()],
    }
    pairs = [{"prompt": rs[0]["prompt"], "chosen": max(rs, key=mean)["response"],
              "rejected": min(rs, key=mean)["response"]} for rs in by_prompt.values()
             if len(rs) > 1 and mean(max(rs, key=mean)) > mean(min(rs, key=mean))]
    models = {}
    for name, rows in data.items():
        path = out / f"{name}.jsonl"
        write_jsonl(path, rows)
        sft = replace(uncond, data=str(path), out=str(out / name), run=None, conditioned=False)
        run.stage(f"baselines_{name}", lambda c=sft: run_sft(c), config=sft, inputs=[path],
                  outputs=[out / name / "final"])
        models[name] = out / name / "final"
    pairs_file = out / "dpo_pairs.jsonl"
    write_jsonl(pairs_file, pairs)
    # A DPO pair is two sequences (its chosen and its rejected reply): half as many pairs per
    # step as the SFT baselines have replies, so every policy trains on as many sequences and
    # tokens per step, and for the same steps.
    dpo_cfg = {"base": config["policy"], "steps": uncond.max_steps,
               "batch_size": max(1, uncond.batch_size // 2),
               "lr": uncond.lr / 10, "beta": 0.1, "lora_r": uncond.lora_r, "seed": seed,
               "template": uncond.template, "max_prompt_tokens": uncond.max_prompt_tokens,
               "max_completion_tokens": uncond.max_completion_tokens}
    run.stage("baselines_dpo", lambda: train_dpo(pairs_file, out / "dpo", dpo_cfg),
              config=dpo_cfg, inputs=[pairs_file], outputs=[out / "dpo" / "final"])
    models["dpo"] = out / "dpo" / "final"
    sampling = from_dict(SamplingConfig, dict(config["sampling"], seed=seed))
    for name, model in models.items():
        gen = GenerateConfig(prompts=str(src / "data" / EVAL_PROMPTS), model=str(model),
                             out=str(out / f"generate_{name}.jsonl"), label=name,
                             conditioned=False, samples_per_prompt=config["samples_per_prompt"],
                             max_prompt_tokens=uncond.max_prompt_tokens, sampling=sampling)
        run.stage(f"baselines_generate_{name}", lambda g=gen: run_generate(g), config=gen,
                  inputs=[gen.prompts, model], outputs=[gen.out])
    return {"baselines": out}


def json_prompt(prompt: list[dict]) -> str:
    import json

    return json.dumps(prompt, sort_keys=True)


def train_dpo(pairs_file: Path, out: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """DPO with TRL's DPOTrainer: a LoRA adapter on the base policy (the reference is the
    adapter switched off), merged and saved with the policy's metadata."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    from ..device import pick_device
    from ..models import load_policy, load_tokenizer
    from ..policy.meta import write_policy_meta
    from ..policy.tokenise import fit_prompt, render_prompt
    from ..runs import publish_dir
    from ..template import RewardTemplate

    set_seed(int(cfg["seed"]))
    tok = load_tokenizer(cfg["base"], padding_side="left")
    rows = read_jsonl(pairs_file)
    template = RewardTemplate.from_dict(cfg["template"])
    # The prompt cut to the SFT baselines' budget (no block: DPO is unconditioned), so TRL's
    # max_length drops no example; the replies are cut by TRL to the rest.
    dataset = Dataset.from_list([{"prompt": render_prompt(tok, fit_prompt(
        tok, r["prompt"], template, None, int(cfg["max_prompt_tokens"]))),
        "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows])
    model = load_policy(cfg["base"])
    args = DPOConfig(output_dir=str(out / "trainer"), max_steps=int(cfg["steps"]),
                     per_device_train_batch_size=int(cfg["batch_size"]),
                     learning_rate=float(cfg["lr"]), beta=float(cfg["beta"]), seed=int(cfg["seed"]),
                     max_length=int(cfg["max_prompt_tokens"]) + int(cfg["max_completion_tokens"]),
                     use_cpu=pick_device().type != "cuda", report_to="none", save_strategy="no",
                     logging_steps=max(1, int(cfg["steps"]) // 5), dataloader_num_workers=0,
                     # The reference (the adapter switched off) is fixed: its log-probs are
                     # computed once per pair, not at every step of every epoch. A model this
                     # size needs no gradient checkpointing (TRL's default), which recomputes
                     # each forward pass in the backward one; the SFT policies run without it.
                     precompute_ref_log_probs=True, gradient_checkpointing=False)
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                         peft_config=LoraConfig(r=int(cfg["lora_r"]), lora_alpha=2 * int(cfg["lora_r"]),
                                                target_modules="all-linear", task_type="CAUSAL_LM"))
    result = trainer.train()
    merged = trainer.model.merge_and_unload()
    tmp = out / "final.tmp"
    merged.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    write_policy_meta(tmp, {"config": cfg, "template": cfg["template"], "conditioned": False,
                            "method": "dpo", "max_prompt_tokens": cfg["max_prompt_tokens"],
                            "max_completion_tokens": cfg["max_completion_tokens"]})
    publish_dir(tmp, out / "final")
    return {"pairs": len(rows), "pairs_trained": len(trainer.train_dataset),
            "train_loss": float(result.training_loss),
            "steps": int(result.global_step)}


def _baselines(dirs: dict[str, Path]) -> dict[str, Any]:
    from ..stats import bootstrap_mean_ci

    src, out = dirs["recipe"], dirs["baselines"]
    config = read_json(src / MANIFEST)["config"]
    t = float(config["sampling"]["temperature"])
    dims = _dims(src)
    models: dict[str, tuple[list[dict], Path]] = {}
    for m in ("conditioned", "uncond_sft"):
        rows = _rows(src, m)
        seed = first_seed(src)
        models[m] = ([r for r in rows if int(r.get("seed", 0)) == seed],
                     src / "sft" / f"{m}_s{seed}" / "final")
    for m in TRAINED_BASELINES:
        rows = read_jsonl(out / f"generate_{m}.jsonl")
        score_rows(rows, src, dims)
        models[m] = (rows, out / m / "final")
    table, result = [], {}
    for m, (rows, policy) in models.items():
        g = np.array([str(r["id"]) for r in rows], dtype=object)
        cell: dict[str, Any] = {"n": len(rows)}
        for dim in dims:
            a = np.array([r["actual_test"][dim] for r in rows], dtype=float)
            lo, hi = bootstrap_mean_ci(a, 1000, 0, groups=g)
            cell[f"mean_{dim}"] = [float(a.mean()), lo, hi]
            top = [r for r in rows if r["targets"][dim] >= 0.8]
            cell[f"at_top_target_{dim}"] = (float(np.mean([r["actual_test"][dim] for r in top]))
                                            if top else None)
        cell["entropy_per_token"] = sample_entropy(policy, rows, t)
        kl = policy_kl(policy, config["policy"], rows)
        cell["kl_per_reply"] = float(np.mean([k["kl"] for k in kl])) if kl else None
        result[m] = cell
        table.append([m, len(rows)] + [cell[f"mean_{d}"] for d in dims]
                     + [cell[f"at_top_target_{d}"] for d in dims]
                     + [cell["entropy_per_token"], cell["kl_per_reply"]])
    return {"models": result, "temperature": t,
            "table": {"columns": ["model", "replies"] + [f"mean {d}, test RM [95% CI]" for d in dims]
                      + [f"{d} at targets >= 0.8" for d in dims]
                      + ["entropy per token [95% CI]", "KL to the base, nats per reply"],
                      "rows": table}}


def _baselines_figure(result: dict[str, Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    dims = [k.removeprefix("mean_") for k in next(iter(models.values())) if k.startswith("mean_")]
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(models), 3.2))
    width = 0.8 / max(len(dims), 1)
    for k, dim in enumerate(dims):
        for i, cell in enumerate(models.values()):
            v, lo, hi = cell[f"mean_{dim}"]
            ax.bar(i + k * width, v, width, yerr=[[v - lo], [hi - v]], capsize=3, color=f"C{k}",
                   label=dim if i == 0 else None)
    ax.set_xticks([i + width * (len(dims) - 1) / 2 for i in range(len(models))], list(models),
                  fontsize=7, rotation=20)
    ax.set_ylabel("mean reward, test RM (95% CI)")
    ax.legend(fontsize=7)
    return fig


register(Experiment(
    "position", "Where should the reward block go: the top, the bottom or opening the reply? "
    "And how many prompt tokens does each position make a prefix cache recompute per target?",
    _position_variants, _position, lambda r: _bar_figure(r, "position of the reward block")))
register(Experiment(
    "duplication", "Does repeating the reward block (1, 2, 4 times) make the number easier to "
    "follow?", _duplication_variants, lambda d: {"table": r_table(d)},
    lambda r: _bar_figure(r, "reward block repeated k times")))
register(Experiment(
    "target-vs-actual", "The headline: actual reward against the target on test prompts, per "
    "dimension (targets uniform and independent, temperature 1).",
    _one_variant, _target_vs_actual, lambda r: _binned_figure(r, "target vs actual, test RM")))
register(Experiment(
    "overoptimisation", "Does the policy please the RM that labelled its data more than an "
    "independent one? Actual reward under both, against the target.",
    _one_variant, _overoptimisation,
    lambda r: _binned_figure(r, "labelling RM vs held-out test RM (conditioned policy)")))
register(Experiment(
    "temperature", "Is the gain just lower entropy? Temperature, entropy and control for the "
    "conditioned model and the unconditioned SFT.",
    _temperature_variants, _temperature, _temperature_figure))
register(Experiment(
    "satisficing", "Trained on '>= t' targets (hindsight thresholds each reply meets) and asked "
    "'>= x', against trained on exact rewards, asked '>= x' and given exact targets drawn from "
    "[x, 1]: the share of replies that meet x, their mean reward and entropy.",
    _satisficing_variants, _satisficing, _satisficing_figure))
register(Experiment(
    "cost", "What every stage costs: wall time, tokens and money (from the price table).",
    _one_variant, _cost, _cost_figure))
register(Experiment(
    "sample-efficiency", "Controllability against the number of training examples, and "
    "against the policy's size (SmolLM2-135M-Instruct, Gemma-3-270M).",
    _sample_efficiency_variants, _sample_efficiency,
    _sample_efficiency_figure))
register(Experiment(
    "reward-distribution", "The RMs' rewards over the training data, chosen vs rejected, and "
    "the labels the policy trains on: how much of the range do they cover?",
    lambda scale: [Variant("recipe")], _reward_distribution, _reward_distribution_figure))
register(Experiment(
    "kl", "KL(policy || reference), exact from local log-probs, against the reward reached.",
    _one_variant, _kl, _kl_figure))
register(Experiment(
    "reward-mixing", "Change the reward function after training by the prompt alone: targets "
    "that maximise 2 x helpful + 3 x harmless, against a policy trained for that mixture alone.",
    lambda scale: [Variant("recipe")], _reward_mixing, _reward_mixing_figure,
    prepare=_mixing_prepare))
register(Experiment(
    "split", "One combined reward against 2, 3 and 4 dimensions in the block (HH's four "
    "subsets): how does each dimension's control change with their number?",
    _split_variants, _split,
    lambda r: _r_by_x_figure(r, "reward dimensions in the block", spread=0.04)))
register(Experiment(
    "baselines", "The same prompts and steps for unconditioned SFT, chosen-only SFT, SFT on the "
    "top rollout of n and DPO: mean reward, reward at the highest target, entropy, KL.",
    _one_variant, _baselines, _baselines_figure, prepare=_baselines_prepare))
register(Experiment(
    "prompt-loss", "A weight on the prompt tokens' loss (0, 0.01, 0.1; the block included) "
    "against controllability.",
    lambda scale: [Variant(f"w{w:g}", {"sft": {"prompt_loss_weight": w}}) for w in (0.0, 0.01, 0.1)],
    lambda d: {"table": r_table(d)}, lambda r: _bar_figure(r, "weight of the prompt tokens' loss")))
