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

from rewardprompt.data import load_preferences, split_pairs
from rewardprompt.errors import DataError
from rewardprompt.rewards.model import RewardEnsemble, RewardModel, prompt_context
from rewardprompt.rewards.normaliser import EmpiricalCDFNormaliser
from rewardprompt.rewards.scorer import Scorer, load_scorer
from rewardprompt.rewards.eval import RMEvalConfig, bradley_terry_ece, evaluate_reward_model
from rewardprompt.rewards.score import RMScoreConfig, score_file
from rewardprompt.rewards.train import (METRICS, RMTrainConfig, _bt_loss, assign_half,
                                        select_half, train_reward_model)
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
    write_jsonl(bad, [rows[0], {"prompt": rows[0]["prompt"], "response": 3}])
    with pytest.raises(DataError, match=r"line 2, field 'response': expected a string, got int"):
        score_file(RMScoreConfig(rm=str(out), input=str(bad), output=str(tmp_path / "x.jsonl")))
    assert not (tmp_path / "x.jsonl").exists()


def test_rm_config_records_options(trained):
    out, _ = trained
    opts = json.loads((out / "rm_config.json").read_text())
    assert opts["max_length"] == 32 and opts["turns"] == "last" and opts["pooling"] == "mean"
    assert opts["cpu_bf16"] is False  # tests pin the CPU to fp32: the precision actually used


# ---------------------------------------------------------------- calibration and eval report
def test_bradley_terry_ece_known_values():
    # sigmoid(log 3) = 0.75 and the chosen reply wins: confidence 0.75, accuracy 1, ECE 0.25.
    assert bradley_terry_ece(np.log([3.0, 3.0]), np.zeros(2)) == pytest.approx(0.25)
    # Both pairs at 0.75 in the model's favour, one of them lost: accuracy 0.5, ECE 0.25.
    assert bradley_terry_ece(np.log([3.0, 1.0]), np.log([1.0, 3.0])) == pytest.approx(0.25)
    assert bradley_terry_ece(np.zeros(3), np.zeros(3)) == 0.0  # ties forecast 1/2: calibrated
    assert bradley_terry_ece(np.empty(0), np.empty(0)) is None
    # Outcomes drawn from the forecast itself are calibrated; the same outcomes with 5x the
    # score gaps are overconfident.
    rng = np.random.default_rng(0)
    gap = rng.normal(scale=2.0, size=20000)
    won = rng.random(gap.size) < 1 / (1 + np.exp(-gap))
    chosen, rejected = np.where(won, gap, 0.0), np.where(won, 0.0, gap)
    assert bradley_terry_ece(chosen, rejected) < 0.02
    assert bradley_terry_ece(5 * chosen, 5 * rejected) > 0.1


def test_evaluate_reports_calibration_means_and_figure(trained, tmp_path):
    out, _ = trained
    rows = _pairs(seed=3, n=40)
    path = tmp_path / "eval.jsonl"
    write_jsonl(path, rows)
    fig = tmp_path / "figs" / "rewards.png"
    result = evaluate_reward_model(RMEvalConfig(rm=str(out), data=str(path), figure=str(fig)))
    model = RewardModel.load(out)
    prompts = [r["prompt"] for r in rows]
    c = model.score_raw(prompts, [r["chosen"] for r in rows])
    r = model.score_raw(prompts, [r["rejected"] for r in rows])
    assert result["ece"] == pytest.approx(bradley_terry_ece(c, r), abs=1e-6)
    assert 0.0 <= result["ece"] <= 1.0
    assert result["mean_raw_chosen"] == pytest.approx(float(c.mean()), abs=1e-5)
    assert result["mean_raw_chosen"] > result["mean_raw_rejected"]
    assert result["mean_reward_chosen"] > result["mean_reward_rejected"]
    assert 0 <= result["mean_reward_rejected"] <= result["mean_reward_chosen"] <= 1
    assert result["skipped_identical"] == 0 and result["n"] == 40
    assert result["figure"] == str(fig)
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in fig.parent.iterdir()] == ["rewards.png"]  # no temp file left


# ---------------------------------------------------------------- bad input
def _write_rows_with_blank_line(path: Path, rows: list[dict]) -> None:
    """JSONL with a blank second line, so pair positions and line numbers differ."""
    lines = [json.dumps(r) for r in rows]
    path.write_text("\n".join(lines[:1] + [""] + lines[1:]) + "\n")


def test_identical_pairs_are_skipped_and_counted_or_raise(tiny_encoder, trained, tmp_path,
                                                          capsys):
    rows = _pairs(seed=6, n=40)
    for i in (1, 5):  # line 3 (after the blank line 2) and line 7
        rows[i]["rejected"] = rows[i]["chosen"]
    path = tmp_path / "ident.jsonl"
    _write_rows_with_blank_line(path, rows)
    cfg = RMTrainConfig(data=str(path), out=str(tmp_path / "rm"), base_model=tiny_encoder,
                        max_length=32, test_fraction=0.0)
    metrics = train_reward_model(cfg)
    assert metrics["skipped_identical"] == 2 and metrics["n_train"] == 38
    assert "skipped 2 pair(s) whose chosen and rejected replies are identical" in \
        capsys.readouterr().err
    cfg.drop_identical = False
    with pytest.raises(DataError, match=r"ident\.jsonl, line 3, field 'rejected': pair id "
                                        r"'p6-1'.*same text.*2 such pair"):
        train_reward_model(cfg)

    out, _ = trained
    result = evaluate_reward_model(RMEvalConfig(rm=str(out), data=str(path)))
    assert result["skipped_identical"] == 2 and result["n"] == 38
    with pytest.raises(DataError, match=r"line 3, field 'rejected'.*'p6-1'"):
        evaluate_reward_model(RMEvalConfig(rm=str(out), data=str(path), drop_identical=False))


def test_empty_texts_are_rejected_by_index(tiny_encoder):
    m = RewardModel.from_base(tiny_encoder, max_length=32)
    prompts = [[{"role": "user", "content": "tell me about the car"}]] * 3
    # A policy that ends its turn at once gave a real answer: it is scored, not refused.
    assert np.isfinite(m.score_raw(prompts, ["it is great", "so great", ""])).all()
    with pytest.raises(ValueError, match="response 2 is not a string"):
        m.score_raw(prompts, ["it is great", "so great", None])
    with pytest.raises(ValueError, match="prompt context 1 is empty"):
        m.score_raw([prompts[0], [{"role": "user", "content": ""}], prompts[0]],
                    ["it is great"] * 3)
    with pytest.raises(ValueError, match="prompt context 0 is empty"):  # embeddings too
        m.embed_texts(["", "the car"], ["great", "great"])


def test_non_finite_scores_are_rejected_by_index(tiny_encoder):
    m = RewardModel.from_base(tiny_encoder, max_length=32)
    prompts = [[{"role": "user", "content": "tell me about the car"}]] * 3
    responses = ["the car is great", "it is so great", "the car is awful"]
    assert np.isfinite(m.score_raw(prompts, responses)).all()
    with torch.no_grad():  # a corrupt embedding row: every text with "awful" scores NaN
        m.encoder.get_input_embeddings().weight[m.tokenizer.convert_tokens_to_ids(BAD)] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN score\(s\), first at index 2"):
        m.score_raw(prompts, responses)
    with torch.no_grad():
        m.head.bias.fill_(float("inf"))
    with pytest.raises(ValueError, match=r"infinite score\(s\), first at index 0"):
        m.score_raw(prompts[:2], responses[:2])


def _small_vocab_encoder(tiny_encoder: str, folder: Path) -> Path:
    """A BERT with 5 fewer embedding rows than the tiny tokenizer has tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    cfg = BertConfig(vocab_size=len(tok) - 5, hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    return folder


def test_tokenizer_model_mismatch_is_a_clear_error(tiny_encoder, tmp_path):
    from transformers import AutoTokenizer

    n_tok = len(AutoTokenizer.from_pretrained(tiny_encoder))
    mismatched = tmp_path / "mismatched"
    AutoTokenizer.from_pretrained(tiny_encoder).save_pretrained(mismatched)
    _small_vocab_encoder(tiny_encoder, mismatched)
    with pytest.raises(ValueError, match=rf"mismatched.*tokenizer has {n_tok} tokens.*only "
                                         rf"{n_tok - 5} rows"):
        RewardModel.from_base(mismatched)

    m = RewardModel.from_base(tiny_encoder, max_length=32)
    m.normaliser = EmpiricalCDFNormaliser.fit([0.0, 1.0])
    folder = m.save(tmp_path / "swapped-rm")
    _small_vocab_encoder(tiny_encoder, folder / "encoder")  # weights replaced, tokenizer kept
    with pytest.raises(ValueError, match=rf"swapped-rm/encoder.*{n_tok} tokens.*{n_tok - 5} rows"):
        RewardModel.load(folder)


# ---------------------------------------------------------------- training options
def test_margin_loss_and_option_checks():
    rc, rr = torch.tensor([2.0, 0.5]), torch.tensor([0.0, 0.0])
    expected = -torch.nn.functional.logsigmoid(rc - rr - 1.0).mean()
    assert torch.allclose(_bt_loss(rc, rr, margin=1.0), expected)
    assert _bt_loss(rc, rr, margin=1.0) > _bt_loss(rc, rr)
    for kwargs, msg in [({"margin": 0.5}, "margin=0.5 is not supported with freeze_encoder"),
                        ({"margin": -1.0, "freeze_encoder": False}, "margin must be"),
                        ({"ensemble": 3}, "ensemble=3 needs freeze_encoder=False"),
                        ({"ensemble": 0, "freeze_encoder": False}, "ensemble must be"),
                        ({"half": "third"}, "half must be one of")]:
        with pytest.raises(ValueError, match=msg):
            RMTrainConfig(data="x", out="y", **kwargs).validate()


def test_margin_training_learns_and_is_recorded(tiny_encoder, pref_file, tmp_path):
    out = tmp_path / "margin-rm"
    metrics = train_reward_model(RMTrainConfig(
        data=str(pref_file), out=str(out), base_model=tiny_encoder, freeze_encoder=False,
        epochs=4, lr=1e-3, head_lr=1e-2, max_length=32, margin=1.0))
    assert metrics["accuracy"] >= 0.9, metrics
    saved = json.loads((out / METRICS).read_text())["config"]
    assert (saved["margin"], saved["ensemble"], saved["half"], saved["seed"]) == (1.0, 1, None, 0)


def test_ensemble_trains_saves_loads_and_scores_the_member_mean(tiny_encoder, pref_file,
                                                                tmp_path):
    out = tmp_path / "ens-rm"
    metrics = train_reward_model(RMTrainConfig(
        data=str(pref_file), out=str(out), base_model=tiny_encoder, freeze_encoder=False,
        epochs=4, lr=1e-3, head_lr=1e-2, max_length=32, ensemble=2, seed=7, limit=80))
    assert metrics["accuracy"] >= 0.9, metrics
    assert len(metrics["member_accuracy"]) == 2
    assert metrics["config"]["ensemble"] == 2 and metrics["config"]["seed"] == 7
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["member-0", "member-1", "rm_config.json", "normaliser.json", METRICS])
    assert sorted(p.name for p in (out / "member-0").iterdir()) == sorted(
        ["encoder", "head.safetensors", "rm_config.json"])
    assert json.loads((out / "normaliser.json").read_text())["n_fit"] == 2 * metrics["n_train"]

    ens = RewardModel.load(out)
    assert isinstance(ens, RewardEnsemble) and isinstance(ens, Scorer)
    assert ens.name == "ens-rm" and len(ens.members) == 2
    scorer = load_scorer(out)
    assert isinstance(scorer, RewardEnsemble) and scorer.name == "ens-rm"
    rows = _pairs(seed=8, n=20)
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    per_member = ens.score_raw_members(prompts, responses)
    assert per_member.shape == (2, 20)
    assert not np.allclose(per_member[0], per_member[1])  # seeds 7 and 8 differ
    np.testing.assert_allclose(ens.score_raw(prompts, responses), per_member.mean(0), atol=1e-6)
    np.testing.assert_allclose(ens.score(prompts, responses),
                               ens.normaliser(per_member.mean(0)), atol=1e-6)
    # Evaluation and file scoring take the ensemble folder like a single model's.
    path = tmp_path / "eval.jsonl"
    write_jsonl(path, rows)
    assert evaluate_reward_model(RMEvalConfig(rm=str(out), data=str(path)))["accuracy"] >= 0.9
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, [{"prompt": p, "response": r} for p, r in zip(prompts, responses)])
    assert score_file(RMScoreConfig(rm=str(out), input=str(src), output=str(dst)))["n"] == 20
    (out / "normaliser.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"ens-rm.*normaliser\.json"):
        RewardModel.load(out)


def test_half_split_gives_disjoint_deterministic_training_halves(tiny_encoder, pref_file,
                                                                 tmp_path):
    train, _ = split_pairs(load_preferences(str(pref_file)), test_fraction=0.2)
    first, second = select_half(train, "first"), select_half(train, "second")
    assert len(first) + len(second) == len(train)
    assert not {p.id for p in first} & {p.id for p in second}
    assert 0.3 < len(first) / len(train) < 0.7
    assert [assign_half(p) for p in train] == [assign_half(p) for p in train]
    assert select_half(train, None) == train

    # The labelling RM on one half, the held-out test RM on the other with another seed.
    labelling = train_reward_model(RMTrainConfig(
        data=str(pref_file), out=str(tmp_path / "label-rm"), base_model=tiny_encoder,
        max_length=32, half="first", seed=0))
    test_rm = train_reward_model(RMTrainConfig(
        data=str(pref_file), out=str(tmp_path / "test-rm"), base_model=tiny_encoder,
        max_length=32, half="second", seed=1))
    assert labelling["n_train"] == len(first) and test_rm["n_train"] == len(second)
    assert labelling["n_test"] == test_rm["n_test"]  # the same held-out pairs for both
    saved = json.loads((tmp_path / "test-rm" / METRICS).read_text())["config"]
    assert (saved["half"], saved["seed"], saved["ensemble"], saved["margin"]) == \
        ("second", 1, 1, 0.0)


# ---------------------------------------------------------------- the decoder family
@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory) -> str:
    """A two-layer random Llama with the tiny ChatML tokenizer (pad token = end-of-turn, as in
    SmolLM2, so the reward model must pick another)."""
    from conftest import build_tiny_policy

    return str(build_tiny_policy(tmp_path_factory.mktemp("tiny_decoder")))


@pytest.fixture(scope="module")
def trained_decoder(tiny_decoder, pref_file, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("rm") / "decoder-rm"
    cfg = RMTrainConfig(data=str(pref_file), out=str(out), family="decoder",
                        base_model=tiny_decoder, freeze_encoder=False, epochs=3, lr=3e-3,
                        batch_size=16, max_length=64, seed=0)
    return out, train_reward_model(cfg)


def test_decoder_family_trains_through_trl_and_round_trips(trained_decoder):
    from rewardprompt.rewards.decoder import DecoderRewardModel

    out, metrics = trained_decoder
    assert metrics["accuracy"] >= 0.9, metrics
    assert json.loads((out / "rm_config.json").read_text())["family"] == "decoder"
    assert not out.with_name(out.name + ".tmp-trainer").exists()  # trainer scratch is removed
    loaded = load_scorer(out)
    assert isinstance(loaded, DecoderRewardModel) and isinstance(loaded, Scorer)
    rows = _pairs(seed=5, n=20)
    prompts = [r["prompt"] for r in rows]
    chosen = loaded.score(prompts, [r["chosen"] for r in rows])
    assert np.all((chosen >= 0) & (chosen <= 1))
    assert np.mean(chosen > loaded.score(prompts, [r["rejected"] for r in rows])) >= 0.9
    again = DecoderRewardModel.load(out).score_raw(prompts, [r["chosen"] for r in rows])
    np.testing.assert_allclose(again, loaded.score_raw(prompts, [r["chosen"] for r in rows]))


def test_decoder_reads_the_reward_at_the_end_of_turn_token(tiny_decoder):
    """The score is the sequence-classification head at the closing end-of-turn token, the same
    value RewardTrainer trains; the pad token differs from it; long inputs keep the response's
    share of the budget and the closing token."""
    from rewardprompt.rewards.decoder import DecoderRewardModel

    m = DecoderRewardModel.from_base(tiny_decoder, max_length=24, seed=0)
    tok = m.tokenizer
    assert tok.pad_token_id != tok.eos_token_id
    rows = _pairs(seed=3, n=6)
    long_prompt = [{"role": "user", "content": "tell me about the red car " * 40}]
    prompts = [r["prompt"] for r in rows] + [long_prompt]
    responses = [r["chosen"] for r in rows] + ["the car is great " * 40]
    batch = m.tokenize(prompts, responses)
    with torch.no_grad():
        seqcls = m.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        np.testing.assert_allclose(m(batch).numpy(), seqcls.logits.squeeze(-1).numpy(),
                                   rtol=1e-5, atol=1e-5)
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        n = int(mask.sum())
        assert n <= 24 and int(ids[n - 1]) == tok.eos_token_id
    # Both too long: of the 23 tokens before the closing one, the response keeps half (11), cut
    # at its end; the prompt keeps its last 12, so it still ends with the assistant header.
    ids = m.encode(long_prompt, "the car is great " * 40)
    full_prompt = tok(m._prompt_text(long_prompt), add_special_tokens=False)["input_ids"]
    full_response = tok("the car is great " * 40, add_special_tokens=False)["input_ids"]
    assert ids == full_prompt[-12:] + full_response[:11] + [tok.eos_token_id]


def test_decoder_train_layers_freezes_the_lower_blocks(tiny_decoder, pref_file, tmp_path):
    from rewardprompt.rewards import train as train_mod
    from rewardprompt.rewards.decoder import DecoderRewardModel

    m = DecoderRewardModel.from_base(tiny_decoder, max_length=32)
    train_mod._freeze_below(m, 1)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert any(".layers.1." in n for n in trainable) and "model.score.weight" in trainable
    assert not any(".layers.0." in n or "embed_tokens" in n for n in trainable)
    train_reward_model(RMTrainConfig(
        data=str(pref_file), out=str(tmp_path / "rm"), family="decoder", base_model=tiny_decoder,
        freeze_encoder=False, train_layers=1, epochs=1, lr=1e-2, max_length=32, limit=40))
    base = DecoderRewardModel.from_base(tiny_decoder).model.state_dict()
    tuned = DecoderRewardModel.load(tmp_path / "rm").model.state_dict()
    for name, value in tuned.items():
        if ".layers.0." in name or "embed_tokens" in name:
            torch.testing.assert_close(value, base[name], msg=name)  # frozen: unchanged
    assert any(not torch.equal(v, base[n]) for n, v in tuned.items() if ".layers.1." in n)
    with pytest.raises(ValueError, match="model has 2 blocks"):
        train_mod._freeze_below(m, 3)
    with pytest.raises(ValueError, match="freeze_encoder=True trains only the head"):
        RMTrainConfig(data="x", out="y", family="decoder", train_layers=1).validate()
    with pytest.raises(ValueError, match="pooling='last' applies to the decoder family only"):
        RMTrainConfig(data="x", out="y", pooling="last").validate()
    with pytest.raises(ValueError, match="apply to the decoder family only"):
        RMTrainConfig(data="x", out="y", train_layers=1).validate()
    with pytest.raises(ValueError, match="family must be one of"):
        RMTrainConfig(data="x", out="y", family="lstm").validate()


def test_decoder_frozen_head_and_ensemble_load_by_family(tiny_decoder, tiny_encoder, pref_file,
                                                         tmp_path):
    from rewardprompt.rewards.train import HEAD_CS

    # Mean-pooled states of a random 2-layer Llama still separate "great" from "awful" linearly.
    metrics = train_reward_model(RMTrainConfig(data=str(pref_file), out=str(tmp_path / "rm"),
                                               family="decoder", base_model=tiny_decoder,
                                               pooling="mean", max_length=48))
    assert metrics["accuracy"] >= 0.9, metrics
    assert metrics["head_c"][0] in HEAD_CS
    train_reward_model(RMTrainConfig(data=str(pref_file), out=str(tmp_path / "ens"),
                                     family="decoder", base_model=tiny_decoder,
                                     freeze_encoder=False, ensemble=2, epochs=1, lr=1e-3,
                                     max_length=32, limit=40))
    ens = load_scorer(tmp_path / "ens")
    assert isinstance(ens, RewardEnsemble) and len(ens.members) == 2
    assert {m.family for m in ens.members} == {"decoder"}
    # Members of different families have raw scores on different scales: no mixed ensembles.
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "ens", mixed)
    shutil.rmtree(mixed / "member-1")
    RewardModel.from_base(tiny_encoder, max_length=32).save_weights(mixed / "member-1")
    with pytest.raises(ValueError, match="mixes families"):
        load_scorer(mixed)


def test_pad_token_is_never_the_end_of_sequence_token():
    from rewardprompt.rewards.decoder import pad_token_for

    class Tok:
        def __init__(self, pad, eos, unk, vocab):
            self.pad_token, self.eos_token, self.unk_token, self._vocab = pad, eos, unk, vocab

        def get_vocab(self):
            return dict.fromkeys(self._vocab, 0)

    assert pad_token_for(Tok("<pad>", "</s>", None, ["<pad>", "</s>"])) == ("<pad>", False)
    assert pad_token_for(Tok("</s>", "</s>", None, ["<|endoftext|>", "</s>"])) == \
        ("<|endoftext|>", False)
    assert pad_token_for(Tok(None, "</s>", "<unk>", ["<unk>", "</s>"])) == ("<unk>", False)
    assert pad_token_for(Tok("</s>", "</s>", None, ["</s>"])) == ("<|pad|>", True)


# ---------------------------------------------------------------- benchmark
@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_bench_rm_times_both_trainers_and_writes_json(family, tiny_encoder, tiny_decoder,
                                                      pref_file, tmp_path):
    from rewardprompt.bench import BenchRMConfig, bench_rm

    out = tmp_path / "bench" / "bench.json"
    base = tiny_encoder if family == "encoder" else tiny_decoder
    result = bench_rm(BenchRMConfig(out=str(out), family=family, base_model=base,
                                    data=str(pref_file), pairs=16, batch_size=8, max_length=128,
                                    repeats=1))
    saved = json.loads(out.read_text())["rm"][family]
    assert saved["ratio"] == pytest.approx(result["ratio"])
    assert saved["precision"] == {"rewardprompt": "fp32", "trl": "fp32"}  # CPU pinned to fp32
    for name in ("rewardprompt", "trl"):
        run = saved["runs"][name][0]
        assert run["pairs_trained"] == 16 and run["train_s"] > 0
        assert saved["median_examples_per_second"][name] == pytest.approx(
            run["examples_per_second"])
    assert saved["ratio"] == pytest.approx(saved["median_examples_per_second"]["rewardprompt"]
                                           / saved["median_examples_per_second"]["trl"])
    with pytest.raises(ValueError, match="dropped all 16 pairs"):
        bench_rm(BenchRMConfig(out=str(tmp_path / "x.json"), family=family, base_model=base,
                               data=str(pref_file), pairs=16, batch_size=8, max_length=16,
                               repeats=1))


def test_decoder_truncated_layers_and_mean_pooling(tiny_decoder, pref_file, tmp_path):
    """layers=k keeps the first k blocks (saved so); pooling="mean" averages exactly the response
    tokens and the closing end-of-turn token, so prompt and padding do not move the features."""
    from rewardprompt.rewards.decoder import DecoderRewardModel

    train_reward_model(RMTrainConfig(data=str(pref_file), out=str(tmp_path / "rm"),
                                     family="decoder", base_model=tiny_decoder, layers=1,
                                     pooling="mean", max_length=48))
    m = DecoderRewardModel.load(tmp_path / "rm")
    assert len(m.model.base_model.layers) == 1 and m.pooling == "mean"
    assert json.loads((tmp_path / "rm" / "rm_config.json").read_text())["layers"] == 1
    rows = _pairs(seed=9, n=3)
    replies = ["the car is great", "ok", "the book is awful"]  # short: nothing is cut
    batch = m.tokenize([r["prompt"] for r in rows], replies)
    n_resp = [len(m.tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in replies]
    assert batch["response_mask"].sum(1).tolist() == n_resp
    assert torch.all(batch["response_mask"] <= batch["attention_mask"])
    with torch.no_grad():
        hidden = m.model.base_model(input_ids=batch["input_ids"],
                                    attention_mask=batch["attention_mask"]).last_hidden_state
        n = int(batch["attention_mask"][1].sum())
        expected = hidden[1, n - n_resp[1]:n].mean(0)
        torch.testing.assert_close(m.embed(batch)[1], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pooling='mean' is a head on frozen features"):
        RMTrainConfig(data="x", out="y", family="decoder", pooling="mean",
                      freeze_encoder=False).validate()
    with pytest.raises(ValueError, match="layers must be in 1..2"):
        DecoderRewardModel.from_base(tiny_decoder, layers=3)


def test_cpu_bf16_autocast_is_chosen_by_the_cpu_and_saved(tiny_decoder, pref_file, tmp_path,
                                                          monkeypatch):
    """On a CPU with native bf16 the features are computed under bf16 autocast (close to fp32);
    cpu_bf16=False, or a CPU without native bf16, keeps fp32. Training records the precision it
    actually used, and a loaded model scores the way its head and normaliser were fitted."""
    import rewardprompt.rewards.model as model_mod
    from rewardprompt.device import cpu_has_fast_bf16
    from rewardprompt.rewards.decoder import DecoderRewardModel

    assert cpu_has_fast_bf16() is False  # conftest pins the tests to fp32
    m = DecoderRewardModel.from_base(tiny_decoder, max_length=48, seed=0)
    rows = _pairs(seed=3, n=12)
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    fp32 = m.score_raw(prompts, responses)
    seen = []
    real_autocast = torch.autocast

    def spy(device_type, *args, **kwargs):
        seen.append((device_type, kwargs.get("dtype")))
        return real_autocast(device_type, *args, **kwargs)

    monkeypatch.setattr(model_mod.torch, "autocast", spy)
    monkeypatch.setenv("REWARDPROMPT_CPU_BF16", "1")  # as on a CPU with native bf16
    assert m.uses_bf16()
    bf16 = m.score_raw(prompts, responses)
    assert seen and seen[0] == ("cpu", torch.bfloat16)
    assert not np.array_equal(bf16, fp32)  # autocast really ran in bf16
    np.testing.assert_allclose(bf16, fp32, atol=0.05 * np.abs(fp32).max() + 1e-3)
    seen.clear()
    m.cpu_bf16 = False
    np.testing.assert_array_equal(m.score_raw(prompts, responses), fp32)
    assert not seen
    # rm train records the precision it used: bf16 here, fp32 when told cpu_bf16=False
    for flag in (True, False):
        out = tmp_path / f"rm-{flag}"
        train_reward_model(RMTrainConfig(data=str(pref_file), out=str(out), family="decoder",
                                         base_model=tiny_decoder, max_length=48, cpu_bf16=flag))
        assert json.loads((out / "rm_config.json").read_text())["cpu_bf16"] is flag
        assert load_scorer(out).cpu_bf16 is flag
