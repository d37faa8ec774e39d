"""Elo and Bradley-Terry ratings from head-to-head matches (synthetic judges, no torch models)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rewardprompt.errors import DataError
from rewardprompt.evaluation.elo import (ELO_PER_LOGIT, EloConfig, Judge, ScorerJudge, elo_figure,
                                      run_elo)
from rewardprompt.rewards.scorer import LengthScorer
from rewardprompt.runs import write_jsonl

JUDGE = "synthetic:length:40"


def _rows(model: str, lengths: list[list[int]]) -> list[dict]:
    """Generate-stage rows: ``lengths[p]`` are the word counts of prompt p's samples."""
    return [{"id": f"p{p}", "model": model,
             "prompt": [{"role": "user", "content": f"question {p}"}],
             "targets": {"helpful": 0.5}, "response": " ".join(["word"] * n), "n_tokens": n}
            for p, per_prompt in enumerate(lengths) for n in per_prompt]


def _write(tmp_path: Path, name: str, rows: list[dict]) -> str:
    return str(write_jsonl(tmp_path / f"{name}.jsonl", rows))


@pytest.fixture()
def ordered(tmp_path: Path) -> list[str]:
    """A writes longer than B, B longer than C, on every sample: A beats B beats C always."""
    rng = np.random.default_rng(0)
    n_prompts, n_samples = 20, 2
    files = []
    for model, centre in (("C", 8), ("A", 30), ("B", 19)):  # file order is not rank order
        lengths = (centre + rng.integers(-3, 4, (n_prompts, n_samples))).tolist()
        files.append(_write(tmp_path, model, _rows(model, lengths)))
    return files


def _by_model(result: dict) -> dict[str, dict]:
    return {r["model"]: r for r in result["models"]}


def test_dominant_order_is_recovered_by_elo_and_bt(ordered: list[str], tmp_path: Path,
                                                   capsys) -> None:
    out = tmp_path / "elo.json"
    res = run_elo(EloConfig(generations=ordered, judge=JUDGE, out=str(out), n_boot=200))
    assert [r["model"] for r in res["models"]] == ["A", "B", "C"]      # sorted by BT
    m = _by_model(res)
    assert m["A"]["elo"] > m["B"]["elo"] > m["C"]["elo"]
    assert m["A"]["bt"] > m["B"]["bt"] > m["C"]["bt"]
    assert res["spearman_elo_vs_bt"] == pytest.approx(1.0)
    assert res["n_prompts"] == 20 and res["n_matches"] == 3 * 20 * 2   # 3 pairs x prompts x samples
    assert (m["A"]["wins"], m["A"]["losses"], m["A"]["ties"], m["A"]["n_matches"]) == (80, 0, 0, 80)
    assert (m["C"]["wins"], m["C"]["losses"]) == (0, 80)
    for r in res["models"]:
        for key in ("elo", "bt"):
            # One model winning every match makes each resample's BT fit the same: a zero-width CI.
            assert r[f"{key}_ci_low"] - 1e-6 <= r[key] <= r[f"{key}_ci_high"] + 1e-6
    # Sequential Elo is zero-sum and BT is centred, so both scales average the initial rating.
    assert np.mean([r["elo"] for r in res["models"]]) == pytest.approx(1000.0)
    assert np.mean([r["bt"] for r in res["models"]]) == pytest.approx(1000.0)
    assert m["A"]["elo_ci_low"] > m["B"]["elo_ci_high"]                  # decisive: CIs separate
    assert m["B"]["bt_ci_low"] > m["C"]["bt_ci_high"]
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    printed = capsys.readouterr().out
    assert "Bradley-Terry" in printed and printed.index("A ") < printed.index("C ")


def test_equal_models_overlap_around_initial(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    files = [_write(tmp_path, m, _rows(m, rng.integers(5, 36, (40, 2)).tolist()))
             for m in ("X", "Y", "Z")]
    res = run_elo(EloConfig(generations=files, judge=JUDGE, n_boot=200, initial=1500.0))
    for key in ("elo", "bt"):
        lows = [r[f"{key}_ci_low"] for r in res["models"]]
        highs = [r[f"{key}_ci_high"] for r in res["models"]]
        assert max(lows) < min(highs)                           # every pair of CIs overlaps
        assert all(lo < 1500.0 < hi for lo, hi in zip(lows, highs))
        assert all(abs(r[key] - 1500.0) < 60 for r in res["models"])


def test_bt_matches_closed_form_and_elo_agrees(tmp_path: Path) -> None:
    # A wins 3 of every 4 matches against B: the BT gap is ln(3) logits = 400 log10(3) Elo points.
    a = _rows("A", [[20, 20, 20, 5] for _ in range(30)])
    b = _rows("B", [[10, 10, 10, 30] for _ in range(30)])
    files = [_write(tmp_path, "a", a), _write(tmp_path, "b", b)]
    res = run_elo(EloConfig(generations=files, judge=JUDGE, n_boot=200, prior_ties=0.0))
    m = _by_model(res)
    assert m["A"]["bt"] - m["B"]["bt"] == pytest.approx(400 * math.log10(3), rel=1e-5)
    assert ELO_PER_LOGIT * math.log(3) == pytest.approx(400 * math.log10(3))
    # Elo with K=32 is noisy and biased towards 0 by recency, but lands near the same gap.
    assert 0.5 * 190.8 < m["A"]["elo"] - m["B"]["elo"] < 1.5 * 190.8
    assert res["spearman_elo_vs_bt"] == pytest.approx(1.0)


def test_same_seed_same_result_other_seed_other_intervals(ordered: list[str]) -> None:
    cfg = dict(generations=ordered, judge=JUDGE, n_boot=100)
    first, again = run_elo(EloConfig(**cfg, seed=3)), run_elo(EloConfig(**cfg, seed=3))
    assert first == again
    other = run_elo(EloConfig(**cfg, seed=4))
    assert [r["elo_ci_low"] for r in other["models"]] != [r["elo_ci_low"] for r in first["models"]]
    assert [r["model"] for r in other["models"]] == ["A", "B", "C"]


def test_samples_pair_by_index_and_unshared_prompts_are_skipped(tmp_path: Path) -> None:
    a = _rows("A", [[30, 30, 30], [30]])                 # p0: 3 samples, p1: 1 sample
    b = _rows("B", [[10, 10], [10], [10]])               # p2 only B: no match
    res = run_elo(EloConfig(generations=[_write(tmp_path, "a", a), _write(tmp_path, "b", b)],
                            judge=JUDGE, n_boot=20))
    assert res["n_prompts"] == 2 and res["n_matches"] == 2 + 1


def test_scorer_judge_hard_soft_and_protocol() -> None:
    judge = ScorerJudge(LengthScorer(max_words=10))
    assert isinstance(judge, Judge) and judge.name == "synthetic:length"
    prompts = [[{"role": "user", "content": "q"}]] * 3
    out = judge.compare(prompts, ["a b c", "a", "a b"], ["a", "a b c", "x y"])
    np.testing.assert_array_equal(out, [1.0, 0.0, 0.5])
    soft = ScorerJudge(LengthScorer(max_words=10), temperature=0.1)
    p = soft.compare(prompts, ["a b c", "a", "a b"], ["a", "a b c", "x y"])
    assert p[0] == pytest.approx(1 / (1 + math.exp(-2.0)))       # gap 0.2 / T 0.1
    assert p[0] + p[1] == pytest.approx(1.0) and p[2] == pytest.approx(0.5)
    assert "T=0.1" in soft.name
    with pytest.raises(ValueError, match="temperature"):
        ScorerJudge(LengthScorer(), temperature=-1.0)


def test_soft_judge_run_counts_probabilities_as_wins(ordered: list[str]) -> None:
    res = run_elo(EloConfig(generations=ordered, judge=JUDGE, n_boot=50, temperature=0.1))
    assert [r["model"] for r in res["models"]] == ["A", "B", "C"]
    assert res["judge"] == f"{JUDGE}@T=0.1"
    assert _by_model(res)["A"]["wins"] == 80


@pytest.mark.parametrize("missing", ["model", "response"])
def test_row_without_field_names_file_and_line(tmp_path: Path, missing: str) -> None:
    rows = _rows("A", [[10], [10]])
    del rows[1][missing]
    bad = _write(tmp_path, "bad", rows)
    with pytest.raises(DataError, match=rf"bad\.jsonl, line 2.*'{missing}'"):
        run_elo(EloConfig(generations=[_write(tmp_path, "b", _rows("B", [[5]])), bad],
                          judge=JUDGE, n_boot=10))


def test_one_model_is_an_error(tmp_path: Path) -> None:
    only = _write(tmp_path, "only", _rows("A", [[10], [12]]))
    with pytest.raises(ValueError, match=r"only\.jsonl.*at least 2 models"):
        run_elo(EloConfig(generations=[only], judge=JUDGE, n_boot=10))
    with pytest.raises(ValueError, match="got none"):
        run_elo(EloConfig(generations=[], judge=JUDGE, n_boot=10))


def test_no_shared_prompts_is_an_error(tmp_path: Path) -> None:
    b_rows = [dict(r, id="other-" + r["id"]) for r in _rows("B", [[5], [6]])]
    files = [_write(tmp_path, "a", _rows("A", [[10], [12]])), _write(tmp_path, "b", b_rows)]
    with pytest.raises(ValueError, match=r"a\.jsonl.*no prompt id has outputs from 2"):
        run_elo(EloConfig(generations=files, judge=JUDGE, n_boot=10))


def test_models_that_never_meet_are_an_error(tmp_path: Path) -> None:
    ab = _rows("A", [[10]]) + _rows("B", [[5]])
    cd = [dict(r, id="q") for r in _rows("C", [[10]]) + _rows("D", [[5]])]
    with pytest.raises(ValueError, match="share no prompts"):
        run_elo(EloConfig(generations=[_write(tmp_path, "ab", ab), _write(tmp_path, "cd", cd)],
                          judge=JUDGE, n_boot=10))


def test_figure(ordered: list[str]) -> None:
    from matplotlib.figure import Figure

    fig = elo_figure(run_elo(EloConfig(generations=ordered, judge=JUDGE, n_boot=20)))
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["C", "B", "A"]
