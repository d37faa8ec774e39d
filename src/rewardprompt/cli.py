"""The command line: a thin map from ``rewardprompt GROUP [SUB]`` onto one stage's config + entry.

Each stage is one config dataclass and one entry function; tyro turns the dataclass into flags.
``--config run.yaml`` loads defaults from YAML (command-line flags override them), and
``--preset NAME`` picks a named preset where the stage has them (``demo --preset long``).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import typing
from typing import Any

# command -> (module:config class, module:entry function, positional argument names, help)
COMMANDS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "data convert-hh": ("rewardprompt.data:ConvertConfig", "rewardprompt.data:convert",
                        ("input", "output"), "HH-RLHF / preference rows to structured JSONL"),
    "rm train": ("rewardprompt.rewards.train:RMTrainConfig",
                 "rewardprompt.rewards.train:train_reward_model", (), "train a Bradley-Terry RM"),
    "rm eval": ("rewardprompt.rewards.eval:RMEvalConfig",
                "rewardprompt.rewards.eval:evaluate_reward_model", (), "RM pairwise accuracy"),
    "rm score": ("rewardprompt.rewards.score:RMScoreConfig", "rewardprompt.rewards.score:score_file",
                 (), "score prompt/response rows"),
    "label": ("rewardprompt.label:LabelConfig", "rewardprompt.label:run_label", (),
              "score responses and write the labelled training set"),
    "sft": ("rewardprompt.policy.sft:SFTConfig", "rewardprompt.policy.sft:run_sft", (),
            "fine-tune the policy (completion-only loss, full or LoRA)"),
    "generate": ("rewardprompt.generate:GenerateConfig", "rewardprompt.generate:run_generate", (),
                 "sample with target rewards"),
    "evaluate": ("rewardprompt.evaluate.controllability:EvaluateConfig",
                 "rewardprompt.evaluate.controllability:run_evaluate", (),
                 "target-vs-actual controllability"),
    "elo": ("rewardprompt.evaluate.elo:EloConfig", "rewardprompt.evaluate.elo:run_elo", (),
            "Elo and Bradley-Terry ratings of models on the same prompts, judged by a scorer"),
    "report": ("rewardprompt.report.html:ReportConfig", "rewardprompt.report.html:run_report",
               ("run",), "build RUN/report.html from the run's files"),
    "bench rm": ("rewardprompt.bench:BenchRMConfig", "rewardprompt.bench:bench_rm", (),
                 "RM training pairs/s against TRL's RewardTrainer, written to JSON"),
    "demo": ("rewardprompt.pipeline:DemoConfig", "rewardprompt.pipeline:run_demo", (),
             "the whole pipeline on the embedded default"),
}


def _load(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def _usage() -> str:
    lines = ["usage: rewardprompt COMMAND [--config FILE.yaml] [--help] [FLAGS]", "", "commands:"]
    lines += [f"  {name:<18} {spec[3]}" for name, spec in COMMANDS.items()]
    return "\n".join(lines)


def _from_dict(cls: type, data: dict) -> Any:
    """A dataclass from a (YAML) dict, nested dataclasses included; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown config key(s) for {cls.__name__}: {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        sub = hints.get(name)
        nested = dataclasses.is_dataclass(sub) and isinstance(value, dict)
        kwargs[name] = _from_dict(sub, value) if nested else value
    return cls(**kwargs)


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


def main(argv: list[str] | None = None) -> int:
    import tyro
    import yaml

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
    rest = args[len(name.split()):]
    cls_ref, fn_ref, positional, _ = COMMANDS[name]
    cls, fn = _load(cls_ref), _load(fn_ref)
    # Positional arguments (``data convert-hh IN OUT``, ``report RUN``) become their flags.
    flags_start = next((i for i, a in enumerate(rest) if a.startswith("-")), len(rest))
    given = rest[:flags_start]
    rest = [a for p, v in zip(positional, given) for a in (f"--{p.replace('_', '-')}", v)] + \
        given[len(positional):] + rest[flags_start:]
    try:
        defaults: dict = {}
        preset = _pop_option(rest, "--preset")
        if preset is not None:
            presets = getattr(cls, "PRESETS", {})
            if preset not in presets:
                raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(presets)}")
            defaults.update(presets[preset], preset=preset)
        config_file = _pop_option(rest, "--config")
        if config_file is not None:
            loaded = yaml.safe_load(open(config_file, encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{config_file}: expected a mapping of config keys")
            defaults.update(loaded)
        if defaults:
            # Required fields the file does not give stay required on the command line.
            for f in dataclasses.fields(cls):
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    defaults.setdefault(f.name, tyro.MISSING)
            cfg = tyro.cli(cls, args=rest, default=_from_dict(cls, defaults),
                           prog=f"rewardprompt {name}")
        else:
            cfg = tyro.cli(cls, args=rest, prog=f"rewardprompt {name}")
        result = fn(cfg)
    except (DataError, TemplateError, ValueError, FileNotFoundError) as exc:
        print(f"rewardprompt {name}: error: {exc}", file=sys.stderr)
        return 2
    if name != "rm eval" and result is not None:  # rm eval prints its own line
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
