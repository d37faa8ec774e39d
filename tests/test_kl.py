"""KL to the reference from top-k log-probs, against the exact full-vocabulary KL.

Only what is mathematically guaranteed is asserted: every estimate equals the exact KL when k
is the whole vocabulary, a model's KL to itself is 0, and the lumped estimate is a lower bound
on the exact KL that never decreases as k grows.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import build_tiny_policy
from rewardprompt.evaluation.kl import (METHODS, KLConfig, KLSample, compare_kl, exact_kl,
                                        run_kl, token_id, topk_kl)

PROMPTS = [[{"role": "user", "content": "How do I bake bread?"}],
           [{"role": "user", "content": "The quick brown fox"},
            {"role": "assistant", "content": "Sure! Here"}]]
TOL = 1e-6


def peaked_policy(out: Path, seed: int) -> Path:
    """A tiny random policy with an untied random output head of its own, scaled so that its
    next-token distributions are far from uniform (top-5 mass about a third) and differ from
    another seed's: KLs and top-k tails are then not all near zero. (The tied head of
    build_tiny_policy, scaled up, would only predict the current token again, in every model.)"""
    from transformers import AutoModelForCausalLM

    build_tiny_policy(out, seed=seed)
    model = AutoModelForCausalLM.from_pretrained(out)
    g = torch.Generator().manual_seed(100 + seed)
    vocab, hidden = model.lm_head.weight.shape
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, hidden, generator=g) * 2 / hidden ** 0.5)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("kl")
    return peaked_policy(root / "policy", 0), peaked_policy(root / "reference", 1)


def _load(path: Path):
    from rewardprompt.models import load_policy, load_tokenizer

    return load_policy(str(path), dtype=torch.float32).eval(), load_tokenizer(str(path))


def test_topk_estimates_against_exact_on_random_distributions():
    g = torch.Generator().manual_seed(0)
    V, T = 30, 7
    lp = (3 * torch.randn(T, V, generator=g, dtype=torch.float64)).log_softmax(-1)
    lr = (3 * torch.randn(T, V, generator=g, dtype=torch.float64)).log_softmax(-1)
    exact = exact_kl(lp, lr)
    assert (exact > 0).all()
    order = lp.argsort(-1, descending=True)
    lumped = []
    for k in range(1, V + 1):
        ids = order[:, :k]
        est = {m: topk_kl(ids, lp.gather(-1, ids), lr, m) for m in METHODS}
        lumped.append(est["lumped"])
        assert (est["lumped"] >= -TOL).all() and (est["lumped"] <= exact + TOL).all()
        assert (est["renormalised"] >= -TOL).all()
        if k == V:
            for m in METHODS:
                torch.testing.assert_close(est[m], exact, atol=1e-10, rtol=0)
    # Nested top-k sets: refining the partition never loses divergence.
    assert all((b >= a - TOL).all() for a, b in zip(lumped, lumped[1:]))
    assert (lumped[0] < exact - 1e-3).any()  # and k=1 is not already exact: the test can fail
    for k in (1, 5, V):
        ids = order[:, :k]
        for m in METHODS:  # a distribution's KL to itself
            torch.testing.assert_close(topk_kl(ids, lp.gather(-1, ids), lp, m),
                                       torch.zeros(T, dtype=torch.float64), atol=1e-10, rtol=0)


def test_unknown_method_is_an_error():
    x = torch.zeros(1, 3).log_softmax(-1)
    with pytest.raises(ValueError, match="unknown KL method 'mean'"):
        topk_kl(torch.zeros(1, 1, dtype=torch.long), x[:, :1], x, "mean")


def _local_samples(policy_path: Path, n_vocab_top: int) -> list[KLSample]:
    """Samples of the local backend with their top log-probs, as a server would return them."""
    from rewardprompt.backends import SamplingConfig
    from rewardprompt.backends.local import LocalBackend
    from rewardprompt.policy.tokenise import render_prompt

    backend = LocalBackend(str(policy_path))
    tok = backend.tokenizer
    ids = [tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in PROMPTS]
    sampled = backend.sample(ids * 2, SamplingConfig(max_new_tokens=6, seed=3),
                             top_logprobs=n_vocab_top, progress=False)
    return [KLSample(messages=m, ids=s.ids, logprobs=s.logprobs, top=s.top)
            for m, s in zip(PROMPTS * 2, sampled)]


def test_compare_kl_full_vocabulary_is_exact_and_self_kl_is_zero(models):
    policy_path, reference_path = models
    policy, tok = _load(policy_path)
    reference, _ = _load(reference_path)
    V = len(tok)
    samples = _local_samples(policy_path, V)
    ks = (1, 5, 20, V)
    res = compare_kl(samples, reference, tok, policy, ks=ks)
    # The sampler's log-probs (KV cache) are the teacher-forced ones: the same model.
    assert res["recorded_vs_policy_max_abs_logprob_diff"] < 1e-4
    assert {res["estimates"][str(k)]["source"] for k in ks} == {"recorded"}
    assert res["exact"]["mean_per_sequence"] > 0.1
    for row in res["per_sequence"]:
        lumped = [row["topk"][str(k)]["lumped"] for k in ks]
        assert all(b >= a - 1e-5 for a, b in zip(lumped, lumped[1:]))
        assert all(x <= row["exact"] + 1e-5 for x in lumped)
        for m in METHODS:
            assert row["topk"][str(V)][m] == pytest.approx(row["exact"], abs=1e-4)
    gap = res["estimates"][str(V)]["gap"]
    assert abs(gap["mean"]) < 1e-4
    # The model against itself: every estimate and the exact KL are 0.
    self_res = compare_kl(samples, policy, tok, policy, ks=ks)
    assert self_res["exact"]["mean_per_sequence"] == pytest.approx(0.0, abs=1e-5)
    for k in ks:
        for m in METHODS:
            assert self_res["estimates"][str(k)][m]["mean_per_sequence"] == pytest.approx(0, abs=1e-4)


def test_k_beyond_the_recorded_top_needs_the_policy(models):
    policy_path, reference_path = models
    policy, tok = _load(policy_path)
    reference, _ = _load(reference_path)
    samples = _local_samples(policy_path, 5)
    with pytest.raises(ValueError, match="k=20 needs a local copy of the policy"):
        compare_kl(samples, reference, tok, None, ks=(1, 5, 20))
    res = compare_kl(samples, reference, tok, None, ks=(1, 5))  # no policy: estimates only
    assert "exact" not in res and res["estimates"]["5"]["source"] == "recorded"
    res = compare_kl(samples, reference, tok, policy, ks=(5, 20))
    assert (res["estimates"]["5"]["source"], res["estimates"]["20"]["source"]) == ("recorded", "policy")


def test_token_ids_from_api_tokens(models):
    from rewardprompt.models import load_tokenizer

    tok = load_tokenizer(str(models[0]))
    assert token_id("token_id:17", tok) == 17
    bread = tok.convert_tokens_to_ids("Ġbread")
    assert token_id(" bread", tok) == bread
    with pytest.raises(ValueError, match="tokens-as-ids"):
        token_id("\ufffd", tok)  # several byte tokens decode to it


def test_run_kl_on_served_generations(tmp_path, models):
    """generate --backend openai-chat with log-probs, against rewardprompt serve, then run_kl:
    the rows carry what the KL needs, and the served log-probs are the local model's."""
    from rewardprompt.backends import SamplingConfig
    from rewardprompt.backends.openai_chat import ChatAPIConfig
    from rewardprompt.runs import read_json, read_jsonl, write_jsonl
    from rewardprompt.sampling import GenerateConfig, run_generate
    from rewardprompt.serve import ServeConfig, start_server

    policy_path, reference_path = models
    server, url = start_server(ServeConfig(model=str(policy_path), port=0))
    try:
        write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": p[:1]} for i, p in enumerate(PROMPTS)])
        run_generate(GenerateConfig(
            prompts=str(tmp_path / "p.jsonl"), model=str(policy_path), out=str(tmp_path / "g.jsonl"),
            conditioned=False, samples_per_prompt=2, prefills=["", "Sure"], backend="openai-chat",
            max_prompt_tokens=100, sampling=SamplingConfig(max_new_tokens=6),
            api=ChatAPIConfig(base_url=url, api_key_env="", top_logprobs=20, tokens_as_ids=True,
                              continue_final_message=True)))
    finally:
        server.shutdown()
        server.server_close()
    rows = read_jsonl(tmp_path / "g.jsonl")
    assert len(rows) == 8 and all(len(r["logprobs"]) == r["n_tokens"] for r in rows)
    V = len(_load(policy_path)[1])
    summary = run_kl(KLConfig(generations=str(tmp_path / "g.jsonl"), reference=str(reference_path),
                              policy=str(policy_path), ks=[1, 5, 20, V]))
    assert summary["recorded_vs_policy_max_abs_logprob_diff"] < 1e-4
    est = summary["estimates"]
    assert [est[k]["source"] for k in ("1", "5", "20")] == ["recorded"] * 3
    assert est[str(V)]["source"] == "policy"
    lumped = [est[str(k)]["lumped"]["mean_per_sequence"] for k in (1, 5, 20, V)]
    assert all(b >= a - 1e-5 for a, b in zip(lumped, lumped[1:]))
    assert lumped[-1] == pytest.approx(summary["exact"]["mean_per_sequence"], abs=1e-4)
    written = read_json(tmp_path / "g.kl.json")
    assert len(written["per_sequence"]) == 8 and written["config"]["ks"] == [1, 5, 20, V]
