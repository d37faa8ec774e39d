"""A malformed intermediate file stops its stage at once, naming the file, the line and the field.

Each test feeds one bad row among good ones through the command line and checks the one-line
message (return code 2, no traceback), that the stage failed before loading a tokenizer, a model,
a scorer or a sampling backend, and that it left no output behind.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewardprompt.cli import main

PROMPT = [{"role": "user", "content": "How do I bake bread?"}]


def _jsonl(path: Path, rows: list[dict | None]) -> Path:
    """Write rows, one a line; None writes a blank line (it still counts in line numbers)."""
    path.write_text("".join("\n" if r is None else json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fail the test if a stage gets as far as loading anything heavy."""
    import rewardprompt.sampling
    import rewardprompt.labelling
    import rewardprompt.models
    import rewardprompt.rewards.scorer

    def forbidden(*args, **kwargs):
        raise AssertionError("the stage loaded a model before it checked its input")

    for module, name in [(rewardprompt.models, "load_tokenizer"),
                         (rewardprompt.models, "load_policy"),
                         (rewardprompt.rewards.scorer, "load_scorer"),
                         (rewardprompt.labelling, "scorer_for"),
                         (rewardprompt.sampling, "get_backend")]:
        monkeypatch.setattr(module, name, forbidden)


def _fails(capsys, argv: list[str], file: Path, line: int, field: str) -> str:
    """Run the CLI, expect the DataError line for ``file``/``line``/``field``; its reason."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    prefix = f"rewardprompt {argv[0]}: error: {file}, line {line}, field '{field}': "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix):]


def _no_stage_done(run: Path) -> None:
    """The run's manifest records the stage as started, never as done."""
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert stages and not any(s.get("done") for s in stages.values()), stages


# ---------------------------------------------------------------- label
def _pair(i: int, **drop) -> dict:
    row = {"id": i, "prompt": PROMPT, "chosen": "Mix flour and water, then bake it.",
           "rejected": "No."}
    return {k: v for k, v in row.items() if k not in drop}


def test_label_pairs_row_without_rejected(tmp_path, capsys, tiny_policy, no_heavy_work):
    pairs = _jsonl(tmp_path / "pairs.jsonl",
                   [_pair(0), _pair(1), None, _pair(2, rejected=True), _pair(3)])
    out = tmp_path / "train.jsonl"
    reason = _fails(capsys, ["label", "--pairs", str(pairs), "--scorers", "length",
                             "synthetic:length:10", "--policy", str(tiny_policy),
                             "--out", str(out)],
                    pairs, 4, "rejected")  # the blank line 3 counts
    assert "missing field" in reason and "preference pairs" in reason
    assert not out.exists()


def test_label_samples_row_without_response(tmp_path, capsys, tiny_policy, no_heavy_work):
    pairs = _jsonl(tmp_path / "pairs.jsonl", [_pair(0), _pair(1)])
    samples = _jsonl(tmp_path / "samples.jsonl",
                     [{"id": 0, "prompt": PROMPT, "response": "Bake it."},
                      {"id": 1, "prompt": PROMPT},
                      {"id": 2, "prompt": PROMPT, "response": "Knead it."}])
    run = tmp_path / "run"
    reason = _fails(capsys, ["label", "--pairs", str(pairs), "--samples", str(samples),
                             "--scorers", "length", "synthetic:length:10",
                             "--policy", str(tiny_policy), "--run", str(run)],
                    samples, 2, "response")
    assert "policy samples" in reason
    assert not (run / "label").exists() and not (run / "metrics.json").exists()
    _no_stage_done(run)


def test_label_good_files_pass(tmp_path, capsys, tiny_policy):
    """The rows the label tests surround a bad one with are good ones."""
    pairs = _jsonl(tmp_path / "pairs.jsonl", [_pair(0), _pair(1), None, _pair(3)])
    out = tmp_path / "train.jsonl"
    assert main(["label", "--pairs", str(pairs), "--scorers", "length", "synthetic:length:10",
                 "--policy", str(tiny_policy), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 6


# ---------------------------------------------------------------- sft
def _labelled(rewards: dict | None) -> dict:
    row = {"id": "0:chosen", "prompt": PROMPT, "response": "Bake it."}
    return row if rewards is None else {**row, "rewards": rewards}


def test_sft_row_without_rewards(tmp_path, capsys, tiny_policy, no_heavy_work):
    data = _jsonl(tmp_path / "train.jsonl",
                  [_labelled({"helpful": 0.2}), _labelled(None), _labelled({"helpful": 0.9})])
    out = tmp_path / "sft"
    reason = _fails(capsys, ["sft", "--data", str(data), "--model", str(tiny_policy),
                             "--out", str(out), "--max-steps", "1"], data, 2, "rewards.helpful")
    assert "labelled replies with rewards for helpful" in reason
    assert not out.exists()


def test_sft_conditioned_on_rows_without_any_rewards(tmp_path, capsys, tiny_policy, no_heavy_work):
    data = _jsonl(tmp_path / "train.jsonl", [_labelled(None), _labelled(None)])
    out = tmp_path / "sft"
    reason = _fails(capsys, ["sft", "--data", str(data), "--model", str(tiny_policy),
                             "--out", str(out), "--max-steps", "1"], data, 1, "rewards")
    assert "--no-conditioned for plain SFT" in reason
    assert not out.exists()


def test_plain_sft_needs_no_rewards(tmp_path, tiny_policy):
    """Unconditioned SFT is ordinary SFT: prompt-response rows without rewards train as they are."""
    data = _jsonl(tmp_path / "train.jsonl", [_labelled(None)] * 4)
    out = tmp_path / "sft"
    assert main(["sft", "--data", str(data), "--model", str(tiny_policy), "--out", str(out),
                 "--no-conditioned", "--max-steps", "1", "--batch-size", "2"]) == 0
    metrics = json.loads((out / "final" / "sft_metrics.json").read_text())
    assert metrics["steps"] == 1 and metrics["conditioned"] is False


def test_sft_conditioned_row_without_a_dimension_of_the_first(tmp_path, capsys, tiny_policy,
                                                             no_heavy_work):
    run = tmp_path / "run"
    (run / "label").mkdir(parents=True)
    both = {"helpful": 0.2, "harmless": 0.7}
    data = _jsonl(run / "label" / "train.jsonl",
                  [_labelled(both), _labelled(both), _labelled({"helpful": 0.5}), _labelled(both)])
    reason = _fails(capsys, ["sft", "--run", str(run), "--model", str(tiny_policy),
                             "--max-steps", "1"], data, 3, "rewards.harmless")
    assert "helpful, harmless" in reason
    assert not (run / "sft").exists() and not (run / "metrics.json").exists()
    _no_stage_done(run)


def test_sft_conditioned_row_without_a_template_dimension(tmp_path, capsys, tiny_policy,
                                                         no_heavy_work):
    data = _jsonl(tmp_path / "train.jsonl",
                  [_labelled({"helpful": 0.2, "length": 0.4}), _labelled({"helpful": 0.3}),
                   _labelled({"helpful": 0.9, "length": 0.1})])
    out = tmp_path / "sft"
    reason = _fails(capsys, ["sft", "--data", str(data), "--model", str(tiny_policy),
                             "--out", str(out), "--template", "dimensions", "length",
                             "--max-steps", "1"], data, 2, "rewards.length")
    assert "missing field" in reason
    assert not out.exists()


def test_sft_reward_of_the_wrong_type(tmp_path, capsys, tiny_policy, no_heavy_work):
    data = _jsonl(tmp_path / "train.jsonl",
                  [_labelled({"helpful": 0.2}), _labelled({"helpful": 1}),
                   _labelled({"helpful": "high"})])
    out = tmp_path / "sft"
    reason = _fails(capsys, ["sft", "--data", str(data), "--model", str(tiny_policy),
                             "--out", str(out)], data, 3, "rewards.helpful")
    assert "expected a number" in reason
    assert not out.exists()


# ---------------------------------------------------------------- generate
@pytest.mark.parametrize("bad, reason", [
    ({"id": 1}, "missing field"),
    ({"id": 1, "prompt": "How do I bake bread?"}, "non-empty list of {role, content} messages"),
    ({"id": 1, "prompt": []}, "non-empty list of {role, content} messages"),
    ({"id": 1, "prompt": [{"role": "user"}]}, "message 0 is not a {role, content} object"),
])
def test_generate_bad_prompt_row(tmp_path, capsys, tiny_policy, no_heavy_work, bad, reason):
    prompts = _jsonl(tmp_path / "prompts.jsonl",
                     [{"id": 0, "prompt": PROMPT}, {"id": 2, "prompt": PROMPT}, bad,
                      {"id": 3, "prompt": PROMPT}])
    out = tmp_path / "gen.jsonl"
    assert reason in _fails(capsys, ["generate", "--prompts", str(prompts),
                                     "--model", str(tiny_policy), "--out", str(out),
                                     "--samples-per-prompt", "1"], prompts, 3, "prompt")
    assert not out.exists()


# ---------------------------------------------------------------- evaluate
def _generation(i: int, targets: dict | None = None, **drop) -> dict:
    row = {"id": i, "model": "conditioned", "prompt": PROMPT, "response": "Bake it for an hour.",
           "targets": {"length": 0.5} if targets is None else targets, "n_tokens": 6}
    return {k: v for k, v in row.items() if k not in drop}


def _evaluate_argv(files: list[Path], out: Path) -> list[str]:
    return ["evaluate", "--generations", *map(str, files), "--scorers", "length",
            "synthetic:length:10", "--out", str(out), "--n-boot", "10"]


def test_evaluate_row_without_the_target_of_a_scorer(tmp_path, capsys, no_heavy_work):
    good = _jsonl(tmp_path / "a.jsonl", [_generation(0), _generation(1)])
    bad = _jsonl(tmp_path / "b.jsonl",
                 [_generation(2), _generation(3), _generation(4, {"helpful": 0.5}),
                  _generation(5)])
    out = tmp_path / "eval_out"
    reason = _fails(capsys, _evaluate_argv([good, bad], out), bad, 3, "targets.length")
    assert "generations" in reason
    assert not out.exists()


def test_evaluate_row_without_response(tmp_path, capsys, no_heavy_work):
    gens = _jsonl(tmp_path / "gen.jsonl",
                  [_generation(0), _generation(1, response=True), _generation(2)])
    out = tmp_path / "eval_out"
    _fails(capsys, _evaluate_argv([gens], out), gens, 2, "response")
    assert not out.exists()


def test_evaluate_good_files_pass(tmp_path, capsys):
    """The rows the evaluate tests surround a bad one with are good ones."""
    gens = _jsonl(tmp_path / "gen.jsonl", [_generation(i) for i in range(4)])
    out = tmp_path / "eval_out"
    assert main(_evaluate_argv([gens], out)) == 0
    assert len((out / "eval" / "scores.jsonl").read_text().splitlines()) == 4
