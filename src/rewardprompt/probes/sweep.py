"""The ``probe sweep`` stage: one probe per layer x position, compared on the dev side.

Each cell fits a probe (``ridge`` by default, for speed: one closed form per penalty, a few
milliseconds a cell; ``linear`` runs AdamW per cell) on the training side and scores it on dev:
pairwise accuracy where rows come in pairs, and Pearson r (and R^2) where the label is a scalar.
Cells are compared on dev only; the test side is looked at for two cells alone, the best on dev
and the seed's default (last position, three quarters of the depth), each with bootstrap CIs,
so the grid never chooses by the test split. Writes JSON and a heatmap per metric.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..runs import atomic_write_bytes, atomic_write_json, recorded, update_metrics_entry
from .probe import (Hyper, Side, default_layer, default_objective, evaluate, fit_probe,
                    pairwise_correct, split_sides)
from .train import check_label, probe_name


@dataclass
class ProbeSweepConfig:
    """Probe every collected layer x position; a heatmap of the dev metric and the best cell."""

    acts: str
    """The activation store (probe collect's folder)."""
    out: str | None = None
    """The sweep's JSON (default: RUN/probes/sweep_NAME.json); the heatmap goes beside it, or
    into RUN/figures."""
    run: str | None = None
    """A run directory: the stage records itself and its summary there."""
    name: str | None = None
    """The sweep's name in the run (default: the label, then the sources)."""
    label: str = "chosen"
    """The label probed: chosen, rating, rm, target.DIM, actual.DIM, reward, model."""
    objective: Literal["auto", "regression", "pairwise", "classify"] = "auto"
    """auto: pairwise for chosen, classify for model/source, else regression."""
    method: Literal["ridge", "linear"] = "ridge"
    """The probe in each cell: ridge (closed form, fast) or linear (AdamW)."""
    sources: list[str] = field(default_factory=list)
    """Only rows from these sources; empty: all."""
    models: list[str] = field(default_factory=list)
    """Only rows of these models; empty: all."""
    layers: list[str] = field(default_factory=list)
    """Layers to sweep (resid_pre.I, final); empty: every collected one."""
    positions: list[str] = field(default_factory=list)
    """Positions to sweep; empty: every collected one."""
    fit: Hyper = field(default_factory=Hyper)
    """How each cell's probe fits (lr to patience: method linear; alphas: ridge)."""
    n_boot: int = 1000
    """Bootstrap resamples for the test CIs of the best and the default cell."""


def point_metrics(objective: str, s: np.ndarray, side: Side) -> dict[str, float | None]:
    """The dev metrics of one cell, without intervals (a grid needs hundreds of them)."""
    out: dict[str, float | None] = {}
    if objective == "classify":
        out["accuracy"] = float(np.mean(s.argmax(1) == side.y)) if side.n else None
        return out
    if objective == "regression" and side.n >= 3 and np.ptp(side.y) > 0:
        out["r"] = float(np.corrcoef(s, side.y)[0, 1]) if np.ptp(s) > 0 else None
        out["r2"] = float(1 - ((side.y - s) ** 2).sum() / ((side.y - side.y.mean()) ** 2).sum())
    out["pairwise_accuracy"] = (float(pairwise_correct(s, side.pairs).mean())
                                if len(side.pairs) else None)
    return out


def sweep_cells(store: Any, layers: list[str], positions: list[str], label: str, objective: str,
                method: str, hp: Hyper, *, sources: list[str] | None = None,
                models: list[str] | None = None, keep_probes: bool = False
                ) -> tuple[list[dict], dict[str, list[list[float | None]]], dict[tuple[str, str], Any]]:
    """Fit one probe per (layer, position) on train, score it on dev.

    Returns the cells (layer, position, row counts, dev metrics), the grid of each dev metric
    (layers x positions; None where a cell could not be fitted) and, with ``keep_probes``, the
    fitted probes by (layer, position).
    """
    metrics = (["accuracy"] if objective == "classify" else
               (["r", "r2"] if objective == "regression" else []) + ["pairwise_accuracy"])
    grid: dict[str, list[list[float | None]]] = {m: [[None] * len(positions) for _ in layers]
                                                 for m in metrics}
    cells, probes = [], {}
    for li, layer in enumerate(layers):
        x_all, present_all = store.layer(layer)  # one layer's memory map at a time
        for pi, position in enumerate(positions):
            k = store.positions.index(position)
            sides, classes = split_sides(store.rows, present_all[:, k], label, objective,
                                         sources=sources, models=models)
            cell: dict[str, Any] = {"layer": layer, "position": position,
                                    "n_train": sides["train"].n, "n_dev": sides["dev"].n}
            if sides["train"].n and sides["dev"].n and (objective != "pairwise"
                                                        or len(sides["train"].pairs)):
                x = x_all[:, k]
                probe = fit_probe(method, objective, x[sides["train"].idx], sides["train"],
                                  x[sides["dev"].idx], sides["dev"], hp, label=label,
                                  layer=layer, position=position, classes=classes)
                dev = point_metrics(objective, probe.scores(x[sides["dev"].idx]), sides["dev"])
                cell["dev"] = dev
                for m in metrics:
                    grid[m][li][pi] = dev.get(m)
                if keep_probes:
                    probes[layer, position] = probe
            cells.append(cell)
    return cells, grid, probes


def sweep(cfg: ProbeSweepConfig) -> dict[str, Any]:
    """Fit and score every cell; write the JSON and heatmap; return the result."""
    from .store import ActivationStore

    store = ActivationStore(cfg.acts)
    objective = default_objective(cfg.label) if cfg.objective == "auto" else cfg.objective
    check_label(store.rows, cfg.label, objective, str(cfg.acts))
    layers = cfg.layers or store.layers
    positions = cfg.positions or store.positions
    for p in positions:
        store.check(layers[0], p)
    name = cfg.name or probe_name(cfg.label, cfg.sources)
    out = _out(cfg, name)
    hp = cfg.fit
    cells, grid, _ = sweep_cells(store, layers, positions, cfg.label, objective, cfg.method, hp,
                                 sources=cfg.sources, models=cfg.models)
    head = "accuracy" if objective == "classify" else ("r" if objective == "regression"
                                                        else "pairwise_accuracy")
    if objective == "regression" and all(v is None for row in grid["r"] for v in row):
        head = "pairwise_accuracy"
    scored = [c for c in cells if (c.get("dev") or {}).get(head) is not None]
    if not scored:
        raise ValueError(f"{cfg.acts}: no cell could be scored for {cfg.label!r} (no training or "
                         "dev rows with that label and position)")
    best = max(scored, key=lambda c: c["dev"][head])
    result: dict[str, Any] = {
        "name": name, "acts": str(cfg.acts), "model": store.model, "label": cfg.label,
        "objective": objective, "method": cfg.method, "sources": cfg.sources,
        "models": cfg.models, "selected_on": "dev", "metric": head, "layers": layers,
        "positions": positions, "grid": grid, "cells": cells,
        "best": {"layer": best["layer"], "position": best["position"], "dev": best["dev"]}}
    seed_layer = default_layer(int(store.index["n_blocks"]))
    looks = [("best", best["layer"], best["position"])]
    if seed_layer in layers and "last" in positions:
        looks.append(("seed_default", seed_layer, "last"))
    for key, layer, position in looks:
        x, present = store.features(layer, position)
        sides, classes = split_sides(store.rows, present, cfg.label, objective,
                                     sources=cfg.sources, models=cfg.models)
        probe = fit_probe(cfg.method, objective, x[sides["train"].idx], sides["train"],
                          x[sides["dev"].idx], sides["dev"], hp, label=cfg.label, layer=layer,
                          position=position, classes=classes)
        cell = next(c for c in cells if c["layer"] == layer and c["position"] == position)
        result.setdefault(key, {"layer": layer, "position": position, "dev": cell.get("dev")})
        result[key]["test"] = evaluate(probe, x[sides["test"].idx], sides["test"],
                                       n_boot=cfg.n_boot, seed=cfg.fit.seed)
    figure = (Path(cfg.run) / "figures" if cfg.run else out.parent) / f"probe_sweep_{name}.png"
    result["figure"] = str(figure)
    atomic_write_json(out, result)
    save_png(sweep_figure(result), figure)
    update_metrics_entry(cfg.run, "probes", f"sweep_{name}", result)
    return {"out": str(out), "figure": str(figure), "metric": head, "best": result["best"],
            "best_test": {k: v for k, v in result["best"]["test"].items()
                          if not k.endswith(("_low", "_high"))}}


def _out(cfg: ProbeSweepConfig, name: str) -> Path:
    if cfg.out:
        return Path(cfg.out)
    if cfg.run is None:
        raise ValueError("give --out, or --run DIR to write probes/sweep_NAME.json inside a run")
    return Path(cfg.run) / "probes" / f"sweep_{name}.json"


def save_png(fig: Any, path: Path) -> Path:
    """A figure as a PNG file, written atomically."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


_TITLES = {"pairwise_accuracy": "pairwise accuracy", "r": "Pearson r", "r2": "R$^2$",
           "accuracy": "accuracy"}


def sweep_figure(result: dict[str, Any]) -> Any:
    """A heatmap per metric of a sweep's dev grid (layers x positions), the best cell boxed.

    Built from the sweep's JSON alone, so the report draws it without recomputing anything.
    """
    from matplotlib.figure import Figure  # no pyplot: Figure renders through Agg, no GUI state
    from matplotlib.patches import Rectangle

    metrics = [m for m in ("pairwise_accuracy", "r", "accuracy") if m in result["grid"]
               and any(v is not None for row in result["grid"][m] for v in row)]
    layers, positions = result["layers"], result["positions"]
    fig = Figure(figsize=(1.6 + 0.55 * len(positions) * len(metrics) + 1.2 * len(metrics),
                          1.4 + 0.22 * len(layers)))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    best = result.get("best", {})
    for ax, m in zip(axes, metrics):
        values = np.array([[np.nan if v is None else v for v in row] for row in result["grid"][m]],
                          dtype=float)
        centre = 0.5 if m in ("pairwise_accuracy", "accuracy") else 0.0
        span = np.nanmax(np.abs(values - centre)) if np.isfinite(values).any() else 1.0
        im = ax.imshow(values, aspect="auto", origin="lower", cmap="RdBu_r",
                       vmin=centre - span, vmax=centre + span)
        ax.set_xticks(range(len(positions)), positions, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(layers)), layers, fontsize=6)
        if best.get("layer") in layers and best.get("position") in positions:
            ax.add_patch(Rectangle((positions.index(best["position"]) - 0.5,
                                    layers.index(best["layer"]) - 0.5), 1, 1, fill=False,
                                   edgecolor="black", linewidth=1.5))
        ax.set_title(f"{result['name']}: dev {_TITLES.get(m, m)}\n({result['method']} probe, "
                     f"label {result['label']})", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig


@recorded("probe sweep")
def _run_sweep(cfg: ProbeSweepConfig) -> dict[str, Any]:
    return sweep(cfg)


def run_sweep(cfg: ProbeSweepConfig) -> dict[str, Any]:
    """The CLI stage: ``rewardprompt probe sweep --acts RUN/probes/acts --run RUN``."""
    if cfg.out is None and cfg.run is not None:
        cfg = replace(cfg, out=str(_out(cfg, cfg.name or probe_name(cfg.label, cfg.sources))))
    return _run_sweep(cfg)
