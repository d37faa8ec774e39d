"""Scorer specs beyond this package's RM folders: wrapped Hugging Face reward models and a
user's own ``module:function``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import build_tiny_policy, build_tiny_tokenizer
from rewardprompt.rewards.hf import HFRewardModel, RMWrapConfig, wrap_reward_model
from rewardprompt.rewards.scorer import FunctionScorer, Scorer, load_scorer
from rewardprompt.runs import read_json, write_jsonl

PAIRS = [
    {"prompt": "How do I bake bread?", "chosen": "Mix flour, water, yeast and salt, then bake it.",
     "rejected": "I'm sorry, I can't help with that request."},
    {"prompt": "Name three things.", "chosen": "Sure! Here is a list: first, second, third.",
     "rejected": "a a a a b b b"},
    {"prompt": "Tell me about the fox.", "chosen": "The quick brown fox jumps over the lazy dog.",
     "rejected": "word words"},
    {"prompt": "What else?", "chosen": "What else would you like to know?",
     "rejected": "Is there something else I can do?"},
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the tiny model gains nothing from more threads on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _build_rm(out: Path, chat_template: bool = True) -> Path:
    """A 2-layer random LlamaForSequenceClassification (num_labels=1) saved to ``out``."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = build_tiny_tokenizer(out)
    pad_id = tok.convert_tokens_to_ids("<|endoftext|>")  # distinct from the end-of-turn token
    tok.pad_token = "<|endoftext|>"
    tok.save_pretrained(out)
    if not chat_template:
        (out / "chat_template.jinja").unlink()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, num_labels=1, pad_token_id=pad_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def hf_rm(tmp_path_factory) -> Path:
    return _build_rm(tmp_path_factory.mktemp("hf_rm") / "tiny-hf-rm")


@pytest.fixture(scope="module")
def prefs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    write_jsonl(path, PAIRS)
    return path


def _texts() -> tuple[list[list[dict]], list[str]]:
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in PAIRS] * 2
    return prompts, [r["chosen"] for r in PAIRS] + [r["rejected"] for r in PAIRS]


# ---------------------------------------------------------------- Hugging Face reward models
def test_wrap_writes_the_folder_and_load_scorer_scores_in_unit_interval(hf_rm, prefs, tmp_path):
    out = tmp_path / "wrapped"
    result = wrap_reward_model(RMWrapConfig(model=str(hf_rm), data=str(prefs), out=str(out),
                                            max_length=64, batch_size=3))
    assert result["n_pairs"] == len(PAIRS) and 0.0 <= result["accuracy"] <= 1.0
    assert sorted(p.name for p in out.iterdir()) == ["normaliser.json", "rm_config.json"]
    opts = read_json(out / "rm_config.json")
    assert opts["kind"] == "hf" and opts["model"] == str(hf_rm.resolve())
    assert opts["max_length"] == 64 and opts["input"] == "chat_template"
    assert read_json(out / "normaliser.json")["n_fit"] == 2 * len(PAIRS)

    scorer = load_scorer(out)
    assert isinstance(scorer, HFRewardModel) and isinstance(scorer, Scorer)
    assert scorer.name == "wrapped"
    prompts, responses = _texts()
    scores = scorer.score(prompts, responses)
    assert scores.shape == (len(responses),)
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    # The fitting set's own scores span the CDF: the lowest maps to 0, the highest to 1.
    assert scores.min() == 0.0 and scores.max() == 1.0
    # Length-sorted batches and padding do not change a score.
    np.testing.assert_allclose(scorer.score_raw(prompts, responses, batch_size=1),
                               scorer.score_raw(prompts, responses, batch_size=8), atol=1e-5)
    # Rewrapping replaces the folder.
    wrap_reward_model(RMWrapConfig(model=str(hf_rm), data=str(prefs), out=str(out), limit=2,
                                   max_length=64))
    assert read_json(out / "rm_config.json")["fitted_on"]["n_pairs"] == 2


def test_chat_template_input_is_the_dialogue_with_the_response_as_assistant_turn(hf_rm):
    rm = HFRewardModel.from_pretrained(str(hf_rm), max_length=64)
    (text,) = rm.texts([[{"role": "user", "content": "hi"}]], ["hello there"])
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
                         "hello there<|im_end|>\n")
    # Too long: the start is cut, the response and its closing tokens survive.
    batch = rm.tokenize([[{"role": "user", "content": "word " * 200}]], ["the lazy dog"])
    ids = batch["input_ids"][0].tolist()
    assert len(ids) == 64
    assert rm.tokenizer.decode(ids).endswith("the lazy dog<|im_end|>\n")


def test_text_pair_input_without_a_chat_template(tmp_path, prefs):
    folder = _build_rm(tmp_path / "pair-rm", chat_template=False)
    out = tmp_path / "wrapped-pair"
    wrap_reward_model(RMWrapConfig(model=str(folder), data=str(prefs), out=str(out),
                                   max_length=32))
    scorer = load_scorer(out)
    assert read_json(out / "rm_config.json")["input"] == "text_pair"
    prompts, responses = _texts()
    scores = scorer.score(prompts, responses)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_unwrapped_model_folder_or_hub_id_is_a_clear_error(hf_rm):
    with pytest.raises(ValueError, match=r"rewardprompt rm wrap --model .*tiny-hf-rm"):
        load_scorer(hf_rm)
    with pytest.raises(ValueError, match=r"rewardprompt rm wrap --model some-org/some-rm "
                                         r"--data SOURCE --out DIR"):
        load_scorer("some-org/some-rm")


def test_wrap_refuses_a_model_without_a_trained_head_and_overlapping_out(tmp_path, hf_rm, prefs):
    lm = build_tiny_policy(tmp_path / "causal-lm")  # no sequence-classification head
    with pytest.raises(ValueError, match="score.weight"):
        wrap_reward_model(RMWrapConfig(model=str(lm), data=str(prefs), out=str(tmp_path / "o")))
    with pytest.raises(ValueError, match="overlaps the model folder"):
        wrap_reward_model(RMWrapConfig(model=str(hf_rm), data=str(prefs), out=str(hf_rm)))
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to replace"):
        wrap_reward_model(RMWrapConfig(model=str(hf_rm), data=str(prefs), out=str(other)))
    assert (other / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------- module:function
def my_function(prompts: list[list[dict]], responses: list[str]) -> list[float]:
    """Words in the response over 10, clipped to 1."""
    return [min(len(r.split()) / 10, 1.0) for r in responses]


def wrong_length(prompts, responses):
    return [0.5] * (len(responses) - 1)


def out_of_range(prompts, responses):
    return np.full(len(responses), 1.5)


def not_finite(prompts, responses):
    return [float("nan")] * len(responses)


class NotAFunction:
    pass


def test_function_spec_scores_and_satisfies_the_protocol():
    scorer = load_scorer("test_scorers:my_function")
    assert isinstance(scorer, FunctionScorer) and isinstance(scorer, Scorer)
    assert scorer.name == "test_scorers:my_function"
    prompts = [[{"role": "user", "content": "q"}]] * 3
    scores = scorer.score(prompts, ["one two", "a b c d e", " ".join(["w"] * 30)])
    np.testing.assert_allclose(scores, [0.2, 0.5, 1.0])


@pytest.mark.parametrize("fn, match", [("wrong_length", r"shape \(1,\) for 2 responses"),
                                       ("out_of_range", r"in \[0, 1\], first 1\.5 at index 0"),
                                       ("not_finite", "not finite")])
def test_function_spec_bad_returns_name_the_spec(fn, match):
    scorer = load_scorer(f"test_scorers:{fn}")
    with pytest.raises(ValueError, match=match) as err:
        scorer.score([[{"role": "user", "content": "q"}]] * 2, ["a", "b"])
    assert f"test_scorers:{fn}" in str(err.value)


def test_function_spec_import_errors_name_the_spec():
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        load_scorer("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="'test_scorers' has no attribute 'missing'"):
        load_scorer("test_scorers:missing")
    with pytest.raises(ValueError, match="not a function"):
        load_scorer("test_scorers:NotAFunction")
    with pytest.raises(ValueError, match="unknown synthetic scorer"):
        load_scorer("synthetic:nope")
    assert load_scorer("synthetic:length:10").name == "synthetic:length:10"
