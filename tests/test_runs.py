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


def _manifest(run_dir) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_stage_result_lives_in_its_file(tmp_path):
    run = Run(tmp_path)
    run.stage("a", lambda: {"x": 1})
    entry = _manifest(tmp_path)["stages"]["a"]
    assert "result" not in entry
    assert json.loads((tmp_path / entry["result_file"]).read_text()) == {"x": 1}


def test_stage_with_a_deleted_output_runs_again(tmp_path):
    out = tmp_path / "a.txt"
    calls = []

    def write(tag):
        calls.append(tag)
        out.write_text("hello")
        return {"n": len(calls)}

    Run(tmp_path).stage("a", lambda: write(1), outputs=[out])
    assert Run(tmp_path).stage("a", lambda: write(2), outputs=[out]) == {"n": 1}  # intact
    assert calls == [1]
    out.unlink()
    assert Run(tmp_path).stage("a", lambda: write(3), outputs=[out]) == {"n": 2}
    assert calls == [1, 3] and out.read_text() == "hello"
    assert Run(tmp_path).stage("a", lambda: write(4), outputs=[out]) == {"n": 2}
    assert calls == [1, 3]


def test_stage_with_a_changed_file_in_its_output_folder_runs_again(tmp_path):
    folder = tmp_path / "model"
    calls = []

    def build():
        calls.append(1)
        (folder / "sub").mkdir(parents=True, exist_ok=True)
        (folder / "weights.bin").write_bytes(b"\0\1\2")
        (folder / "sub" / "config.json").write_text('{"a": 1}')

    Run(tmp_path).stage("a", build, outputs=[folder])
    Run(tmp_path).stage("a", build, outputs=[folder])
    assert len(calls) == 1
    (folder / "sub" / "config.json").write_text('{"a": 2}')
    Run(tmp_path).stage("a", build, outputs=[folder])
    assert len(calls) == 2
    assert (folder / "sub" / "config.json").read_text() == '{"a": 1}'
    (folder / "extra.txt").write_text("x")  # a file added to the folder changes it too
    Run(tmp_path).stage("a", build, outputs=[folder])
    assert len(calls) == 3


def test_stage_with_a_changed_config_or_input_runs_again(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text('{"a": 1}\n')
    calls = []

    def stage(cfg):
        return Run(tmp_path).stage("a", lambda: calls.append(cfg) or {"cfg": cfg},
                                   config={"lr": cfg}, inputs=[data])

    assert stage(1) == {"cfg": 1}
    assert stage(1) == {"cfg": 1} and calls == [1]  # skipped
    assert stage(2) == {"cfg": 2} and calls == [1, 2]  # config changed
    assert stage(2) == {"cfg": 2} and calls == [1, 2]
    data.write_text('{"a": 2}\n')
    assert stage(2) == {"cfg": 2} and calls == [1, 2, 2]  # input changed
    assert stage(2) == {"cfg": 2} and calls == [1, 2, 2]


def test_stage_that_now_returns_none_does_not_return_its_old_result(tmp_path):
    Run(tmp_path).stage("a", lambda: {"old": True}, config={"v": 1})
    assert Run(tmp_path).stage("a", lambda: None, config={"v": 2}) is None
    assert Run(tmp_path).stage("a", lambda: pytest.fail("ran again"), config={"v": 2}) is None


@pytest.mark.parametrize("result", [{"text": "x" * 10_000, "n": 3},
                                    {"rows": [{"i": i, "s": f"row {i}"} for i in range(2_000)]}],
                         ids=["long-string", "long-list"])
def test_long_result_comes_back_whole_on_resume(tmp_path, result):
    assert len(json.dumps(result)) > 4_000
    Run(tmp_path).stage("big", lambda: result)
    again = Run(tmp_path).stage("big", lambda: pytest.fail("ran again"))
    assert again == result
    assert "result" not in _manifest(tmp_path)["stages"]["big"]


def test_every_start_is_an_invocation_and_the_first_commit_stays(tmp_path, monkeypatch):
    monkeypatch.setattr("rewardprompt.runs.git_commit", lambda: "aaaa111")
    monkeypatch.setattr("sys.argv", ["rewardprompt", "run", "--out", str(tmp_path)])
    Run(tmp_path, config={"lr": 1e-3})
    monkeypatch.setattr("rewardprompt.runs.git_commit", lambda: "bbbb222+dirty")
    monkeypatch.setattr("sys.argv", ["rewardprompt", "run", "--out", str(tmp_path), "--resume"])
    Run(tmp_path, config={"lr": 1e-3})
    m = _manifest(tmp_path)
    assert m["git_commit"] == "aaaa111"
    assert [i["git_commit"] for i in m["invocations"]] == ["aaaa111", "bbbb222+dirty"]
    assert m["invocations"][1]["command"][-1] == "--resume"
    assert all(i["started"] for i in m["invocations"])


def test_invocations_record_the_real_git_commit(tmp_path):
    from rewardprompt.runs import git_commit

    Run(tmp_path)
    Run(tmp_path)
    m = _manifest(tmp_path)
    assert len(m["invocations"]) == 2
    assert all("git_commit" in i and i["git_commit"] == git_commit() for i in m["invocations"])
    assert m["git_commit"] == m["invocations"][0]["git_commit"]


def test_record_data_stops_a_resume_over_a_changed_file(tmp_path):
    from rewardprompt.runs import file_hash

    data = tmp_path / "pairs.jsonl"
    data.write_text('{"a": 1}\n')
    old = file_hash(data)
    Run(tmp_path / "run").record_data("source:helpful", data)
    Run(tmp_path / "run").record_data("source:helpful", data)  # the same file: fine
    data.write_text('{"a": 2}\n')
    new = file_hash(data)
    assert old != new
    with pytest.raises(ValueError) as exc:
        Run(tmp_path / "run").record_data("source:helpful", data)
    msg = str(exc.value)
    assert "source:helpful" in msg and old in msg and new in msg
    assert _manifest(tmp_path / "run")["data"]["source:helpful"]["hash"] == old
    Run(tmp_path / "other").record_data("source:helpful", data)  # a new run takes any file


def test_secrets_stay_out_of_the_stage_files(tmp_path):
    run = Run(tmp_path)
    run.stage("a", lambda: {"api_key": "sk-RESULT", "url": "https://u:sk-URL@host/x", "ok": 1},
              config={"api_key": "sk-CONFIG", "openai": {"hf_token": "sk-NESTED"}, "lr": 1e-3})
    stage_file = (tmp_path / "stages" / "a.json").read_text()
    manifest = (tmp_path / "manifest.json").read_text()
    for secret in ("sk-RESULT", "sk-URL", "sk-CONFIG", "sk-NESTED"):
        assert secret not in stage_file and secret not in manifest
    assert json.loads(stage_file)["ok"] == 1
    assert _manifest(tmp_path)["stages"]["a"]["config"]["lr"] == 1e-3


def test_a_field_added_since_at_its_default_resumes_and_otherwise_refuses(tmp_path):
    from dataclasses import dataclass, field

    @dataclass
    class Old:
        lr: float = 0.1

    @dataclass
    class New:
        lr: float = 0.1
        prompts: dict = field(default_factory=dict)

    Run(tmp_path / "r", config=Old())
    Run(tmp_path / "r", config=New())  # the new field at its default: the same run
    with pytest.raises(ValueError, match="changed: prompts"):
        Run(tmp_path / "r2", config=Old()) and Run(tmp_path / "r2", config=New(prompts={"a": "b"}))
    with pytest.raises(ValueError, match="changed: lr"):
        Run(tmp_path / "r", config=New(lr=0.2))
