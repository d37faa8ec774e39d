"""Controllability metrics and the shared cluster bootstrap."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from rewardprompt.evaluation.metrics import controllability
from rewardprompt.stats import accuracy_ci, bootstrap_mean_ci


def _data(n: int = 400, slope: float = 0.8, noise: float = 0.1, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, n)
    y = np.clip(0.1 + slope * x + rng.normal(0, noise, n), 0, 1)
    lengths = rng.integers(20, 300, n)
    return x, y, lengths


def test_perfect_correlation_gives_r_one_and_tight_ci() -> None:
    x = np.linspace(0, 1, 200)
    res = controllability(x, x, np.full(200, 50), n_boot=300)
    assert res["pearson_r"] == pytest.approx(1.0)
    assert res["spearman_r"] == pytest.approx(1.0)
    assert res["ci_low"] > 0.999 and res["ci_high"] == pytest.approx(1.0)
    assert res["slope"] == pytest.approx(1.0) and res["intercept"] == pytest.approx(0.0, abs=1e-12)
    assert res["length_r"] is None  # constant lengths: undefined, not a crash
    json.dumps(res)  # plain JSON values only


def test_independent_noise_ci_covers_zero() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.uniform(size=500), rng.uniform(size=500)
    res = controllability(x, y, rng.integers(1, 100, 500), n_boot=500)
    assert res["ci_low"] < 0 < res["ci_high"]
    assert res["spearman_ci_low"] < 0 < res["spearman_ci_high"]
    assert res["slope_ci_low"] < 0 < res["slope_ci_high"]


def test_known_slope_recovered_and_matches_scipy() -> None:
    x, y, lengths = _data(n=2000, slope=0.6, noise=0.05)
    res = controllability(x, y, lengths, n_boot=300)
    assert res["slope"] == pytest.approx(0.6, abs=0.02)
    assert res["slope_ci_low"] < 0.6 < res["slope_ci_high"]
    assert res["intercept"] == pytest.approx(0.1, abs=0.01)
    assert res["pearson_r"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert res["spearman_r"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert res["ci_low"] <= res["pearson_r"] <= res["ci_high"]
    assert res["spearman_ci_low"] <= res["spearman_r"] <= res["spearman_ci_high"]
    assert res["length_ci_low"] <= res["length_r"] <= res["length_ci_high"]


def test_cluster_ci_wider_than_row_ci_when_signal_is_between_groups() -> None:
    # 20 prompts x 30 generations: target and reward are set per prompt, so there are only 20
    # independent observations, not 600.
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(20), 30)
    x = rng.uniform(size=20)[g]
    y = np.clip(0.5 * x + rng.normal(0, 0.2, 20)[g] + rng.normal(0, 0.01, g.size), 0, 1)
    lengths = rng.integers(10, 200, g.size)
    clustered = controllability(x, y, lengths, groups=g, n_boot=500)
    rows = controllability(x, y, lengths, n_boot=500)
    assert clustered["n_groups"] == 20 and rows["n_groups"] == 600
    assert clustered["pearson_r"] == pytest.approx(rows["pearson_r"])
    width = lambda r: r["ci_high"] - r["ci_low"]  # noqa: E731
    assert width(clustered) > 2 * width(rows)
    # Targets are constant within each prompt, so nothing is left once prompt means are removed.
    assert clustered["within_prompt_r"] is None and "within-prompt" in clustered["note"]


def test_within_prompt_r_ignores_between_prompt_offsets() -> None:
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(50), 8)
    x = rng.uniform(size=g.size)
    y = 0.3 * x + rng.uniform(0, 0.6, 50)[g] + rng.normal(0, 0.01, g.size)
    res = controllability(x, y, np.ones(g.size), groups=g, n_boot=200)
    assert res["within_prompt_r"] > 0.95 > res["pearson_r"]


def test_bins_cover_all_rows_and_ci_brackets_mean() -> None:
    x, y, lengths = _data(n=333)
    x[:3] = [0.0, 1.0, 0.2]  # the edges: 1.0 belongs to the last bin
    res = controllability(x, y, lengths, n_bins=4, n_boot=200)
    bins = res["bins"]
    assert len(bins) == 4 and sum(b["n"] for b in bins) == 333
    assert bins[0]["lo"] == 0.0 and bins[-1]["hi"] == 1.0
    for b in bins:
        assert b["lo"] <= b["mean_target"] <= b["hi"]
        assert b["actual_ci_low"] <= b["mean_actual"] <= b["actual_ci_high"]
    assert bins[-1]["mean_actual"] > bins[0]["mean_actual"]


def test_empty_bin_has_none_means() -> None:
    x = np.array([0.05, 0.1, 0.15, 0.9, 0.95])
    res = controllability(x, x, np.arange(5), n_bins=5, n_boot=50)
    assert [b["n"] for b in res["bins"]] == [3, 0, 0, 0, 2]
    assert res["bins"][2]["mean_actual"] is None and res["bins"][2]["actual_ci_low"] is None


@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_few_rows(n: int) -> None:
    res = controllability(np.linspace(0, 1, n), np.linspace(0, 1, n), np.ones(n))
    assert res["n"] == n and res["pearson_r"] is None and "n=" in res["note"]
    json.dumps(res)


def test_constant_actuals_and_targets() -> None:
    x = np.linspace(0, 1, 50)
    res = controllability(x, np.full(50, 0.5), np.arange(50), n_boot=100)
    assert res["pearson_r"] is None and res["ci_low"] is None and res["spearman_r"] is None
    assert res["slope"] == pytest.approx(0.0) and "constant actuals" in res["note"]
    res = controllability(np.full(50, 0.5), x, np.arange(50), n_boot=100)
    assert res["pearson_r"] is None and res["slope"] is None and "constant targets" in res["note"]
    json.dumps(res)


def test_single_group_has_no_ci() -> None:
    x, y, lengths = _data(n=30)
    res = controllability(x, y, lengths, groups=np.zeros(30), n_boot=100)
    assert res["pearson_r"] is not None and res["ci_low"] is None
    assert "fewer than 2 groups" in res["note"]


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="differ"):
        controllability(np.ones(3), np.ones(4), np.ones(3))


def test_deterministic_with_seed() -> None:
    x, y, lengths = _data(n=300)
    g = np.arange(300) // 3
    a = controllability(x, y, lengths, groups=g, seed=7, n_boot=300)
    b = controllability(x, y, lengths, groups=g, seed=7, n_boot=300)
    c = controllability(x, y, lengths, groups=g, seed=8, n_boot=300)
    assert a == b
    assert a["ci_low"] != c["ci_low"]


def test_bootstrap_mean_ci_and_accuracy_ci() -> None:
    rng = np.random.default_rng(0)
    correct = rng.uniform(size=1000) < 0.7
    acc = accuracy_ci(correct, seed=1)
    assert acc["n"] == 1000 and acc["accuracy"] == pytest.approx(correct.mean())
    assert acc["ci_low"] < acc["accuracy"] < acc["ci_high"]
    assert 0.02 < acc["ci_high"] - acc["ci_low"] < 0.08  # about 4 standard errors of 0.0145
    assert (acc["ci_low"], acc["ci_high"]) == bootstrap_mean_ci(correct.astype(float), seed=1)
    assert accuracy_ci(np.array([]))["accuracy"] is None
    with pytest.raises(ValueError):
        bootstrap_mean_ci(np.array([]))


def test_opener_shares_per_target_bin() -> None:
    from rewardprompt.evaluation.metrics import opener_shares

    targets = np.array([0.05, 0.1, 0.15, 0.95, 0.9, 1.0])
    replies = ["Sure! Here it is.", "Sure! Here you go", "Whatever", "I'm sorry, but I can't.",
               "I'm sorry, but I can't help.", "I'm sorry"]
    bins = opener_shares(targets, replies, ["", "I'm sorry", "I'm sorry, but I can't", "Sure!"])
    assert [b["n"] for b in bins] == [3, 0, 0, 0, 3]
    assert bins[0]["share"] == pytest.approx({"I'm sorry": 0, "I'm sorry, but I can't": 0,
                                              "Sure!": 2 / 3, "other": 1 / 3})
    # the longest opener a reply starts with counts, each reply once
    assert bins[4]["share"] == pytest.approx({"I'm sorry": 1 / 3, "I'm sorry, but I can't": 2 / 3,
                                              "Sure!": 0, "other": 0})
    assert all(v is None for v in bins[1]["share"].values())
    with pytest.raises(ValueError, match="6 targets but 5 responses"):
        opener_shares(targets, replies[:5], ["Sure!"])


def _opener_of(reply: str, openers: list[str]) -> str:
    """The opener ``opener_shares`` counts one reply for."""
    from rewardprompt.evaluation.metrics import opener_shares

    (b,) = [b for b in opener_shares(np.array([0.5]), [reply], openers) if b["n"]]
    (name,) = [o for o, v in b["share"].items() if v == 1]
    return name


REFUSAL = "I'm sorry, but I can't help with that."
OPENERS = [REFUSAL, "Sure! Here is", "I can", "Sure"]


@pytest.mark.parametrize("reply, expected", [
    # starts with the whole opener (whitespace-normalised)
    ("I'm sorry, but I can't help with that. Anything else?", REFUSAL),
    ("  I'm  sorry,\nbut I can't   help with that.", REFUSAL),
    # starts with the opener's first three words, then goes on differently
    ("I'm sorry, but that is not something I will do.", REFUSAL),
    ("Sure! Here is a list.", "Sure! Here is"),
    ("Sure! Here you go.", "Sure"),  # two words of it only: the shorter opener "Sure" counts
    # the reply is a prefix of the opener: cut off inside it
    ("I'm sorry,", REFUSAL),
    ("I'm sorry, but I ca", REFUSAL),
    ("Sure! Here", "Sure! Here is"),
    # a tie on the shared start goes to the shorter opener: the one matched whole
    ("Sure", "Sure"),
    ("I can", "I can"),
    # the last word may carry punctuation, but words are compared whole
    ("Sure, why not.", "Sure"),
    ("Surely not.", "other"),
    ("I can't do that.", "other"),
    ("I cannot.", "other"),
    # case is kept, and a word that differs early breaks the match
    ("i'm sorry, but I can't help with that.", "other"),
    ("I'm sorry but I can't help with that.", "other"),
    ("", "other"),
])
def test_opener_shares_matches_a_word_prefix(reply: str, expected: str) -> None:
    assert _opener_of(reply, OPENERS) == expected


def test_opener_shares_prefers_the_longest_shared_start() -> None:
    # Both openers share their first three words: the one the reply follows further wins,
    # whichever is listed first.
    openers = ["I'm sorry, but I won't", "I'm sorry, but I can't"]
    assert _opener_of("I'm sorry, but I can't do that.", openers) == "I'm sorry, but I can't"
    assert _opener_of("I'm sorry, but I won't.", openers[::-1]) == "I'm sorry, but I won't"
    # a reply shorter than both heads and a prefix of each: the first listed of equal length
    assert _opener_of("I'm sorry,", openers) == "I'm sorry, but I won't"
    # a one-word opener needs only its one word
    assert _opener_of("Absolutely, here it is.", ["Absolutely"]) == "Absolutely"
