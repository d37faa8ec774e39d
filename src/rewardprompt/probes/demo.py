"""The ``probe demo`` recipe: collect -> sweep -> train on the shipped HH data and SmolLM2-135M.

Both HH dimensions (helpful: the three helpful files; harmless: harmless-base), split train /
dev / test by the hash rule. One collection holds both; each dimension gets its own sweep (its
chosen-vs-rejected direction need not be the other's) and probes trained at its sweep's best
cell on dev, reported on test. Each step is a stage of the run's manifest, so a rerun skips what
is done (and collect resumes inside itself by shard); ``report`` shows the probe section.
Sizes are set for at most about 20 minutes on a 2-core CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..models import DEFAULT_POLICY


@dataclass
class ProbeDemoConfig:
    """Collect, sweep and train reward probes on HH helpful and harmless, into a run directory."""

    out: str = "runs/probe-demo"
    """The run directory."""
    model: str = DEFAULT_POLICY
    """The model probed (default: the shipped SmolLM2-135M-Instruct)."""
    sources: list[str] = field(default_factory=lambda: ["hh-helpful", "hh-harmless"])
    """Preference sources; each gets its own sweep and probes."""
    train_pairs: int = 300
    """Training pairs per source (in hash order)."""
    dev_pairs: int = 80
    """Dev pairs per source: they choose the probes' epochs, penalties and the sweep's cell."""
    test_pairs: int = 120
    """Test pairs per source: the reported figures."""
    max_prompt_tokens: int = 160
    """Prompt budget in tokens (older turns go first)."""
    max_completion_tokens: int = 48
    """Completion tokens kept per reply."""
    batch_size: int = 8
    """Rows per forward pass."""
    sweep_method: Literal["ridge", "linear"] = "ridge"
    """The probe in each sweep cell (ridge: closed form, seconds for the whole grid)."""
    methods: list[str] = field(default_factory=lambda: ["linear", "ridge", "mlp"])
    """Probes trained at each source's best cell."""
    n_boot: int = 1000
    """Bootstrap resamples for every CI."""
    seed: int = 0
    """Seeds the probes and the bootstrap."""
    report: bool = True
    """Build RUN/report.html at the end."""


def run_demo(cfg: ProbeDemoConfig) -> dict[str, Any]:
    """Run the recipe's stages in ``cfg.out`` (skipping those already done); return a summary."""
    from ..runs import Run
    from .collect import CollectConfig, collect_activations
    from .probe import Hyper
    from .sweep import ProbeSweepConfig, sweep
    from .train import ProbeTrainConfig, probe_name, train_probes

    run = Run(cfg.out, config=cfg, seed=cfg.seed)
    acts = run.path("probes", "acts")
    collect_cfg = CollectConfig(pairs=list(cfg.sources), model=cfg.model, out=str(acts),
                                run=str(run.dir), train_pairs=cfg.train_pairs,
                                dev_pairs=cfg.dev_pairs, test_pairs=cfg.test_pairs,
                                max_prompt_tokens=cfg.max_prompt_tokens,
                                max_completion_tokens=cfg.max_completion_tokens,
                                batch_size=cfg.batch_size)
    collected = run.stage("probe_collect", lambda: collect_activations(collect_cfg),
                          config=collect_cfg, outputs=[acts])
    summary: dict[str, Any] = {"out": str(run.dir), "rows": collected["rows_per_split"],
                               "collect_wall_s": collected["wall_s"], "sources": {}}
    for source in cfg.sources:
        name = probe_name("chosen", [source])
        sweep_cfg = ProbeSweepConfig(acts=str(acts), run=str(run.dir), name=name,
                                     out=str(run.path("probes", f"sweep_{name}.json")),
                                     sources=[source], method=cfg.sweep_method,
                                     n_boot=cfg.n_boot, fit=Hyper(seed=cfg.seed))
        swept = run.stage(f"probe_sweep_{name}", lambda c=sweep_cfg: sweep(c), config=sweep_cfg,
                          inputs=[acts / "collect.json"], outputs=[sweep_cfg.out])
        best = swept["best"]
        train_cfg = ProbeTrainConfig(acts=str(acts), run=str(run.dir), name=name,
                                     out=str(run.path("probes", f"probe_{name}")),
                                     sources=[source], layer=best["layer"],
                                     position=best["position"], methods=list(cfg.methods),
                                     n_boot=cfg.n_boot, fit=Hyper(seed=cfg.seed))
        trained = run.stage(f"probe_train_{name}", lambda c=train_cfg: train_probes(c),
                            config=train_cfg, inputs=[acts / "collect.json"],
                            outputs=[train_cfg.out])
        summary["sources"][source] = {"sweep_best": best, "test": trained["test"]}
    if cfg.report:
        from ..report.html import build_report

        summary["report"] = str(build_report(run.dir))
    return summary

