"""Your own data, one dimension: the whole recipe through one command, and the same run made
stage by stage, each to a report with every section filled."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
TOPICS = ["bread", "tea", "bikes", "maps", "rain", "chess"]


def write_pairs(path: Path, n: int = 60) -> Path:
    """Generic preference rows of one dimension ("quality"): a longer, politer reply wins."""
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        rows.append({"prompt": f"Tell me about {topic}, please ({i}).",
                     "chosen": f"Sure! Here's what I know about {topic}: it is interesting.",
                     "rejected": "No."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    res = subprocess.run([sys.executable, "-m", "rewardprompt.cli", *args], capture_output=True,
                         text=True, env=env, timeout=600, cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def assert_report_complete(run: Path) -> None:
    html = (run / "report.html").read_text()
    assert "not available" not in html, [line for line in html.split("<h2>") if "not available"
                                         in line][:3]
    assert html.count("data:image/png;base64,") >= 3  # target vs actual, labels, Elo
    for heading in ("Goal", "Control against the baselines", "Controllability",
                    "Openers by target", "Training labels",
                    "Reward-model accuracy", "Labelling RM vs held-out test RM", "Elo ratings",
                    "Stage wall times", "Example generations", "Config", "Provenance"):
        assert f"<h2>{heading}" in html, heading


def test_own_data_one_dimension_one_command(tmp_path, tiny_policy):
    pairs = write_pairs(tmp_path / "mine.jsonl")
    (tmp_path / "my.yaml").write_text(f"""
include: demo
out: {tmp_path / 'run'}
data: {{quality: {pairs}}}
policy: {tiny_policy}
label_pairs: 12
eval_prompts: 4
samples_per_prompt: 2
openers: ["Sure! Here's", "No."]
steer_samples: 1
rm: {{base_model: {tiny_policy}, layers: 1, max_length: 48}}
label: {{max_completion_tokens: 16}}
sft: {{max_steps: 4, batch_size: 4, save_steps: 2, max_prompt_tokens: 96}}
sampling: {{max_new_tokens: 8}}
evaluate: {{n_boot: 50}}
""")
    cli("run", "--config", str(tmp_path / "my.yaml"), cwd=tmp_path)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dimensions"] == ["quality"]
    assert set(metrics["rm"]) == {"quality", "quality-test"}
    meta = json.loads((run / "sft/conditioned_s0/final/rewardprompt.json").read_text())
    assert meta["template"]["dimensions"] == ["quality"]
    # the steered samples of the base policy record no target for a dimension it never saw
    steered = [json.loads(line) for line in (run / "generate/steered.jsonl").open()]
    assert all(r["targets"] == {} for r in steered)
    assert_report_complete(run)


def test_a_run_made_stage_by_stage_gets_a_complete_report(tmp_path, tiny_policy):
    """Each standalone stage, given --run, records itself in the run's manifest and writes its
    part of metrics.json; the template and dimensions come from the labels and the policy."""
    pairs = write_pairs(tmp_path / "mine.jsonl")
    run = tmp_path / "run"
    cli("data", "split", str(pairs), "--out", str(tmp_path / "split"), "--dev-fraction", "0",
        cwd=tmp_path)
    split = tmp_path / "split"
    for name, half, seed in (("quality", "first", "0"), ("quality-test", "second", "1")):
        cli("rm", "train", "--data", str(split / "train.jsonl"), "--run", str(run),
            "--out", str(run / "rm" / name), "--eval-data", str(split / "test.jsonl"),
            "--test-fraction", "0", "--half", half, "--seed", seed, "--family", "decoder",
            "--base-model", str(tiny_policy), "--layers", "1", "--pooling", "mean",
            "--max-length", "48", cwd=tmp_path)
    cli("generate", "--prompts", str(split / "train_prompts.jsonl"), "--model", str(tiny_policy),
        "--run", str(run), "--label", "steered", "--conditioned", "False", "--samples-per-prompt",
        "1", "--prefills", "Sure! Here's", "No.", "--sampling.max-new-tokens", "8", cwd=tmp_path)
    cli("label", "--samples", str(run / "generate/steered.jsonl"), "--scorers", "quality",
        str(run / "rm/quality"), "--run", str(run), "--policy", str(tiny_policy),
        "--max-completion-tokens", "16", cwd=tmp_path)
    for conditioned in ("--conditioned", "--no-conditioned"):
        cli("sft", "--run", str(run), "--model", str(tiny_policy), conditioned,
            "--max-steps", "4", "--batch-size", "4", "--save-steps", "2",
            "--max-prompt-tokens", "96", "--template", "position", "reply", cwd=tmp_path)
    for name in ("conditioned", "uncond_sft"):
        cli("generate", "--prompts", str(split / "test_prompts.jsonl"), "--run", str(run),
            "--model", str(run / "sft" / name / "final"), "--label", name,
            "--samples-per-prompt", "2", "--sampling.max-new-tokens", "8", cwd=tmp_path)
    cli("evaluate", "--run", str(run), "--scorers", "quality", str(run / "rm/quality"),
        "--test-scorers", "quality", str(run / "rm/quality-test"), "--openers", "Sure! Here's",
        "No.", "--n-boot", "50", cwd=tmp_path)
    cli("elo", "--run", str(run), "--judge", str(run / "rm/quality"), "--n-boot", "50",
        cwd=tmp_path)
    cli("report", str(run), cwd=tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"rm_train_quality", "rm_train_quality-test", "generate_steered", "label",
            "sft_conditioned", "sft_uncond_sft", "generate_conditioned", "generate_uncond_sft",
            "evaluate", "elo"} <= set(manifest["stages"])
    meta = json.loads((run / "sft/conditioned/final/rewardprompt.json").read_text())
    assert meta["template"]["dimensions"] == ["quality"]  # from the labels
    assert_report_complete(run)
