"""Scores are computed once: each distinct (prompt, response) once per scorer and process
(within a stage and across stages, as evaluate and Elo judge the same replies), and best-of-N
picks take the score they were picked by when evaluate judges with the same scorer (by
content)."""
from __future__ import annotations

import numpy as np
import pytest

from rewardprompt.runs import read_jsonl, write_jsonl


class Counting:
    """A length scorer that counts the replies it is asked to score."""

    name = "counting"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def score(self, prompts, responses):
        self.seen += list(responses)
        return np.clip(np.array([len(r.split()) / 10 for r in responses]), 0, 1)


@pytest.fixture(autouse=True)
def forget_scores(monkeypatch):
    import rewardprompt.rewards.scorer as scorer_module

    monkeypatch.setattr(scorer_module, "_REMEMBERED", {})


def test_each_pair_is_scored_once_per_process():
    from rewardprompt.rewards.scorer import RememberedScorer

    p1, p2 = [{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]
    prompts = [p1, p1, p2, p1, p2]
    responses = ["one two", "one two", "one two", "three", "one two"]
    inner = Counting()
    got = RememberedScorer(inner, "rm-hash-1").score(prompts, responses)
    assert sorted(inner.seen) == ["one two", "one two", "three"]  # (p1, x), (p2, x), (p1, y)
    assert got.tolist() == Counting().score(prompts, responses).tolist()
    # a later stage with the same scorer (by content) asks it only for what is new
    again = RememberedScorer(Counting(), "rm-hash-1")
    assert again.score([p2, p1], ["one two", "four five"]).tolist() == [0.2, 0.2]
    assert again.scorer.seen == ["four five"]
    other = RememberedScorer(Counting(), "rm-hash-2")  # retrained: its own scores
    other.score([p1], ["one two"])
    assert other.scorer.seen == ["one two"]


def test_function_scorers_are_asked_every_time():
    from rewardprompt.rewards.scorer import FunctionScorer, RememberedScorer, scorer_for

    assert isinstance(scorer_for("synthetic:length"), RememberedScorer)
    assert isinstance(scorer_for("test_scoring_reuse:by_length"), FunctionScorer)


def by_length(prompts, responses):
    return [min(1.0, len(r) / 100) for r in responses]


def test_scorer_identity_follows_a_folders_content(tmp_path):
    from rewardprompt.rewards.scorer import scorer_identity

    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "weights.bin").write_bytes(b"1")
    before = scorer_identity(rm)
    (rm / "weights.bin").write_bytes(b"22")  # retrained in place
    assert scorer_identity(rm) != before
    assert scorer_identity("synthetic:length") == "synthetic:length"


def _rows(model: str, n: int, **extra) -> list[dict]:
    return [{"id": f"q{i}", "model": model, "prompt": [{"role": "user", "content": f"q{i}"}],
             "response": " ".join(["w"] * (i + 1)) + f" {model}", "targets": {"helpful": i / n},
             "target_ops": {"helpful": "="}, "n_tokens": i + 2, **extra} for i in range(n)]


def test_evaluate_takes_best_of_scores_from_picked_by(tmp_path, monkeypatch):
    import rewardprompt.rewards.scorer as scorer_module
    from rewardprompt.evaluation.controllability import EvaluateConfig, run_evaluate

    scorer = Counting()
    monkeypatch.setattr(scorer_module, "load_scorer", lambda spec: scorer)
    n = 8
    same = _rows("best_of_4", n, picked_by={"helpful": 0.1234}, picked_with={"helpful": "synthetic:x"})
    other = _rows("best_of_16", n, picked_by={"helpful": 0.5}, picked_with={"helpful": "another"})
    gen = tmp_path / "gen.jsonl"
    write_jsonl(gen, _rows("conditioned", n) + same + other)
    run_evaluate(EvaluateConfig(generations=[str(gen)], scorers={"helpful": "synthetic:x"},
                                out=str(tmp_path), n_boot=10))
    scored = {r["model"]: [] for r in read_jsonl(tmp_path / "eval" / "scores.jsonl")}
    for r in read_jsonl(tmp_path / "eval" / "scores.jsonl"):
        scored[r["model"]].append(r["actual"]["helpful"])
    assert scored["best_of_4"] == [0.1234] * n  # the picking scorer's own scores
    # picked by another scorer: judged again
    assert scored["best_of_16"] == pytest.approx([min(1, (i + 2) / 10) for i in range(n)])
    assert len(scorer.seen) == 2 * n and not any(r.endswith("best_of_4") for r in scorer.seen)


def test_best_of_records_the_scorer_it_picked_with(tmp_path):
    from rewardprompt.evaluation.baselines import BestOfConfig, run_best_of

    targets, pool = tmp_path / "targets.jsonl", tmp_path / "pool.jsonl"
    write_jsonl(targets, _rows("uncond_sft", 4))
    write_jsonl(pool, [r | {"response": r["response"] + f" v{k}"} for k in range(4)
                       for r in _rows("uncond_sft", 4)])
    run_best_of(BestOfConfig(targets=str(targets), pool=str(pool),
                             scorers={"helpful": "synthetic:length"}, n=[4],
                             out=str(tmp_path / "best_of_{n}.jsonl")))
    rows = read_jsonl(tmp_path / "best_of_4.jsonl")
    assert all(r["picked_with"] == {"helpful": "synthetic:length"} for r in rows)
