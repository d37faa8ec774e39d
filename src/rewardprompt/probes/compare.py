"""The ``probe compare`` stage: one probe on completions of a base model and of tuned models.

The seed's question: models trained to please a rater should write what a probe of the rater's
reward rates higher. Every completion (generation rows: prompt, response, model) is read by the
probe's own model, at the probe's layer and position, with the prompt it was written for; then
per model: the mean probe estimate (CI over prompts), its difference from the base model's
(paired by prompt), and how the estimate agrees with a reward model (Pearson r per model).

The seed's other probe rides along: a probe that tells from the same activations which model
wrote a completion (trained on the train side of the prompts' hash split, reported on test
beside the majority-class share). Above chance means the tuning left a readable trace.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..runs import atomic_write_json, recorded, update_metrics_entry
from ..stats import boot_counts, bootstrap_mean_ci, group_index, percentile_ci
from .probe import Hyper, Probe, evaluate, fit_probe, r_and_r2_ci, split_sides


@dataclass
class ProbeCompareConfig:
    """Apply a probe to completions of base and tuned models; compare them and an RM."""

    probe: str
    """A probe folder (probe train's OUT/METHOD, e.g. RUN/probes/probe_chosen/linear)."""
    generations: list[str]
    """Generation JSONL files (rows with prompt, response, model), e.g. RUN/generate/*.jsonl."""
    out: str | None = None
    """Folder for the activations and compare.json (default: RUN/probes/compare_NAME)."""
    run: str | None = None
    """A run directory: the stage records itself and its summary there."""
    name: str | None = None
    """The comparison's name in the run (default: the probe's folder names)."""
    base: str | None = None
    """The rows' model name of the model before tuning; None: the first file's first row's."""
    scorer: str | None = None
    """A scorer (reward-model folder, synthetic:..., module:function) to compare against: its
    reward of each completion becomes the label 'rm'."""
    reward_label: str | None = None
    """A reward the rows already carry (actual.DIM, reward) to compare against; default: rm when
    a scorer is given."""
    classify: bool = True
    """Also train a probe that tells which model wrote each completion."""
    classify_method: Literal["ridge", "linear"] = "ridge"
    """The which-model probe: ridge (closed form) or linear (AdamW)."""
    max_rows: int | None = None
    """Per generation file, at most its first this many rows."""
    batch_size: int = 8
    """Rows per forward pass."""
    n_boot: int = 1000
    """Bootstrap resamples for every CI."""
    seed: int = 0
    """Seeds the which-model probe and the bootstrap."""
    overwrite: bool = False
    """Collect again when the folder holds activations of another config."""


def layer_spec(layer: str) -> int:
    """A layer name as collect's hidden-state index (``final`` is -1)."""
    return -1 if layer == "final" else int(layer.split(".")[1])


def paired_diff(values: np.ndarray, models: np.ndarray, groups: np.ndarray, a: str, b: str,
                n_boot: int, seed: int) -> dict[str, float | None]:
    """mean(values of a) - mean(values of b), with a bootstrap over ``groups`` (prompts) that
    draws one resample for both models, so the difference is paired by prompt."""
    gidx, g = group_index(groups, values.size)
    sums = {m: np.bincount(gidx, weights=np.where(models == m, values, 0.0), minlength=g)
            for m in (a, b)}
    counts = {m: np.bincount(gidx, weights=(models == m).astype(float), minlength=g) for m in (a, b)}
    point = values[models == a].mean() - values[models == b].mean()
    draws = []
    for w in boot_counts(g, n_boot, seed):
        with np.errstate(invalid="ignore", divide="ignore"):
            draws.append((w @ sums[a]) / (w @ counts[a]) - (w @ sums[b]) / (w @ counts[b]))
    lo, hi = percentile_ci(np.concatenate(draws))
    return {"diff": float(point), "ci_low": lo, "ci_high": hi}


def compare(cfg: ProbeCompareConfig) -> dict[str, Any]:
    """Collect the completions' activations with the probe's model, apply the probe, compare."""
    from .collect import CollectConfig, collect_activations
    from .store import ActivationStore

    probe, meta = Probe.load(cfg.probe)
    if not cfg.generations:
        raise ValueError("give --generations: the base and tuned models' completions")
    if probe.objective == "classify":
        raise ValueError(f"{cfg.probe} is a classify probe; compare applies a reward probe "
                         "(regression or pairwise)")
    out = _out(cfg)
    collect_activations(CollectConfig(
        generations=list(cfg.generations), model=meta["model"], out=str(out / "acts"),
        layers=[layer_spec(probe.layer)], positions=[probe.position],
        reward_block=bool(meta.get("reward_block")), scorer=cfg.scorer,
        max_prompt_tokens=meta.get("max_prompt_tokens"),
        max_completion_tokens=meta.get("max_completion_tokens") or 64,
        max_rows=cfg.max_rows, batch_size=cfg.batch_size, overwrite=cfg.overwrite))
    store = ActivationStore(out / "acts")
    x, present = store.features(probe.layer, probe.position)
    rows = store.rows
    keep = np.flatnonzero(present)
    est = np.full(len(rows), np.nan)
    est[keep] = probe.scores(x[keep])
    models = np.array([str(r["model"]) for r in rows], dtype=object)
    groups = np.array([r["group"] for r in rows], dtype=object)
    names = list(dict.fromkeys(models[keep]))
    base = cfg.base or str(rows[0]["model"])
    if base not in names:
        raise ValueError(f"base model {base!r} is not among the rows' models ({', '.join(names)})")
    reward_label = cfg.reward_label or ("rm" if cfg.scorer else None)
    if reward_label is not None and not any(reward_label in r["labels"] for r in rows):
        have = sorted({k for r in rows for k in r["labels"]})
        raise ValueError(f"no row carries the reward {reward_label!r}; labels: "
                         f"{', '.join(have) or 'none'}")
    per_model: dict[str, Any] = {}
    for m in names:
        sel = keep[models[keep] == m]
        lo, hi = bootstrap_mean_ci(est[sel], cfg.n_boot, cfg.seed, groups=groups[sel])
        d: dict[str, Any] = {"n": int(sel.size), "n_prompts": len(set(groups[sel])),
                             "probe_mean": float(est[sel].mean()), "probe_ci_low": lo,
                             "probe_ci_high": hi}
        if m != base:
            both = keep[(models[keep] == m) | (models[keep] == base)]
            d["probe_diff_vs_base"] = paired_diff(est[both], models[both], groups[both], m, base,
                                                  cfg.n_boot, cfg.seed)
        if reward_label is not None:
            with_r = np.array([i for i in sel if reward_label in rows[i]["labels"]], dtype=int)
            y = np.array([rows[i]["labels"][reward_label] for i in with_r], dtype=float)
            if with_r.size:
                rlo, rhi = bootstrap_mean_ci(y, cfg.n_boot, cfg.seed, groups=groups[with_r])
                d.update(reward_mean=float(y.mean()), reward_ci_low=rlo, reward_ci_high=rhi)
                agree = r_and_r2_ci(y, est[with_r], groups[with_r], cfg.n_boot, cfg.seed)
                d["probe_vs_reward"] = {k: agree[k] for k in ("r", "r_ci_low", "r_ci_high")}
        per_model[m] = d
    result: dict[str, Any] = {"name": out.name.removeprefix("compare_"), "probe": str(cfg.probe),
                              "model": meta["model"], "layer": probe.layer,
                              "position": probe.position, "objective": probe.objective,
                              "label": probe.label, "base": base, "reward_label": reward_label,
                              "models": per_model}
    if cfg.classify and len(names) >= 2:
        result["which_model"] = _which_model(rows, x, present, cfg)
    atomic_write_json(out / "compare.json", result)
    update_metrics_entry(cfg.run, "probes", f"compare_{result['name']}", result)
    return {"out": str(out / "compare.json"), "base": base,
            "probe_mean": {m: round(d["probe_mean"], 4) for m, d in per_model.items()},
            "which_model_accuracy": (result.get("which_model") or {}).get("test", {}).get("accuracy")}


def _which_model(rows: list[dict], x: np.ndarray, present: np.ndarray,
                 cfg: ProbeCompareConfig) -> dict[str, Any]:
    """A probe that tells which model wrote a completion, at the reward probe's layer and
    position: trained on the prompts' train side, chosen on dev, reported on test."""
    sides, classes = split_sides(rows, present, "model", "classify")
    if any(sides[s].n == 0 for s in sides) or len(classes or []) < 2:
        return {"note": "too few rows on some side of the split, or one model only, to train it",
                "rows": {s: sides[s].n for s in sides}}
    hp = Hyper(seed=cfg.seed)
    probe = fit_probe(cfg.classify_method, "classify", x[sides["train"].idx], sides["train"],
                      x[sides["dev"].idx], sides["dev"], hp, label="model", layer="", position="",
                      classes=classes)
    return {"method": cfg.classify_method, "classes": classes,
            "rows": {s: sides[s].n for s in sides},
            "test": evaluate(probe, x[sides["test"].idx], sides["test"], n_boot=cfg.n_boot,
                             seed=cfg.seed)}


def _out(cfg: ProbeCompareConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    if cfg.run is None:
        raise ValueError("give --out, or --run DIR to write probes/compare_NAME inside a run")
    parts = Path(cfg.probe).resolve().parts[-2:]
    return Path(cfg.run) / "probes" / f"compare_{cfg.name or '_'.join(parts)}"


@recorded("probe compare")
def _run_compare(cfg: ProbeCompareConfig) -> dict[str, Any]:
    return compare(cfg)


def run_compare(cfg: ProbeCompareConfig) -> dict[str, Any]:
    """The CLI stage: ``rewardprompt probe compare --probe P --generations A.jsonl B.jsonl``."""
    if cfg.out is None and cfg.run is not None:
        cfg = replace(cfg, out=str(_out(cfg)))
    return _run_compare(cfg)

