"""The command line: a thin map from ``rewardprompt GROUP [SUB]`` onto one stage's config + entry.

Each stage is one config dataclass and one entry function; tyro turns the dataclass into flags
(nested configs become ``--sft.lr``). ``--config FILE.yaml`` gives defaults (``sft: {lr: 1e-3}``;
YAML 1.2 numbers, so ``1e-3`` is a float),
``--preset NAME`` a shipped file from ``configs/``, and flags override both. A YAML file may
start from another with ``include: NAME_OR_PATH`` (its ``out`` is not inherited). A stage given
``--run DIR`` records itself in that run's manifest (``runs.recorded``), so ``report DIR`` covers
it.
Configs live in modules that import torch lazily, so ``--help`` answers at once.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from typing import Any

from .config import PRESET_DIR, from_dict, merge, read_config

# command -> (module:config class, module:entry function, positional argument names, help)
COMMANDS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "data convert-hh": ("rewardprompt.data:ConvertConfig", "rewardprompt.data:convert",
                        ("input", "output"), "HH-RLHF / preference rows to structured JSONL"),
    "data split": ("rewardprompt.data.split:SplitConfig", "rewardprompt.data.split:split_data",
                   ("input",), "train / dev / test pairs and prompt files by the hash rule"),
    "data export": ("rewardprompt.data.export:ExportConfig", "rewardprompt.data.export:export_data",
                    ("out",), "cleaned HH as structured JSON, labels in providers' formats, a card"),
    "rm train": ("rewardprompt.rewards.train:RMTrainConfig",
                 "rewardprompt.rewards.train:train_reward_model", (), "train a Bradley-Terry RM"),
    "rm eval": ("rewardprompt.rewards.eval:RMEvalConfig",
                "rewardprompt.rewards.eval:evaluate_reward_model", (), "RM pairwise accuracy"),
    "rm score": ("rewardprompt.rewards.score:RMScoreConfig", "rewardprompt.rewards.score:score_file",
                 (), "score prompt/response rows"),
    "rm wrap": ("rewardprompt.rewards.hf:RMWrapConfig", "rewardprompt.rewards.hf:wrap_reward_model",
                (), "a Hugging Face reward model as a scorer, normalised on your pairs"),
    "label": ("rewardprompt.labelling:LabelConfig", "rewardprompt.labelling:run_label", (),
              "score responses and write the labelled training set"),
    "sft": ("rewardprompt.policy.sft:SFTConfig", "rewardprompt.policy.sft:run_sft", (),
            "fine-tune the policy (completion-only loss, full or LoRA)"),
    "generate": ("rewardprompt.sampling:GenerateConfig", "rewardprompt.sampling:run_generate", (),
                 "sample with target rewards"),
    "serve": ("rewardprompt.serve:ServeConfig", "rewardprompt.serve:run_serve", (),
              "an OpenAI-compatible chat-completions server on a local policy"),
    "evaluate": ("rewardprompt.evaluation.controllability:EvaluateConfig",
                 "rewardprompt.evaluation.controllability:run_evaluate", (),
                 "target-vs-actual controllability"),
    "kl": ("rewardprompt.evaluation.kl:KLConfig", "rewardprompt.evaluation.kl:run_kl", (),
           "KL(policy || reference) from top-k log-probs against the exact figure"),
    "elo": ("rewardprompt.evaluation.elo:EloConfig", "rewardprompt.evaluation.elo:run_elo", (),
            "Elo and Bradley-Terry ratings of models on the same prompts, judged by a scorer"),
    "probe collect": ("rewardprompt.probes.collect:CollectConfig",
                      "rewardprompt.probes.collect:run_collect", (),
                      "residual-stream activations and labels, as resumable safetensors shards"),
    "probe train": ("rewardprompt.probes.train:ProbeTrainConfig",
                    "rewardprompt.probes.train:run_train", (),
                    "linear (AdamW), ridge and MLP reward probes at one layer and position"),
    "probe sweep": ("rewardprompt.probes.sweep:ProbeSweepConfig",
                    "rewardprompt.probes.sweep:run_sweep", (),
                    "a probe per layer x position: dev heatmap, best cell on test"),
    "probe compare": ("rewardprompt.probes.compare:ProbeCompareConfig",
                      "rewardprompt.probes.compare:run_compare", (),
                      "a probe on base vs tuned models' completions, beside an RM"),
    "probe targets": ("rewardprompt.probes.targets:ProbeTargetsConfig",
                      "rewardprompt.probes.targets:run_targets", (),
                      "a conditioned policy's residual stream probed for its target and reward"),
    "probe search": ("rewardprompt.probes.search:ProbeSearchConfig",
                     "rewardprompt.probes.search:run_search", (),
                     "best-of-n and step-wise selection by probe vs RM vs random"),
    "probe demo": ("rewardprompt.probes.demo:ProbeDemoConfig", "rewardprompt.probes.demo:run_demo",
                   (), "collect -> sweep -> train on HH with SmolLM2-135M (about 10 min, 2-core CPU)"),
    "experiment list": ("rewardprompt.experiments:ExperimentListConfig",
                        "rewardprompt.experiments:list_experiments", (),
                        "the research outline's registered experiments"),
    "experiment run": ("rewardprompt.experiments:ExperimentConfig",
                       "rewardprompt.experiments:run_experiment", ("name",),
                       "run one experiment (variants of the recipe, analysis, figure, report)"),
    "report": ("rewardprompt.report.html:ReportConfig", "rewardprompt.report.html:run_report",
               ("run",), "build RUN/report.html from the run's files"),
    "bench rm": ("rewardprompt.bench:BenchRMConfig", "rewardprompt.bench:bench_rm", (),
                 "RM training pairs/s against TRL's RewardTrainer, written to JSON"),
    "bench sft": ("rewardprompt.bench:BenchSFTConfig", "rewardprompt.bench:bench_sft", (),
                  "SFT tokens/s against TRL's SFTTrainer, into the bench file"),
    "bench sample": ("rewardprompt.bench:BenchSampleConfig", "rewardprompt.bench:bench_sample", (),
                     "sampling tokens/s against model.generate, into the bench file"),
    "run": ("rewardprompt.recipe:RecipeConfig", "rewardprompt.recipe:run_recipe", (),
            "the whole recipe on your data: rewardprompt run --config my.yaml"),
    "demo": ("rewardprompt.recipe:RecipeConfig", "rewardprompt.recipe:run_recipe", (),
             "the whole recipe on the embedded default (run --preset demo)"),
}
#: Commands that start from a preset unless told otherwise.
DEFAULT_PRESET = {"demo": "demo"}


def _load(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def _usage() -> str:
    lines = ["usage: rewardprompt COMMAND [--config FILE.yaml] [--preset NAME] [--help] [FLAGS]",
             "", "commands:"]
    lines += [f"  {name:<18} {spec[3]}" for name, spec in COMMANDS.items()]
    presets = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
    return "\n".join(lines + ["", f"presets (configs/): {presets}"])


def _pop_option(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            value = args[i + 1]
            del args[i:i + 2]
            return value
        if a.startswith(name + "="):
            del args[i]
            return a.split("=", 1)[1]
    return None


def parse(name: str, args: list[str]) -> Any:
    """The config of command ``name`` from its arguments (presets, files, then flags)."""
    import tyro

    cls = _load(COMMANDS[name][0])
    positional = COMMANDS[name][2]
    # Positional arguments (``data convert-hh IN OUT``, ``report RUN``) become their flags.
    flags_start = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
    given = args[:flags_start]
    rest = [a for p, v in zip(positional, given) for a in (f"--{p.replace('_', '-')}", v)] + \
        given[len(positional):] + args[flags_start:]
    defaults: dict = {}
    preset = _pop_option(rest, "--preset") or DEFAULT_PRESET.get(name)
    if preset is not None:
        defaults = read_config(cls, preset)
    config_file = _pop_option(rest, "--config")
    if config_file is not None:
        defaults.pop("out", None)  # as with include: a run's directory is its own
        defaults = merge(cls, defaults, read_config(cls, config_file))
    prog = f"rewardprompt {name}"
    if not defaults:
        return tyro.cli(cls, args=rest, prog=prog)
    # Required fields the files do not give stay required on the command line.
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            defaults.setdefault(f.name, tyro.MISSING)
    return tyro.cli(cls, args=rest, default=from_dict(cls, defaults), prog=prog)


def main(argv: list[str] | None = None) -> int:
    from .errors import DataError
    from .template import TemplateError

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name = " ".join(args[:2]) if " ".join(args[:2]) in COMMANDS else args[0]
    if name not in COMMANDS:
        print(f"unknown command {' '.join(args[:2])!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        cfg = parse(name, args[len(name.split()):])
        result = _load(COMMANDS[name][1])(cfg)
    except (DataError, TemplateError, ValueError, OSError) as exc:  # OSError: a model not found
        print(f"rewardprompt {name}: error: {exc}", file=sys.stderr)
        return 2
    if name != "rm eval" and result is not None:  # rm eval prints its own line
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
