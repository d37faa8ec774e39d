"""The demo: every stage end to end on the embedded default, as one resumable run.

Stages (each recorded in the manifest, skipped when already done, so a killed run resumes):
data -> rm_helpful, rm_helpful_test, rm_harmless, rm_harmless_test -> sample_steered -> label ->
sft_conditioned, sft_uncond -> generate_conditioned, generate_uncond -> evaluate -> elo -> report.
The *_test reward models are held out (never label): evaluate scores under them too.
Helpful is learned from UltraFeedback, harmless from HH-RLHF harmless-base (both shipped).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from .backends import SamplingConfig
from .runs import Run, update_json, write_jsonl
from .template import RewardTemplate


# Openers for steered sampling, chosen for how differently the demo's RMs score them. Mean
# label (helpful / harmless) of the base policy's 120 samples per opener on the demo's training
# prompts (runs/demo at 8ca6bae): "" (its own start) 0.43 / 0.35, "I'm sorry, but I can't"
# 0.13 / 0.86, "Sure! Here's" 0.26 / 0.25, "I don't know." 0.28 / 0.69, the "safe and
# respectful" opener 0.04 / 0.51, "a detailed, step-by-step answer" 0.39 / 0.34.
STEER_PREFILLS = ("", "I'm sorry, but I can't", "Sure! Here's", "I don't know.",
                  "That's a great question! It's important to be safe and respectful.",
                  "Here is a detailed, step-by-step answer:")
# The demo's openers: of the six above, the three whose labels a policy that imitates its data
# can best tell apart by the harmless number (the policy's own start, with the widest labels,
# is left out).
DEMO_OPENERS = ("I'm sorry, but I can't", "Sure! Here's", "Here is a detailed, step-by-step answer:")
# The demo's block opens the reply and ends with its last value, one decimal: the token that
# predicts the reply's first word is the number itself. With the block at the bottom of the
# user turn, 240 steps did not learn the number at all.
REPLY_TEMPLATE = {"position": "reply", "close_tag": "", "decimals": 1}
# "classic" is RewardTemplate's own defaults: the seed format at the bottom of the user turn.
BASE_TEMPLATES = {"reply": REPLY_TEMPLATE, "classic": {}}


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    preset: str = "default"
    policy: str = "smollm2-135m-instruct"   # shipped default, a Hub id or a folder
    helpful_data: str = "ultrafeedback"     # any load_preferences source
    helpful_test: str = "ultrafeedback-eval"
    harmless_data: str = "hh-harmless"
    test_fraction: float = 0.2              # hash split of the harmless data
    synthetic: bool = False                 # score with synthetic scorers (mechanism check)
    # reward models (see RMTrainConfig): by default the decoder family, SmolLM2-135M cut to its
    # first 12 blocks, frozen, with a logistic head on the mean of the response tokens' states
    # (trained on all HH pairs: held-out accuracy 0.626 vs 0.566 for frozen MiniLM, 101 s here
    # with bf16; with test_rm each labelling RM sees half the pairs);
    # rm_family="encoder" is the faster MiniLM one (rm_layers and rm_pooling then do not apply).
    rm_family: str = "decoder"
    rm_base: str | None = None              # None: the family's shipped default
    rm_layers: int = 12
    rm_pooling: str | None = "mean"
    rm_max_length: int = 128
    rm_epochs: int = 1
    rm_lr: float = 3e-5
    rm_batch_size: int = 16
    rm_limit: int | None = None
    # A held-out "test" RM per dimension for over-optimisation checks: the labelling RM trains on
    # the first half of the training pairs (by a hash of the pair id), the test RM on the second
    # half with another seed; it never labels, and evaluate reports the actual reward under
    # both. test_rm_family: None for the same family as the labelling RM; another family uses
    # its own shipped base model (rm_base applies to rm_family only; rm_layers and rm_pooling to
    # the decoder family). --no-test-rm: the labelling RMs train on all their pairs, no test RM.
    test_rm: bool = True
    test_rm_family: str | None = None
    # labelled training set
    label_pairs: int = 40                   # pairs per dataset: their prompts are the
                                            # training prompts
    pair_replies: bool = False              # label the pairs' chosen and rejected replies
    prefixes: int = 0                       # also label k sentence-prefixes of every reply
    # Steered samples of the base policy on the training prompts: each prompt is sampled
    # steer_samples times per prefill, the reply started with that text ("" = the policy's own
    # start), then labelled by the RMs like every other reply ([] = none). The openers widen
    # what the samples cover (refusal, compliance, a detailed answer) so that the labels have
    # behaviour to tell apart; the labels are still the RMs' scores of each reply.
    steer_prefills: list[str] = field(default_factory=lambda: list(DEMO_OPENERS))
    steer_samples: int = 2
    # policy fine-tuning (the same for the conditioned policy and the unconditioned baseline)
    lora: bool = True
    lr: float = 2e-3
    steps: int = 50
    # bf16 autocast on CPU for the SFT steps (1.5x faster here) and, where the CPU has native
    # bf16, for the reward models' passes
    bf16_cpu: bool = True
    batch_size: int = 8
    max_prompt_tokens: int = 80
    max_completion_tokens: int = 40         # steered samples and labelling see this much
    # SFT trains on the first k tokens of each labelled reply (None = max_completion_tokens).
    # A steered sample's label is mostly decided by its opener, and the rest of the reply is the
    # base policy's own continuation: training on the first few tokens concentrates the loss on
    # the choice the number should make, and shortens each step.
    sft_completion_tokens: int | None = 8
    # The reward block: a base layout (BASE_TEMPLATES: "reply", the demo's, or "classic", the
    # seed format at the bottom of the user turn) and RewardTemplate fields over it, e.g.
    # --template encoding tokens duplicate 2
    base_template: str = "reply"
    template: dict = field(default_factory=dict)
    # evaluation
    eval_prompts: int = 24                  # per dataset, from held-out splits
    samples_per_prompt: int = 4
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=40,
                                                                            batch_size=32))
    n_boot: int = 1000
    seed: int = 0
    report_to: str = "none"
    save_steps: int = 0                     # SFT checkpoint interval; 0 = a quarter of the steps

    PRESETS = {
        "default": {},
        # The default recipe with 60 pairs per dataset (720 steered replies) and 80 steps:
        # 34.8 min here on 2026-12-01, harmless r 0.552 [0.428, 0.654] (baseline -0.017
        # [-0.148, 0.107]), helpful 0.052.
        "long": {"out": "runs/long", "label_pairs": 60, "steps": 80},
        # The earlier recipe (the pairs' replies and their sentence-prefixes, no steered
        # samples, the block at the bottom) with 150 pairs and 900 steps: 74 min here, helpful
        # r 0.194 [0.097, 0.291], harmless -0.016.
        "pairs": {"out": "runs/pairs", "label_pairs": 150, "steps": 900, "eval_prompts": 50,
                  "pair_replies": True, "prefixes": 4, "steer_prefills": [],
                  "base_template": "classic", "sft_completion_tokens": None},
        # Steered samples, one per opener of STEER_PREFILLS, with the block at the bottom of the
        # user turn (two decimals) and 240 steps on the whole replies: harmless r 0.163
        # [0.009, 0.314], helpful -0.017 (no baseline trained).
        "steered": {"out": "runs/steered", "label_pairs": 60,
                    "steer_prefills": list(STEER_PREFILLS), "steer_samples": 1,
                    "base_template": "classic", "steps": 240, "sft_completion_tokens": None},
    }


def _update_metrics(run: Run, **sections) -> None:
    update_json(run.path("metrics.json"), lambda metrics: metrics.update(sections))


def run_demo(cfg: DemoConfig) -> dict:
    from .data import load_preferences, split_pairs
    from .evaluate.controllability import EvaluateConfig, run_evaluate
    from .generate import GenerateConfig, run_generate
    from .label import LabelConfig, run_label
    from .policy.sft import SFTConfig, run_sft
    from .report.html import build_report
    from .evaluate.elo import EloConfig, run_elo
    from .rewards.model import FAMILIES
    from .rewards.eval import RMEvalConfig, evaluate_reward_model
    from .rewards.train import RMTrainConfig, train_reward_model

    for name, family in (("rm_family", cfg.rm_family), ("test_rm_family", cfg.test_rm_family)):
        if family is not None and family not in FAMILIES:  # before minutes of training
            raise ValueError(f"{name} must be one of {FAMILIES}, got {family!r}")
    if not cfg.pair_replies and not (cfg.steer_prefills and cfg.steer_samples > 0):
        raise ValueError("nothing to label: turn on pair_replies or give steer_prefills "
                         "(and steer_samples >= 1)")
    if cfg.base_template not in BASE_TEMPLATES:
        raise ValueError(f"base_template must be one of {sorted(BASE_TEMPLATES)}, "
                         f"got {cfg.base_template!r}")
    # before the run directory exists: a bad template field writes nothing
    template = RewardTemplate.from_dict({**BASE_TEMPLATES[cfg.base_template],
                                         **cfg.template}).to_dict()
    run = Run(cfg.out, config=cfg, seed=cfg.seed)
    d = run.path("data")
    dims = tuple(template["dimensions"])

    def data_stage() -> dict:
        helpful = load_preferences(cfg.helpful_data, skip_bad=True)
        harmless_train, harmless_test = split_pairs(load_preferences(cfg.harmless_data, skip_bad=True),
                                                    cfg.test_fraction)
        helpful_test = load_preferences(cfg.helpful_test, skip_bad=True)
        files = {"helpful-train": helpful, "helpful-test": helpful_test,
                 "harmless-train": harmless_train, "harmless-test": harmless_test}
        for name, pairs in files.items():
            write_jsonl(d / f"{name}.jsonl", (p.to_dict() for p in pairs))
            run.record_data(name, d / f"{name}.jsonl")
        # Policy training data: the first pairs of each training split; evaluation prompts come
        # only from the held-out splits, so no evaluation prompt was ever trained on.
        label = helpful[:cfg.label_pairs] + harmless_train[:cfg.label_pairs]
        write_jsonl(d / "label_pairs.jsonl", (p.to_dict() for p in label))
        evals = helpful_test[:cfg.eval_prompts] + harmless_test[:cfg.eval_prompts]
        write_jsonl(d / "eval_prompts.jsonl", ({"id": p.id, "prompt": p.prompt} for p in evals))
        run.record_data("label_pairs", d / "label_pairs.jsonl")
        run.record_data("eval_prompts", d / "eval_prompts.jsonl")
        return {k: len(v) for k, v in files.items()} | {"label_pairs": len(label),
                                                         "eval_prompts": len(evals)}

    run.stage("data", data_stage)

    scorers: dict[str, str] = {}
    test_scorers: dict[str, str] = {}  # held-out RMs: evaluation only, never labelling
    if cfg.synthetic:
        synthetic = ("synthetic:length:40", "synthetic:keyword:sorry")
        if len(dims) > len(synthetic):
            raise ValueError(f"synthetic mode has scorers for {len(synthetic)} dimensions, "
                             f"not {len(dims)}")
        scorers = dict(zip(dims, synthetic))
    else:
        rm_metrics: dict[str, dict] = {}
        # (dimension, is it the test RM, family, training half, seed) of every reward model.
        plan = []
        for dim in dims:
            plan.append((dim, False, cfg.rm_family, "first" if cfg.test_rm else None, cfg.seed))
            if cfg.test_rm:
                plan.append((dim, True, cfg.test_rm_family or cfg.rm_family, "second",
                             cfg.seed + 1))
        for dim, is_test, family, half, seed in plan:
            key = f"{dim}-test" if is_test else dim
            rm_dir = run.path("rm", key)

            def rm_stage(dim: str = dim, rm_dir: Path = rm_dir, family: str = family,
                         half: str | None = half, seed: int = seed) -> dict:
                # rm_layers and rm_pooling shape the decoder family; the encoder has neither.
                decoder_options = ({"layers": cfg.rm_layers, "pooling": cfg.rm_pooling}
                                   if family == "decoder" else {})
                train = train_reward_model(RMTrainConfig(
                    data=str(d / f"{dim}-train.jsonl"), out=str(rm_dir), family=family,
                    base_model=cfg.rm_base if family == cfg.rm_family else None,
                    **decoder_options, half=half, test_fraction=0.0,
                    max_length=cfg.rm_max_length, epochs=cfg.rm_epochs, lr=cfg.rm_lr,
                    batch_size=cfg.rm_batch_size, seed=seed, limit=cfg.rm_limit,
                    cpu_bf16=cfg.bf16_cpu))
                ev = evaluate_reward_model(RMEvalConfig(rm=str(rm_dir),
                                                        data=str(d / f"{dim}-test.jsonl")))
                return {"accuracy": ev["accuracy"], "ci_low": ev["ci_low"], "ci_high": ev["ci_high"],
                        "n_test": ev["n"], "n_train": train.get("n_train"),
                        "train_seconds": train.get("train_seconds"), "family": family,
                        "half": half, "seed": seed}

            rm_metrics[key] = run.stage(f"rm_{dim}_test" if is_test else f"rm_{dim}", rm_stage)
            (test_scorers if is_test else scorers)[dim] = str(rm_dir)
        _update_metrics(run, rm=rm_metrics)

    samples = []
    if cfg.steer_prefills:
        samples = [str(run.path("generate", "steered.jsonl"))]
        run.stage("sample_steered", lambda: run_generate(GenerateConfig(
            prompts=str(d / "label_pairs.jsonl"), model=cfg.policy, out=samples[0],
            label="steered", conditioned=False, template=template,
            samples_per_prompt=cfg.steer_samples, prefills=cfg.steer_prefills,
            max_prompt_tokens=cfg.max_prompt_tokens,
            sampling=replace(cfg.sampling, max_new_tokens=cfg.max_completion_tokens,
                             seed=cfg.seed + 1))))
    label_out = run.path("label", "train.jsonl")
    labels = run.stage("label", lambda: run_label(LabelConfig(
        pairs=[str(d / "label_pairs.jsonl")] if cfg.pair_replies else [], samples=samples,
        scorers=scorers, out=str(label_out),
        policy=cfg.policy, max_completion_tokens=cfg.max_completion_tokens,
        prefixes=cfg.prefixes)))
    _update_metrics(run, labels=labels["labels"])

    sft_common = dict(data=str(label_out), model=cfg.policy, template=template, lora=cfg.lora,
                      bf16_cpu=cfg.bf16_cpu,
                      lr=cfg.lr, max_steps=cfg.steps, batch_size=cfg.batch_size,
                      max_prompt_tokens=cfg.max_prompt_tokens,
                      max_completion_tokens=cfg.sft_completion_tokens or cfg.max_completion_tokens,
                      seed=cfg.seed,
                      report_to=cfg.report_to,
                      save_steps=cfg.save_steps or max(10, cfg.steps // 4))
    models = {"conditioned": True, "uncond_sft": False}
    for name, conditioned in models.items():
        run.stage(f"sft_{name}", lambda name=name, c=conditioned: run_sft(SFTConfig(
            out=str(run.path("sft", name)), conditioned=c, **sft_common)))
    for name, conditioned in models.items():
        run.stage(f"generate_{name}", lambda name=name, c=conditioned: run_generate(GenerateConfig(
            prompts=str(d / "eval_prompts.jsonl"), model=str(run.path("sft", name, "final")),
            out=str(run.path("generate", f"{name}.jsonl")), label=name, conditioned=c,
            template=template, samples_per_prompt=cfg.samples_per_prompt,
            max_prompt_tokens=cfg.max_prompt_tokens, sampling=cfg.sampling)))
    run.stage("evaluate", lambda: run_evaluate(EvaluateConfig(
        generations=[str(run.path("generate", f"{m}.jsonl")) for m in models], scorers=scorers,
        test_scorers=test_scorers, out=str(run.dir), n_boot=cfg.n_boot, seed=cfg.seed,
        openers=[p for p in cfg.steer_prefills if p])))
    # Head-to-head ranking of the models on the same prompts, judged by the first dimension's RM.
    run.stage("elo", lambda: {k: v for k, v in run_elo(EloConfig(
        generations=[str(run.path("generate", f"{m}.jsonl")) for m in models],
        judge=scorers[dims[0]], out=str(run.path("elo.json")), n_boot=cfg.n_boot,
        seed=cfg.seed)).items() if k == "models"})
    metrics = update_json(run.path("metrics.json"), lambda m: m.update(
        goal=_goal(m, dims), budget={"pipeline_wall_s": run.total_wall_s(),
                                     "peak_rss_mib": run.manifest.get("peak_rss_mib")}))
    run.stage("report", lambda: {"report": str(build_report(run.dir))}, force=True)
    run.save()
    return {dim: {k: metrics[dim].get(k) for k in ("pearson_r", "ci_low", "ci_high")}
            for dim in dims} | {"report": str(run.path("report.html"))}


def _goal(metrics: dict, dims: tuple[str, ...]) -> dict:
    """The issue's bar per dimension, stated from the measured figures (never assumed)."""
    out = {}
    for dim in dims:
        m, b = metrics.get(dim, {}), metrics.get("baselines", {}).get("uncond_sft", {}).get(dim, {})
        r, lo, b_hi = m.get("pearson_r"), m.get("ci_low"), b.get("ci_high")
        top_c = (m.get("bins") or [{}])[-1].get("mean_actual")
        top_b = (b.get("bins") or [{}])[-1].get("mean_actual")
        out[dim] = {"r_at_least_0.5": r is not None and r >= 0.5,
                    "ci_above_baseline_ci": None if lo is None or b_hi is None else lo > b_hi,
                    "top_bin_above_baseline": None if top_c is None or top_b is None
                    else top_c > top_b}
    return out
