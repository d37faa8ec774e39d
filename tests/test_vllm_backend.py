"""The vLLM backend without vLLM (not installable here: no GPU): the error when it is missing,
and its own glue (rendering, token ids, seeds, stop tokens, prefills, prefix caching) against a
stand-in ``vllm`` module that records what it is asked and answers with fixed tokens. What vLLM
itself does with those requests is not tested here."""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest

from rewardprompt.backends.base import SamplingConfig
from rewardprompt.backends import vllm as vllm_backend


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@dataclass
class FakeOutput:
    token_ids: list[int]
    finish_reason: str


@dataclass
class FakeRequestOutput:
    outputs: list[FakeOutput]


@dataclass
class FakeLLM:
    """Answers request i with ``answers[i % len(answers)]``; keeps what it was given."""

    init: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)
    params: list = field(default_factory=list)
    answers: list = field(default_factory=list)

    def generate(self, requests, params):
        self.requests, self.params = list(requests), list(params)
        return [FakeRequestOutput([self.answers[i % len(self.answers)]])
                for i in range(len(self.requests))]


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    made: list[FakeLLM] = []

    def llm(**kwargs):
        made.append(FakeLLM(init=kwargs))
        return made[-1]

    module.LLM = llm
    module.SamplingParams = FakeSamplingParams
    module.made = made
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_a_missing_vllm_says_how_to_get_it(monkeypatch, tiny_policy):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` meets when absent
    with pytest.raises(ImportError, match="pip install vllm"):
        vllm_backend.VLLMBackend(str(tiny_policy))


def test_sampling_params_follow_the_sampling_config(fake_vllm):
    sampled = vllm_backend.sampling_params(fake_vllm, SamplingConfig(max_new_tokens=12,
                                                                     temperature=0.7, top_p=0.9),
                                           seed=5, stop_ids=[2, 7]).kwargs
    assert sampled == {"n": 1, "temperature": 0.7, "top_p": 0.9, "top_k": -1, "max_tokens": 12,
                       "seed": 5, "stop_token_ids": [2, 7], "skip_special_tokens": True}
    greedy = vllm_backend.sampling_params(fake_vllm, SamplingConfig(temperature=0.0, top_p=0.5),
                                          seed=0, stop_ids=[2]).kwargs
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0  # top_p means nothing then


def test_request_seeds_follow_the_local_backends_stride():
    assert vllm_backend.request_seed(0, 3) == 3
    assert vllm_backend.request_seed(2, 3) == 2 * 100003 + 3


def test_generate_renders_like_the_local_backend(fake_vllm, tiny_policy):
    from rewardprompt.backends.local import stop_token_ids
    from rewardprompt.models import load_tokenizer
    from rewardprompt.policy.tokenise import render_prompt

    backend = vllm_backend.VLLMBackend(str(tiny_policy))
    llm = fake_vllm.made[0]
    assert llm.init["enable_prefix_caching"] is True and llm.init["model"] == str(tiny_policy)
    tok = load_tokenizer(str(tiny_policy))
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert backend.eos_ids == stop_token_ids(types.SimpleNamespace(generation_config=None), tok)
    word = tok("Sure", add_special_tokens=False)["input_ids"]
    llm.answers = [FakeOutput(word + [eot], "stop"), FakeOutput(word * 3, "length")]
    prompts = [[{"role": "user", "content": "How do I bake bread?"}],
               [{"role": "user", "content": "How do I bake bread?"},
                {"role": "assistant", "content": "Here is"}]]  # a prefill
    out = backend.generate(prompts, SamplingConfig(max_new_tokens=3, seed=4))
    # token ids of the same rendering as the local backend's, the prefill left open
    assert [r["prompt_token_ids"] for r in llm.requests] == [
        tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
    assert render_prompt(tok, prompts[1]).endswith("Here is")
    assert [p.kwargs["seed"] for p in llm.params] == [4 * 100003, 4 * 100003 + 1]
    assert all(p.kwargs["stop_token_ids"] == backend.eos_ids for p in llm.params)
    # a stopped reply: without its stop token; a cut one: finished False; a prefill leads
    assert (out[0].text, out[0].n_tokens, out[0].finished) == ("Sure", len(word), True)
    assert out[1].finished is False and out[1].n_tokens == 3 * len(word)
    assert out[1].text.startswith("Here is") and out[1].text.endswith("Sure")


def test_an_adapter_folder_is_refused(fake_vllm, tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="LoRA adapter"):
        vllm_backend.VLLMBackend(str(tmp_path))
