"""The ``probe demo`` recipe: collect -> sweep -> train on the shipped HH data and SmolLM2-135M.

Both HH dimensions (helpful: the three helpful files; harmless: harmless-base), split train /
dev / test by the hash rule. One collection holds both; each dimension gets its own sweep (its
chosen-vs-rejected direction need not be the other's) and probes trained at its sweep's best
cell on dev, reported on test. Given a finished pipeline run (``policy_run``), its reward models
stand beside the probes on the same test pairs, and base vs tuned applies each probe to the base
model's replies and the run's tuned policies' on test prompts. Each step is a stage of the run's
manifest, so a rerun skips what is done (and collect resumes inside itself by shard); ``report``
shows the probe section. Sizes are set for at most about 20 minutes on a 2-core CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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
    policy_run: str | None = None
    """A finished pipeline run (``rewardprompt demo``'s OUT) whose data names the sources'
    dimensions: its labelling RMs are measured on the probes' own test pairs, and base vs tuned
    compares, by each source's probe, the base model's replies with the run's conditioned policy
    at a high and a low target and its unconditioned SFT, judged by the run's held-out test RMs.
    None: the probes only."""
    compare_prompts: int = 20
    """Test prompts per source for base vs tuned (the first in hash order)."""
    compare_samples: int = 2
    """Replies per prompt and model for base vs tuned."""
    compare_targets: tuple[float, float] = (0.9, 0.1)
    """The conditioned policy's high and low target (every dimension asked the same)."""
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
    policy = _policy_run(cfg) if cfg.policy_run else None
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
                                     n_boot=cfg.n_boot, fit=Hyper(seed=cfg.seed),
                                     scorer=policy["rm"][source] if policy else None)
        trained = run.stage(f"probe_train_{name}", lambda c=train_cfg: train_probes(c),
                            config=train_cfg, inputs=[acts / "collect.json"]
                            + ([train_cfg.scorer] if train_cfg.scorer else []),
                            outputs=[train_cfg.out])
        summary["sources"][source] = {"sweep_best": best, "test": trained["test"]}
        if policy:
            summary["sources"][source]["compare"] = _base_vs_tuned(
                cfg, run, acts, source, name, Path(train_cfg.out, "linear"), policy)
    if cfg.report:
        from ..report.html import build_report

        summary["report"] = str(build_report(run.dir))
    return summary



def _policy_run(cfg: ProbeDemoConfig) -> dict[str, Any]:
    """What the demo takes from a finished pipeline run: per source, its dimension's labelling
    RM and held-out test RM, and the run's first seed's conditioned and unconditioned policies."""
    from ..errors import DataError
    from ..runs import MANIFEST, policy_dir, read_json, rm_dir

    run = Path(str(cfg.policy_run))
    manifest = run / MANIFEST
    if not manifest.is_file():
        raise DataError("not a pipeline run (no manifest); run `rewardprompt demo --out DIR` "
                        "first", file=str(run), code="not_found")
    config = read_json(manifest).get("config") or {}
    dims = {src: dim for dim, src in (config.get("data") or {}).items()}
    missing = [s for s in cfg.sources if s not in dims]
    if missing:
        raise DataError(f"its data has no dimension for {', '.join(missing)} (data: "
                        f"{config.get('data')})", file=str(manifest), field="config.data",
                        code="bad_field")
    seed = (config.get("seeds") or [config.get("seed", 0)])[0]
    out: dict[str, Any] = {"rm": {}, "judge": {}, "dims": dims,
                           "conditioned": run / policy_dir(f"conditioned_s{seed}") / "final",
                           "uncond": run / policy_dir(f"uncond_sft_s{seed}") / "final"}
    from .collect import CollectConfig

    ours = (CollectConfig.test_fraction, CollectConfig.dev_fraction)
    if config.get("test_data") or (config.get("test_fraction"), config.get("dev_fraction")) != ours:
        raise DataError(f"the run splits its data otherwise than the probes (test_data, or "
                        f"test/dev fractions other than {ours}), so its RMs may have trained on "
                        "the probes' test pairs", file=str(manifest), field="config",
                        code="bad_field")
    for source in cfg.sources:
        out["rm"][source] = str(run / rm_dir(dims[source]))
        test = run / rm_dir(f"{dims[source]}-test")
        if not test.is_dir():
            raise DataError("the run has no held-out test RM (test_rm: false), the judge of base "
                            "vs tuned", file=str(test), code="not_found")
        out["judge"][source] = str(test)
    needed = [Path(p) for p in (*out["rm"].values(), out["conditioned"])]
    for path in needed:
        if not path.is_dir():
            raise DataError("the run has not made this yet; finish the run first",
                            file=str(path), code="not_found")
    return out


def _base_vs_tuned(cfg: ProbeDemoConfig, run: Any, acts: Path, source: str, name: str,
                   probe: Path, policy: dict[str, Any]) -> dict[str, Any]:
    """Sample the base model, the conditioned policy at the high and the low target and the
    unconditioned SFT on the source's first test prompts; apply the source's probe to them all.
    Every prompt is on the test side, so compare's which-model probe (trained on the train
    side) is off here."""
    from ..backends.base import SamplingConfig
    from ..runs import write_jsonl
    from ..sampling import GenerateConfig, run_generate
    from .collect import stored_rows
    from .compare import ProbeCompareConfig, compare
    from .store import ActivationStore

    store = ActivationStore(acts)
    prompts, seen = [], set()
    for row, planned in zip(store.rows, stored_rows(store)):
        if row["source"] == source and row["split"] == "test" and row["pair_id"] not in seen:
            seen.add(row["pair_id"])
            prompts.append({"id": row["id"], "prompt": planned.prompt})
    prompts_file = run.path("probes", f"prompts_{name}.jsonl")
    write_jsonl(prompts_file, prompts[:cfg.compare_prompts])
    sampling = SamplingConfig(max_new_tokens=cfg.max_completion_tokens, seed=cfg.seed)
    high, low = cfg.compare_targets
    models = {"base": dict(model=cfg.model, conditioned=False,
                           samples_per_prompt=cfg.compare_samples),
              f"conditioned_{high:g}": dict(model=str(policy["conditioned"]), conditioned=True,
                                            targets=[f"{high:g}"] * cfg.compare_samples),
              f"conditioned_{low:g}": dict(model=str(policy["conditioned"]), conditioned=True,
                                           targets=[f"{low:g}"] * cfg.compare_samples)}
    if Path(policy["uncond"]).is_dir():
        models["uncond_sft"] = dict(model=str(policy["uncond"]), conditioned=False,
                                    samples_per_prompt=cfg.compare_samples)
    files = []
    for label, kw in models.items():
        gen = GenerateConfig(prompts=str(prompts_file), label=label, run=str(run.dir),
                             out=str(run.path("probes", f"generate_{name}", f"{label}.jsonl")),
                             max_prompt_tokens=cfg.max_prompt_tokens, sampling=sampling, **kw)
        run.stage(f"probe_generate_{name}_{label}", lambda g=gen: run_generate(g), config=gen,
                  inputs=[prompts_file] + ([kw["model"]] if Path(kw["model"]).exists() else []),
                  outputs=[gen.out])
        files.append(gen.out)
    cmp_cfg = ProbeCompareConfig(probe=str(probe), generations=files, run=str(run.dir), name=name,
                                 out=str(run.path("probes", f"compare_{name}")), base="base",
                                 scorer=policy["judge"][source], classify=False,
                                 batch_size=cfg.batch_size, n_boot=cfg.n_boot, seed=cfg.seed)
    done = run.stage(f"probe_compare_{name}", lambda: compare(cmp_cfg), config=cmp_cfg,
                     inputs=files + [cmp_cfg.scorer, probe], outputs=[cmp_cfg.out])
    return {k: done[k] for k in ("base", "probe_mean")} | {"judge": cmp_cfg.scorer}
