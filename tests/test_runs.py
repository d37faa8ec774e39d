"""Run directories: atomic writes, secrets kept out of manifests, refusing to mix configs."""
from __future__ import annotations

import json

import pytest

from rewardprompt.runs import Run, atomic_write_json, redact


def test_redact_hides_secrets_not_knobs():
    got = redact({"api_key": "sk-1", "max_prompt_tokens": 96, "hf_token": "abc",
                  "model": "https://user:pw@host/x", "nested": {"OPENAI_API_KEY": "k"}})
    assert got == {"api_key": "***", "max_prompt_tokens": 96, "hf_token": "***",
                   "model": "https://***@host/x", "nested": {"OPENAI_API_KEY": "***"}}
    assert redact(["x", "--api-key", "sk-1", "--hf-token=abc", "--max-prompt-tokens", "96"]) == \
        ["x", "--api-key", "***", "--hf-token=***", "--max-prompt-tokens", "96"]


def test_manifest_never_holds_a_secret(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["rewardprompt", "demo", "--api-key", "sk-SECRET"])
    Run(tmp_path, config={"api_key": "sk-SECRET", "lr": 1e-3})
    assert "sk-SECRET" not in (tmp_path / "manifest.json").read_text()


def test_stage_resume_and_changed_config(tmp_path):
    run = Run(tmp_path, config={"lr": 1e-3})
    calls = []
    assert run.stage("a", lambda: calls.append(1) or {"x": 1}) == {"x": 1}
    run2 = Run(tmp_path, config={"lr": 1e-3})
    assert run2.stage("a", lambda: calls.append(2) or {"x": 2}) == {"x": 1}  # skipped
    assert calls == [1]
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["a"]["done"]
    with pytest.raises(ValueError, match="changed: lr"):
        Run(tmp_path, config={"lr": 2e-3})


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
