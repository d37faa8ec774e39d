"""The generate stage: prefilled (steered) sampling and the prompt the policy continues."""
from __future__ import annotations

from transformers import AutoTokenizer

from rewardprompt.backends import SamplingConfig
from rewardprompt.sampling import GenerateConfig, run_generate
from rewardprompt.policy.tokenise import fit_prompt, render_prompt, split_prefill
from rewardprompt.runs import read_jsonl, write_jsonl
from rewardprompt.template import RewardTemplate

DIALOGUE = [{"role": "user", "content": "How do I bake bread? " * 6}]


def test_a_trailing_assistant_message_is_continued(tiny_policy):
    tok = AutoTokenizer.from_pretrained(tiny_policy)
    text = render_prompt(tok, DIALOGUE + [{"role": "assistant", "content": "Sure! Here"}])
    assert text == render_prompt(tok, DIALOGUE) + "Sure! Here"  # open reply, no end-of-turn
    assert split_prefill(DIALOGUE + [{"role": "assistant", "content": "Hi"}]) == (DIALOGUE, "Hi")
    assert split_prefill(DIALOGUE) == (DIALOGUE, "")


def test_fit_prompt_shortens_the_dialogue_never_the_prefill(tiny_policy):
    tok = AutoTokenizer.from_pretrained(tiny_policy)
    t = RewardTemplate()
    msgs = [{"role": "user", "content": "an old turn " * 20}, {"role": "assistant", "content": "ok"},
            *DIALOGUE, {"role": "assistant", "content": "I'm sorry, I can't"}]
    full = len(tok(render_prompt(tok, t.apply(msgs[:-1], {"helpful": 0.5, "harmless": 0.5})),
                   add_special_tokens=False)["input_ids"])
    fitted = fit_prompt(tok, msgs, t, {"helpful": 0.5, "harmless": 0.5}, full - 10)
    assert fitted[-1] == {"role": "assistant", "content": "I'm sorry, I can't"}
    assert [m["role"] for m in fitted] == ["user", "assistant"]
    assert "<REWARD>" in fitted[0]["content"]
    assert len(tok(render_prompt(tok, fitted), add_special_tokens=False)["input_ids"]) <= full - 10


def test_fit_prompt_counts_the_prefill(tiny_policy):
    tok = AutoTokenizer.from_pretrained(tiny_policy)
    t, targets = RewardTemplate(), {"helpful": 0.5, "harmless": 0.5}
    prefill = [{"role": "assistant", "content": "I'm sorry, I can't"}]
    n = lambda msgs: len(tok(render_prompt(tok, msgs), add_special_tokens=False)["input_ids"])
    budget = n(t.apply(DIALOGUE, targets) + prefill) - 3  # the dialogue alone would fit
    fitted = fit_prompt(tok, DIALOGUE + prefill, t, targets, budget)
    assert n(fitted) <= budget and fitted[-1] == prefill[0]
    assert len(fitted[0]["content"]) < len(t.apply(DIALOGUE, targets)[0]["content"])


def test_prefills_sample_every_prompt_once_per_prefill(tmp_path, tiny_policy):
    write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": DIALOGUE},
                                       {"id": "b", "prompt": [{"role": "user", "content": "hi"}]}])
    prefills = ["", "Sure! Here is", "I'm sorry"]
    res = run_generate(GenerateConfig(
        prompts=str(tmp_path / "p.jsonl"), model=str(tiny_policy), out=str(tmp_path / "g.jsonl"),
        conditioned=False, samples_per_prompt=2, prefills=prefills, max_prompt_tokens=160,
        sampling=SamplingConfig(max_new_tokens=4, batch_size=4)))
    rows = read_jsonl(tmp_path / "g.jsonl")
    assert res["n"] == len(rows) == 2 * 2 * 3
    for r in rows:
        assert r["prefill"] in prefills and r["response"].startswith(r["prefill"])
        assert r["prompt"][-1]["role"] == "user"  # the prompt is recorded without its prefill
        assert 0 <= r["n_tokens"] <= 4          # the generated tokens only
    assert sorted(r["prefill"] for r in rows if r["id"] == "a") == sorted(prefills * 2)


def test_reply_position_block_is_prompt_not_response(tmp_path, tiny_policy):
    write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": DIALOGUE}])
    t = RewardTemplate(position="reply", close_tag="", decimals=1)
    run_generate(GenerateConfig(
        prompts=str(tmp_path / "p.jsonl"), model=str(tiny_policy), out=str(tmp_path / "g.jsonl"),
        template=t.to_dict(), samples_per_prompt=3, prefills=["", "Sure"], max_prompt_tokens=160,
        sampling=SamplingConfig(max_new_tokens=4, batch_size=4)))
    rows = read_jsonl(tmp_path / "g.jsonl")
    assert len(rows) == 6
    for r in rows:
        assert "<REWARD>" not in r["response"] and r["response"].startswith(r["prefill"])
        assert set(r["targets"]) == {"helpful", "harmless"}
