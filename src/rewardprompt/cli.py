"""The command line: a thin map from ``rewardprompt GROUP [SUB]`` onto one stage's config + entry.

Each stage is one config dataclass and one entry function; tyro turns the dataclass into flags
(nested configs become ``--sft.lr``). ``--config FILE.yaml`` gives defaults (``sft: {lr: 1e-3}``),
``--preset NAME`` a shipped file from ``configs/``, and flags override both. A YAML file may
start from another with ``include: NAME_OR_PATH`` (its ``out`` is not inherited). A stage run
with ``--run DIR`` is recorded in that run's manifest, so ``report DIR`` covers it.
Configs live in modules that import torch lazily, so ``--help`` answers at once.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import typing
from pathlib import Path
from typing import Any

# command -> (module:config class, module:entry function, positional argument names, help)
COMMANDS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "data convert-hh": ("rewardprompt.data:ConvertConfig", "rewardprompt.data:convert",
                        ("input", "output"), "HH-RLHF / preference rows to structured JSONL"),
    "data split": ("rewardprompt.data.split:SplitConfig", "rewardprompt.data.split:split_data",
                   ("input",), "train / dev / test pairs and prompt files by the hash rule"),
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
    "evaluate": ("rewardprompt.evaluation.controllability:EvaluateConfig",
                 "rewardprompt.evaluation.controllability:run_evaluate", (),
                 "target-vs-actual controllability"),
    "elo": ("rewardprompt.evaluation.elo:EloConfig", "rewardprompt.evaluation.elo:run_elo", (),
            "Elo and Bradley-Terry ratings of models on the same prompts, judged by a scorer"),
    "report": ("rewardprompt.report.html:ReportConfig", "rewardprompt.report.html:run_report",
               ("run",), "build RUN/report.html from the run's files"),
    "bench rm": ("rewardprompt.bench:BenchRMConfig", "rewardprompt.bench:bench_rm", (),
                 "RM training pairs/s against TRL's RewardTrainer, written to JSON"),
    "run": ("rewardprompt.recipe:RecipeConfig", "rewardprompt.recipe:run_recipe", (),
            "the whole recipe on your data: rewardprompt run --config my.yaml"),
    "demo": ("rewardprompt.recipe:RecipeConfig", "rewardprompt.recipe:run_recipe", (),
             "the whole recipe on the embedded default (run --preset demo)"),
}
#: Commands that start from a preset unless told otherwise.
DEFAULT_PRESET = {"demo": "demo"}
#: The shipped recipe files (``configs/`` at the top of a checkout links here).
PRESET_DIR = Path(__file__).resolve().parent / "configs"


def _load(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def _usage() -> str:
    lines = ["usage: rewardprompt COMMAND [--config FILE.yaml] [--preset NAME] [--help] [FLAGS]",
             "", "commands:"]
    lines += [f"  {name:<18} {spec[3]}" for name, spec in COMMANDS.items()]
    presets = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
    return "\n".join(lines + ["", f"presets (configs/): {presets}"])


def _from_dict(cls: type, data: dict, where: str = "", base: Any = None) -> Any:
    """A dataclass from a (YAML) dict, nested dataclasses included, over ``base`` (a nested
    field starts from its own default); unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key(s) for {cls.__name__}: "
                         f"{', '.join(where + k for k in unknown)}; choose from {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        sub = hints.get(name)
        if dataclasses.is_dataclass(sub) and isinstance(value, dict):
            f = fields[name]
            start = getattr(base, name) if base is not None else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            value = _from_dict(sub, value, f"{where}{name}.", start)
        kwargs[name] = value
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def _merge(cls: type, base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: nested stage configs merge key by key, other values (dicts
    such as ``data`` or ``template`` included) are replaced whole."""
    hints = typing.get_type_hints(cls)
    out = dict(base)
    for key, value in over.items():
        sub = hints.get(key)
        if dataclasses.is_dataclass(sub) and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(sub, out[key], value)
        else:
            out[key] = value
    return out


def read_config(cls: type, source: str, _seen: tuple[str, ...] = ()) -> dict:
    """A YAML config (a preset name or a path) as a dict, its ``include`` chain resolved."""
    import yaml

    is_preset = "/" not in source and not source.endswith((".yaml", ".yml"))
    path = PRESET_DIR / f"{source}.yaml" if is_preset else Path(source)
    if not path.is_file():
        presets = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise ValueError(f"unknown preset {source!r}; choose from {presets}" if is_preset
                         else f"no config file {path}")
    if str(path.resolve()) in _seen:
        raise ValueError(f"{path}: include loops back to itself")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of config keys")
    include = loaded.pop("include", None)
    if include is None:
        return loaded
    if not isinstance(include, str):
        raise ValueError(f"{path}: include must name one preset or file")
    parent = include if "/" not in include and not include.endswith((".yaml", ".yml")) \
        else str((path.parent / include))
    base = read_config(cls, parent, _seen + (str(path.resolve()),))
    base.pop("out", None)  # a run's directory is its own, never inherited
    return _merge(cls, base, loaded)


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
        defaults = _merge(cls, defaults, read_config(cls, config_file))
    prog = f"rewardprompt {name}"
    if not defaults:
        return tyro.cli(cls, args=rest, prog=prog)
    # Required fields the files do not give stay required on the command line.
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            defaults.setdefault(f.name, tyro.MISSING)
    return tyro.cli(cls, args=rest, default=_from_dict(cls, defaults), prog=prog)


def call(name: str, cfg: Any) -> Any:
    """Run the stage; with ``--run DIR`` it is recorded in that run's manifest."""
    fn = _load(COMMANDS[name][1])
    run_dir = getattr(cfg, "run", None)
    if run_dir is None or name in ("run", "demo"):
        return fn(cfg)
    from .runs import Run

    return Run(run_dir).stage(_stage_name(name, cfg), lambda: fn(cfg), config=cfg, force=True)


def _stage_name(name: str, cfg: Any) -> str:
    """The manifest entry of a standalone stage: the command and what it made (``sft_uncond_sft``,
    ``generate_steered``, ``rm_train_helpful``), so that stages run twice keep apart."""
    part = getattr(cfg, "label", None) if name == "generate" else None
    if part is None and getattr(cfg, "out", None):
        part = Path(cfg.out).name.split(".")[0]
    if part is None and name == "sft":
        part = "conditioned" if cfg.conditioned else "uncond_sft"
    return name.replace(" ", "_") + (f"_{part}" if part else "")


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
        result = call(name, cfg)
    except (DataError, TemplateError, ValueError, FileNotFoundError) as exc:
        print(f"rewardprompt {name}: error: {exc}", file=sys.stderr)
        return 2
    if name != "rm eval" and result is not None:  # rm eval prints its own line
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
