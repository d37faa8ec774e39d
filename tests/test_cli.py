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
    from rewardprompt.cli import _from_dict
    from rewardprompt.pipeline import DemoConfig

    cfg = _from_dict(DemoConfig, {"steps": 5, "sampling": {"max_new_tokens": 7}})
    assert cfg.steps == 5 and cfg.sampling == SamplingConfig(max_new_tokens=7)
    with pytest.raises(ValueError, match="unknown config key"):
        _from_dict(DemoConfig, {"sampling": {"nope": 1}})


def test_demo_template_overrides_under_every_preset(tmp_path, capsys):
    """--template KEY VALUE works under each preset, and a bad value stops before any file."""
    from rewardprompt.pipeline import DemoConfig

    for preset in DemoConfig.PRESETS:
        with pytest.raises(SystemExit):
            main(["demo", "--preset", preset, "--help"])
        assert "--template [STR STR" in capsys.readouterr().out, preset
    out = tmp_path / "run"
    assert main(["demo", "--out", str(out), "--template", "decimals", "two"]) == 2
    assert "decimals must be an integer" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--base-template", "middle"]) == 2
    assert "base_template must be one of" in capsys.readouterr().err
    assert not out.exists()
