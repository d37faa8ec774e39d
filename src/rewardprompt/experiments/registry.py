"""The research outline as a registry: each question a small spec over the recipe's stages.

An :class:`Experiment` names its question, the recipe variants it runs at each scale (config
overrides on a preset, nothing else) and the analysis that turns the variants' run directories
into one result: a JSON with 95% CIs, a figure and a section of the experiment's report. The
variants are ordinary recipe runs under ``OUT/variants/NAME``, so every stage of theirs is
resumable and cached by the hash of its config and inputs: variants that share reward models,
steered samples or labels (most of them) make them once, and a second experiment over the same
stages reuses them too. Every variant evaluates on the locked test split under the held-out
test RM, as the recipe does.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Scale = Literal["demo", "full"]

#: What each scale starts from: the demo's preset at the demo scale (minutes on a 2-core CPU);
#: at the full scale the control preset with the paper's sizes, for a GPU or a hosted API. At
#: the demo scale only the experiments that compare with it train the unconditioned SFT.
SCALES: dict[str, dict[str, Any]] = {
    "demo": {"include": "demo", "baselines": [], "seeds": [0]},
    "full": {"include": "control", "baselines": ["uncond_sft"], "seeds": [0, 1, 2],
             "label_pairs": 500, "eval_prompts": 100, "rm": {"limit": 20000},
             "sft": {"max_steps": 1000}},
}


#: An override's value that stands for the base recipe's policy (the scale's, or the one a
#: user's --base names), e.g. to train another policy on the base policy's own replies.
BASE_POLICY = "<base policy>"


@dataclass(frozen=True)
class Variant:
    """One recipe run of an experiment: its name and its overrides of the scale's config."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """A question of the research outline, as variants of the recipe and an analysis of them."""

    name: str
    question: str
    variants: Callable[[str], list[Variant]]
    """scale -> the variants to run."""
    analyse: Callable[[dict[str, Path]], dict[str, Any]]
    """variant name -> its finished run directory  ->  the result (``table``, ``figure_data``,
    and whatever the question needs), every figure with its CI."""
    figure: Callable[[dict[str, Any]], Any]
    """The result -> a matplotlib figure."""
    prepare: Callable[[Any, dict[str, Path]], dict[str, Path]] | None = None
    """Work beyond the recipe's stages, as stages of the experiment's own run (resumable):
    (the run, the variants' directories) -> more named directories for the analysis."""


EXPERIMENTS: dict[str, Experiment] = {}


def register(exp: Experiment) -> Experiment:
    if exp.name in EXPERIMENTS:
        raise ValueError(f"experiment {exp.name!r} is registered twice")
    EXPERIMENTS[exp.name] = exp
    return exp


def get_experiment(name: str) -> Experiment:
    from . import specs  # noqa: F401  - registers the experiments

    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)} "
                         "(rewardprompt experiment list)")
    return EXPERIMENTS[name]


def recipe_for(variant: Variant, scale: str, out: Path, seeds: list[int] | None = None,
               base_file: str | None = None) -> Any:
    """The variant's recipe config: the scale's base, then ``base_file``'s settings (a recipe
    YAML: the user's data, model or sizes), then the variant's overrides."""
    from ..config import from_dict, merge, read_config
    from ..recipe import RecipeConfig

    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
    base = dict(SCALES[scale])
    d = merge(RecipeConfig, read_config(RecipeConfig, base.pop("include")), base)
    if base_file:
        d = merge(RecipeConfig, d, read_config(RecipeConfig, base_file))
    base_policy = d.get("policy") or RecipeConfig.__dataclass_fields__["policy"].default
    d = merge(RecipeConfig, d, {k: base_policy if v == BASE_POLICY else v
                                for k, v in variant.overrides.items()})
    d["out"] = str(out / "variants" / variant.name)
    if seeds:
        d["seeds"] = list(seeds)
    cfg = from_dict(RecipeConfig, d)
    cfg.validate()
    return cfg


@dataclass
class ExperimentConfig:
    """Run one registered experiment into a run directory."""

    name: str
    """The experiment (rewardprompt experiment list)."""
    scale: Scale = "demo"
    """demo: minutes on a 2-core CPU; full: the paper's scale, for a GPU or a hosted API."""
    out: str | None = None
    """The run directory (default: runs/experiments/NAME-SCALE)."""
    seeds: list[int] = field(default_factory=list)
    """Policy seeds of every variant; empty: the scale's (demo 0; full 0 1 2)."""
    base: str | None = None
    """A recipe YAML whose settings replace the scale's before each variant's own (your data,
    policy, reward models or sizes); a preset name works too."""
    report: bool = True
    """Build OUT/report.html at the end."""
    analyse_only: bool = False
    """Analyse the variants OUT already holds, as they are, without running or checking them
    against today's configs (after a change to an analysis; the result records it)."""


@dataclass
class ExperimentListConfig:
    """List the registered experiments, their questions and their variants per scale."""

    scale: Scale = "demo"
    """Whose variants to show."""


def list_experiments(cfg: ExperimentListConfig) -> None:
    from . import specs  # noqa: F401

    for exp in EXPERIMENTS.values():
        names = ", ".join(v.name for v in exp.variants(cfg.scale))
        print(f"{exp.name:<20} {exp.question}\n{'':<20} {cfg.scale} variants: {names}")
    print(f"\n{len(EXPERIMENTS)} experiments; `rewardprompt experiment run NAME [--scale "
          "demo|full]`; their measured times are in docs/results.md")


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Run (or resume) every variant of the experiment, analyse them, write the result."""
    from ..recipe import run_recipe
    from ..runs import Run, atomic_write_json, redact, to_jsonable, update_json

    exp = get_experiment(cfg.name)
    out = Path(cfg.out or f"runs/experiments/{cfg.name}-{cfg.scale}")
    run = Run(out, config=cfg, seed=(cfg.seeds or SCALES[cfg.scale]["seeds"])[0])
    variants = exp.variants(cfg.scale)
    recipes = {v.name: recipe_for(v, cfg.scale, out, cfg.seeds or None, cfg.base)
               for v in variants}
    t0 = time.perf_counter()
    for name, recipe in recipes.items():
        if cfg.analyse_only:
            if not Path(recipe.out, "metrics.json").is_file():
                raise ValueError(f"--analyse-only: {recipe.out} holds no finished run of variant "
                                 f"{name!r} (no metrics.json); run the experiment without it first")
            continue
        print(f"[rewardprompt] experiment {cfg.name}: variant {name} "
              f"({list(recipes).index(name) + 1}/{len(recipes)})", flush=True)
        run.stage(f"variant_{name}", lambda r=recipe: run_recipe(r), config=recipe,
                  outputs=[Path(recipe.out, "metrics.json")])
    dirs = {name: Path(r.out) for name, r in recipes.items()}
    if exp.prepare is not None:
        dirs.update(exp.prepare(run, dirs))
    result = {"experiment": exp.name, "question": exp.question, "scale": cfg.scale,
              "seeds": recipes[variants[0].name].policy_seeds,
              "variants": {v.name: {"out": str(dirs[v.name]), "overrides": v.overrides}
                           for v in variants},
              **run.stage("analyse", lambda: exp.analyse(dirs), force=True,
                          config={"variants": {k: str(v) for k, v in dirs.items()}})}
    figure = out / "figures" / f"{exp.name}.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    exp.figure(result).savefig(figure, dpi=110, bbox_inches="tight")
    result["figure"] = str(figure)
    result["wall_s"] = round(run.total_wall_s(), 1)
    if cfg.analyse_only:  # what the variants were made with and by, not today's configs
        from ..runs import MANIFEST, git_commit, read_json

        made = {n: read_json(Path(r.out) / MANIFEST) for n, r in recipes.items()}
        result["analysed_only"] = {"commit": git_commit(), "variants_made_by": {
            n: sorted({st["git_commit"] for st in m["stages"].values() if st.get("git_commit")})
            for n, m in made.items()}}
        result["configs"] = {n: m["config"] for n, m in made.items()}
    else:
        result["configs"] = {n: redact(to_jsonable(r)) for n, r in recipes.items()}
    atomic_write_json(out / "experiment.json", result)
    update_json(out / "metrics.json", lambda m: m.update(experiment=result))
    if cfg.report:
        from ..report.html import build_report

        build_report(out)
    print(f"[rewardprompt] experiment {cfg.name}: {time.perf_counter() - t0:.0f}s in this "
          f"invocation; {out / 'experiment.json'}", flush=True)
    return {"out": str(out / "experiment.json"), "table": result.get("table")}
