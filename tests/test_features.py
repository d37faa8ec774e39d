"""The feature store: reward models that share a frozen backbone embed each text once, on disk
across runs; another backbone, a changed weight or the cache turned off computes afresh."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from rewardprompt.rewards.decoder import DecoderRewardModel
from rewardprompt.rewards.features import (disabled, feature_store, featuriser_key,
                                           tokenizer_fingerprint)
from rewardprompt.rewards.model import BaseRewardModel
from rewardprompt.rewards.train import RMTrainConfig, train_reward_model
from rewardprompt.runs import write_jsonl

WORDS = "bread flour water yeast salt bake quick brown fox lazy dog first second third".split()


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory) -> str:
    from conftest import build_tiny_policy

    return str(build_tiny_policy(tmp_path_factory.mktemp("tiny_decoder"), layers=3))


@pytest.fixture
def store_dir(tmp_path, monkeypatch):
    import rewardprompt.rewards.features as features

    monkeypatch.setenv("REWARDPROMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(features, "_STORES", {})  # no process memory from another test
    return tmp_path / "cache" / "features"


@pytest.fixture
def counted(monkeypatch):
    """The texts every reward model passes through its backbone."""
    seen: list[int] = []
    embed = BaseRewardModel._batched

    def batched(self, prompts, responses, batch_size):
        seen.append(len(responses))
        return embed(self, prompts, responses, batch_size)

    monkeypatch.setattr(BaseRewardModel, "_batched", batched)
    return seen


def _texts(n: int, seed: int = 0) -> tuple[list, list[str]]:
    rng = random.Random(seed)
    prompts = [[{"role": "user", "content": " ".join(rng.sample(WORDS, 3))}] for _ in range(n)]
    return prompts, [" ".join(rng.sample(WORDS, 5)) for _ in range(n)]


def _model(base: str, **kw) -> DecoderRewardModel:
    m = DecoderRewardModel.from_base(base, max_length=32, layers=2, pooling="mean", seed=0, **kw)
    m.requires_grad_(False)
    return m


def test_two_heads_on_one_backbone_embed_each_text_once(tiny_decoder, store_dir, counted):
    prompts, responses = _texts(12)
    with disabled():
        fresh = _model(tiny_decoder).embed_texts(prompts, responses)
    assert counted == [12] and not store_dir.exists()

    first, second = _model(tiny_decoder), _model(tiny_decoder)
    torch.nn.init.normal_(second.head.weight)  # another head: the same featuriser
    assert featuriser_key(first) == featuriser_key(second)
    a = first.embed_texts(prompts, responses)
    # The second model's texts, half of them new, in another order and with a repeat.
    more_p, more_r = _texts(6, seed=1)
    order = [5, 0, 3, 3]
    b = second.embed_texts([prompts[i] for i in order] + more_p,
                           [responses[i] for i in order] + more_r)
    assert counted == [12, 12, 6]  # only the 6 new texts went through the backbone
    torch.testing.assert_close(a, fresh, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b[:4], a[order])
    # The raw score is the head on those features, for both models.
    raw = second.score_raw(prompts, responses)
    assert counted == [12, 12, 6]
    np.testing.assert_allclose(raw, (a @ second.head.weight.T).squeeze(-1).numpy(), rtol=1e-5,
                               atol=1e-6)

    # Another process (a cold memory) reads the shards back.
    import rewardprompt.rewards.features as features

    features._STORES.clear()
    c = _model(tiny_decoder).embed_texts(more_p, more_r)
    assert counted == [12, 12, 6] and torch.equal(c, b[4:])


def test_another_backbone_or_a_changed_weight_is_another_featuriser(tiny_decoder, store_dir,
                                                                    counted):
    prompts, responses = _texts(5)
    m = _model(tiny_decoder)
    key = featuriser_key(m)
    m.embed_texts(prompts, responses)
    assert featuriser_key(_model(tiny_decoder, turns="all")) != key
    three = DecoderRewardModel.from_base(tiny_decoder, max_length=32, layers=3, pooling="mean")
    assert featuriser_key(three) != key
    with torch.no_grad():  # a training step writes the weights in place
        next(m.model.base_model.parameters()).add_(0.01)
    assert featuriser_key(m) != key
    before = len(counted)
    m.embed_texts(prompts, responses)
    assert counted[before:] == [5]
    changed = featuriser_key(m)
    with torch.no_grad():
        m.head.weight.mul_(2.0)  # the head is not part of the featuriser
    assert featuriser_key(m) == changed


def test_the_text_key_is_what_the_family_reads(tiny_decoder, store_dir, counted):
    m = _model(tiny_decoder)
    system = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "bake bread"}]
    plain = [{"role": "user", "content": "bake bread"}]
    m.embed_texts([system], ["flour water"])
    m.embed_texts([plain, "bake bread"], ["flour water", "flour water"])  # the same last turn
    assert counted == [1]
    whole = _model(tiny_decoder, turns="all")
    whole.embed_texts([system, plain], ["flour water", "flour water"])
    assert counted == [1, 2]  # the whole dialogue differs when a system turn leads it


def test_the_cache_turned_off_or_a_bad_shard_recomputes(tiny_decoder, store_dir, counted,
                                                        monkeypatch):
    prompts, responses = _texts(4)
    m = _model(tiny_decoder)
    monkeypatch.setenv("REWARDPROMPT_CACHE", "off")
    assert feature_store() is None
    m.embed_texts(prompts, responses)
    m.embed_texts(prompts, responses)
    assert counted == [4, 4] and not store_dir.exists()
    monkeypatch.setenv("REWARDPROMPT_CACHE", str(store_dir.parent))
    with disabled():
        assert feature_store() is None
    with disabled(False):
        assert feature_store() is not None
    m.embed_texts(prompts, responses)
    [shard] = list((store_dir / featuriser_key(m)).iterdir())
    shard.write_bytes(b"not a shard")
    import rewardprompt.rewards.features as features

    features._STORES.clear()
    with pytest.warns(UserWarning, match="unreadable shard"):
        m.embed_texts(prompts, responses)
    assert counted == [4, 4, 4, 4]
    features._STORES.clear()  # the recomputed features were stored in a shard of their own
    with pytest.warns(UserWarning, match="unreadable shard"):
        m.embed_texts(prompts, responses)
    assert counted == [4, 4, 4, 4]


def test_tokenizer_fingerprint_sees_the_chat_template(tiny_decoder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_decoder)
    before = tokenizer_fingerprint(tok)
    tok.chat_template = tok.chat_template.replace("helpful", "careful")
    assert tokenizer_fingerprint(tok) != before


def test_tokenizer_fingerprint_ignores_and_keeps_the_per_call_truncation_and_padding(tiny_decoder):
    """transformers sets truncation and padding on the fast tokenizer at every call: the
    fingerprint is the same before and after a call, and leaves the state the call set."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_decoder)
    before = tokenizer_fingerprint(tok)
    tok(["a b c"], truncation=True, max_length=2, padding="max_length")
    backend = tok.backend_tokenizer
    state = (backend.truncation, backend.padding)
    assert state[0] is not None and state[1] is not None
    assert tokenizer_fingerprint(tok) == before
    assert (backend.truncation, backend.padding) == state


def test_labelling_and_test_rm_share_features_of_the_held_out_pairs(tiny_decoder, store_dir,
                                                                   counted, tmp_path):
    """The recipe's two RMs of a dimension train on the two halves and both score the held-out
    pairs: the second embeds only its own half."""
    rng = random.Random(0)
    rows = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"{w} {i}"}],
             "chosen": " ".join(rng.sample(WORDS, 4)), "rejected": " ".join(rng.sample(WORDS, 4))}
            for i, w in enumerate(WORDS * 3)]
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    write_jsonl(train, rows[:36])
    write_jsonl(test, rows[36:])
    runs = {}
    for half in ("first", "second"):
        cfg = RMTrainConfig(data=str(train), eval_data=str(test), out=str(tmp_path / half),
                            test_fraction=0.0, family="decoder", base_model=tiny_decoder,
                            layers=2, pooling="mean", max_length=32, half=half)
        runs[half] = train_reward_model(cfg)
    n_first, n_second = runs["first"]["n_train"], runs["second"]["n_train"]
    assert counted == [2 * n_first, 2 * len(rows[36:]), 2 * n_second]
    with disabled():  # the same figures as a run that computes every feature itself
        cold = train_reward_model(RMTrainConfig(
            data=str(train), eval_data=str(test), out=str(tmp_path / "cold"), test_fraction=0.0,
            family="decoder", base_model=tiny_decoder, layers=2, pooling="mean", max_length=32,
            half="second"))
    for key in ("accuracy", "train_accuracy", "n_train", "n_test"):
        assert cold[key] == runs["second"][key]
    prompts, chosen = [r["prompt"] for r in rows[36:]], [r["chosen"] for r in rows[36:]]
    with disabled():
        warm, cold_rm = (BaseRewardModel.load(tmp_path / name) for name in ("second", "cold"))
        np.testing.assert_allclose(warm.score(prompts, chosen), cold_rm.score(prompts, chosen),
                                   atol=1e-6)


def test_batches_hold_one_token_length_so_nothing_is_padded(tiny_decoder, monkeypatch):
    """A text's features do not depend on its batch: each batch is unpadded, and a text embedded
    among others gets the features it gets alone."""
    m = DecoderRewardModel.from_base(tiny_decoder, max_length=128, layers=2, pooling="mean")
    widths: list[int] = []
    embed = m.embed

    def unpadded(batch):
        assert bool(batch["attention_mask"].all()), "a padded batch"
        widths.append(batch["input_ids"].shape[1])
        return embed(batch)

    monkeypatch.setattr(m, "embed", unpadded)
    prompts, responses = _texts(16)
    with disabled():  # every feature computed, none read back
        together = m.embed_texts(prompts, responses, batch_size=4)
    assert len(set(widths)) > 1 and sorted(widths) == widths  # several lengths, shortest first
    with disabled():
        alone = torch.cat([m.embed_texts([p], [r]) for p, r in zip(prompts, responses)])
    torch.testing.assert_close(together, alone)


@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_a_trained_rm_loaded_from_its_folder_reads_the_features_it_trained_on(
        family, tiny_encoder, tiny_decoder, store_dir, counted, tmp_path):
    """Training embeds the pairs; the saved folder, loaded as the label stage loads it, is the
    same featuriser (its tokenizer was used, its config saved), so scoring them again embeds
    nothing; the rm train metrics count what was read and computed."""
    from rewardprompt.rewards.model import BaseRewardModel as RM

    rng = random.Random(1)
    rows = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"{w} bake {i}"}],
             "chosen": " ".join(rng.sample(WORDS, 4)), "rejected": " ".join(rng.sample(WORDS, 4))}
            for i, w in enumerate(WORDS * 2)]
    data = tmp_path / "pairs.jsonl"
    write_jsonl(data, rows)
    extra = {"layers": 2, "pooling": "mean"} if family == "decoder" else {}
    base = tiny_decoder if family == "decoder" else str(tiny_encoder)
    metrics = train_reward_model(RMTrainConfig(
        data=str(data), out=str(tmp_path / "rm"), test_fraction=0.0, family=family,
        base_model=base, max_length=32, **extra))
    n = metrics["n_train"]
    assert counted == [2 * n] and metrics["features"] == {"read": 0, "computed": 2 * n}
    loaded = RM.load(tmp_path / "rm")
    trained = [r for r in rows if r["chosen"] != r["rejected"]]
    loaded.score_raw([r["prompt"] for r in trained], [r["chosen"] for r in trained])
    assert counted == [2 * n]


def test_inference_tensors_are_hashed_every_time(tiny_decoder, store_dir, counted):
    with torch.inference_mode():
        m = _model(tiny_decoder)
        prompts, responses = _texts(3)
        a = m.embed_texts(prompts, responses)
        b = m.embed_texts(prompts, responses)
    assert counted == [3] and torch.equal(a, b)


def test_a_recipe_with_cache_false_reads_and_writes_no_features(monkeypatch, store_dir):
    import rewardprompt.recipe as recipe

    seen = []
    monkeypatch.setattr(recipe, "_run_recipe", lambda cfg: seen.append(feature_store()))
    for cache in (False, True):
        recipe.run_recipe(recipe.RecipeConfig(out=str(store_dir.parent / "run"), cache=cache))
    assert seen[0] is None and seen[1] is not None
