"""The CLI is a thin map: positionals, --config YAML with flag overrides, presets, errors."""
from __future__ import annotations

import gzip
import json

import pytest

from rewardprompt.cli import main

HH_ROW = {"chosen": "\n\nHuman: hi there\n\nAssistant: Hello! How can I help?",
          "rejected": "\n\nHuman: hi there\n\nAssistant: Go away."}


def test_convert_positional_and_config(tmp_path, capsys):
    src = tmp_path / "in.jsonl.gz"
    src.write_bytes(gzip.compress((json.dumps(HH_ROW) + "\n{bad json\n").encode()))
    out = tmp_path / "out.jsonl"
    (tmp_path / "c.yaml").write_text("skip_bad: true\n")
    assert main(["data", "convert-hh", str(src), str(out), "--config", str(tmp_path / "c.yaml")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == \
        {"n": 1, "skipped": {"json": 1}}
    assert json.loads(out.read_text())["chosen"] == "Hello! How can I help?"
    # the flag overrides the file: bad rows now stop the command with file and line
    assert main(["data", "convert-hh", str(src), str(out), "--config", str(tmp_path / "c.yaml"),
                 "--no-skip-bad"]) == 2
    assert f"{src}, line 2" in capsys.readouterr().err


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["nonsense"]) == 2
    assert "unknown command" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("not_a_knob: 1\n")
    assert main(["data", "convert-hh", "a", "b", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "unknown config key(s) for ConvertConfig: not_a_knob" in capsys.readouterr().err
    assert main(["demo", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_help_lists_every_stage(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for cmd in ("data convert-hh", "rm train", "rm eval", "rm score", "label", "sft", "generate",
                "evaluate", "elo", "report", "demo"):
        assert cmd in text


def test_nested_yaml_config_becomes_dataclasses():
    from rewardprompt.backends import SamplingConfig
    from rewardprompt.config import from_dict
    from rewardprompt.recipe import RecipeConfig

    cfg = from_dict(RecipeConfig, {"out": "x", "sft": {"max_steps": 5},
                                    "sampling": {"max_new_tokens": 7}})
    assert cfg.sft.max_steps == 5 and cfg.sampling == SamplingConfig(max_new_tokens=7)
    with pytest.raises(ValueError, match="unknown config key.*sampling.nope"):
        from_dict(RecipeConfig, {"out": "x", "sampling": {"nope": 1}})


def test_one_name_everywhere_flag_and_yaml(tmp_path):
    """``--sft.lr`` on the command line and ``sft: {lr: ...}`` in YAML set the same field; a
    file that includes a preset starts from it but not from its run directory."""
    from rewardprompt.cli import parse

    (tmp_path / "my.yaml").write_text("include: demo\nout: runs/mine\nsft: {lr: 0.5}\n"
                                      "data: {quality: mine.jsonl}\n")  # test_data follows data
    cfg = parse("run", ["--config", str(tmp_path / "my.yaml"), "--sft.max-steps", "3"])
    assert (cfg.sft.lr, cfg.sft.max_steps, cfg.out) == (0.5, 3, "runs/mine")
    assert cfg.data == {"quality": "mine.jsonl"}          # data is replaced, not merged
    assert cfg.sft.max_prompt_tokens == 80                # the rest comes from demo.yaml
    assert parse("demo", ["--sft.lr", "0.25"]).sft.lr == 0.25
    # the same from Python, and YAML 1.2 numbers: 1e-3 is a float, a quoted number is refused
    from rewardprompt.config import load_config
    from rewardprompt.recipe import RecipeConfig

    cfg = load_config(RecipeConfig, str(tmp_path / "my.yaml"), sft={"max_steps": 3})
    assert (cfg.sft.lr, cfg.sft.max_steps, cfg.test_data) == (0.5, 3, {})
    (tmp_path / "typed.yaml").write_text("out: x\ndata: {q: a}\nsft: {lr: 1e-3}\n")
    assert load_config(RecipeConfig, str(tmp_path / "typed.yaml")).sft.lr == 1e-3
    (tmp_path / "bad.yaml").write_text("out: x\ndata: {q: a}\nlabel_pairs: '40'\n")
    with pytest.raises(ValueError, match="label_pairs: expected an integer"):
        load_config(RecipeConfig, str(tmp_path / "bad.yaml"))
    (tmp_path / "noout.yaml").write_text("include: demo\n")
    with pytest.raises(SystemExit):                       # out is never inherited
        parse("run", ["--config", str(tmp_path / "noout.yaml")])


def test_presets_are_files_and_every_preset_parses(capsys):
    from rewardprompt.cli import parse
    from rewardprompt.config import PRESET_DIR

    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    assert {"demo", "long", "pairs", "steered", "control"} <= set(names)
    for name in names:
        cfg = parse("run", ["--preset", name])
        cfg.validate()
        assert cfg.out == f"runs/{name}"
    control = parse("run", ["--preset", "control"])
    assert control.seeds == [0, 1, 2] and "best_of_16" in control.baselines
    assert control.rm.limit == 1000 and control.rm.family == "decoder"  # nested keys merge


def test_demo_refuses_what_the_recipe_sets_and_bad_templates(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit):  # tyro builds the template and reports its error
        main(["demo", "--out", str(out), "--template.n-bins", "1"])
    assert "n_bins must be >= 2" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--sft.data", "x.jsonl"]) == 2
    assert "sft.data: set by the recipe" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--template.dimensions", "a"]) == 2
    assert "template.dimensions comes from data" in capsys.readouterr().err
    assert not out.exists()


def test_every_help_line_belongs_to_its_own_flag():
    """Each config field has its own help text, and no two fields of a config share one (help
    that bleeds from one flag to the next shows up as a repeat)."""
    import dataclasses

    from tyro._docstrings import get_field_docstring

    from rewardprompt.cli import COMMANDS, _load

    for name, (cls_ref, *_rest) in COMMANDS.items():
        cls = _load(cls_ref)
        helps = {}
        for f in dataclasses.fields(cls):
            text = get_field_docstring(cls, f.name, ())
            assert text, f"{name}: --{f.name} has no help"
            assert text not in helps.values(), f"{name}: --{f.name} repeats another flag's help"
            helps[f.name] = text


def test_help_is_fast():
    """``--help`` does not import torch, transformers or scipy (they take seconds to load)."""
    import subprocess
    import sys

    code = ("import sys\nfrom rewardprompt.cli import main\n"
            "for cmd in (['sft'], ['rm', 'train'], ['rm', 'eval'], ['demo'], ['evaluate'], "
            "['elo'], ['generate'], ['label'], ['rm', 'wrap'], ['data', 'split']):\n"
            "    try:\n        main(cmd + ['--help'])\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'scipy.stats', 'scipy.special') "
            "if m in sys.modules]\nprint('HEAVY', heavy)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]


def test_recipe_checks_before_any_file(tmp_path):
    """A test RM of another family drops the decoder-only options; bad dimension names stop."""
    from pathlib import Path

    from rewardprompt.cli import parse

    cfg = parse("demo", ["--out", str(tmp_path / "r"), "--test-rm-family", "encoder"])
    cfg.validate()
    test_rm = cfg.rm_config("harmless", True, Path("r"))
    assert (test_rm.family, test_rm.layers, test_rm.pooling, test_rm.seed) == ("encoder", 0, None, 1)
    assert cfg.rm_config("harmless", False, Path("r")).layers == 12
    # one precision switch for the whole recipe, passed down to every reward model
    fp32 = parse("demo", ["--out", str(tmp_path / "r"), "--no-cpu-bf16"])
    assert not fp32.rm_config("harmless", True, Path("r")).cpu_bf16
    from rewardprompt.config import load_config
    from rewardprompt.recipe import RecipeConfig

    for bad in ("a-b", "x/y", "helpful_test"):
        cfg = load_config(RecipeConfig, "demo", out="r", data={bad: "f.jsonl"})
        with pytest.raises(ValueError, match="letters, digits"):
            cfg.validate()
