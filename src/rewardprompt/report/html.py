"""One self-contained HTML report per run, built only from the run's files.

The report never recomputes a metric: every number shown is read from ``metrics.json`` or
``manifest.json``; ``eval/scores.jsonl`` and ``label/train.jsonl`` only supply raw points to plot
and example generations. Figures are inline base64 PNGs and the CSS is inline, so the file can be
mailed or archived alone. Optional inputs that are missing or unreadable turn their section into
a "not available" note; ``metrics.json`` is required. Label statistics are read from
``metrics["labels"][dim]`` (``mean``, ``std``, ``quantiles``, ``frac_below_0.1``,
``frac_above_0.9``, as the label stage writes them).
"""
from __future__ import annotations

from dataclasses import dataclass

import base64
import io
import json
from html import escape
from pathlib import Path
from typing import Any

from ..runs import ELO, LABELS, SCORES, atomic_write_bytes, atomic_write_text, read_json, read_jsonl

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ddd;padding:.3em .6em;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;white-space:pre-wrap;word-break:break-word}
.na{color:#888;font-style:italic}.note{color:#a60;font-size:.9em}img{max-width:100%}
.ex{border:1px solid #ddd;margin:.6em 0;padding:.4em .8em}.ex pre{max-height:18em}
"""
_DASH = "&mdash;"
_EXAMPLES_PER_END = 2  # lowest- and highest-target generations shown per dimension


# ---------------------------------------------------------------- small helpers
def _e(value: Any) -> str:
    """Escape any text that came from data; responses can contain arbitrary markup."""
    return escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _DASH
    return f"{value:.{digits}f}"


def _with_ci(d: dict, key: str, lo: str, hi: str) -> str:
    if d.get(key) is None:
        return _DASH
    if d.get(lo) is None or d.get(hi) is None:
        return _num(d[key])
    return f"{_num(d[key])} [{_num(d[lo])}, {_num(d[hi])}]"


def _na(what: str, why: str = "") -> str:
    return f'<p class="na">{_e(what)} not available{": " + _e(why) if why else ""}.</p>'


def _table(header: list[str] | None, rows: list[list[str]]) -> str:
    """Cells are already HTML (escaped or formatted by the caller); no header row when None."""
    head = "".join(f"<th>{h}</th>" for h in header or [])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def _pre_json(obj: Any) -> str:
    return f"<pre>{_e(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True))}</pre>"


def _optional(path: Path, reader: Any) -> tuple[Any, str]:
    """Read an optional input; on failure return ``(None, reason)`` for a "not available" note."""
    if not path.is_file():
        return None, f"{path.name} is missing"
    try:
        return reader(path), ""
    except (OSError, ValueError) as exc:  # DataError and JSONDecodeError are ValueErrors
        return None, f"{path.name} could not be read ({exc})"


def _png(fig: Any, save_as: Path | None = None) -> str:
    """The figure inline in the page; ``save_as`` also writes it as a file (the run's figures/)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    if save_as is not None:
        atomic_write_bytes(save_as, buf.getvalue())
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _model_metrics(metrics: dict, model: str, dim: str) -> dict:
    """Controllability dict of ``model`` on ``dim``; the conditioned policy sits at the top."""
    src = metrics if model == "conditioned" else metrics.get("baselines", {}).get(model, {})
    d = src.get(dim)
    return d if isinstance(d, dict) else {}


def _points(scores: list[dict], model: str, dim: str,
            key: str = "actual") -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in scores:
        t, a = row.get("targets", {}).get(dim), (row.get(key) or {}).get(dim)
        if (row.get("model") == model and isinstance(t, (int, float))
                and isinstance(a, (int, float))):
            xs.append(float(t))
            ys.append(float(a))
    return xs, ys


# ---------------------------------------------------------------- sections
def _header(run_dir: Path, manifest: dict | None, why: str) -> str:
    if manifest is None:
        return f"<p>Run directory: <code>{_e(run_dir)}</code></p>" + _na("Manifest", why)
    stages = manifest.get("stages", {})
    total = manifest.get("total_wall_s",
                         sum(s.get("wall_s", 0.0) for s in stages.values() if isinstance(s, dict)))
    rows = [["Run directory", f"<code>{_e(run_dir)}</code>"],
            ["Git commit", f"<code>{_e(manifest.get('git_commit') or 'unknown')}</code>"],
            ["Created", _e(manifest.get("created", "unknown"))],
            ["Total stage wall time", f"{_num(total, 1)} s"],
            ["Peak RSS", f"{_num(manifest.get('peak_rss_mib'), 1)} MiB"],
            ["Evaluations of the test split", _e(manifest.get("test_split_evaluations", 0))]]
    return _table(None, rows)


_JUDGES = {"test_rm": "the held-out test RM", "labelling_rm": "the labelling scorer"}


def _ci_text(d: dict, key: str = "r") -> str:
    return _with_ci(d, key, "ci_low", "ci_high")


def _goal(metrics: dict) -> str:
    """What was asked, what was measured and whether it was met, per dimension, in words."""
    goal = metrics.get("goal")
    if not isinstance(goal, dict) or not goal:
        return _na("Goal (metrics.json: goal)")
    if not all(isinstance(g, dict) and "asked" in g for g in goal.values()):
        return _pre_json(goal)  # a goal of another shape (an older run's), shown as it is
    out = []
    for dim, g in goal.items():
        asked, measured = g.get("asked") or {}, g.get("measured") or {}
        seeds = asked.get("seeds") or []
        above = asked.get("above") or []
        ask = (f"r &ge; {_num(asked.get('r_at_least'), 2)} between the target and the actual "
               f"{_e(dim)} reward under {_e(_JUDGES.get(asked.get('judge'), asked.get('judge')))}, "
               f"on the {_e(asked.get('split') or 'unrecorded')} split, as the mean over "
               f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({_e(', '.join(map(str, seeds)))})")
        if above:
            ask += (", with its 95% CI above the CIs of " + _e(" and ".join(above))
                    + " (the paired bootstrap's difference above 0, and the two CIs apart)")
        said = [f"r = {_ci_text(measured)}"]
        for model, v in (g.get("vs") or {}).items():
            diff = _with_ci(v, "diff", "diff_ci_low", "diff_ci_high")
            said.append(f"{_e(model)} r = {_ci_text(v)}, difference {diff}")
        verdict = ("met" if g.get("met") else "not met: " + "; ".join(
            w for w, bad in (("r is below the bar", g.get("r_met") is False),
                             ("its CI is not above every required baseline's",
                              g.get("above_met") is False)) if bad))
        out.append(f"<h3>{_e(dim)}</h3><p><b>Asked:</b> {ask}.</p><p><b>Measured:</b> "
                   + "; ".join(said) + f".</p><p><b>Result:</b> {verdict}.</p>")
    return "".join(out)


def _control(metrics: dict) -> str:
    """Per dimension and model: r (mean over seeds) under the judge and the labelling scorer,
    the difference from the primary model, the cost per response and the share of replies that
    ended by themselves."""
    control = metrics.get("control")
    if not isinstance(control, dict) or not control.get("dimensions"):
        return _na("Control against the baselines (metrics.json: control)")
    judge = control.get("judge")
    cost, replies = control.get("cost") or {}, metrics.get("replies") or {}
    out = [f"<p>Judge: {_e(_JUDGES.get(judge, judge))}; seeds {_e(control.get('seeds'))}; "
           f"{_e(control.get('n_prompts'))} prompts of the {_e(metrics.get('eval_split') or 'unrecorded')} "
           "split. Intervals resample prompts and seeds; the difference is paired by prompt.</p>"]
    for dim, per in control["dimensions"].items():
        own = (control.get("judges") or {}).get(dim, judge)  # a ready scorer judges itself
        rows = []
        for model, d in per.items():
            lab = d.get("labelling_rm") or {}
            diff = d.get("diff_vs_primary") or {}
            c, rep = cost.get(model) or {}, replies.get(model) or {}
            per_seed = ", ".join(_num(v) for v in (d.get("per_seed") or {}).values())
            rows.append([_e(model), _ci_text(d), per_seed or _DASH, _ci_text(lab) if lab else _DASH,
                         _with_ci(diff, "diff", "ci_low", "ci_high"),
                         _num(c.get("samples_per_response"), 0), _num(c.get("rm_calls_per_response"), 0),
                         _num(rep.get("finished_share"), 2), _num(rep.get("mean_tokens"), 1)])
        out.append(f"<h3>{_e(dim)}</h3>" + (f"<p>Judged by {_e(_JUDGES.get(own, own))}.</p>"
                                            if own != judge else "") + _table(
            ["model", f"r, {_e(own)} [95% CI]", "r per seed", "r, labelling RM [95% CI]",
             "primary minus model [95% CI]", "policy samples / response", "RM calls / response",
             "share that ended by itself", "mean tokens"], rows))
    return "".join(out)


def _satisficing(metrics: dict) -> str:
    sat = metrics.get("satisficing")
    if not isinstance(sat, dict):
        return _na("Satisficing targets (metrics.json: satisficing)")
    if not sat:
        return "<p>This run asked for no '&gt;= x' targets (recipe: satisficing).</p>"
    rows = []
    for model, m in sat.items():
        for dim, per in (m.get("dimensions") or {}).items():
            for judge, d in per.items():
                rows.append([_e(model), _e("'>= x'" if m.get("asks") == "at_least" else "exact, from [x, 1]"),
                             _num(m.get("threshold"), 2), _e(dim), _e(judge),
                             _with_ci(d, "share_met", "share_ci_low", "share_ci_high"),
                             _with_ci(d, "mean_actual", "mean_ci_low", "mean_ci_high"), _e(d.get("n"))])
    return ("<p>A satisficing target asks that the reward be at least x: judged by the share of "
            "replies that reach x and their mean reward, beside exact targets drawn from [x, 1].</p>"
            + _table(["model", "asks", "x", "dimension", "judge", "share &ge; x [95% CI]",
                      "mean reward [95% CI]", "n"], rows))


def _headline(metrics: dict, dims: list[str], models: list[str]) -> str:
    out = []
    for dim in dims:
        rows, notes = [], []
        for model in models:
            d = _model_metrics(metrics, model, dim)
            if not d:
                rows.append([_e(model)] + [_DASH] * 6)
                continue
            rows.append([_e(model), _e(d.get("n", "")),
                         _with_ci(d, "pearson_r", "ci_low", "ci_high"),
                         _with_ci(d, "spearman_r", "spearman_ci_low", "spearman_ci_high"),
                         _with_ci(d, "slope", "slope_ci_low", "slope_ci_high"),
                         _num(d.get("within_prompt_r")),
                         _with_ci(d, "length_r", "length_ci_low", "length_ci_high")])
            if d.get("note"):
                notes.append(f"<p class='note'>{_e(model)}: {_e(d['note'])}</p>")
        out.append(f"<h3>{_e(dim)}</h3>" + _table(
            ["model", "n", "Pearson r [95% CI]", "Spearman &rho; [95% CI]", "slope [95% CI]",
             "within-prompt r", "length r [95% CI]"], rows) + "".join(notes))
    return "".join(out)


def _figures(metrics: dict, dims: list[str], models: list[str], scores: list[dict] | None,
             why: str, figures: Path) -> str:
    from matplotlib.figure import Figure  # no pyplot: Figure renders through Agg, no GUI state

    out = [] if scores is not None else [_na("Raw points (eval/scores.jsonl)", why)]
    for dim in dims:
        # The judge's view where the run has one: the held-out test RM's rewards.
        judged = any(isinstance(_model_metrics(metrics, m, dim).get("test_rm"), dict) for m in models)
        judge = "held-out test RM" if judged else "labelling scorer"
        fig = Figure(figsize=(11, 4.2))
        ax, ax_len = fig.subplots(1, 2)
        for i, model in enumerate(models):
            colour = f"C{i % 10}"
            per = _model_metrics(metrics, model, dim)
            if scores:
                xs, ys = _points(scores, model, dim, "actual_test" if judged else "actual")
                ax.scatter(xs, ys, s=8, alpha=0.25, color=colour, linewidths=0)
            bins = [b for b in ((per.get("test_rm") or {}) if judged else per).get("bins", [])
                    if b.get("mean_actual") is not None]
            if not bins:
                continue
            mt = [b["mean_target"] for b in bins]
            ma = [b["mean_actual"] for b in bins]
            err = [[m - (b["actual_ci_low"] if b.get("actual_ci_low") is not None else m)
                    for m, b in zip(ma, bins)],
                   [(b["actual_ci_high"] if b.get("actual_ci_high") is not None else m) - m
                    for m, b in zip(ma, bins)]]
            ax.errorbar(mt, ma, yerr=err, fmt="o-", color=colour, capsize=3, label=model)
            lens = [((b["lo"] + b["hi"]) / 2, b["mean_length"]) for b in bins
                    if b.get("mean_length") is not None]
            if lens:
                ax_len.plot(*zip(*lens), "o-", color=colour, label=model)
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="y = x")
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel=f"target {dim}",
               ylabel=f"actual {dim} ({judge})",
               title=f"{dim}: target vs actual (bin means, 95% CI)")
        ax.legend(fontsize=8)
        ax_len.set(xlim=(0, 1), xlabel=f"target {dim} (bin centre)",
                   ylabel="mean response length (tokens)", title="length per target bin")
        if ax_len.lines:
            ax_len.legend(fontsize=8)
        out.append(f"<h3>{_e(dim)}</h3>{_png(fig, figures / f'target_vs_actual_{dim}.png')}")
    return "".join(out)


def _labels(metrics: dict, dims: list[str], train: list[dict] | None, why: str) -> str:
    stats = metrics.get("labels") if isinstance(metrics.get("labels"), dict) else {}
    out = []
    if train is None:
        out.append(_na("Label histogram (label/train.jsonl)", why))
    else:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.5 * len(dims), 3.4))
        for ax, dim in zip(fig.subplots(1, len(dims), squeeze=False)[0], dims):
            vals = [r["rewards"][dim] for r in train
                    if isinstance(r.get("rewards", {}).get(dim), (int, float))]
            ax.hist(vals, bins=20, range=(0, 1), color="C0", alpha=0.8)
            s = stats.get(dim, {})
            title = f"{dim} (n={len(vals)})"
            if "frac_below_0.1" in s and "frac_above_0.9" in s:
                title += f"\n<0.1: {_num(s['frac_below_0.1'])}, >0.9: {_num(s['frac_above_0.9'])}"
            ax.set(xlabel=f"label {dim}", ylabel="count", title=title)
        out.append(_png(fig))
    if stats:
        rows = [[_e(dim), _num(s.get("mean")), _num(s.get("std")),
                 ", ".join(_num(q) for q in s.get("quantiles", [])) or _DASH,
                 _num(s.get("frac_below_0.1")), _num(s.get("frac_above_0.9")),
                 _num(s.get("between_prompt_std")), _num(s.get("within_prompt_std")),
                 _num(s.get("imitation_r"))]
                for dim, s in stats.items() if isinstance(s, dict)]
        out.append(_table(["dimension", "mean", "std", "quantiles", "fraction &lt; 0.1",
                           "fraction &gt; 0.9", "std between prompts", "std within prompts",
                           "imitation r"], rows)
                   + "<p>Imitation r: the r a policy would reach that answers each training "
                   "prompt with whichever of its labelled replies is nearest the targets "
                   "(in-sample, so an upper estimate for these replies).</p>")
    else:
        out.append(_na("Label statistics (metrics.json: labels)"))
    judged = metrics.get("labels_judged") if isinstance(metrics.get("labels_judged"), dict) else {}
    if judged:
        rows = [[_e(dim)] + [_num(s.get(k)) for k in (
                    "label_vs_judge_r", "label_vs_judge_r_within", "imitation_r",
                    "imitation_r_judged", "opener_r", "opener_r_judged")]
                for dim, s in judged.items() if isinstance(s, dict)]
        out.append("<h3>What the labels allow under the judge</h3>"
                   + _table(["dimension", "r(label, test RM)", "within prompts",
                             "imitation r", "imitation r, test RM", "opener pick r",
                             "opener pick r, test RM"], rows)
                   + "<p>The training replies scored by the held-out test RMs as well (never "
                   "trained on): how far the judge agrees with the labels, over all replies and "
                   "within prompts (what a policy can steer), and the r a perfect imitator of "
                   "the data would reach under each RM: picking the reply nearest the targets, "
                   "or only the opener whose replies' mean labels are nearest. In-sample, so "
                   "upper estimates.</p>")
    return "".join(out)


def _rm(metrics: dict) -> str:
    rm = metrics.get("rm")
    if not isinstance(rm, dict) or not rm:
        return _na("Reward-model accuracy (metrics.json: rm)")
    rows = [[_e(dim), _with_ci(d, "accuracy", "ci_low", "ci_high"), _e(d.get("n_test", "")),
             _e(d.get("n_train", "")), _e(d.get("half") or "all"), _e(d.get("family", "")),
             _num(d.get("train_seconds"), 1)] for dim, d in rm.items() if isinstance(d, dict)]
    return _table(["reward model", "pairwise accuracy [95% CI]", "test pairs", "train pairs",
                   "training half", "family", "train s"], rows)


def _test_rm(metrics: dict, dims: list[str], models: list[str]) -> str:
    """The same generations scored by the labelling RM and by the held-out test RM."""
    rows = []
    for dim in dims:
        for model in models:
            d = _model_metrics(metrics, model, dim)
            t = d.get("test_rm")
            if isinstance(t, dict):
                rows.append([_e(dim), _e(model), _with_ci(d, "pearson_r", "ci_low", "ci_high"),
                             _with_ci(t, "pearson_r", "ci_low", "ci_high"),
                             _num(d.get("mean_actual")), _num(t.get("mean_actual"))])
    if not rows:
        return _na("Held-out test RM (metrics.json: DIM.test_rm)",
                   "no test reward model was evaluated in this run")
    return ("<p>Over-optimisation check: the same generations scored by the labelling RM and by "
            "the held-out test RM (trained on the other half of the pairs, another seed, never "
            "used for labels). A policy that games the labelling RM gains under it only.</p>"
            + _table(["dimension", "model", "r, labelling RM", "r, test RM",
                      "mean actual, labelling RM", "mean actual, test RM"], rows))


def _openers(metrics: dict, dims: list[str], models: list[str]) -> str:
    """Per target bin, the share of replies that start with each steering opener."""
    out = []
    for dim in dims:
        rows = []
        names: list[str] = []
        for model in models:
            for b in _model_metrics(metrics, model, dim).get("openers") or []:
                names = names or list(b.get("share", {}))
                rows.append([_e(model), f"{_num(b.get('lo'), 1)}-{_num(b.get('hi'), 1)}",
                             _e(b.get("n", ""))] + [_num(b["share"].get(o), 2) for o in names])
        if rows:
            out.append(f"<h3>{_e(dim)}</h3>" + _table(
                ["model", f"target {_e(dim)}", "n"] + [_e(o) for o in names], rows))
    if not out:
        return _na("Openers by target (metrics.json: DIM.openers)",
                   "the run was not evaluated with openers (no steered samples)")
    return ("<p>How the policy hits its targets: per target bin, the share of replies that "
            "start with each steering opener of its training samples (or none: other).</p>"
            + "".join(out))


def _policies(metrics: dict) -> str:
    """What each fine-tuning and sampling stage reports (metrics.json: sft, generate)."""
    sft, gen = metrics.get("sft") or {}, metrics.get("generate") or {}
    if not sft and not gen:
        return _na("Fine-tuning and sampling summaries (metrics.json: sft, generate)")
    rows = [[_e(name), _e(s.get("steps", "")), _e(s.get("examples", "")),
             _num(s.get("first_loss")), _num(s.get("last_loss")), _e(s.get("precision", "")),
             _num(s.get("train_runtime_s"), 1)] for name, s in sft.items() if isinstance(s, dict)]
    out = _table(["policy", "steps", "examples", "first loss", "last loss", "precision",
                  "train s"], rows) if rows else ""
    rows = [[_e(name), _e(g.get("n", "")), _num(g.get("mean_tokens"), 1), _num(g.get("finished"), 2)]
            for name, g in gen.items() if isinstance(g, dict)]
    return out + (_table(["generations", "n", "mean new tokens", "share that ended by itself"],
                         rows) if rows else "")


def _config(manifest: dict | None) -> str:
    """The recipe's config, or for a run made stage by stage the config of each stage."""
    if manifest and "config" in manifest:
        return _pre_json(manifest["config"])
    per_stage = {name: s["config"] for name, s in ((manifest or {}).get("stages") or {}).items()
                 if isinstance(s, dict) and "config" in s}
    return _pre_json(per_stage) if per_stage else _na("Config (manifest.json: config)")


def _stages(manifest: dict | None) -> str:
    stages = (manifest or {}).get("stages")
    if not stages:
        return _na("Stage timings (manifest.json: stages)")
    rows = [[_e(name), "yes" if s.get("done") else "no", _num(s.get("wall_s"), 1)]
            for name, s in stages.items() if isinstance(s, dict)]
    return _table(["stage", "done", "wall s"], rows)


def _cost(manifest: dict | None) -> str:
    """Tokens and money per stage, as the manifest recorded them (priced when the stage ran)."""
    rows, total, unpriced, notes = [], 0.0, False, set()
    for name, s in ((manifest or {}).get("stages") or {}).items():
        for c in (s.get("cost") or []) if isinstance(s, dict) else []:
            usd = c.get("usd")
            total += usd or 0.0
            unpriced |= usd is None
            if c.get("prices_read"):
                notes.add(f"{c['provider']}: prices read {c['prices_read']}"
                          + ("" if c.get("prices_verified", True) else ", not verified")
                          + (f" ({c['prices_source']})" if c.get("prices_source") else ""))
            rows.append([_e(name), _e(c.get("provider")), _e(c.get("model")), _e(c.get("method")),
                         f"{c.get('trained_tokens', 0):,}", f"{c.get('prompt_tokens', 0):,}",
                         f"{c.get('completion_tokens', 0):,}",
                         "unpriced" if usd is None else f"${usd:.4f}", _e(c.get("priced_as"))])
    if not rows:
        return ("<p>Every stage ran on this machine: no provider charged for tokens. The stage "
                "wall times above are the run's cost.</p>")
    rows.append(["<b>total</b>", "", "", "", "", "", "",
                 f"<b>${total:.4f}</b>" + (" + unpriced" if unpriced else ""), ""])
    return (_table(["stage", "provider", "model", "method", "trained tokens", "prompt tokens",
                    "completion tokens", "USD", "priced as"], rows)
            + "".join(f"<p>{_e(n)}</p>" for n in sorted(notes)))


def _examples(scores: list[dict] | None, dims: list[str], why: str) -> str:
    if scores is None:
        return _na("Example generations (eval/scores.jsonl)", why)
    out = []
    for dim in dims:
        rows = [r for r in scores if r.get("model") == "conditioned"
                and isinstance(r.get("targets", {}).get(dim), (int, float))]
        rows.sort(key=lambda r: r["targets"][dim])
        k = _EXAMPLES_PER_END
        picked = rows[:k] + rows[max(k, len(rows) - k):]  # no row twice when there are few
        if not picked:
            out.append(_na(f"Conditioned generations for {dim}"))
            continue
        out.append(f"<h3>{_e(dim)}: lowest and highest targets</h3>")
        for r in picked:
            prompt = r.get("prompt")
            user = [m.get("content", "") for m in prompt if isinstance(m, dict)
                    and m.get("role") == "user"] if isinstance(prompt, list) else [prompt or ""]
            out.append(
                f"<div class='ex'><b>id</b> {_e(r.get('id', ''))} &middot; <b>targets</b> "
                f"{_e(json.dumps(r.get('targets', {})))} &middot; <b>actual</b> "
                f"{_e(json.dumps(r.get('actual', {})))} &middot; <b>tokens</b> "
                f"{_e(r.get('n_tokens', ''))}<br><b>prompt</b>"
                f"<pre>{_e(str(user[-1] if user else '')[:800])}</pre>"
                f"<b>response</b><pre>{_e(str(r.get('response', ''))[:2000])}</pre></div>")
    return "".join(out)


def _elo(result: dict | None, why: str) -> str:
    if result is None:
        return _na("Elo ratings (elo.json)", why)
    from ..evaluation.elo import elo_figure

    rows = [[_e(m["model"]), _with_ci(m, "elo", "elo_ci_low", "elo_ci_high"),
             _with_ci(m, "bt", "bt_ci_low", "bt_ci_high"),
             _e(f"{m['wins']}/{m['losses']}/{m['ties']}")] for m in result.get("models", [])]
    return (f"<p>Judge: {_e(result.get('judge', ''))}; {_e(result.get('n_matches', ''))} matches "
            f"on {_e(result.get('n_prompts', ''))} prompts.</p>"
            + _table(["model", "Elo [95% CI]", "Bradley-Terry [95% CI]", "W/L/T"], rows)
            + _png(elo_figure(result)))


def _probes(metrics: dict, figures: Path) -> str:
    """Reward probes (metrics.json: probes): sweeps with their heatmaps, trained probes, base vs
    tuned, the conditioned policy's view of its target, probe-guided search."""
    probes = metrics.get("probes")
    if not isinstance(probes, dict) or not any(not k.startswith("collect_") for k in probes):
        return _na("Reward probes (metrics.json: probes)")
    from ..probes.sweep import sweep_figure
    from ..probes.targets import targets_figure

    def ci(d: dict, key: str) -> str:
        return _with_ci(d or {}, key, f"{key}_ci_low", f"{key}_ci_high")

    out = ["<p>Probes train on the train side of the hash split, are chosen on dev (epoch, "
           "penalty, layer and position) and are reported on test; intervals resample "
           "conversations.</p>"]
    for key, s in probes.items():
        if key.startswith("collect_"):
            out.append(f"<p>Activations {_e(s.get('out'))}: {_e(s.get('n_rows'))} rows "
                       f"({_e(json.dumps(s.get('rows_per_split')))}) of {_e(s.get('model'))}, "
                       f"{_e(s.get('layers'))} layers x {len(s.get('positions') or [])} positions; "
                       f"labels {_e(', '.join(s.get('labels') or []))}.</p>")
        elif key.startswith("sweep_"):
            best, seed = s.get("best") or {}, s.get("seed_default") or {}
            out.append(f"<h3>Sweep {_e(s.get('name'))}: {_e(s.get('method'))} probe of "
                       f"{_e(s.get('label'))}, cells compared on dev {_e(s.get('metric'))}</h3>"
                       + _table(["cell", "layer", "position", f"dev {_e(s.get('metric'))}",
                                 "test pairwise accuracy [95% CI]", "test r [95% CI]"],
                                [[_e(name), _e(c.get("layer")), _e(c.get("position")),
                                  _num((c.get("dev") or {}).get(s.get("metric"))),
                                  ci(c.get("test"), "pairwise_accuracy"), ci(c.get("test"), "r")]
                                 for name, c in (("best on dev", best), ("seed default", seed)) if c])
                       + _png(sweep_figure(s), figures / f"probe_sweep_{s.get('name')}.png"))
        elif key.startswith("train_"):
            rows = [[_e(m), ci(r.get("test"), "pairwise_accuracy"), ci(r.get("test"), "r"),
                     ci(r.get("test"), "r2"), ci(r.get("test"), "accuracy")]
                    for m, r in (s.get("probes") or {}).items()]
            if s.get("shuffled_control"):
                rows.append(["ridge, shuffled labels"] + [ci(s["shuffled_control"]["test"], k) for k in
                                                          ("pairwise_accuracy", "r", "r2", "accuracy")])
            if s.get("scorer"):
                rows.append([f"scorer {_e(Path(s['scorer'].get('spec', '')).name)}, the same rows"]
                            + [ci(s["scorer"].get("test"), k) for k in
                               ("pairwise_accuracy", "r", "r2", "accuracy")])
            agree = s.get("linear_vs_ridge") or {}
            out.append(f"<h3>Probes {_e(s.get('name'))}: {_e(s.get('label'))} at {_e(s.get('layer'))}, "
                       f"{_e(s.get('position'))} ({_e(s.get('objective'))})</h3>"
                       + _table(["probe", "test pairwise accuracy", "test r", "test R&sup2;",
                                 "test accuracy"], rows)
                       + (f"<p>Linear (AdamW) vs ridge: cosine {_num(agree.get('cosine'))}, r of "
                          f"test scores {_num(agree.get('test_score_r'))}.</p>" if agree else ""))
        elif key.startswith("compare_"):
            rows = [[_e(m), _e(d.get("n")), _with_ci(d, "probe_mean", "probe_ci_low", "probe_ci_high"),
                     _with_ci(d.get("probe_diff_vs_base") or {}, "diff", "ci_low", "ci_high"),
                     _with_ci(d, "reward_mean", "reward_ci_low", "reward_ci_high"),
                     ci(d.get("probe_vs_reward"), "r")]
                    for m, d in (s.get("models") or {}).items()]
            which = (s.get("which_model") or {}).get("test") or {}
            out.append(f"<h3>Base vs tuned ({_e(s.get('name'))}): probe at {_e(s.get('layer'))}, "
                       f"{_e(s.get('position'))}; base {_e(s.get('base'))}</h3>"
                       + _table(["model", "n", "probe estimate [95% CI]", "minus base (paired)",
                                 f"reward {_e(s.get('reward_label') or '')}", "r(probe, reward)"], rows)
                       + (f"<p>Which-model probe: test accuracy {ci(which, 'accuracy')} (majority "
                          f"share {_num(which.get('majority_share'))}).</p>" if which else ""))
        elif key == "targets":
            rows = [[_e(dim), _e(f"{(p.get('best_target') or {}).get('layer')} "
                                 f"{(p.get('best_target') or {}).get('position')}"),
                     ci((p.get("best_target") or {}).get("test"), "r"),
                     _num(p.get("prompt_end_best_dev_r")), _e(p.get("reward_label") or ""),
                     ci((p.get("best_target") or {}).get("target_probe_vs_reward"), "r")]
                    for dim, p in (s.get("dimensions") or {}).items()]
            out.append("<h3>The conditioned policy's own view</h3>"
                       + _table(["dimension", "best cell (dev)", "test r, target", "best dev r at "
                                 "prompt_end", "reward label", "r(target probe, reward), test"], rows)
                       + _png(targets_figure(s), figures / "probe_targets.png"))
        elif key == "search":
            rows = [[_e(m), _with_ci(d, "judge_reward", "ci_low", "ci_high"),
                     _with_ci(d, "gain_vs_random", "gain_ci_low", "gain_ci_high"),
                     _num(d.get("passes_per_prompt"), 1), _num(d.get("gain_per_1k_passes"), 4)]
                    for m, d in (s.get("methods") or {}).items()]
            out.append(f"<h3>Probe-guided search (n = {_e(s.get('n'))}, judge {_e(s.get('judge'))})</h3>"
                       + _table(["method", "judge reward [95% CI]", "gain over random [95% CI]",
                                 "forward passes / prompt", "gain per 1k passes"], rows))
    return "".join(out)


def _cell(value: Any) -> str:
    """An experiment table's cell: ``[v, lo, hi]`` as "v [lo, hi]", numbers to 3 digits."""
    if isinstance(value, list) and len(value) == 3:
        return _with_ci({"v": value[0], "lo": value[1], "hi": value[2]}, "v", "lo", "hi")
    if isinstance(value, float):
        return _num(value)
    return _DASH if value is None else _e(value)


def _experiment(result: dict, run_dir: Path) -> str:
    """A registered experiment: its question, its table, its figure, the rest of its result."""
    from ..experiments import get_experiment

    table = result.get("table") or {}
    rest = {k: v for k, v in result.items() if k not in ("table", "configs", "figure", "question",
                                                         "experiment", "variants")}
    links = "".join(f"<li>{_e(name)}: <a href='{_e(Path(v['out']).relative_to(run_dir))}/"
                    f"report.html'>its report</a>, overrides {_e(json.dumps(v['overrides']))}</li>"
                    for name, v in (result.get("variants") or {}).items()
                    if Path(v["out"]).is_relative_to(run_dir))
    return (f"<p><b>{_e(result.get('experiment'))}</b>: {_e(result.get('question'))}</p>"
            f"<p>Scale {_e(result.get('scale'))}, seeds {_e(result.get('seeds'))}; every variant "
            "is judged by its held-out test RM on the locked test split.</p>"
            + _table([_e(c) for c in table.get("columns", [])],
                     [[_cell(c) for c in row] for row in table.get("rows", [])])
            + _png(get_experiment(str(result["experiment"])).figure(result))
            + f"<h3>Variants</h3><ul>{links}</ul><h3>The rest of the result</h3>"
            + _pre_json(rest))


# ---------------------------------------------------------------- entry point
def build_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) from the run's files and return its path."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"cannot build the report: {metrics_path} does not exist "
                                "(run the evaluation stage first)")
    metrics = read_json(metrics_path)
    manifest, why_manifest = _optional(run_dir / "manifest.json", read_json)
    scores, why_scores = _optional(run_dir / SCORES, read_jsonl)
    train, why_train = _optional(run_dir / LABELS, read_jsonl)
    dims = [str(d) for d in metrics.get("dimensions", [])]
    models = [str(metrics.get("primary", "conditioned"))] + [str(m) for m in metrics.get("baselines", {})]
    elo, why_elo = _optional(run_dir / ELO, read_json)

    if isinstance(metrics.get("experiment"), dict):  # an experiment's page: its own section
        body = [f"<h1>rewardprompt experiment: {_e(metrics['experiment'].get('experiment'))}</h1>",
                _header(run_dir, manifest, why_manifest),
                "<h2>Experiment</h2>", _experiment(metrics["experiment"], run_dir),
                "<h2>Stage wall times</h2>", _stages(manifest), "<h2>Cost</h2>", _cost(manifest),
                "<h2>Config</h2>", _config(manifest), "<h2>Provenance</h2>",
                _pre_json({k: manifest.get(k) for k in ("versions", "seeds", "data")})
                if manifest else _na("Provenance")]
        return _page(run_dir, body)
    body = [
        f"<h1>rewardprompt report: {_e(run_dir.name)}</h1>",
        _header(run_dir, manifest, why_manifest),
        "<h2>Goal</h2>", _goal(metrics),
        "<h2>Control against the baselines</h2>", _control(metrics),
        "<h2>Satisficing targets</h2>", _satisficing(metrics),
        "<h2>Controllability under the labelling scorer</h2><p>Actual reward regressed on the "
        "target reward in the prompt, every seed's rows pooled; intervals resample prompts "
        "(cluster bootstrap).</p>",
        _headline(metrics, dims, models) if dims else _na("Dimensions (metrics.json: dimensions)"),
        "<h2>Target vs actual</h2>", _figures(metrics, dims, models, scores, why_scores,
                                              run_dir / "figures"),
        "<h2>Policies</h2>", _policies(metrics),
        "<h2>Openers by target</h2>", _openers(metrics, dims, models),
        "<h2>Training labels</h2><p>The reward distribution the policy was conditioned on.</p>",
        _labels(metrics, dims, train, why_train) if dims else "",
        "<h2>Reward-model accuracy</h2>", _rm(metrics),
        "<h2>Labelling RM vs held-out test RM</h2>", _test_rm(metrics, dims, models),
        "<h2>Elo ratings</h2>", _elo(elo, why_elo),
        # Probes are a study of their own: a run without them has no such section.
        ("<h2>Reward probes</h2>" + _probes(metrics, run_dir / "figures")
         if isinstance(metrics.get("probes"), dict) else ""),
        "<h2>Stage wall times</h2>", _stages(manifest),
        "<h2>Cost</h2>", _cost(manifest),
        "<h2>Example generations</h2>", _examples(scores, dims, why_scores),
        "<h2>Config</h2>",
        _config(manifest),
        "<h2>Provenance</h2>",
        _pre_json({k: manifest.get(k) for k in ("versions", "seeds", "data")}) if manifest
        else _na("Provenance"),
    ]
    return _page(run_dir, body)


def _page(run_dir: Path, body: list[str]) -> Path:
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>rewardprompt report: {_e(run_dir.name)}</title><style>{_CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")
    return atomic_write_text(run_dir / "report.html", page)


@dataclass
class ReportConfig:
    """Build RUN/report.html from the run's files."""

    run: str
    """The run directory."""


def run_report(cfg: ReportConfig) -> dict:
    """The CLI stage: ``rewardprompt report RUN``."""
    return {"report": str(build_report(cfg.run))}
