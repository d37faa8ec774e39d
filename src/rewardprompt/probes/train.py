"""The ``probe train`` stage: probes at one layer and position, with held-out metrics.

Each method in ``methods`` (``linear``: AdamW, the seed's best setting by default; ``ridge``:
scikit-learn's closed form; ``mlp``: one hidden layer) is fitted on the training side, chosen on
dev (epoch or penalty) and reported on test, with bootstrap CIs over conversations. Beside them:
a ridge probe fitted on shuffled labels (chance, measured rather than assumed) and the
agreement of the linear and ridge probes (cosine of their directions, r of their test scores).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..runs import atomic_write_json, recorded, update_metrics_entry
from .probe import METHODS, Hyper, Probe, default_objective, evaluate, fit_probe, shuffled, split_sides


@dataclass
class ProbeTrainConfig:
    """Train probes at one layer and position of a collected store; report them on test."""

    acts: str
    """The activation store (probe collect's folder)."""
    out: str | None = None
    """Folder for the probes (one sub-folder per method) and metrics.json; default:
    RUN/probes/probe_NAME."""
    run: str | None = None
    """A run directory: the stage records itself and its metrics there."""
    name: str | None = None
    """The probe's name in the run (default: the label, then the sources)."""
    label: str = "chosen"
    """What the probe estimates: chosen (pairs), rating, rm, target.DIM, actual.DIM, reward, or
    model (which model wrote the reply)."""
    objective: Literal["auto", "regression", "pairwise", "classify"] = "auto"
    """auto: pairwise for chosen, classify for model/source, else regression."""
    layer: str | None = None
    """resid_pre.I or final; None: resid_pre at three quarters of the depth (the seed's 24 of
    32)."""
    position: str = "last"
    """prompt_end, resp_K, last or mean (the seed's best: last)."""
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    """Which probes to fit: linear (AdamW), ridge (closed form), mlp."""
    sources: list[str] = field(default_factory=list)
    """Only rows from these sources (pair sources or generation files); empty: all."""
    models: list[str] = field(default_factory=list)
    """Only rows of these models (generation rows); empty: all."""
    fit: Hyper = field(default_factory=Hyper)
    """How the probes fit (the seed's best linear probe by default)."""
    control: bool = True
    """Also fit ridge on shuffled training labels: the chance level of this setup."""
    scorer: str | None = None
    """A scorer (reward-model folder, synthetic:..., module:function) measured on the very dev
    and test rows the probes are (the same pairs, at this position), reported beside them."""
    n_boot: int = 1000
    """Bootstrap resamples for every CI."""


def probe_name(label: str, sources: list[str]) -> str:
    """``chosen_hh-harmless``: a label and the sources it was trained on, safe as a file name."""
    parts = [label] + [Path(s).name.split(".")[0] for s in sources]
    return "_".join(parts).replace("/", "-")


def check_label(rows: list[dict], label: str, objective: str, where: str) -> None:
    """A clear error when no training row carries ``label``."""
    train = [r for r in rows if r["split"] == "train"]
    if objective == "classify":
        ok = any(r.get(label) is not None for r in train)
        have = sorted(k for k in ("model", "source") if any(r.get(k) for r in train))
    else:
        key = "chosen" if objective == "pairwise" else label
        ok = any(key in r["labels"] for r in train)
        have = sorted({k for r in train for k in r["labels"]})
    if not ok:
        raise ValueError(f"{where}: no training row carries the label {label!r} "
                         f"(objective {objective}); labels there: {', '.join(have) or 'none'}")


def train_probes(cfg: ProbeTrainConfig) -> dict[str, Any]:
    """Fit the probes, save each with its metrics, and return the summary."""
    from .store import ActivationStore

    store = ActivationStore(cfg.acts)
    objective = default_objective(cfg.label) if cfg.objective == "auto" else cfg.objective
    check_label(store.rows, cfg.label, objective, str(cfg.acts))
    unknown = sorted(set(cfg.methods) - set(METHODS))
    if unknown or not cfg.methods:
        raise ValueError(f"methods must be among {', '.join(METHODS)}, got {cfg.methods}")
    layer = cfg.layer or _default_layer(store)
    x, present = store.features(layer, cfg.position)
    sides, classes = split_sides(store.rows, present, cfg.label, objective,
                                 sources=cfg.sources, models=cfg.models)
    name = cfg.name or probe_name(cfg.label, cfg.sources)
    out = Path(cfg.out) if cfg.out else (Path(cfg.run) / "probes" / f"probe_{name}" if cfg.run
                                         else None)
    if out is None:
        raise ValueError("give --out, or --run DIR to write probes/probe_NAME inside a run")
    hp = cfg.fit
    xs = {s: x[side.idx] for s, side in sides.items()}
    where = {"layer": layer, "position": cfg.position, "label": cfg.label, "objective": objective,
             "sources": cfg.sources, "models": cfg.models, "acts": str(cfg.acts),
             "model": store.model, "reward_block": store.index.get("reward_block"),
             "max_prompt_tokens": store.index.get("max_prompt_tokens"),
             "max_completion_tokens": store.index.get("max_completion_tokens")}
    results: dict[str, Any] = {"name": name, **where,
                               "rows": {s: side.n for s, side in sides.items()},
                               "pairs": {s: int(len(side.pairs)) for s, side in sides.items()},
                               "hyper": hp.__dict__ | {"alphas": list(hp.alphas)}, "probes": {}}
    probes: dict[str, Probe] = {}
    for method in cfg.methods:
        probe = fit_probe(method, objective, xs["train"], sides["train"], xs["dev"], sides["dev"],
                          hp, label=cfg.label, layer=layer, position=cfg.position, classes=classes)
        m = {split: evaluate(probe, xs[split], sides[split], n_boot=cfg.n_boot, seed=cfg.fit.seed)
             for split in ("dev", "test")}
        probe.save(out / method, extra=where | {"metrics": m})
        probes[method] = probe
        results["probes"][method] = {**m, "fit": _short(probe.info)}
    if cfg.control:
        fake = fit_probe("ridge", objective, xs["train"], shuffled(sides["train"], objective, cfg.fit.seed),
                         xs["dev"], sides["dev"], hp, label=cfg.label, layer=layer,
                         position=cfg.position, classes=classes)
        results["shuffled_control"] = {"method": "ridge", "test": evaluate(
            fake, xs["test"], sides["test"], n_boot=cfg.n_boot, seed=cfg.fit.seed)}
    if cfg.scorer:
        results["scorer"] = scorer_beside(cfg.scorer, store, sides, objective, cfg.n_boot,
                                          cfg.fit.seed)
    if "linear" in probes and "ridge" in probes and objective != "classify":
        results["linear_vs_ridge"] = agreement(probes["linear"], probes["ridge"], xs["test"])
    atomic_write_json(out / "metrics.json", results)
    update_metrics_entry(cfg.run, "probes", f"train_{name}", results)
    return {"out": str(out), "name": name, "layer": layer, "position": cfg.position,
            "objective": objective,
            "test": {m: {k: v for k, v in r["test"].items() if not k.endswith(("_low", "_high"))}
                     for m, r in results["probes"].items()}}


def scorer_beside(spec: str, store: Any, sides: dict, objective: str, n_boot: int,
                  seed: int) -> dict[str, Any]:
    """A scorer's metrics on the dev and test sides the probes are measured on: a reward model's
    pairwise accuracy on exactly the probes' pairs, with the same bootstrap."""
    from ..rewards.scorer import load_scorer
    from .collect import stored_rows
    from .probe import side_metrics

    if objective == "classify":
        raise ValueError("scorer: a reward scorer has nothing to say about a classify probe")
    planned = stored_rows(store)
    scorer = load_scorer(spec)
    out: dict[str, Any] = {"spec": str(spec)}
    for split in ("dev", "test"):
        idx = sides[split].idx
        s = (np.asarray(scorer.score([planned[i].prompt for i in idx],
                                     [planned[i].response for i in idx]), dtype=float)
             if len(idx) else np.zeros(0))
        out[split] = side_metrics(objective, s, sides[split], n_boot=n_boot, seed=seed)
    return out


def _default_layer(store: Any) -> str:
    from .probe import default_layer

    layer = default_layer(int(store.index["n_blocks"]))
    if layer not in store.layers:
        raise ValueError(f"{store.dir}: the default layer {layer} was not collected; pass "
                         f"--layer (collected: {', '.join(store.layers)})")
    return layer


def _short(info: dict) -> dict:
    """The fit's record without its per-epoch history (kept in the probe's own probe.json)."""
    return {k: v for k, v in info.items() if k not in ("dev_loss_history", "dev_score_per_alpha")}


def agreement(a: Probe, b: Probe, x: np.ndarray) -> dict[str, float | None]:
    """How alike two linear probes are: the cosine of their directions in the raw feature
    space (weights divided by the std each used) and Pearson r of their scores on ``x``."""
    wa = a.module.weight.detach().numpy().reshape(-1) / a.std
    wb = b.module.weight.detach().numpy().reshape(-1) / b.std
    denom = float(np.linalg.norm(wa) * np.linalg.norm(wb))
    sa, sb = a.scores(x), b.scores(x)
    r = float(np.corrcoef(sa, sb)[0, 1]) if np.ptp(sa) > 0 and np.ptp(sb) > 0 else None
    return {"cosine": float(wa @ wb) / denom if denom > 0 else None, "test_score_r": r}


@recorded("probe train")
def _run_train(cfg: ProbeTrainConfig) -> dict[str, Any]:
    return train_probes(cfg)


def run_train(cfg: ProbeTrainConfig) -> dict[str, Any]:
    """The CLI stage: ``rewardprompt probe train --acts RUN/probes/acts --run RUN``."""
    if cfg.out is None and cfg.run is not None:
        name = cfg.name or probe_name(cfg.label, cfg.sources)
        cfg = replace(cfg, out=str(Path(cfg.run) / "probes" / f"probe_{name}"))
    return _run_train(cfg)
