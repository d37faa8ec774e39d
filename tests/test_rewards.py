"""Reward models: normaliser, Bradley-Terry training, save/load, evaluation and file scoring.

Everything runs on a tiny randomly initialised BERT (one layer, hidden size 32) with a word-level
vocabulary built here, so no download is needed and the whole file takes seconds on a CPU.
"""
from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from rewardprompt.errors import DataError
from rewardprompt.rewards.model import RewardModel, prompt_context
from rewardprompt.rewards.normaliser import EmpiricalCDFNormaliser
from rewardprompt.rewards.scorer import Scorer, load_scorer
from rewardprompt.rewards.train import (METRICS, RMEvalConfig, RMScoreConfig, RMTrainConfig,
                                        evaluate_reward_model, score_file,
                                        train_reward_model)
from rewardprompt.runs import read_jsonl, write_jsonl

ADJ = ["red", "small", "old", "new", "quiet", "bright", "cold", "warm", "heavy", "soft", "fast",
       "slow"]
NOUN = ["car", "house", "book", "song", "film", "garden", "river", "phone", "city", "coat",
        "train", "lamp"]
FILLER = ["it", "is", "really", "quite", "very", "and", "the", "a", "i", "think", "was", "so",
          "tell", "me", "about", "what", "do", "you", "of", "story", "long", "with", "many",
          "words", "in"]
GOOD, BAD = "great", "awful"


def _sentence(rng: random.Random, noun: str, verdict: str) -> str:
    words = rng.sample(FILLER, 4) + [verdict] + rng.sample(FILLER, 3)
    return f"the {noun} " + " ".join(words)


def _pairs(seed: int, n: int | None = None) -> list[dict]:
    """Synthetic preferences: chosen says "great", rejected says "awful"; prompts all distinct."""
    rng = random.Random(seed)
    combos = list(itertools.product(ADJ, NOUN))
    rng.shuffle(combos)
    rows = []
    for i, (adj, noun) in enumerate(combos[:n]):
        rows.append({"id": f"p{seed}-{i}",
                     "prompt": [{"role": "user", "content": f"tell me about the {adj} {noun}"}],
                     "chosen": _sentence(rng, noun, GOOD), "rejected": _sentence(rng, noun, BAD)})
    return rows


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the tiny model gains nothing from more, and on a busy machine
    OpenMP threads waiting on each other make each step up to ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> str:
    """A one-layer BERT with a word-level vocabulary covering the synthetic data."""
    d = tmp_path_factory.mktemp("tiny_encoder")
    words = sorted(set(ADJ + NOUN + FILLER + [GOOD, BAD, "the", "hello", "hi", "ok", "?"]))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tokenizer = BertTokenizer(vocab=vocab)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def pref_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    write_jsonl(path, _pairs(seed=1))
    return path


@pytest.fixture(scope="module")
def trained(tiny_encoder, pref_file, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("rm") / "synthetic-rm"
    cfg = RMTrainConfig(data=str(pref_file), out=str(out), base_model=tiny_encoder,
                        freeze_encoder=False, epochs=4, lr=1e-3, head_lr=1e-2, batch_size=16,
                        max_length=32, seed=0)
    return out, train_reward_model(cfg)


# ---------------------------------------------------------------- normaliser
def test_normaliser_monotone_uniform_and_clipped():
    raw = np.random.default_rng(0).normal(size=2000) * 3 + 1
    norm = EmpiricalCDFNormaliser.fit(raw)
    grid = np.linspace(raw.min() - 5, raw.max() + 5, 5000)
    out = norm(grid)
    assert np.all(np.diff(out) >= 0)
    assert out[0] == 0.0 and out[-1] == 1.0
    # Training scores map to ~uniform: the sorted values track the uniform quantiles.
    mapped = np.sort(norm(raw))
    assert np.max(np.abs(mapped - np.linspace(0, 1, raw.size))) < 0.01
    again = EmpiricalCDFNormaliser.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(again(grid), out)


def test_normaliser_ties_and_constant_scores():
    norm = EmpiricalCDFNormaliser.fit([1.0, 1.0, 1.0, 2.0, 3.0, 3.0])
    out = norm(np.linspace(0, 4, 200))
    assert np.all(np.diff(out) >= 0) and out.min() >= 0 and out.max() <= 1
    assert EmpiricalCDFNormaliser.fit([2.0] * 10)([-1.0, 2.0, 9.0]).tolist() == [0.5] * 3


@pytest.mark.parametrize("bad, word", [(float("nan"), "NaN"), (float("inf"), "infinite")])
def test_normaliser_rejects_non_finite(bad, word):
    with pytest.raises(ValueError, match=word):
        EmpiricalCDFNormaliser.fit([0.0, bad, 1.0])
    norm = EmpiricalCDFNormaliser.fit([0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=f"{word}.*index 1"):
        norm([0.5, bad])


# ---------------------------------------------------------------- model
def test_context_and_truncation(tiny_encoder):
    dialogue = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "tell me about the car"}]
    assert prompt_context(dialogue, "last") == "tell me about the car"
    assert "hello" in prompt_context(dialogue, "all") and "car" in prompt_context(dialogue, "all")
    m = RewardModel.from_base(tiny_encoder, max_length=16)
    long_ctx = [{"role": "user", "content": " ".join(["car"] * 40)}]
    short_resp = "it is great"
    enc = m.tokenize([long_ctx], [short_resp])
    ids = enc["input_ids"][0].tolist()
    assert len(ids) == 16
    # The context is cut first: the whole response survives.
    assert m.tokenizer.decode(ids[-4:-1]) == short_resp
    # A response longer than max_length alone falls back to cutting both, mixed in one batch.
    enc = m.tokenize([long_ctx, long_ctx], [short_resp, " ".join(["great"] * 40)])
    assert enc["input_ids"].shape == (2, 16)


def test_save_load_round_trip_gives_identical_scores(tiny_encoder, tmp_path):
    m = RewardModel.from_base(tiny_encoder, max_length=32, seed=0)
    rows = _pairs(seed=2, n=20)
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    m.normaliser = EmpiricalCDFNormaliser.fit(m.score_raw(prompts, responses))
    m.save(tmp_path / "my-rm")
    loaded = RewardModel.load(tmp_path / "my-rm")
    assert loaded.name == "my-rm"
    np.testing.assert_allclose(loaded.score_raw(prompts, responses),
                               m.score_raw(prompts, responses), rtol=0, atol=1e-6)
    scores = loaded.score(prompts, responses)
    np.testing.assert_allclose(scores, m.score(prompts, responses), atol=1e-6)
    assert scores.min() >= 0 and scores.max() <= 1
    # Batching does not change the scores.
    np.testing.assert_allclose(loaded.score_raw(prompts, responses, batch_size=3),
                               loaded.score_raw(prompts, responses), atol=1e-5)
    scorer = load_scorer(tmp_path / "my-rm")
    assert isinstance(scorer, Scorer) and scorer.name == "my-rm"


def test_missing_normaliser_is_a_clear_error(tiny_encoder, tmp_path):
    m = RewardModel.from_base(tiny_encoder, max_length=32)
    with pytest.raises(ValueError, match="normaliser"):
        m.save(tmp_path / "x")  # unsaveable without one
    m.normaliser = EmpiricalCDFNormaliser.fit([0.0, 1.0])
    folder = m.save(tmp_path / "no-norm-rm")
    (folder / "normaliser.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no-norm-rm.*normaliser\.json"):
        RewardModel.load(folder)


# ---------------------------------------------------------------- training and evaluation
def test_bradley_terry_training_learns_synthetic_preference(trained):
    out, metrics = trained
    assert metrics["accuracy"] >= 0.9, metrics
    for key in ("accuracy", "ci_low", "ci_high", "n_test", "n_train", "train_seconds",
                "examples_per_second"):
        assert key in metrics
    assert metrics["ci_low"] <= metrics["accuracy"] <= metrics["ci_high"]
    assert metrics["n_test"] > 10 and metrics["n_train"] > metrics["n_test"]
    assert json.loads((out / METRICS).read_text())["accuracy"] == metrics["accuracy"]
    assert not out.with_name(out.name + ".tmp").exists()
    # Training responses map to ~uniform rewards: the normaliser was fitted on them.
    norm = json.loads((out / "normaliser.json").read_text())
    assert norm["n_fit"] == 2 * metrics["n_train"]


def test_frozen_encoder_head_learns_synthetic_preference(tiny_encoder, pref_file, tmp_path):
    metrics = train_reward_model(RMTrainConfig(data=str(pref_file), out=str(tmp_path / "rm"),
                                               base_model=tiny_encoder, freeze_encoder=True,
                                               max_length=32))
    assert metrics["accuracy"] >= 0.9, metrics
    loaded = RewardModel.load(tmp_path / "rm")
    rows = _pairs(seed=5, n=20)
    prompts = [r["prompt"] for r in rows]
    assert np.mean(loaded.score(prompts, [r["chosen"] for r in rows])
                   > loaded.score(prompts, [r["rejected"] for r in rows])) >= 0.9


def test_retraining_replaces_the_folder_and_clears_stale_tmp(tiny_encoder, pref_file, tmp_path):
    out = tmp_path / "rm"
    stale = tmp_path / "rm.tmp"
    stale.mkdir()
    (stale / "junk").write_text("half-written")
    cfg = RMTrainConfig(data=str(pref_file), out=str(out), base_model=tiny_encoder,
                        freeze_encoder=True, max_length=32, limit=60)
    first = train_reward_model(cfg)
    second = train_reward_model(cfg)
    assert first["n_train"] == second["n_train"]
    assert first["accuracy"] == second["accuracy"]  # seeded and deterministic
    assert not stale.exists() and not (tmp_path / "rm.old").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["encoder", "head.safetensors", "rm_config.json", "normaliser.json", METRICS])


def test_evaluate_json(trained, tmp_path, capsys):
    out, _ = trained
    path = tmp_path / "eval.jsonl"
    write_jsonl(path, _pairs(seed=3, n=40))
    result = evaluate_reward_model(RMEvalConfig(rm=str(out), data=str(path), json=True))
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == result
    assert {"accuracy", "n", "ci_low", "ci_high"} <= result.keys()
    assert result["n"] == 40 and result["accuracy"] >= 0.9


def test_score_file(trained, tmp_path):
    out, _ = trained
    rows = [{"prompt": r["prompt"], "response": r[k], "extra": i}
            for i, (r, k) in enumerate(itertools.product(_pairs(seed=4, n=10),
                                                         ["chosen", "rejected"]))]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, rows)
    summary = score_file(RMScoreConfig(rm=str(out), input=str(src), output=str(dst)))
    scored = read_jsonl(dst)
    assert summary["n"] == len(scored) == len(rows)
    assert [r["extra"] for r in scored] == list(range(len(rows)))
    reward = np.array([r["reward"] for r in scored])
    raw = np.array([r["reward_raw"] for r in scored])
    assert reward.min() >= 0 and reward.max() <= 1
    assert np.all(np.diff(reward[np.argsort(raw)]) >= 0)  # the normaliser keeps the order
    assert reward[0::2].mean() > reward[1::2].mean()  # chosen ("great") beats rejected

    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [rows[0], {"prompt": rows[0]["prompt"]}])
    with pytest.raises(DataError, match=r"line 2.*'response'"):
        score_file(RMScoreConfig(rm=str(out), input=str(bad), output=str(tmp_path / "x.jsonl")))
    assert not (tmp_path / "x.jsonl").exists()


def test_rm_config_records_options(trained):
    out, _ = trained
    opts = json.loads((out / "rm_config.json").read_text())
    assert opts["max_length"] == 32 and opts["turns"] == "last" and opts["pooling"] == "mean"
