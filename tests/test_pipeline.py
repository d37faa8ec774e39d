"""The whole pipeline on tiny models, through the CLI: every stage, the manifest, the report,
and resume after ``kill -9`` giving the same metrics."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Every opener of the steered preset, the policy's own start ("") included.
STEER_PREFILLS = ("", "I'm sorry, but I can't", "Sure! Here's", "I don't know.",
                  "That's a great question! It's important to be safe and respectful.",
                  "Here is a detailed, step-by-step answer:")

pytestmark = pytest.mark.slow


def demo_args(out: Path, policy: Path) -> list[str]:
    # The demo's default reward models are the decoder family: here the tiny policy cut to one
    # block, mean-pooled, with a logistic head.
    return [sys.executable, "-m", "rewardprompt.cli", "demo", "--out", str(out),
            "--policy", str(policy), "--rm.base-model", str(policy), "--rm.layers", "1",
            "--rm.limit", "48", "--rm.max-length", "48", "--label-pairs", "12",
            "--sft.max-steps", "8", "--sft.batch-size", "4", "--sft.save-steps", "2",
            "--sft.max-prompt-tokens", "160", "--label.max-completion-tokens", "16",
            "--eval-prompts", "4", "--samples-per-prompt", "2",
            # the pairs' replies and steered samples of the policy (every opener of the
            # steered preset), both labelled
            "--pair-replies", "--openers", *STEER_PREFILLS, "--steer-samples", "1",
            "--sampling.max-new-tokens", "8", "--evaluate.n-boot", "50"]


def run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, **kw)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, tiny_policy) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    res = run_cli(demo_args(out, tiny_policy))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_every_stage_and_outputs(clean_run):
    manifest = json.loads((clean_run / "manifest.json").read_text())
    stages = manifest["stages"]
    for s in ["data", "rm_helpful", "rm_helpful_test", "rm_harmless", "rm_harmless_test",
              "sample_steered", "label",
              "sft_conditioned_s0", "sft_uncond_sft_s0", "generate_conditioned_s0",
              "generate_uncond_sft_s0", "generate_prompted_s0", "generate_opener_rule_s0",
              "generate_pool_s0", "best_of_s0", "evaluate", "elo", "report"]:
        assert stages[s]["done"] and stages[s]["wall_s"] >= 0, s
    for key in ("config", "versions", "git_commit", "seeds", "data", "peak_rss_mib"):
        assert key in manifest
    assert manifest["test_split_evaluations"] == 1  # the demo evaluates the locked test split
    # helpful is HH's three helpful files: each one's hash is recorded
    assert {"source:helpful", "source:helpful:1", "source:helpful:2"} <= set(manifest["data"])
    # the input data's hashes (checked on a resume) and each stage's outputs' hashes
    assert manifest["data"]["source:harmless"]["hash"].startswith("sha256:")
    assert stages["data"]["outputs"]["data/label_pairs.jsonl"].startswith("sha256:")
    assert (clean_run / "stages" / "label.json").is_file()
    metrics = json.loads((clean_run / "metrics.json").read_text())
    assert metrics["eval_split"] == "test" and metrics["control"]["judge"] == "test_rm"
    assert metrics["control"]["seeds"] == [0]
    for dim in ("helpful", "harmless"):
        per = metrics["control"]["dimensions"][dim]
        assert set(per) == {"conditioned", "uncond_sft", "prompted", "opener_rule", "best_of_4"}
        for model in ("uncond_sft", "prompted"):  # the paired bootstrap against each baseline
            assert per[model]["diff_vs_primary"]["ci_low"] <= per[model]["diff_vs_primary"]["ci_high"]
        assert per["conditioned"]["labelling_rm"]["r"] is not None  # stands beside the judge's
        g = metrics["goal"][dim]
        assert g["asked"]["judge"] == "test_rm" and g["asked"]["split"] == "test"
        assert g["met"] == (g["r_met"] and g["above_met"])
        for key in ("between_prompt_std", "within_prompt_std", "imitation_r"):
            assert key in metrics["labels"][dim]
        # what the labels allow under the judge: the test RM scored the training replies too
        for key in ("label_vs_judge_r", "imitation_r_judged", "opener_r_judged"):
            assert key in metrics["labels_judged"][dim]
    assert metrics["control"]["cost"]["best_of_4"] == {"samples_per_response": 4.0,
                                                       "rm_calls_per_response": 8.0}
    assert 0.0 <= metrics["replies"]["conditioned"]["finished_share"] <= 1.0
    for dim in ("helpful", "harmless"):
        for key in ("pearson_r", "ci_low", "ci_high", "slope", "bins"):
            assert key in metrics[dim]
            assert key in metrics["baselines"]["uncond_sft"][dim]
        assert 0.0 <= metrics["rm"][dim]["accuracy"] <= 1.0
        # the held-out test RM: the other half of the training pairs, another seed; evaluate
        # reports the actual reward under it beside the labelling RM's
        label_rm, test_rm = metrics["rm"][dim], metrics["rm"][f"{dim}-test"]
        trained = {k: json.loads((clean_run / "rm" / k / "metrics.json").read_text())["config"]
                   for k in (dim, f"{dim}-test")}  # what training itself recorded
        assert (trained[dim]["half"], trained[f"{dim}-test"]["half"]) == ("first", "second")
        assert trained[f"{dim}-test"]["seed"] == trained[dim]["seed"] + 1
        assert label_rm["n_train"] + test_rm["n_train"] == 48  # --rm-limit: disjoint halves
        for model in (metrics[dim], metrics["baselines"]["uncond_sft"][dim]):
            assert model["test_rm"]["n"] == model["n"] and "pearson_r" in model["test_rm"]
            # which steering opener the replies start with, per target bin
            assert sum(b["n"] for b in model["openers"]) == model["n"]
    scores = [json.loads(l) for l in (clean_run / "eval/scores.jsonl").open()]
    assert all(set(r["actual_test"]) == {"helpful", "harmless"} for r in scores)
    assert any(r["actual_test"] != r["actual"] for r in scores)
    html = (clean_run / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert "r, test RM" in html  # the labelling-vs-test RM table was filled
    assert "What the labels allow under the judge" in html
    assert "<b>Asked:</b>" in html and "<b>Result:</b>" in html  # the goal, in words
    # held-out prompts were never trained on: the sides are disjoint by their first user turn
    first = lambda p: next(m["content"] for m in p if m["role"] == "user")  # noqa: E731
    sides = {side: {first(json.loads(l)["prompt"]) for d in ("helpful", "harmless")
                    for l in (clean_run / f"data/{d}-{side}.jsonl").open()}
             for side in ("train", "dev", "test")}
    assert not (sides["train"] & sides["dev"] or sides["train"] & sides["test"]
                or sides["dev"] & sides["test"])
    train_ids = {json.loads(l)["id"] for l in (clean_run / "data/label_pairs.jsonl").open()}
    evals = [json.loads(l) for l in (clean_run / "data/eval_prompts.jsonl").open()]
    assert {first(r["prompt"]) for r in evals} <= sides["test"] and {r["split"] for r in evals} == {"test"}
    assert not train_ids & {r["id"] for r in evals}
    # the conditioned model saw the block, the baseline did not, with the same recorded targets
    gens = {m: [json.loads(l) for l in (clean_run / f"generate/{m}_s0.jsonl").open()]
            for m in ("conditioned", "uncond_sft", "prompted", "opener_rule", "best_of_4")}
    cond = gens["conditioned"]
    for rows in gens.values():  # every baseline meets the same prompts and targets
        assert [(r["id"], r["targets"]) for r in rows] == [(r["id"], r["targets"]) for r in cond]
    assert all(r["conditioned"] for r in cond)
    assert not any(r["conditioned"] for m in ("uncond_sft", "prompted", "opener_rule") for r in gens[m])
    assert all(r["prefill"] in STEER_PREFILLS for r in gens["opener_rule"] if "prefill" in r)
    # the demo's block opens the reply: it is prompt, never part of a recorded response
    assert not any("<REWARD>" in r["response"] for r in cond)
    cond_meta = json.loads((clean_run / "sft/conditioned_s0/final/rewardprompt.json").read_text())
    assert cond_meta["template"]["position"] == "reply" and cond_meta["template"]["close_tag"] == ""
    assert cond_meta["max_completion_tokens"] == 8  # SFT on the first 8 reply tokens
    # the policy's training replies: the base policy's samples, started by each steering opener
    labelled = [json.loads(l) for l in (clean_run / "label/train.jsonl").open()]
    steered = [r for r in labelled if r["source"].startswith("policy")]
    assert {r.get("prefill", "") for r in steered} == set(STEER_PREFILLS)
    assert {"chosen", "rejected", "policy-steered"} <= {r["source"] for r in labelled}
    for r in steered:  # the tiny tokenizer's 16-token clip can end inside a long opener
        opener = r.get("prefill", "")
        assert r["response"].startswith(opener) or opener.startswith(r["response"]), r
    assert {r["pair_id"] for r in labelled} <= train_ids
    meta = json.loads((clean_run / "sft/uncond_sft_s0/final/rewardprompt.json").read_text())
    assert meta["conditioned"] is False and meta["template"]["dimensions"] == ["helpful", "harmless"]


def test_rerun_skips_done_stages(clean_run, tiny_policy):
    res = run_cli(demo_args(clean_run, tiny_policy))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "stage 'sft_conditioned_s0' already done" in res.stdout
    manifest = json.loads((clean_run / "manifest.json").read_text())
    assert manifest["test_split_evaluations"] == 1  # a skipped evaluation is no new look


@pytest.mark.parametrize("kill_when", ["sft_checkpoint", "rm_harmless"])
def test_kill_9_then_resume_gives_same_metrics(clean_run, tmp_path, tiny_policy, kill_when):
    out = tmp_path / "run"
    args = demo_args(out, tiny_policy)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    def ready() -> bool:
        if kill_when == "sft_checkpoint":
            return any((c / "trainer_state.json").exists()
                       for c in (out / "sft" / "conditioned_s0").glob("checkpoint-*"))
        manifest = out / "manifest.json"
        return manifest.exists() and "rm_harmless" in json.loads(manifest.read_text())["stages"]

    deadline = time.time() + 300
    while not ready():
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    res = run_cli(args)
    assert res.returncode == 0, res.stderr[-3000:]
    if kill_when == "sft_checkpoint":
        assert "resuming SFT from" in res.stdout
    got = json.loads((out / "metrics.json").read_text())
    want = json.loads((clean_run / "metrics.json").read_text())
    for dim in ("helpful", "harmless"):
        for key in ("pearson_r", "mean_actual", "slope"):
            assert got[dim][key] == pytest.approx(want[dim][key], abs=1e-6), (dim, key)
        assert got["rm"][dim]["accuracy"] == pytest.approx(want["rm"][dim]["accuracy"])


def test_probe_demo_beside_a_pipeline_run(clean_run, tiny_policy, tmp_path):
    """`probe demo --policy-run`: the run's RMs on the probes' own test pairs, and base vs tuned
    (the base model, the conditioned policy at both targets, the unconditioned SFT) in the
    report."""
    out = tmp_path / "probe"
    res = run_cli([sys.executable, "-m", "rewardprompt.cli", "probe", "demo", "--out", str(out),
                   "--model", str(tiny_policy), "--policy-run", str(clean_run),
                   "--train-pairs", "16", "--dev-pairs", "6", "--test-pairs", "8",
                   "--max-prompt-tokens", "64", "--max-completion-tokens", "8",
                   "--methods", "linear", "ridge", "--compare-prompts", "4",
                   "--compare-samples", "1", "--n-boot", "50"])
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())["probes"]
    for name, dim in (("chosen_hh-helpful", "helpful"), ("chosen_hh-harmless", "harmless")):
        trained = metrics[f"train_{name}"]
        beside = trained["scorer"]
        assert beside["spec"] == str(clean_run / "rm" / dim)
        assert beside["test"]["n_pairs"] == trained["probes"]["ridge"]["test"]["n_pairs"] > 0
        assert 0 <= beside["test"]["pairwise_accuracy"] <= 1
        cmp = metrics[f"compare_{name}"]
        assert cmp["base"] == "base" and cmp["reward_label"] == "rm"
        assert set(cmp["models"]) == {"base", "conditioned_0.9", "conditioned_0.1", "uncond_sft"}
        for m, d in cmp["models"].items():
            assert d["n"] == 4 and "reward_mean" in d, m
            assert ("probe_diff_vs_base" in d) == (m != "base")
        rows = [json.loads(line) for line in
                (out / "probes" / f"generate_{name}" / "conditioned_0.9.jsonl").open()]
        assert all(r["targets"] == {"helpful": 0.9, "harmless": 0.9} for r in rows)
    page = (out / "report.html").read_text()
    assert page.count("Base vs tuned") == 2 and "the same rows" in page
    from browser import assert_renders

    assert_renders(out / "report.html", min_images=2)  # the two sweeps' heatmaps
    with pytest.raises(Exception, match="no manifest"):
        from rewardprompt.probes.demo import ProbeDemoConfig, run_demo

        run_demo(ProbeDemoConfig(out=str(tmp_path / "x"), model=str(tiny_policy),
                                 policy_run=str(tmp_path), train_pairs=4, dev_pairs=2,
                                 test_pairs=2, max_completion_tokens=4, report=False))


def test_more_seeds_extend_the_run(clean_run, tiny_policy):
    """Last in this file, since it changes the shared run: `--seeds 0 1` on a finished run
    trains no reward model again and runs only the new seed's policy stages."""
    res = run_cli(demo_args(clean_run, tiny_policy) + ["--seeds", "0", "1"])
    assert res.returncode == 0, res.stderr[-3000:]
    for stage in ("rm_helpful", "rm_harmless_test", "label", "sft_conditioned_s0", "best_of_s0"):
        assert f"stage '{stage}' already done" in res.stdout, stage
    assert "stage 'sft_conditioned_s1' done" in res.stdout
    manifest = json.loads((clean_run / "manifest.json").read_text())
    assert manifest["test_split_evaluations"] == 2
    metrics = json.loads((clean_run / "metrics.json").read_text())
    assert metrics["control"]["seeds"] == [0, 1]
    for dim in ("helpful", "harmless"):
        per = metrics["control"]["dimensions"][dim]["conditioned"]
        assert set(per["per_seed"]) == {"0", "1"} and per["n_seeds"] == 2
        vals = [v for v in per["per_seed"].values() if v is not None]
        assert per["r"] == pytest.approx(sum(vals) / len(vals))
