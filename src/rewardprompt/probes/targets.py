"""The ``probe targets`` stage: a reward-conditioned policy's view of its own target.

The policy reads each of its generation rows with the reward block it was sampled with (its
``rewardprompt.json`` template, the row's ``targets``). Per layer x position, two probes on the
policy's own residual stream: one for the target it was given (``target.DIM``), one for the
reward its reply earned (``actual.DIM`` from evaluate's rows, or ``rm`` from a scorer). Where
the target is decodable at ``prompt_end`` the number in the prompt has become a direction
before any reply token; the cosine of the two probes' directions, and how well the target
probe predicts the reply's reward, say whether it is the direction the reward lies along.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..runs import atomic_write_json, recorded, update_metrics_entry
from .probe import Hyper, evaluate, fit_probe, split_sides
from .sweep import save_png, sweep_cells


@dataclass
class ProbeTargetsConfig:
    """Probe a reward-conditioned policy's residual stream for its target and its reward."""

    policy: str
    """The conditioned policy's folder (with rewardprompt.json)."""
    generations: list[str]
    """Its generation rows with targets: generate's output or evaluate's eval/scores.jsonl
    (which adds each reply's actual reward)."""
    out: str | None = None
    """Folder for the activations and targets.json (default: RUN/probes/targets)."""
    run: str | None = None
    """A run directory: the stage records itself and its summary there."""
    scorer: str | None = None
    """A scorer whose reward of each reply becomes the label rm."""
    rewards: list[str] = field(default_factory=list)
    """Reward labels to probe beside the targets (actual.DIM, reward, rm); empty: actual.DIM for
    each target dimension the rows have it for, else rm."""
    layers: list[int] = field(default_factory=list)
    """Hidden-state indices to collect (empty: all)."""
    positions: list[str] = field(default_factory=list)
    """Positions to collect (empty: prompt_end, resp_1, 2, 4, ..., last, mean)."""
    method: Literal["ridge", "linear"] = "ridge"
    """The probe in each cell."""
    alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    """Ridge penalties; each cell keeps its best on dev."""
    max_rows: int | None = None
    """Per generation file, at most its first this many rows."""
    max_completion_tokens: int = 64
    """Completion tokens kept per row."""
    batch_size: int = 8
    """Rows per forward pass."""
    n_boot: int = 1000
    """Bootstrap resamples for the test CIs."""
    seed: int = 0
    """Seeds the probes and the bootstrap."""
    overwrite: bool = False
    """Collect again when the folder holds activations of another config."""


def _cosine(a: Any, b: Any) -> float | None:
    """Cosine of two linear probes' directions in the raw feature space."""
    wa = a.module.weight.detach().numpy().reshape(-1) / a.std
    wb = b.module.weight.detach().numpy().reshape(-1) / b.std
    denom = float(np.linalg.norm(wa) * np.linalg.norm(wb))
    return float(wa @ wb) / denom if denom > 0 else None


def targets_view(cfg: ProbeTargetsConfig) -> dict[str, Any]:
    """Collect the policy's own activations with its block; sweep targets and rewards."""
    from .collect import CollectConfig, collect_activations
    from .store import ActivationStore

    out = _out(cfg)
    collect_activations(CollectConfig(
        generations=list(cfg.generations), model=cfg.policy, out=str(out / "acts"),
        layers=list(cfg.layers), positions=list(cfg.positions), reward_block=True,
        scorer=cfg.scorer, max_rows=cfg.max_rows, max_completion_tokens=cfg.max_completion_tokens,
        batch_size=cfg.batch_size, overwrite=cfg.overwrite))
    store = ActivationStore(out / "acts")
    have = {k for r in store.rows for k in r["labels"]}
    dims = sorted(k.split(".", 1)[1] for k in have if k.startswith("target."))
    if not dims:
        raise ValueError(f"the rows of {', '.join(cfg.generations)} carry no targets: they are "
                         "not a conditioned policy's generations")
    hp = Hyper(alphas=tuple(cfg.alphas), seed=cfg.seed)
    result: dict[str, Any] = {"policy": cfg.policy, "method": cfg.method, "layers": store.layers,
                              "positions": store.positions, "dimensions": {}}
    for dim in dims:
        reward = _reward_label(cfg, dim, have)
        t_cells, t_grid, t_probes = sweep_cells(store, store.layers, store.positions,
                                                f"target.{dim}", "regression", cfg.method, hp,
                                                keep_probes=True)
        per: dict[str, Any] = {"target_label": f"target.{dim}", "reward_label": reward,
                               "target_r": t_grid["r"]}
        if reward is not None:
            r_cells, r_grid, r_probes = sweep_cells(store, store.layers, store.positions, reward,
                                                    "regression", cfg.method, hp, keep_probes=True)
            per["reward_r"] = r_grid["r"]
            per["cosine"] = [[_cosine(t_probes[l, p], r_probes[l, p])
                              if (l, p) in t_probes and (l, p) in r_probes else None
                              for p in store.positions] for l in store.layers]
        per["best_target"] = _best_on_test(store, t_cells, f"target.{dim}", cfg, hp, reward)
        if "prompt_end" in store.positions:
            k = store.positions.index("prompt_end")
            col = [row[k] for row in t_grid["r"]]
            finite = [(v, l) for v, l in zip(col, store.layers) if v is not None]
            per["prompt_end_best_dev_r"] = max(finite)[0] if finite else None
            per["prompt_end_best_layer"] = max(finite)[1] if finite else None
        result["dimensions"][dim] = per
    figure = (Path(cfg.run) / "figures" if cfg.run else out) / "probe_targets.png"
    result["figure"] = str(figure)
    atomic_write_json(out / "targets.json", result)
    save_png(targets_figure(result), figure)
    update_metrics_entry(cfg.run, "probes", "targets", result)
    return {"out": str(out / "targets.json"), "figure": str(figure),
            "best_target": {d: {k: v for k, v in p["best_target"].items() if k != "test"}
                            | {"test_r": (p["best_target"].get("test") or {}).get("r")}
                            for d, p in result["dimensions"].items()}}


def _reward_label(cfg: ProbeTargetsConfig, dim: str, have: set[str]) -> str | None:
    """The reward probed beside ``target.DIM``."""
    for label in cfg.rewards:
        if label not in have:
            raise ValueError(f"no row carries the reward label {label!r}; labels: "
                             f"{', '.join(sorted(have))}")
    wanted = [lab for lab in cfg.rewards if lab.endswith(f".{dim}")] or cfg.rewards
    if wanted:
        return wanted[0]
    for label in (f"actual.{dim}", "rm", "reward"):
        if label in have:
            return label
    return None


def _best_on_test(store: Any, cells: list[dict], label: str, cfg: ProbeTargetsConfig, hp: Hyper,
                  reward: str | None) -> dict[str, Any]:
    """The dev-best cell of the target probe, refitted and reported on test; with a reward
    label, also how the target probe's estimate tracks the replies' reward there."""
    scored = [c for c in cells if (c.get("dev") or {}).get("r") is not None]
    if not scored:
        return {"note": "no cell could be fitted"}
    best = max(scored, key=lambda c: c["dev"]["r"])
    x, present = store.features(best["layer"], best["position"])
    sides, _ = split_sides(store.rows, present, label, "regression")
    probe = fit_probe(cfg.method, "regression", x[sides["train"].idx], sides["train"],
                      x[sides["dev"].idx], sides["dev"], hp, label=label, layer=best["layer"],
                      position=best["position"])
    out = {"layer": best["layer"], "position": best["position"], "dev_r": best["dev"]["r"],
           "test": evaluate(probe, x[sides["test"].idx], sides["test"], n_boot=cfg.n_boot,
                            seed=cfg.seed)}
    if reward is not None:
        r_sides, _ = split_sides(store.rows, present, reward, "regression")
        te = r_sides["test"]
        if te.n >= 3:
            from .probe import r_and_r2_ci

            agree = r_and_r2_ci(te.y, probe.scores(x[te.idx]), te.groups, cfg.n_boot, cfg.seed)
            out["target_probe_vs_reward"] = {k: agree[k] for k in ("r", "r_ci_low", "r_ci_high")}
    return out


def targets_figure(result: dict[str, Any]) -> Any:
    """Per dimension, dev r by layer of the target probe (at prompt_end and last) and of the
    reward probe (at last), and the cosine of their directions at last."""
    from matplotlib.figure import Figure

    dims = list(result["dimensions"])
    fig = Figure(figsize=(6.5 * len(dims), 3.6))
    layers, positions = result["layers"], result["positions"]
    for ax, dim in zip(fig.subplots(1, len(dims), squeeze=False)[0], dims):
        per = result["dimensions"][dim]
        for key, pos, style in (("target_r", "prompt_end", "o-"), ("target_r", "last", "s-"),
                                ("reward_r", "last", "^--"), ("cosine", "last", "x:")):
            if key not in per or pos not in positions:
                continue
            k = positions.index(pos)
            ys = [np.nan if row[k] is None else row[k] for row in per[key]]
            name = {"target_r": f"r, target ({pos})", "reward_r": f"r, {per['reward_label']} ({pos})",
                    "cosine": f"cosine target/reward ({pos})"}[key]
            ax.plot(range(len(layers)), ys, style, ms=3, label=name)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
        ax.set(ylim=(-1.02, 1.02), ylabel="dev r / cosine",
               title=f"{dim}: the policy's own view ({result['method']} probes)")
        ax.legend(fontsize=7)
    return fig


def _out(cfg: ProbeTargetsConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    if cfg.run is None:
        raise ValueError("give --out, or --run DIR to write probes/targets inside a run")
    return Path(cfg.run) / "probes" / "targets"


@recorded("probe targets")
def _run_targets(cfg: ProbeTargetsConfig) -> dict[str, Any]:
    return targets_view(cfg)


def run_targets(cfg: ProbeTargetsConfig) -> dict[str, Any]:
    """The CLI stage: ``rewardprompt probe targets --policy RUN/sft/conditioned
    --generations RUN/eval/scores.jsonl --run RUN``."""
    if cfg.out is None and cfg.run is not None:
        cfg = replace(cfg, out=str(_out(cfg)))
    return _run_targets(cfg)
