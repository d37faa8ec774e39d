"""Seed-and-prompt bootstrap, satisficing, the baselines (best-of-N, opener rule), target draws,
the system-message budget of fit_prompt, label spread, the recipe's data split, its validation
and resumable run configs."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from rewardprompt import runs
from rewardprompt.evaluation.baselines import (BestOfConfig, best_of_n, best_of_n_list, check_baselines,
                                               opener_means, run_best_of)
from rewardprompt.evaluation.metrics import satisficing, seed_prompt_bootstrap
from rewardprompt.labelling import imitation_bound, judged_bounds, label_spread
from rewardprompt.runs import Run, read_jsonl, write_jsonl
from rewardprompt.sampling import draw_targets, nearest_opener, targets_in_words
from rewardprompt.template import RewardTemplate, Target


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------- seed_prompt_bootstrap
N_GROUPS, PER_GROUP = 40, 4


def _cell(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = np.repeat(np.arange(N_GROUPS), PER_GROUP)
    t = rng.random(g.size)
    if kind == "exact":
        y = t.copy()
    elif kind == "good":
        y = np.clip(t + 0.15 * rng.standard_normal(g.size), 0, 1)
    else:  # noise: independent of the target
        y = rng.random(g.size)
    return t, y, g


@pytest.fixture(scope="module")
def cells() -> dict:
    rng = np.random.default_rng(123)
    return {kind: {s: _cell(rng, kind) for s in (0, 1, 2)} for kind in ("exact", "good", "noise")}


def test_exact_model_has_r_one_and_a_degenerate_ci(cells):
    out = seed_prompt_bootstrap(cells, N_GROUPS, primary="good", n_boot=300, seed=0)
    exact = out["exact"]
    assert exact["r"] == pytest.approx(1.0, abs=1e-12)
    assert exact["ci_low"] == pytest.approx(1.0, abs=1e-9)
    assert exact["ci_high"] == pytest.approx(1.0, abs=1e-9)
    assert exact["n_seeds"] == 3 and exact["n_boot"] == 300


def test_noise_model_r_near_zero_and_primary_beats_it(cells):
    out = seed_prompt_bootstrap(cells, N_GROUPS, primary="good", n_boot=400, seed=0)
    noise, good = out["noise"], out["good"]
    assert abs(noise["r"]) < 0.15
    assert noise["ci_low"] < 0 < noise["ci_high"]
    assert good["r"] > 0.7
    assert "diff_vs_primary" not in good  # the primary is not compared with itself
    diff = noise["diff_vs_primary"]
    assert diff["diff"] == pytest.approx(good["r"] - noise["r"])
    assert 0 < diff["ci_low"] <= diff["diff"] <= diff["ci_high"]
    # exact beats the primary: the difference (primary minus model) is negative
    assert out["exact"]["diff_vs_primary"]["ci_high"] < 0


def test_one_seed_r_is_scipy_pearson(cells):
    x, y, g = cells["good"][1]
    out = seed_prompt_bootstrap({"good": {1: (x, y, g)}}, N_GROUPS, n_boot=200, seed=0)
    want = stats.pearsonr(x, y).statistic
    assert out["good"]["r"] == pytest.approx(want, abs=1e-12)
    assert out["good"]["per_seed"] == {"1": pytest.approx(want, abs=1e-12)}
    assert out["good"]["ci_low"] < want < out["good"]["ci_high"]
    assert out["good"]["n_seeds"] == 1


def test_three_seeds_r_is_the_mean_of_per_seed_r(cells):
    out = seed_prompt_bootstrap({"good": cells["good"]}, N_GROUPS, n_boot=200, seed=0)["good"]
    per = [stats.pearsonr(*cells["good"][s][:2]).statistic for s in (0, 1, 2)]
    assert len(set(np.round(per, 6))) == 3  # the seeds really differ
    assert set(out["per_seed"]) == {"0", "1", "2"}
    for s in (0, 1, 2):
        assert out["per_seed"][str(s)] == pytest.approx(per[s], abs=1e-12)
    assert out["r"] == pytest.approx(float(np.mean(per)), abs=1e-12)


def test_bootstrap_is_deterministic_per_seed(cells):
    a = seed_prompt_bootstrap(cells, N_GROUPS, primary="good", n_boot=200, seed=7)
    b = seed_prompt_bootstrap(cells, N_GROUPS, primary="good", n_boot=200, seed=7)
    c = seed_prompt_bootstrap(cells, N_GROUPS, primary="good", n_boot=200, seed=8)
    for m in ("good", "noise"):
        assert (a[m]["ci_low"], a[m]["ci_high"]) == (b[m]["ci_low"], b[m]["ci_high"])
    assert a["noise"]["diff_vs_primary"] == b["noise"]["diff_vs_primary"]
    assert (a["noise"]["ci_low"], a["noise"]["ci_high"]) != (c["noise"]["ci_low"], c["noise"]["ci_high"])


def test_constant_seed_is_none_and_left_out_of_the_mean(cells):
    x, y, g = cells["good"][0]
    per = {0: (x, y, g), 1: (x, np.full_like(y, 0.5), g)}
    out = seed_prompt_bootstrap({"m": per}, N_GROUPS, n_boot=100, seed=0)["m"]
    assert out["per_seed"]["1"] is None
    assert out["r"] == pytest.approx(stats.pearsonr(x, y).statistic)


# ---------------------------------------------------------------- satisficing
def test_a_ready_scorer_dimension_is_judged_by_itself_beside_test_rms():
    """A dimension labelled by a ready scorer (synthetic:length) has no held-out test RM: its r
    is its scorer's, said so per dimension, while the others keep their test RM's."""
    from rewardprompt.evaluation.controllability import EvaluateConfig, control_over_seeds, judge_of

    rng = np.random.default_rng(0)
    rows = []
    for p in range(12):
        for _ in range(4):
            t = {"helpful": rng.random(), "length": rng.random()}
            rows.append({"id": p, "model": "conditioned", "seed": 0, "targets": t,
                         "actual": {"helpful": rng.random(), "length": t["length"]},
                         "actual_test": {"helpful": t["helpful"]}})
    cfg = EvaluateConfig(scorers={"helpful": "rm", "length": "synthetic:length"},
                         test_scorers={"helpful": "rm-test"}, n_boot=50)
    control = control_over_seeds(rows, cfg)
    assert control["judges"] == {"helpful": "test_rm", "length": "labelling_rm"}
    assert judge_of(control, "length") == "labelling_rm" and judge_of(control, "helpful") == "test_rm"
    helpful, length = (control["dimensions"][d]["conditioned"] for d in ("helpful", "length"))
    assert helpful["r"] == pytest.approx(1.0) and abs(helpful["labelling_rm"]["r"]) < 0.5
    assert length["r"] == pytest.approx(1.0) and "labelling_rm" not in length
    assert judge_of({"judge": "test_rm"}, "helpful") == "test_rm"  # metrics from before judges


def test_satisficing_share_and_mean():
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(30), 3)
    actuals = rng.random(groups.size)
    actuals[:4] = 0.6  # exactly at the threshold: met (>=)
    thresholds = np.full(groups.size, 0.6)
    out = satisficing(thresholds, actuals, groups, n_boot=300, seed=0)
    assert out["n"] == groups.size
    assert out["share_met"] == pytest.approx(float(np.mean(actuals >= 0.6)))
    assert out["share_met"] > float(np.mean(actuals > 0.6))  # the ties count as met
    assert out["mean_actual"] == pytest.approx(float(actuals.mean()))
    assert out["share_ci_low"] <= out["share_met"] <= out["share_ci_high"]
    assert out["share_ci_low"] < out["share_ci_high"]
    assert out["mean_ci_low"] <= out["mean_actual"] <= out["mean_ci_high"]
    # per-row thresholds are compared row by row
    out2 = satisficing(np.array([0.1, 0.9, 0.5]), np.array([0.2, 0.8, 0.5]), np.arange(3),
                       n_boot=50, seed=0)
    assert out2["share_met"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------- baselines
def test_check_baselines_and_best_of_n():
    assert best_of_n("best_of_16") == 16
    assert best_of_n("best_of_0") is None and best_of_n("best_of_04") is None
    assert best_of_n("best_of_x") is None and best_of_n("prompted") is None
    assert best_of_n_list(["best_of_16", "uncond_sft", "best_of_4", "best_of_4"]) == [4, 16]
    check_baselines(["uncond_sft", "prompted", "opener_rule", "best_of_4"])
    check_baselines([])
    with pytest.raises(ValueError, match="unknown baseline"):
        check_baselines(["uncond_sft", "best_of_sixteen"])
    with pytest.raises(ValueError, match="unknown baseline"):
        check_baselines(["best_of_0", "uncond_sft"])
    with pytest.raises(ValueError, match="add uncond_sft"):
        check_baselines(["prompted", "best_of_4"])


def test_opener_means(tmp_path):
    rows = [{"prompt": _user("q1"), "response": "Sure, a", "prefill": "Sure",
             "rewards": {"helpful": 0.8, "harmless": 0.4}},
            {"prompt": _user("q2"), "response": "Sure, b", "prefill": "Sure",
             "rewards": {"helpful": 0.6, "harmless": 0.2}},
            {"prompt": _user("q1"), "response": "Sorry", "prefill": "Sorry",
             "rewards": {"helpful": 0.1, "harmless": 0.9}},
            {"prompt": _user("q3"), "response": "plain", "rewards": {"helpful": 0.0, "harmless": 0.0}},
            {"prompt": _user("q3"), "response": "Other x", "prefill": "Other",
             "rewards": {"helpful": 1.0, "harmless": 1.0}}]
    path = write_jsonl(tmp_path / "labels.jsonl", rows)
    got = opener_means(path, ["Sure", "Sorry", "Never"], ["helpful", "harmless"])
    assert got == {"Sure": {"helpful": pytest.approx(0.7), "harmless": pytest.approx(0.3)},
                   "Sorry": {"helpful": pytest.approx(0.1), "harmless": pytest.approx(0.9)}}
    assert "Never" not in got and "Other" not in got


def score_a(prompts, responses):
    """The float after 'a=' in the response."""
    return [float(re.search(r"a=([0-9.]+)", r).group(1)) for r in responses]


def score_b(prompts, responses):
    return [float(re.search(r"b=([0-9.]+)", r).group(1)) for r in responses]


def _gen_row(pid: str, response: str, targets: dict, n_tokens: int = 3, model: str = "uncond_sft") -> dict:
    return {"id": pid, "model": model, "prompt": _user(f"prompt {pid}"), "response": response,
            "targets": targets, "n_tokens": n_tokens, "finished": True, "seed": 0}


def _pool_row(pid: str, a: float, extra: str = "") -> dict:
    return _gen_row(pid, f"a={a}{extra}", {"a": 0.5}, n_tokens=int(round(a * 100)))


def test_best_of_picks_nearest_from_own_or_shared_pool(tmp_path):
    targets = [_gen_row("p1", "t0", {"a": 0.28}), _gen_row("p2", "t", {"a": 0.5}),
               _gen_row("p1", "t1", {"a": 0.8})]
    pool = ([_pool_row("p1", a) for a in (0.15, 0.95, 0.3, 0.7)]
            + [_pool_row("p2", a) for a in (0.1, 0.45, 0.9, 0.52)])
    write_jsonl(tmp_path / "targets.jsonl", targets)
    write_jsonl(tmp_path / "pool.jsonl", pool)
    cfg = BestOfConfig(targets=str(tmp_path / "targets.jsonl"), pool=str(tmp_path / "pool.jsonl"),
                       scorers={"a": "test_control:score_a"}, n=[1, 2, 4],
                       out=str(tmp_path / "best_of_{n}.jsonl"))
    summary = run_best_of(cfg)
    # (prompt, target) -> the pick for N = 1, 2, 4. p1 has 2 rows and 4 samples: each row has its
    # own N for N <= 2; for N = 4 both pick from the same 4. p2 has 1 row: always its own N.
    want = {("p1", 0.28): {1: 0.15, 2: 0.15, 4: 0.3},
            ("p1", 0.8): {1: 0.95, 2: 0.7, 4: 0.7},
            ("p2", 0.5): {1: 0.1, 2: 0.45, 4: 0.52}}
    independent = {1: {"p1": True, "p2": True}, 2: {"p1": True, "p2": True},
                   4: {"p1": False, "p2": True}}
    for n in (1, 2, 4):
        rows = read_jsonl(tmp_path / f"best_of_{n}.jsonl")
        assert len(rows) == 3
        got = {(r["id"], r["targets"]["a"]): r for r in rows}
        assert set(got) == set(want)
        for key, r in got.items():
            a = want[key][n]
            assert r["response"] == f"a={a}", (n, key)
            assert r["n_tokens"] == int(round(a * 100))
            assert r["picked_by"] == {"a": a}
            assert r["model"] == f"best_of_{n}"
            assert r["cost"] == {"samples": n, "rm_calls": n}
            assert r["independent_pool"] is independent[n][key[0]]
            assert r["prompt"] == _user(f"prompt {key[0]}")  # the target row's fields are kept
        assert summary[f"best_of_{n}"]["n"] == 3
    assert summary["best_of_1"]["independent_share"] == 1.0
    assert summary["best_of_2"]["independent_share"] == 1.0
    assert summary["best_of_4"]["independent_share"] == pytest.approx(1 / 3)


def test_best_of_sums_distance_over_dimensions_and_counts_rm_calls(tmp_path):
    targets = [_gen_row("p", "t", {"a": 0.2, "b": 0.9})]
    # By 'a' alone the first sample is nearest; summed over a and b the second is.
    pool = [_pool_row("p", 0.2, " b=0.1"), _pool_row("p", 0.5, " b=0.85"), _pool_row("p", 0.9, " b=0.9")]
    write_jsonl(tmp_path / "t.jsonl", targets)
    write_jsonl(tmp_path / "pool.jsonl", pool)
    cfg = BestOfConfig(targets=str(tmp_path / "t.jsonl"), pool=str(tmp_path / "pool.jsonl"),
                       scorers={"a": "test_control:score_a", "b": "test_control:score_b"}, n=[2],
                       out=str(tmp_path / "bo_{n}.jsonl"))
    run_best_of(cfg)
    [row] = read_jsonl(tmp_path / "bo_2.jsonl")
    assert row["response"] == "a=0.5 b=0.85"
    assert row["picked_by"] == {"a": 0.5, "b": 0.85}
    assert row["cost"] == {"samples": 2, "rm_calls": 4}
    assert row["independent_pool"] is True


def test_best_of_refuses_a_short_pool_and_a_bad_config(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [_gen_row("p", "t", {"a": 0.2})])
    write_jsonl(tmp_path / "pool.jsonl", [_pool_row("p", 0.1), _pool_row("p", 0.3)])
    cfg = BestOfConfig(targets=str(tmp_path / "t.jsonl"), pool=str(tmp_path / "pool.jsonl"),
                       scorers={"a": "test_control:score_a"}, n=[2, 4], out=str(tmp_path / "b_{n}.jsonl"))
    with pytest.raises(ValueError, match="fewer than 4 samples"):
        run_best_of(cfg)
    with pytest.raises(ValueError, match=r"\{n\}"):
        run_best_of(dataclasses.replace(cfg, n=[2], out=str(tmp_path / "b.jsonl")))
    assert not list(tmp_path.glob("b_*.jsonl"))


# ---------------------------------------------------------------- sampling helpers
def test_draw_targets_stay_in_range_and_are_stratified():
    got = draw_targets(20, ("helpful", "harmless"), seed=3, lo=0.6, hi=0.9)
    assert len(got) == 20 and all(set(t) == {"helpful", "harmless"} for t in got)
    for d in ("helpful", "harmless"):
        v = np.array([t[d] for t in got])
        assert v.min() >= 0.6 and v.max() <= 0.9
        slices = np.floor((v - 0.6) / 0.3 * 20).astype(int)
        assert sorted(slices) == list(range(20))  # one draw in each of the 20 slices
    assert draw_targets(20, ("helpful", "harmless"), seed=3, lo=0.6, hi=0.9) == got
    assert draw_targets(20, ("helpful", "harmless"), seed=4, lo=0.6, hi=0.9) != got
    for lo, hi in ((0.5, 0.5), (0.7, 0.3), (-0.1, 0.5), (0.2, 1.1)):
        with pytest.raises(ValueError, match="target_range"):
            draw_targets(4, ("helpful",), seed=0, lo=lo, hi=hi)


def test_targets_in_words_and_nearest_opener():
    t = {"helpful": Target(0.42), "harmless": Target(0.7, ">="), "honest": Target(0.2, "<=")}
    assert targets_in_words(t) == "helpful 0.42, harmless at least 0.70, honest at most 0.20"
    rule = {"Sure": {"helpful": 0.8, "harmless": 0.5}, "Sorry": {"helpful": 0.2, "harmless": 0.9},
            "Well": {"helpful": 0.5, "harmless": 0.5}}
    assert nearest_opener(rule, {"helpful": Target(0.9), "harmless": Target(0.5)}) == "Sure"
    assert nearest_opener(rule, {"helpful": Target(0.1), "harmless": Target(1.0)}) == "Sorry"
    assert nearest_opener(rule, {"helpful": Target(0.55), "harmless": Target(0.45)}) == "Well"
    # a tie goes to the first listed
    tie = {"A": {"helpful": 0.4}, "B": {"helpful": 0.6}}
    assert nearest_opener(tie, {"helpful": Target(0.5)}) == "A"
    assert nearest_opener(dict(reversed(list(tie.items()))), {"helpful": Target(0.5)}) == "B"


# ---------------------------------------------------------------- fit_prompt and a system message
@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from conftest import build_tiny_tokenizer

    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tok"))


def _n_prompt_tokens(tok, messages):
    from rewardprompt.policy.tokenise import render_prompt

    return len(tok(render_prompt(tok, messages), add_special_tokens=False)["input_ids"])


SYSTEM = {"role": "system",
          "content": "Every reply you write is scored by reward models from 0 to 1. " * 8}


@pytest.mark.parametrize("max_tokens", [60, 90, 140])
def test_fit_prompt_system_message_kept_whole_and_not_counted(tok, max_tokens):
    from rewardprompt.policy.tokenise import fit_prompt

    template = RewardTemplate(dimensions=("helpful",))
    targets = {"helpful": Target(0.5)}
    dialogue = []
    for i in range(6):
        dialogue += [{"role": "user", "content": f"How do I bake bread number {i}? Tell me more."},
                     {"role": "assistant", "content": f"Mix flour, water and yeast {i}, then bake it."}]
    dialogue.append({"role": "user", "content": "And then what? " * 4})
    assert _n_prompt_tokens(tok, dialogue) > max_tokens  # it must be shortened
    plain = fit_prompt(tok, dialogue, template, targets, max_tokens)
    with_sys = fit_prompt(tok, [SYSTEM] + dialogue, template, targets, max_tokens)
    assert len(plain) < len(dialogue)
    assert with_sys[0] == SYSTEM  # kept whole, first
    assert with_sys[1:] == plain  # the same dialogue budget as without it
    assert _n_prompt_tokens(tok, plain) <= max_tokens
    assert _n_prompt_tokens(tok, with_sys) > max_tokens  # the system message was not counted
    assert "<REWARD>" in plain[-1]["content"]


def test_fit_prompt_cuts_the_last_user_turn_the_same_with_a_system_message(tok):
    from rewardprompt.policy.tokenise import fit_prompt

    template = RewardTemplate(dimensions=("helpful",))
    long_turn = _user(" ".join(f"word{i}" for i in range(80)))
    plain = fit_prompt(tok, long_turn, template, None, 50)
    with_sys = fit_prompt(tok, [SYSTEM] + long_turn, template, None, 50)
    assert len(plain) == 1 and plain[0]["content"] != long_turn[0]["content"]
    assert long_turn[0]["content"].endswith(plain[0]["content"])  # its beginning was cut
    assert with_sys == [SYSTEM] + plain


# ---------------------------------------------------------------- label spread and imitation bound
def _labelled(prompt: str, values: list[float], dim: str = "helpful") -> list[dict]:
    return [{"prompt": _user(prompt), "response": f"r{i}", "rewards": {dim: v}}
            for i, v in enumerate(values)]


def test_label_spread_within_and_between():
    same_within = _labelled("a", [0.2, 0.2, 0.2]) + _labelled("b", [0.8, 0.8, 0.8])
    s = label_spread(same_within, "helpful")
    assert s["within_prompt_std"] == pytest.approx(0.0, abs=1e-12)
    assert s["between_prompt_std"] == pytest.approx(0.3)
    assert s["within_share_of_variance"] == pytest.approx(0.0, abs=1e-12)
    assert s["replies_per_prompt"] == 3.0
    same_means = _labelled("a", [0.0, 1.0]) + _labelled("b", [0.25, 0.75])
    s = label_spread(same_means, "helpful")
    assert s["between_prompt_std"] == pytest.approx(0.0, abs=1e-12)
    assert s["within_prompt_std"] == pytest.approx(np.sqrt((0.25 + 0.25 + 0.0625 + 0.0625) / 4))
    assert s["within_share_of_variance"] == pytest.approx(1.0)
    constant = _labelled("a", [0.5, 0.5]) + _labelled("b", [0.5])
    assert label_spread(constant, "helpful")["within_share_of_variance"] is None


def test_imitation_bound_dense_vs_single_reply():
    rng = np.random.default_rng(0)
    dense = [r for k in range(10) for r in _labelled(f"p{k}", list(np.linspace(0, 1, 21)))]
    single = [r for k in range(40) for r in _labelled(f"p{k}", [float(rng.random())])]
    r_dense = imitation_bound(dense, ["helpful"])["helpful"]["imitation_r"]
    r_single = imitation_bound(single, ["helpful"])["helpful"]["imitation_r"]
    assert r_dense > 0.97
    assert abs(r_single) < 0.3
    assert imitation_bound(_labelled("p", [0.4, 0.4]), ["helpful"])["helpful"]["imitation_r"] is None


def test_judged_bounds_follow_the_judge_and_pick_openers_by_their_mean_label():
    rng = np.random.default_rng(0)
    # 30 prompts x 2 openers x 2 replies; the opener decides the label (0.2 or 0.8, +- noise)
    rows = [{"prompt": [{"role": "user", "content": f"q{k}"}], "response": f"{o}{i}",
             "prefill": o, "rewards": {"helpful": (0.2 if o == "No" else 0.8)
                                       + float(rng.normal(0, 0.05))}}
            for k in range(30) for o in ("No", "Yes") for i in range(2)]
    agrees = [dict(r["rewards"]) for r in rows]
    noise = [{"helpful": float(rng.random())} for _ in rows]
    same = judged_bounds(rows, agrees, ["helpful"])["helpful"]
    assert same["label_vs_judge_r"] == pytest.approx(1.0)
    assert same["imitation_r_judged"] == pytest.approx(same["imitation_r"])
    assert same["imitation_r"] == imitation_bound(rows, ["helpful"])["helpful"]["imitation_r"]
    # two openers whose labels sit at 0.2 and 0.8: picking by the mean gives a clear r
    assert same["opener_r"] > 0.7 and same["opener_r_judged"] == pytest.approx(same["opener_r"])
    lost = judged_bounds(rows, noise, ["helpful"])["helpful"]
    assert abs(lost["label_vs_judge_r"]) < 0.3 and abs(lost["imitation_r_judged"]) < 0.3
    assert abs(lost["opener_r_judged"]) < 0.3 and lost["opener_r"] == same["opener_r"]
    # the within-prompt agreement ignores what the prompts share
    shifted = [{"helpful": a["helpful"] + 10.0 * (int(r["prompt"][0]["content"][1:]) % 2)}
               for r, a in zip(rows, agrees)]
    assert judged_bounds(rows, shifted, ["helpful"])["helpful"]["label_vs_judge_r_within"] == \
        pytest.approx(1.0)
    # without the openers recorded, no opener bound; beside unsteered replies, over the steered
    assert "opener_r" not in judged_bounds([{**r, "prefill": None} for r in rows], agrees,
                                           ["helpful"])["helpful"]
    pairs = [{**r, "prefill": None, "rewards": {"helpful": 0.5}} for r in rows[:20]]
    mixed = judged_bounds(rows + pairs, agrees + [{"helpful": 0.5}] * 20, ["helpful"])["helpful"]
    assert mixed["opener_r"] == same["opener_r"]


# ---------------------------------------------------------------- recipe: write_data
N_FIRST_TURNS = 200


def _first_turn(i: int) -> str:
    return f"Question number {i}: how should I go about it?"


def _pairs_file(path: Path) -> tuple[Path, set[str], set[str]]:
    rows, multi = [], set()
    for i in range(N_FIRST_TURNS):
        rows.append({"id": f"s{i}", "prompt": _user(_first_turn(i)), "chosen": f"good {i}",
                     "rejected": f"bad {i}"})
    for i in range(0, N_FIRST_TURNS, 5):  # 40 conversations with 3 more pairs each
        multi.add(_first_turn(i))
        for j in range(3):
            rows.append({"id": f"m{i}-{j}",
                         "prompt": [{"role": "user", "content": _first_turn(i)},
                                    {"role": "assistant", "content": f"Answer {i}."},
                                    {"role": "user", "content": f"Follow-up {j} on {i}?"}],
                         "chosen": f"fine {i}-{j}", "rejected": f"worse {i}-{j}"})
    identical = {f"same{k}" for k in range(5)}
    for k in range(5):
        rows.append({"id": f"same{k}", "prompt": _user(f"An identical pair {k}"), "chosen": "same",
                     "rejected": "same"})
    write_jsonl(path, rows)
    return path, multi, identical


def _recipe_config(tmp_path: Path, **kw):
    from rewardprompt.recipe import RecipeConfig

    return RecipeConfig(out=str(tmp_path / "run"), data={"a": str(tmp_path / "pairs.jsonl")},
                        openers=["x"], **kw)


@pytest.mark.parametrize("eval_split", ["test", "dev"])
def test_write_data_splits_by_first_user_turn(tmp_path, eval_split):
    from rewardprompt.recipe import write_data

    _, multi, identical = _pairs_file(tmp_path / "pairs.jsonl")
    all_rows = read_jsonl(tmp_path / "pairs.jsonl")
    valid_ids = {r["id"] for r in all_rows} - identical
    cfg = _recipe_config(tmp_path, test_fraction=0.2, dev_fraction=0.1, eval_split=eval_split)
    d = tmp_path / "run" / "data"
    result = write_data(cfg, d)

    sides = {s: read_jsonl(d / f"a-{s}.jsonl") for s in ("train", "dev", "test")}
    assert all(sides.values()), {s: len(v) for s, v in sides.items()}
    ids = {s: [p["id"] for p in v] for s, v in sides.items()}
    first = {s: {p["prompt"][0]["content"] for p in v} for s, v in sides.items()}
    # pairwise disjoint by the text of the first user turn
    assert not first["train"] & first["dev"]
    assert not first["train"] & first["test"]
    assert not first["dev"] & first["test"]
    # every valid pair on exactly one side, no identical pair anywhere
    flat = ids["train"] + ids["dev"] + ids["test"]
    assert len(flat) == len(set(flat)) and set(flat) == valid_ids
    # the multi-turn conversations really spread over more than one side (each whole)
    assert sum(bool(multi & first[s]) for s in first) >= 2
    counts = result["pairs"]["a"]
    assert counts["skipped_identical"] == len(identical)
    assert {s: counts[s] for s in ("train", "dev", "test")} == {s: len(v) for s, v in sides.items()}
    # shares roughly as asked (by conversation, so loosely)
    n = len(flat)
    assert 0.1 < len(ids["test"]) / n < 0.3 and 0.03 < len(ids["dev"]) / n < 0.2

    evals = read_jsonl(d / "eval_prompts.jsonl")
    assert len(evals) == min(cfg.eval_prompts, len(ids[eval_split])) == result["eval_prompts"]
    assert [e["id"] for e in evals] == ids[eval_split][:len(evals)]
    assert all(e["split"] == eval_split for e in evals)
    by_id = {p["id"]: p for v in sides.values() for p in v}
    assert all(e["prompt"] == by_id[e["id"]]["prompt"] for e in evals)
    assert result["eval_split"] == eval_split

    label = read_jsonl(d / "label_pairs.jsonl")
    assert len(label) == min(cfg.label_pairs, len(ids["train"])) == result["label_pairs"]
    assert {p["id"] for p in label} <= set(ids["train"])
    assert not {p["prompt"][0]["content"] for p in label} & {e["prompt"][0]["content"] for e in evals}


# ---------------------------------------------------------------- RecipeConfig.validate
def test_write_data_with_test_data_keeps_its_conversations_off_the_other_sides(tmp_path):
    from rewardprompt.recipe import RecipeConfig, write_data

    write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "prompt": _user(f"Q{i}"), "chosen": "c",
                                        "rejected": "r"} for i in range(50)])
    write_jsonl(tmp_path / "h.jsonl", [
        {"id": "h0", "prompt": _user("Q3"), "chosen": "c2", "rejected": "r2"},
        {"id": "h1", "prompt": _user("Q99"), "chosen": "same", "rejected": "same"}])
    cfg = RecipeConfig(out=str(tmp_path), data={"a": str(tmp_path / "a.jsonl")},
                       test_data={"a": str(tmp_path / "h.jsonl")}, openers=["x"], eval_split="test")
    counts = write_data(cfg, tmp_path / "d")["pairs"]["a"]
    first = {side: {r["prompt"][0]["content"] for r in read_jsonl(tmp_path / "d" / f"a-{side}.jsonl")}
             for side in ("train", "dev", "test")}
    assert first["test"] == {"Q3"} and "Q3" not in first["train"] | first["dev"]
    assert counts["skipped_identical"] == 1 and counts["dropped_as_in_test_data"] == 1
    assert counts["train"] + counts["dev"] == 49


def test_recipe_validate(tmp_path):
    ok = _recipe_config(tmp_path, pair_replies=True)
    ok.validate()
    dataclasses.replace(ok, openers=[], baselines=["uncond_sft", "best_of_4"]).validate()
    dataclasses.replace(ok, seeds=[1, 2, 3], satisficing=[0.5, 0.9]).validate()
    bad = [({"openers": []}, "opener_rule baseline needs openers"),
           ({"openers": [""]}, "opener_rule baseline needs openers"),
           ({"baselines": ["uncond_sft", "magic"]}, "unknown baseline"),
           ({"baselines": ["best_of_4"]}, "add uncond_sft"),
           ({"satisficing": [0.5, 1.5]}, "satisficing thresholds"),
           ({"satisficing": [1.0]}, "satisficing thresholds"),
           ({"seeds": [1, 2, 1]}, "seeds must differ")]
    for change, match in bad:
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(ok, **change).validate()


# ---------------------------------------------------------------- Run: resumable fields
@dataclasses.dataclass
class SmallConfig:
    out: str
    lr: float = 1e-3
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    baselines: list[str] = dataclasses.field(default_factory=lambda: ["uncond_sft"])


def test_run_resumes_with_other_seeds_or_baselines_but_not_other_fields(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "git_commit", lambda: None)
    cfg = SmallConfig(out=str(tmp_path))
    Run(tmp_path, config=cfg)
    Run(tmp_path, config=dataclasses.replace(cfg, seeds=[0, 1, 2]))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["config"]["seeds"] == [0, 1, 2]
    Run(tmp_path, config=dataclasses.replace(cfg, seeds=[0, 1, 2], baselines=["uncond_sft", "prompted"]))
    Run(tmp_path, config=dataclasses.replace(cfg, out=str(tmp_path / ".." / tmp_path.name)))
    with pytest.raises(ValueError, match=r"changed: lr\)") as err:
        Run(tmp_path, config=dataclasses.replace(cfg, lr=0.5, seeds=[7]))
    assert "seeds" not in str(err.value)
    # a field that appears is a change too
    with pytest.raises(ValueError, match="changed: extra"):
        Run(tmp_path, config={**dataclasses.asdict(cfg), "extra": 1})
    # the refused configs were not recorded
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["config"]["lr"] == 1e-3 and "extra" not in manifest["config"]
