"""The recipe: every stage end to end, from preference data per dimension to a report.

    data -> rm_DIM, rm_DIM_test (per dimension) -> sample_steered -> label
         -> sft_conditioned, sft_uncond_sft -> generate_conditioned, generate_uncond_sft
         -> evaluate -> elo -> report

A recipe composes the stages' own configs (``rm``, ``label``, ``sft``, ``sampling``,
``evaluate``) and adds the few knobs that are its own: the data per dimension, how many pairs
and prompts, the steering openers, the seed. It sets the fields that say where a stage reads and
writes (and the seed) itself; a config that sets one of them is refused. ``rewardprompt demo`` is
this recipe with ``configs/demo.yaml``. Each stage is recorded in the run's manifest, so a
killed run resumes where it stopped (``runs.Run``); the stages that depend only on their config
and inputs (all but evaluate, elo and the report) are also kept in the stage cache, so another
run that changes only later settings (say ``--sft.max-steps``) starts from the reward models,
labels and samples it shares (``stage_cache``).
"""
from __future__ import annotations

import re
from typing import Any, Literal
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .backends.base import SamplingConfig
from .evaluation.controllability import EvaluateConfig, judge_of
from .sampling import GenerateConfig
from .labelling import LabelConfig
from .models import DEFAULT_POLICY
from .policy.sft import SFTConfig
from .rewards.train import RMTrainConfig
from .runs import (ELO, LABELS, SCORES, STEERED, Run, generations_file, policy_dir, rm_dir, update_json,
                   write_jsonl)
from .stage_cache import StageCache
from .template import RewardTemplate

#: The three disjoint sides of every dimension's pairs (data/DIM-SIDE.jsonl).
SIDES = ("train", "dev", "test")

#: Fields of each nested stage config that the recipe sets (where the stage reads and writes,
#: the seed, what only the recipe knows).
OWNED = {
    "rm": ("data", "out", "run", "eval_data", "half", "seed", "test_fraction", "cpu_bf16"),
    "label": ("pairs", "samples", "scorers", "out", "run", "policy"),
    "sft": ("data", "out", "run", "model", "conditioned", "template", "seed", "cpu_bf16"),
    "sampling": ("seed",),
    "evaluate": ("generations", "scorers", "test_scorers", "out", "run", "openers", "seed",
                 "primary", "split"),
}
#: The recipe's own files in RUN/data: the policy's training prompts (the first label_pairs
#: training pairs of each dimension) and the held-out evaluation prompts.
LABEL_PAIRS, EVAL_PROMPTS = "label_pairs.jsonl", "eval_prompts.jsonl"
#: The two policies every run trains on the same labelled replies: the reward-conditioned one,
#: and the unconditioned baseline (the same replies and steps, no reward block).
POLICIES = {"conditioned": True, "uncond_sft": False}


@dataclass
class RecipeConfig:
    """A whole run: reward models per dimension, labels, the conditioned policy and its
    unconditioned baseline, evaluation on held-out prompts, Elo, and the report."""

    out: str
    """The run directory."""
    data: dict[str, str] = field(default_factory=dict)
    """Dimension -> preference pairs (a file, a shipped name or a Hub id); its order is the
    block's. The hash split of the first user turn keeps test_fraction of them out."""
    test_data: dict[str, str] = field(default_factory=dict)
    """Dimension -> held-out pairs from another source (else the hash split's held-out part)."""
    test_fraction: float = 0.2
    """Share of each dimension's pairs in the locked test split (by the hash of the first user
    turn), used only for reported figures; test_data, where given, replaces it."""
    dev_fraction: float = 0.1
    """Share of each dimension's pairs in the dev split (recipe search), carved from training."""
    eval_split: Literal["dev", "test"] = "dev"
    """Where the evaluation prompts come from: dev while choosing a recipe; test, counted in the
    manifest, for figures that are reported."""
    scorers: dict[str, str] = field(default_factory=dict)
    """Dimension -> a ready scorer that labels instead of a trained reward model (synthetic:...,
    a reward-model folder, module:function)."""
    test_rm: bool = True
    """Also train a held-out test reward model per dimension (the other half of the training
    pairs, seed + 1) that never labels; evaluate reports the reward under both."""
    test_rm_family: str | None = None
    """The test reward models' family (None: that of rm; another family uses its own shipped base)."""
    policy: str = DEFAULT_POLICY
    """The base policy: a shipped name, a Hub id or a folder."""
    prompts: dict[str, str] = field(default_factory=dict)
    """Where the policy's training and evaluation prompts come from: name -> preference source,
    label_pairs and eval_prompts from each, split as data is (empty: data's own sources). Lets
    recipes with different reward dimensions label the very same prompts and replies."""
    label_pairs: int = 40
    """Training pairs per dimension (per prompts source, where given) whose prompts the policy
    is trained on."""
    pair_replies: bool = False
    """Label the pairs' chosen and rejected replies too."""
    openers: list[str] = field(default_factory=list)
    """Steered sampling: the base policy's replies to the training prompts are started with each
    of these ('' = its own start), then labelled; empty: no steered samples."""
    steer_samples: int = 2
    """Steered samples per training prompt and opener."""
    steer_policy: str | None = None
    """The model whose steered replies are labelled and trained on (None: the policy itself, so
    on-policy data). Another model's replies let policies of several sizes train on the very
    same labelled examples."""
    steer_temperature: float = 1.0
    """The steered samples' temperature (the training data's); ``sampling.temperature`` is the
    evaluation's, so changing it changes no label and no policy."""
    eval_prompts: int = 24
    """Held-out prompts per dimension (per prompts source, where given) for evaluation."""
    samples_per_prompt: int = 4
    """Samples per evaluation prompt, each with its own drawn targets."""
    seed: int = 0
    """The run's seed: reward models (the test RMs seed + 1), the steered samples (seed + 1),
    the bootstrap; also the policy seed when seeds is empty."""
    seeds: list[int] = field(default_factory=list)
    """Policy seeds: the reward models, steered samples and labels are made once, and every
    policy stage (SFT, sampling, the baselines) runs once per seed; the figures are means over
    seeds. Empty: [seed]. A run can be extended with more seeds by running it again."""
    baselines: list[str] = field(default_factory=lambda: ["uncond_sft", "prompted", "opener_rule",
                                                          "best_of_4", "best_of_16"])
    """Baselines on the same prompts, targets and sampling: uncond_sft (the same replies and
    steps, no block), prompted (the base model told the targets in its system prompt),
    opener_rule (the opener nearest the target by its mean training label, continued by the base
    model; only with openers), best_of_N (N samples of uncond_sft, the one nearest the target
    by the labelling RM)."""
    satisficing: list[float] = field(default_factory=list)
    """Thresholds x: the conditioned policy (first seed) is also asked for '>= x' in every
    dimension, and, beside it, for exact targets drawn uniformly from [x, 1]."""
    cpu_bf16: bool = True
    """bf16 autocast for every stage where the hardware computes bf16 natively (a GPU with bf16,
    a CPU with AVX512-BF16 or AMX); elsewhere fp32. False: fp32 throughout."""
    cache: bool = True
    """Reuse stages that any run computed with the same config, inputs, code and libraries (the
    reward models, labels, policies, samples) from the stage cache, and store new ones there
    ($REWARDPROMPT_CACHE/stages), and the reward models' features of texts their backbone
    embedded before ($REWARDPROMPT_CACHE/features); REWARDPROMPT_CACHE=off also turns both off."""
    template: RewardTemplate = field(default_factory=RewardTemplate)
    """The reward block (its dimensions are those of data, in order)."""
    rm: RMTrainConfig = field(default_factory=lambda: RMTrainConfig(data=""))
    """Reward-model training."""
    label: LabelConfig = field(default_factory=LabelConfig)
    """Labelling."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Fine-tuning, the same for the conditioned policy and the baseline."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Sampling of the evaluation generations."""
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    """Evaluation."""

    def validate(self) -> None:
        """Refuse what would fail or mislead only minutes later, before any file is written."""
        from .rewards.model import FAMILIES

        if not self.data:
            raise ValueError("the recipe needs data: dimension -> preference source")
        for dim in self.data:  # names become file names and stage names
            if not re.fullmatch(r"[A-Za-z0-9_]+", dim) or dim.endswith("_test"):
                raise ValueError(f"dimension {dim!r}: use letters, digits and '_' (not ending in "
                                 "'_test'), since it names files and stages")
        unknown = sorted((set(self.test_data) | set(self.scorers)) - set(self.data))
        if unknown:
            raise ValueError(f"test_data/scorers name dimensions that data lacks: {unknown}")
        if tuple(self.template.dimensions) not in (RewardTemplate().dimensions, tuple(self.data)):
            raise ValueError("template.dimensions comes from data (its keys, in order); "
                             "remove it from the template")
        for family in (self.rm.family, self.test_rm_family):
            if family is not None and family not in FAMILIES:
                raise ValueError(f"reward-model family must be one of {FAMILIES}, not {family!r}")
        from .evaluation.baselines import check_baselines

        check_baselines(self.baselines)
        if "opener_rule" in self.baselines and not [o for o in self.openers if o]:
            raise ValueError("the opener_rule baseline needs openers; remove it from baselines")
        if len(set(self.policy_seeds)) != len(self.policy_seeds):
            raise ValueError(f"seeds must differ, got {self.seeds}")
        bad = [x for x in self.satisficing if not 0.0 < x < 1.0]
        if bad:
            raise ValueError(f"satisficing thresholds must lie in (0, 1), got {bad}")
        if self.eval_split not in ("dev", "test"):
            raise ValueError(f"eval_split must be dev or test, not {self.eval_split!r}")
        if not self.pair_replies and not (self.openers and self.steer_samples > 0):
            raise ValueError("nothing to label: turn on pair_replies or give openers "
                             "(and steer_samples >= 1)")
        for dim in self.data:  # the reward-model configs, before minutes of training
            for is_test in (False, True) if self.test_rm else (False,):
                self.rm_config(dim, is_test, Path(".")).validate()
        for name, owned in OWNED.items():
            sub = getattr(self, name)
            default = type(sub)(data="") if name == "rm" else type(sub)()
            set_by_user = [f for f in owned if getattr(sub, f) != getattr(default, f)]
            if set_by_user:
                own = [f for f in set_by_user if f in RECIPE_FIELDS]
                hint = f" (the recipe's own: {', '.join(own)})" if own else ""
                raise ValueError(f"{', '.join(f'{name}.{f}' for f in set_by_user)}: set by the "
                                 "recipe (where the stage reads and writes, its seed and "
                                 f"precision); remove it from the config{hint}")

    def rm_config(self, dim: str, is_test: bool, run: Path) -> RMTrainConfig:
        """The labelling (or held-out test) reward model of ``dim``: the first (second) half of
        its training pairs, seed (seed + 1). A test family other than rm's uses that family's
        shipped base and its own defaults for the decoder-only options."""
        family = (self.test_rm_family or self.rm.family) if is_test else self.rm.family
        own = {} if family == self.rm.family else {"base_model": None, "layers": 0,
                                                   "pooling": None, "train_layers": 0}
        d, key = run / "data", f"{dim}-test" if is_test else dim
        return replace(self.rm, data=str(d / f"{dim}-train.jsonl"), out=str(run / rm_dir(key)),
                       run=str(run), eval_data=str(d / f"{dim}-test.jsonl"), test_fraction=0.0,
                       half=("second" if is_test else "first") if self.test_rm else None,
                       seed=self.seed + is_test, family=family, cpu_bf16=self.cpu_bf16, **own)

    @property
    def policy_seeds(self) -> list[int]:
        return list(self.seeds) or [self.seed]

    def template_dict(self) -> dict:
        return replace(self.template, dimensions=tuple(self.data)).to_dict()


#: The recipe's own fields, which an owned stage field may point the user to.
RECIPE_FIELDS = frozenset(f.name for f in fields(RecipeConfig))


def run_recipe(cfg: RecipeConfig) -> dict:
    """Run (or resume) the recipe into ``cfg.out``; returns the headline figures per dimension."""
    from .rewards.features import disabled

    with disabled(not cfg.cache):
        return _run_recipe(cfg)


def _run_recipe(cfg: RecipeConfig) -> dict:
    from .data import source_files
    from .evaluation.controllability import run_evaluate
    from .evaluation.baselines import (PROMPTED_SYSTEM, BestOfConfig, best_of_n_list, opener_means,
                                       run_best_of)
    from .evaluation.elo import EloConfig, run_elo
    from .sampling import run_generate
    from .labelling import JUDGED_LABELS, JudgeLabelsConfig, run_judge_labels, run_label
    from .policy.sft import run_sft
    from .report.html import build_report
    from .rewards.train import train_reward_model

    cfg.validate()
    template = cfg.template_dict()
    dims = tuple(template["dimensions"])
    run = Run(cfg.out, config=cfg, seed=cfg.seed,
              cache=StageCache.from_env() if cfg.cache else None)
    d, rundir = run.path("data"), str(run.dir)
    sources = {**{dim: cfg.data[dim] for dim in dims},
               **{f"{dim}-heldout": src for dim, src in cfg.test_data.items()},
               **{f"prompts-{name}": src for name, src in cfg.prompts.items()}}
    files = {name: source_files(src) for name, src in sources.items()}
    for name, paths in files.items():  # a resume over changed data stops here
        for i, path in enumerate(paths):
            run.record_data(f"source:{name}" + (f":{i}" if i else ""), path)
    inputs = [str(p) for paths in files.values() for p in paths]

    split_files = [d / f"{dim}-{side}.jsonl" for dim in dims for side in SIDES]
    prompt_files = [d / LABEL_PAIRS, d / EVAL_PROMPTS]
    run.stage("data", lambda: write_data(cfg, d), config={k: getattr(cfg, k) for k in (
        "data", "test_data", "prompts", "test_fraction", "dev_fraction", "eval_split",
        "label_pairs", "eval_prompts")}, inputs=inputs, outputs=split_files + prompt_files, cache=True)

    # Reward models: a labelling RM per dimension (the first half of its training pairs) and a
    # held-out test RM (the second half, seed + 1) that only evaluate reads.
    scorers, test_scorers = dict(cfg.scorers), {}
    for dim in dims:
        if dim in scorers:
            continue
        for is_test in (False, True) if cfg.test_rm else (False,):
            rm = cfg.rm_config(dim, is_test, run.dir)
            run.stage(f"rm_{dim}_test" if is_test else f"rm_{dim}", lambda rm=rm: train_reward_model(rm),
                      config=rm, inputs=[rm.data, rm.eval_data], outputs=[rm.out], cache=True)
            (test_scorers if is_test else scorers)[dim] = rm.out

    samples = []
    if cfg.openers and cfg.steer_samples > 0:
        steered = GenerateConfig(
            prompts=str(d / LABEL_PAIRS), model=cfg.steer_policy or cfg.policy, run=rundir,
            label=STEERED,
            conditioned=False, samples_per_prompt=cfg.steer_samples, prefills=list(cfg.openers),
            max_prompt_tokens=cfg.sft.max_prompt_tokens,
            sampling=replace(cfg.sampling, max_new_tokens=cfg.label.max_completion_tokens,
                             temperature=cfg.steer_temperature, seed=cfg.seed + 1))
        samples = [str(run.path(generations_file(STEERED)))]
        run.stage("sample_steered", lambda: run_generate(steered), config=steered,
                  inputs=[steered.prompts], outputs=samples, cache=True)

    label = replace(cfg.label, pairs=[str(d / LABEL_PAIRS)] if cfg.pair_replies else [],
                    samples=samples, scorers=scorers, run=rundir,
                    policy=cfg.steer_policy or cfg.policy)
    label_out = str(run.path(LABELS))
    run.stage("label", lambda: run_label(label), config=label,
              inputs=label.pairs + samples + _paths(scorers), outputs=[label_out], cache=True)
    if test_scorers:  # what the labels allow under the judge (written beside them, never read
        # by a policy): how far the judge agrees with the labels, and an imitator's r under it
        judge = JudgeLabelsConfig(labels=label_out, judges=test_scorers, run=rundir, seed=cfg.seed)
        run.stage("label_judged", lambda: run_judge_labels(judge), config=judge,
                  inputs=[label_out] + _paths(test_scorers), outputs=[run.path(JUDGED_LABELS)],
                  cache=True)

    # The policy stages, once per seed: the conditioned policy and the baselines, all on the
    # same evaluation prompts with the same drawn targets and sampling settings.
    seeds = cfg.policy_seeds
    bon = best_of_n_list(cfg.baselines)
    trained = {name: c for name, c in POLICIES.items() if name == "conditioned" or name in cfg.baselines}
    rule = {}
    if "opener_rule" in cfg.baselines:
        rule = opener_means(label_out, [o for o in cfg.openers if o], list(dims))
    controls: dict[int, list[str]] = {}
    others: list[str] = []

    def generate(name: str, model: str, s: int, **kw) -> str:
        gen = GenerateConfig(
            prompts=str(d / EVAL_PROMPTS), model=model, run=rundir, label=name,
            out=str(run.path(generations_file(f"{name}_s{s}"))), template=template,
            max_prompt_tokens=cfg.sft.max_prompt_tokens, sampling=replace(cfg.sampling, seed=s),
            **{"samples_per_prompt": cfg.samples_per_prompt, **kw})
        run.stage(f"generate_{name}_s{s}", lambda: run_generate(gen), config=gen,
                  inputs=[gen.prompts] + _paths([model]), outputs=[gen.out], cache=True)
        return gen.out

    for s in seeds:
        gens = controls.setdefault(s, [])
        for name, conditioned in trained.items():
            sft = replace(cfg.sft, run=rundir, model=cfg.policy, conditioned=conditioned,
                          template=template, seed=s, cpu_bf16=cfg.cpu_bf16,
                          out=str(run.path(policy_dir(f"{name}_s{s}"))))
            run.stage(f"sft_{name}_s{s}", lambda sft=sft: run_sft(sft), config=sft,
                      inputs=[label_out], outputs=[Path(sft.out, "final")], cache=True)
            gens.append(generate(name, str(Path(sft.out, "final")), s, conditioned=conditioned))
        if "prompted" in cfg.baselines:
            gens.append(generate("prompted", cfg.policy, s, conditioned=False,
                                 system=PROMPTED_SYSTEM))
        if rule:
            gens.append(generate("opener_rule", cfg.policy, s, conditioned=False,
                                 opener_rule=rule))
        if bon:
            uncond = str(run.path(generations_file(f"uncond_sft_s{s}")))
            pool = uncond if max(bon) <= cfg.samples_per_prompt else generate(
                "pool", str(run.path(policy_dir(f"uncond_sft_s{s}"), "final")), s,
                conditioned=False, samples_per_prompt=max(bon))
            best = BestOfConfig(targets=uncond, pool=pool, scorers=scorers, n=bon, run=rundir,
                                out=str(run.path(generations_file("best_of_{n}_s%d" % s))))
            outs = [best.out.format(n=n) for n in bon]
            run.stage(f"best_of_s{s}", lambda best=best: run_best_of(best), config=best,
                      inputs=[uncond, pool] + _paths(scorers), outputs=outs, cache=True)
            gens += outs
    for x in cfg.satisficing:  # the first seed's conditioned policy, asked '>= x' and [x, 1]
        s, model = seeds[0], str(run.path(policy_dir(f"conditioned_s{seeds[0]}"), "final"))
        others.append(generate(f"at_least_{x:g}", model, s, conditioned=True,
                               targets=[f">= {x}"] * cfg.samples_per_prompt))
        others.append(generate(f"exact_{x:g}_to_1", model, s, conditioned=True,
                               target_range=(x, 1.0)))

    generations = [g for s in seeds for g in controls[s]] + others
    evaluation = replace(cfg.evaluate, generations=generations, scorers=scorers,
                         test_scorers=test_scorers, run=rundir, seed=cfg.seed,
                         openers=[o for o in cfg.openers if o], split=cfg.eval_split)

    def evaluate() -> dict:
        result = run_evaluate(evaluation)
        if cfg.eval_split == "test":  # the locked split: every look at it is counted
            run.manifest["test_split_evaluations"] = run.manifest.get("test_split_evaluations", 0) + 1
        return result

    run.stage("evaluate", evaluate, config=evaluation,
              inputs=generations + _paths(scorers) + _paths(test_scorers),
              outputs=[run.path(SCORES)])
    # Head-to-head ranking of the first seed's models on the same prompts, judged by the first
    # dimension's labelling scorer.
    # (A run without baselines has one model, nothing to rank.)
    if len(controls[seeds[0]]) >= 2:
        elo = EloConfig(judge=scorers[dims[0]], generations=controls[seeds[0]], run=rundir,
                        n_boot=cfg.evaluate.n_boot, seed=cfg.seed)
        run.stage("elo", lambda: {"models": run_elo(elo)["models"]}, config=elo,
                  inputs=elo.generations + _paths([elo.judge]), outputs=[run.path(ELO)])
    metrics = update_json(run.path("metrics.json"), lambda m: m.update(
        budget={"pipeline_wall_s": run.total_wall_s(),
                "peak_rss_mib": run.manifest.get("peak_rss_mib")},
        test_split_evaluations=run.manifest.get("test_split_evaluations", 0)))
    run.stage("report", lambda: {"report": str(build_report(run.dir))}, force=True)
    control = metrics["control"]
    return {dim: {k: (control["dimensions"][dim].get("conditioned") or {}).get(k)
                  for k in ("r", "ci_low", "ci_high")} | {"judge": judge_of(control, dim)}
            for dim in dims} | {"report": str(run.path("report.html"))}


def _paths(specs) -> list[str]:
    """The scorer specs that are folders or files (their hashes key the stages that read them)."""
    values = specs.values() if isinstance(specs, dict) else specs
    return [str(s) for s in values if Path(str(s)).exists()]


def write_data(cfg: RecipeConfig, d: Path) -> dict:
    """Per dimension the train / dev / test pairs by the hash split of the first user turn (a
    conversation never lands on two sides); the policy's training prompts (the first label_pairs
    training pairs of each dimension, or of each prompts source) and the evaluation prompts (the
    first eval_prompts pairs of the eval_split side), so that no evaluation prompt was ever
    trained on. Unreadable rows and pairs whose chosen equals rejected are skipped and counted."""
    from .data import split_key, split_point

    by_dim, counts = {}, {}
    for dim, source in cfg.data.items():
        sides, counts[dim] = _split_source(cfg, source)
        if dim in cfg.test_data:  # another source's pairs are the test side
            held, held_counts = _split_source(cfg, cfg.test_data[dim], split=False)
            # A conversation of the held-out source never lands on the other sides too.
            keys = {split_key(p) for p in held["train"]}
            rest = sides["train"] + sides.pop("test")
            train = sorted((p for p in rest if split_key(p) not in keys), key=split_point)
            dev = [p for p in sides["dev"] if split_key(p) not in keys]
            counts[dim]["dropped_as_in_test_data"] = (len(rest) + len(sides["dev"]) - len(train)
                                                      - len(dev))
            sides = {"train": train, "dev": dev, "test": held["train"]}
            for key in ("skipped_bad", "skipped_identical"):
                counts[dim][key] = _add_counts(counts[dim][key], held_counts[key])
        for side in SIDES:
            write_jsonl(d / f"{dim}-{side}.jsonl", (p.to_dict() for p in sides[side]))
            counts[dim][side] = len(sides[side])
        by_dim[dim] = sides
    prompt_sides = by_dim
    if cfg.prompts:
        prompt_sides = {}
        for name, source in cfg.prompts.items():
            prompt_sides[name], count = _split_source(cfg, source)
            counts[f"prompts:{name}"] = {**{side: len(prompt_sides[name][side]) for side in SIDES},
                                         **count}
    label, evals = [], []
    for name, sides in prompt_sides.items():
        if not sides[cfg.eval_split]:
            raise ValueError(f"{name}: the {cfg.eval_split} split is empty; nothing to evaluate on")
        label += sides["train"][:cfg.label_pairs]
        evals += sides[cfg.eval_split][:cfg.eval_prompts]
    write_jsonl(d / LABEL_PAIRS, (p.to_dict() for p in label))
    write_jsonl(d / EVAL_PROMPTS, ({"id": p.id, "prompt": p.prompt, "split": cfg.eval_split}
                                   for p in evals))
    return {"pairs": counts, "label_pairs": len(label), "eval_prompts": len(evals),
            "prompts_from": list(prompt_sides),
            "eval_split": cfg.eval_split,
            "rule": "sha256('rewardprompt' + first user turn) in [0, 1): below test_fraction "
                    "test, below test_fraction + dev_fraction dev, else train"}


def _split_source(cfg: RecipeConfig, source: str, split: bool = True) -> tuple[dict, dict]:
    """A source's readable, non-identical pairs by the hash split (each side in hash order, so
    that a prefix mixes a group's files evenly); unsplit, all of them under ``train``."""
    from .data import assign_split, drop_identical, read_preferences, split_point

    pairs, skipped = read_preferences(source, skip_bad=True)
    pairs, n_identical = drop_identical(pairs, source, True)
    sides: dict[str, list] = {side: [] for side in SIDES}
    for p in pairs:
        side = assign_split(p, cfg.test_fraction, dev_fraction=cfg.dev_fraction) if split else "train"
        sides[side].append(p)
    for side in SIDES:
        sides[side].sort(key=split_point)
    return sides, {"skipped_bad": dict(skipped), "skipped_identical": n_identical}


def _add_counts(a: Any, b: Any) -> Any:
    """Two skip counts added: numbers, or dicts of reason -> number."""
    if isinstance(a, dict):
        return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}
    return a + b
