"""The experiment registry: specs that compose the recipe, run end to end on tiny models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rewardprompt.cli import main
from rewardprompt.experiments import EXPERIMENTS, SCALES, Variant, get_experiment, recipe_for

#: The words the research outline names its experiments by.
OUTLINE_WORDS = ("reward-distribution", "position", "duplication", "target-vs-actual",
                 "overoptimisation", "baselines", "temperature", "split", "satisficing",
                 "sample-efficiency", "kl", "cost", "reward-mixing", "prompt-loss")


def tiny_base(path: Path, policy: Path) -> Path:
    """The demo scale cut down to the tiny policy (the pipeline test's settings)."""
    import yaml

    path.write_text(yaml.safe_dump({
        "policy": str(policy), "label_pairs": 8, "eval_prompts": 4, "samples_per_prompt": 2,
        "steer_samples": 1,
        "rm": {"base_model": str(policy), "layers": 1, "limit": 48, "max_length": 48},
        "label": {"max_completion_tokens": 12},
        "sft": {"max_steps": 6, "batch_size": 4, "save_steps": 3, "max_prompt_tokens": 160},
        "sampling": {"max_new_tokens": 8}, "evaluate": {"n_boot": 50}}))
    return path


@pytest.fixture(scope="module")
def stage_cache(tmp_path_factory) -> Path:
    """One stage cache for this file's experiments: the tiny RMs, steered samples and labels
    are made once and restored by every later experiment, as they would be for a user."""
    return tmp_path_factory.mktemp("stage-cache")


def run_tiny(name: str, tmp_path: Path, policy: Path, monkeypatch, cache: Path
             ) -> tuple[Path, dict]:
    """``experiment run NAME`` on the tiny policy with the shared stage cache: (out, result)."""
    monkeypatch.setenv("REWARDPROMPT_CACHE", str(cache))
    out = tmp_path / name
    assert main(["experiment", "run", name, "--out", str(out), "--base",
                 str(tiny_base(tmp_path / "tiny.yaml", policy))]) == 0
    return out, json.loads((out / "experiment.json").read_text())


def test_every_experiment_is_named_from_the_outline_and_builds_at_both_scales(tmp_path, capsys):
    get_experiment("position")  # registers them all
    for exp in EXPERIMENTS.values():
        assert any(word in exp.name for word in OUTLINE_WORDS), exp.name
        for scale in SCALES:
            variants = exp.variants(scale)
            assert variants and len({v.name for v in variants}) == len(variants)
            for v in variants:
                cfg = recipe_for(v, scale, tmp_path)
                assert cfg.out == str(tmp_path / "variants" / v.name)
                assert cfg.eval_split == "test" and cfg.test_rm  # the locked split, the judge
    full = recipe_for(Variant("x", {"template": {"duplicate": 4}}), "full", tmp_path)
    assert full.seeds == [0, 1, 2] and full.template.duplicate == 4 and full.eval_prompts == 100
    # The second policy size trains on the base policy's own replies: the scale's, or a --base's.
    gemma = next(v for v in get_experiment("sample-efficiency").variants("demo")
                 if v.name == "gemma3-270m")
    assert recipe_for(gemma, "demo", tmp_path).steer_policy == "smollm2-135m-instruct"
    # Its larger label size is the demo recipe's own: restored from another experiment's run.
    demo = recipe_for(Variant("recipe"), "demo", tmp_path)
    sizes = [recipe_for(v, "demo", tmp_path).label_pairs
             for v in get_experiment("sample-efficiency").variants("demo")]
    assert demo.label_pairs in sizes and min(sizes) < demo.label_pairs
    # split's 2-dims variant is the scale's recipe, its other variants differ only in the RMs.
    split = {v.name: recipe_for(v, "demo", tmp_path) for v in get_experiment("split").variants("demo")}
    two = split["2-dims"]
    assert two.data == two.prompts == demo.data and two.label_pairs == demo.label_pairs
    assert {(c.prompts == demo.data, c.eval_prompts) for c in split.values()} == {
        (True, demo.eval_prompts)}
    (tmp_path / "mine.yaml").write_text("policy: my/policy-folder\n")
    mine = recipe_for(gemma, "demo", tmp_path, base_file=str(tmp_path / "mine.yaml"))
    assert (mine.policy, mine.steer_policy) == ("gemma3-270m", "my/policy-folder")
    assert main(["experiment", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPERIMENTS)
    assert main(["experiment", "run", "no-such-thing"]) == 2
    assert "unknown experiment 'no-such-thing'" in capsys.readouterr().err


def test_spread_rows_takes_whole_prompts_from_both_ends():
    from rewardprompt.experiments.specs import spread_rows

    rows = [{"id": f"p{i // 4}", "k": i} for i in range(96)]  # 24 prompts x 4, in file order
    kept = spread_rows(rows, 48)
    ids = [r["id"] for r in kept]
    assert len(kept) == 48 and len(set(ids)) == 12 and all(ids.count(i) == 4 for i in set(ids))
    assert "p0" in ids and "p23" in ids  # not the first half only
    assert spread_rows(rows[:8], 48) == rows[:8]


def test_sample_entropy_rises_with_temperature(tiny_policy):
    from rewardprompt.experiments.specs import sample_entropy

    rows = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"Tell me about {i}."}],
             "response": "Sure, here is something about it.", "targets": {}} for i in range(4)]
    cold, warm = (sample_entropy(tiny_policy, rows, t) for t in (0.5, 2.0))
    assert cold[1] <= cold[0] <= cold[2] and warm[1] <= warm[0] <= warm[2]
    assert 0 < cold[0] < warm[0] <= np.log(1000) + 1e-6  # the tiny vocabulary bounds it


@pytest.mark.slow
def test_position_runs_end_to_end_sharing_stages(tmp_path, tiny_policy, monkeypatch, stage_cache):
    out, result = run_tiny("position", tmp_path, tiny_policy, monkeypatch, stage_cache)
    base = tmp_path / "tiny.yaml"
    assert result["experiment"] == "position" and result["seeds"] == [0]
    rows = result["table"]["rows"]
    assert {r[0] for r in rows} == {"top", "bottom", "reply"}
    assert {r[1] for r in rows} == {"conditioned"}  # no baseline at the demo scale here
    assert {r[2] for r in rows} == {"helpful", "harmless"}
    for r in rows:
        metrics = json.loads((out / "variants" / r[0] / "metrics.json").read_text())
        cell = metrics["control"]["dimensions"][r[2]][r[1]]
        assert r[3] == [cell["r"], cell["ci_low"], cell["ci_high"]]  # the recipe's own figure
    caching = result["caching"]
    # At the top the block comes before the dialogue (only the chat template's system preamble
    # is shared); at the bottom the dialogue is shared and the assistant header follows the
    # block; opening the reply, only the block itself is computed again.
    share = {p: caching[p]["share_recomputed"] for p in ("top", "bottom", "reply")}
    assert 0 < share["reply"] < share["bottom"] < share["top"] <= 1, share
    assert all(caching[p]["prompts"] == 8 for p in share)  # 4 test prompts per dimension
    # Variants share what does not depend on the block: reward models, steered samples, labels.
    second = json.loads((out / "variants" / "bottom" / "manifest.json").read_text())["stages"]
    for stage in ("rm_helpful", "rm_harmless_test", "sample_steered", "label"):
        assert second[stage].get("cached_from"), stage
    assert not second["sft_conditioned_s0"].get("cached_from")
    assert "elo" not in second  # one model: nothing to rank
    assert Path(result["figure"]).read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    assert "rewardprompt experiment: position" in page and "variants/top/report.html" in page
    from browser import assert_renders

    assert_renders(out / "report.html")
    # A rerun does no variant again; the analysis of the other specs reads the same files.
    assert main(["experiment", "run", "position", "--out", str(out), "--base", str(base)]) == 0
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert all(stages[f"variant_{v}"]["done"] for v in ("top", "bottom", "reply"))
    # After a change to an analysis: analyse what is there, and say so.
    assert main(["experiment", "run", "position", "--out", str(out), "--base", str(base),
                 "--analyse-only"]) == 0
    again = json.loads((out / "experiment.json").read_text())
    assert again["table"] == result["table"] and set(again["analysed_only"]["variants_made_by"]) \
        == {"top", "bottom", "reply"}
    assert again["configs"]["top"]["template"]["position"] == "top"
    assert main(["experiment", "run", "position", "--out", str(tmp_path / "empty"),
                 "--analyse-only"]) == 2
    from rewardprompt.experiments.specs import _cost, _overoptimisation, _target_vs_actual

    run = {"recipe": out / "variants" / "reply"}
    tva = _target_vs_actual(run)
    assert set(tva["binned"]["helpful"]) == {"conditioned"}
    n_rows = sum(1 for line in (run["recipe"] / "eval" / "scores.jsonl").open()
                 if json.loads(line)["model"] == "conditioned")
    assert sum(b[4] for b in tva["binned"]["helpful"]["conditioned"]) == n_rows
    over = _overoptimisation(run)
    assert set(over["labelling_minus_test_mean_reward"]) == {"helpful", "harmless"}
    cost = _cost(run)
    assert any(r[0] == "sft_conditioned_s0" and r[1] > 0 for r in cost["table"]["rows"])
    from rewardprompt.experiments.specs import _kl, _reward_distribution

    dist = _reward_distribution(run, max_pairs=20)
    n_labels = sum(1 for _ in (run["recipe"] / "label" / "train.jsonl").open())
    for dim in ("helpful", "harmless"):
        cell = dist["dimensions"][dim]
        assert len(cell["chosen"]) == len(cell["rejected"]) == cell["pairs"] == 20
        assert len(cell["labels"]) == n_labels and all(0 <= v <= 1 for v in cell["chosen"])
    kl = _kl(run)
    cond = kl["models"]["conditioned"]
    assert cond["n"] > 0 and all(p["kl"] >= -1e-6 for p in cond["replies"])
    assert cond["kl_per_reply"][0] > 0  # six LoRA steps moved the policy off its base

    # reward-mixing: its own stages beside the recipe's (the recipe itself from the cache).
    mix_out = tmp_path / "mixing"
    assert main(["experiment", "run", "reward-mixing", "--out", str(mix_out), "--base",
                 str(base)]) == 0
    mixing = json.loads((mix_out / "experiment.json").read_text())
    grid = [json.loads(line) for line in (mix_out / "mixing" / "grid.jsonl").open()]
    assert len(grid) == 9 * 8 and len(mixing["points"]) == 10  # 3 x 3 targets, the mix policy
    assert mixing["chosen_by_labelling_rm"] in mixing["points"]
    labels = [json.loads(line) for line in (mix_out / "mixing" / "mix_labels.jsonl").open()]
    source = [json.loads(line) for line in
              (mix_out / "variants" / "recipe" / "label" / "train.jsonl").open()]
    assert [r["rewards"]["mix"] for r in labels] == pytest.approx(
        [(2 * r["rewards"]["helpful"] + 3 * r["rewards"]["harmless"]) / 5 for r in source], abs=1e-4)
    mixed = [json.loads(line) for line in (mix_out / "mixing" / "mix_policy.jsonl").open()]
    assert {json.dumps(r["targets"]) for r in mixed} == {'{"mix": 0.9}'}
    d = mixing["chosen_minus_mix_policy_test_rm"]
    assert d["ci_low"] <= d["diff"] <= d["ci_high"]


@pytest.mark.slow
def test_split_runs_one_to_four_dimensions(tmp_path, tiny_policy, monkeypatch, stage_cache):
    out, result = run_tiny("split", tmp_path, tiny_policy, monkeypatch, stage_cache)
    dims = {}
    for row in result["table"]["rows"]:
        dims.setdefault(row[0], set()).add(row[3])
        assert row[1] == len(json.loads((out / "variants" / row[0] / "manifest.json").read_text())
                             ["config"]["data"])
    assert dims == {"1-combined": {"combined"}, "2-dims": {"helpful", "harmless"},
                    "3-dims": {"helpful_base", "helpful_online", "harmless"},
                    "4-dims": {"helpful_base", "helpful_online", "helpful_rs", "harmless"}}
    # The same training and test prompts in every variant, so the same steered replies: made
    # once, restored by the other variants, labelled by each variant's own reward models.
    runs = [out / "variants" / name for name in dims]
    for f in ("data/label_pairs.jsonl", "data/eval_prompts.jsonl", "generate/steered.jsonl"):
        assert len({(run / f).read_bytes() for run in runs}) == 1, f
    made = [run for run in runs if "cached_from" not in json.loads(
        (run / "manifest.json").read_text())["stages"]["sample_steered"]]
    assert len(made) <= 1
    labels = {run.name: [json.loads(line) for line in (run / "label/train.jsonl").open()]
              for run in runs}
    assert {len(rows) for rows in labels.values()} == {len(labels["2-dims"])}
    assert set(labels["4-dims"][0]["rewards"]) == dims["4-dims"]
    assert set(result["judges"]["4-dims"].values()) == {"test_rm"}


@pytest.mark.slow
def test_baselines_train_chosen_best_of_n_and_dpo(tmp_path, tiny_policy, monkeypatch, stage_cache):
    out, result = run_tiny("baselines", tmp_path, tiny_policy, monkeypatch, stage_cache)
    models = result["models"]
    assert set(models) == {"conditioned", "uncond_sft", "chosen_sft", "best_of_n_sft", "dpo"}
    n = models["conditioned"]["n"]
    for m, cell in models.items():
        assert cell["n"] == n, m  # the same prompts and samples per prompt
        assert cell["kl_per_reply"] >= -1e-6 and cell["entropy_per_token"][0] > 0
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    dpo = json.loads((out / stages["baselines_dpo"]["result_file"]).read_text())
    assert dpo["steps"] == 6 and dpo["pairs"] > 0
    # as many sequences per step as the SFT baselines (batch 4): two pairs of two replies
    assert stages["baselines_dpo"]["config"]["batch_size"] == 2
    assert stages["baselines_chosen_sft"]["config"]["batch_size"] == 4
    # best-of-n SFT trains on each prompt's top labelled reply.
    labels = [json.loads(line) for line in
              (out / "variants" / "recipe" / "label" / "train.jsonl").open()]
    top = [json.loads(line) for line in (out / "baselines" / "best_of_n_sft.jsonl").open()]
    best = {}
    for r in labels:
        k = json.dumps(r["prompt"], sort_keys=True)
        if k not in best or np.mean(list(r["rewards"].values())) > np.mean(
                list(best[k]["rewards"].values())):
            best[k] = r
    assert sorted(r["response"] for r in top) == sorted(r["response"] for r in best.values())


@pytest.mark.slow
def test_prompt_loss_trains_with_each_weight(tmp_path, tiny_policy, monkeypatch, stage_cache):
    out, result = run_tiny("prompt-loss", tmp_path, tiny_policy, monkeypatch, stage_cache)
    assert {r[0] for r in result["table"]["rows"]} == {"w0", "w0.01", "w0.1"}
    losses = {}
    for w in ("0", "0.01", "0.1"):
        policy = out / "variants" / f"w{w}" / "sft" / "conditioned_s0" / "final"
        meta = json.loads((policy / "rewardprompt.json").read_text())
        assert meta["config"]["prompt_loss_weight"] == float(w)
        losses[w] = json.loads((policy / "sft_metrics.json").read_text())["first_loss"]
    assert len(set(losses.values())) == 3  # the weight changes what is trained


@pytest.mark.slow
def test_satisficing_trains_on_thresholds_beside_exact(tmp_path, tiny_policy, monkeypatch,
                                                       stage_cache):
    out, result = run_tiny("satisficing", tmp_path, tiny_policy, monkeypatch, stage_cache)
    rows = result["table"]["rows"]
    assert {(r[0], r[1]) for r in rows} == {(v, a) for v in ("trained_exact", "trained_at_least")
                                           for a in ("at_least_0.7", "exact_0.7_to_1")}
    for r in rows:
        assert 0 <= r[4][0] <= 1 and r[6][0] > 0  # share met; entropy of what was sampled
    meta = json.loads((out / "variants" / "trained_at_least" / "sft" / "conditioned_s0" / "final"
                       / "rewardprompt.json").read_text())
    assert meta["config"]["targets"] == "at_least"
    assert set(result["entropy_per_token"]) == {"trained_exact", "trained_at_least"}
