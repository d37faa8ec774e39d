"""The label stage: clipping, sentence prefixes, and rewards from every dimension's scorer."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from rewardprompt.labelling import LabelConfig, clip_response, run_label, sentence_prefixes
from rewardprompt.runs import read_jsonl, write_jsonl


def test_sentence_prefixes_end_at_sentences():
    text = "Preheat the oven: 1. Season it. 2. Bake it! Serve it hot? Enjoy"
    got = sentence_prefixes(text, 10)
    assert got == ["Preheat the oven:", "Preheat the oven: 1. Season it.",
                   "Preheat the oven: 1. Season it. 2. Bake it!",
                   "Preheat the oven: 1. Season it. 2. Bake it! Serve it hot?"]
    assert len(sentence_prefixes(text, 2)) == 2
    assert sentence_prefixes("no end here", 3) == [] and sentence_prefixes(text, 0) == []


def test_clip_response_cuts_at_a_sentence(tiny_policy):
    tok = AutoTokenizer.from_pretrained(tiny_policy)
    text = "Sure! Here is a list. " * 20
    clipped = clip_response(tok, text, 40)
    assert len(tok(clipped, add_special_tokens=False)["input_ids"]) <= 40
    assert clipped.endswith((".", "!"))
    assert clip_response(tok, "Short.", 40) == "Short."


def test_label_writes_rewards_per_dimension(tmp_path, tiny_policy):
    write_jsonl(tmp_path / "pairs.jsonl", [
        {"id": "a", "prompt": [{"role": "user", "content": "hi"}],
         "chosen": "Sure. Here you go. Bye.", "rejected": "I'm sorry, no."}])
    out = tmp_path / "train.jsonl"
    res = run_label(LabelConfig(pairs=[str(tmp_path / "pairs.jsonl")], policy=str(tiny_policy),
                                scorers={"length": "synthetic:length:4",
                                         "sorry": "synthetic:keyword:sorry"},
                                out=str(out), prefixes=2))
    rows = read_jsonl(out)
    assert res["n"] == len(rows) == 4  # chosen, rejected, two prefixes of the chosen reply
    by_id = {r["id"]: r for r in rows}
    assert by_id["a:rejected"]["rewards"] == {"length": 0.75, "sorry": 1.0}
    assert by_id["a:chosen"]["rewards"] == {"length": 1.0, "sorry": 0.0}
    assert {r["source"] for r in rows} == {"chosen", "rejected", "chosen-prefix"}
    assert set(res["labels"]) == {"length", "sorry"}


def test_clipped_replies_keep_their_end_of_turn_token(tmp_path, tiny_policy):
    from rewardprompt.policy.tokenise import tokenise_example
    from rewardprompt.template import RewardTemplate

    write_jsonl(tmp_path / "pairs.jsonl", [
        {"id": "a", "prompt": [{"role": "user", "content": "hi"}],
         "chosen": "Sure! Here is a list. " * 30, "rejected": "No. " * 40}])
    run_label(LabelConfig(pairs=[str(tmp_path / "pairs.jsonl")], policy=str(tiny_policy),
                          scorers={"length": "synthetic:length:4"}, out=str(tmp_path / "t.jsonl"),
                          max_completion_tokens=16))
    tok = AutoTokenizer.from_pretrained(tiny_policy)
    end = tok("<|im_end|>\n", add_special_tokens=False)["input_ids"]
    for r in read_jsonl(tmp_path / "t.jsonl"):
        ex = tokenise_example(tok, r["prompt"], r["response"], template=RewardTemplate(("length",)),
                              targets=r["rewards"], max_completion_tokens=16)
        assert ex["labels"][-len(end):] == end  # the clipped reply still ends its turn


def test_keep_extremes_keeps_best_and_worst_per_prompt_and_dimension(tmp_path, tiny_policy):
    hi, bye = [{"role": "user", "content": "hi"}], [{"role": "user", "content": "bye"}]
    write_jsonl(tmp_path / "samples.jsonl", [
        {"id": "p", "prompt": hi, "response": "One two three four."},   # longest
        {"id": "p", "prompt": hi, "response": "One, sorry."},           # has the keyword
        {"id": "p", "prompt": hi, "response": "One two."},
        {"id": "p", "prompt": hi, "response": "One."},                  # shortest
        {"id": "q", "prompt": bye, "response": "Fine then."},
        {"id": "q", "prompt": bye, "response": "Fine then, goodbye."}])
    out = tmp_path / "train.jsonl"
    res = run_label(LabelConfig(samples=[str(tmp_path / "samples.jsonl")], policy=str(tiny_policy),
                                scorers={"length": "synthetic:length:4",
                                         "sorry": "synthetic:keyword:sorry"},
                                out=str(out), keep="extremes"))
    kept = [r["response"] for r in read_jsonl(out)]
    # prompt "hi": longest and shortest (length), the keyword reply and the first without it
    # (sorry); prompt "bye": both replies (the only two).
    assert kept == ["One two three four.", "One, sorry.", "One.", "Fine then.",
                    "Fine then, goodbye."]
    assert res["n"] == 5 and res["n_scored"] == 6
    assert res["labels"]["sorry"]["mean"] == 0.2  # statistics of the rows written
    with pytest.raises(ValueError, match="use prefixes=0"):
        run_label(LabelConfig(samples=[str(tmp_path / "samples.jsonl")], policy=str(tiny_policy),
                              scorers={"length": "synthetic:length:4"}, out=str(out),
                              keep="extremes", prefixes=2))
    with pytest.raises(ValueError, match="keep must be one of"):
        run_label(LabelConfig(samples=[str(tmp_path / "samples.jsonl")], policy=str(tiny_policy),
                              scorers={"length": "synthetic:length:4"}, out=str(out),
                              keep="best"))


def test_steered_samples_keep_their_prefill(tmp_path, tiny_policy):
    prompt = [{"role": "user", "content": "hi"}]
    write_jsonl(tmp_path / "s.jsonl", [
        {"id": "a", "prompt": prompt, "response": "I'm sorry, I can't.", "prefill": "I'm sorry"},
        {"id": "a", "prompt": prompt, "response": "Sure. Bye."}])
    run_label(LabelConfig(samples=[str(tmp_path / "s.jsonl")], policy=str(tiny_policy),
                          scorers={"sorry": "synthetic:keyword:sorry"}, out=str(tmp_path / "t.jsonl")))
    rows = read_jsonl(tmp_path / "t.jsonl")
    assert [(r["source"], r.get("prefill"), r["rewards"]["sorry"]) for r in rows] == [
        ("policy-steered", "I'm sorry", 1.0), ("policy", None, 0.0)]
