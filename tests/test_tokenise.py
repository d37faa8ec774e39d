"""Completion-only masking: the one tokenise-and-mask function and the padding collator."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from rewardprompt.policy.tokenise import IGNORE, fit_prompt, render_prompt, tokenise_example
from rewardprompt.template import RewardTemplate

DIALOGUE = [{"role": "user", "content": "How do I bake bread?"},
            {"role": "assistant", "content": "Mix flour and water."},
            {"role": "user", "content": "And then what?"}]
RESPONSE = "Bake it for forty minutes. Sure!"


@pytest.fixture(scope="module")
def tok(tiny_policy):
    return AutoTokenizer.from_pretrained(tiny_policy)


def _split(example):
    n_prompt = sum(1 for label in example["labels"] if label == IGNORE)
    return example["input_ids"][:n_prompt], example["input_ids"][n_prompt:], n_prompt


@pytest.mark.parametrize("position", ["bottom", "top", "reply"])
@pytest.mark.parametrize("duplicate", [1, 2])
def test_prompt_and_block_masked_completion_trained(tok, position, duplicate):
    t = RewardTemplate(position=position, duplicate=duplicate)
    targets = {"helpful": 0.42, "harmless": 0.75}
    ex = tokenise_example(tok, DIALOGUE, RESPONSE, template=t, targets=targets,
                          max_prompt_tokens=512, max_completion_tokens=512)
    prompt_ids, completion_ids, n_prompt = _split(ex)
    # The masked part is exactly the rendered prompt, reward block included ...
    prompt_text = tok.decode(prompt_ids)
    assert prompt_text == render_prompt(tok, t.apply(DIALOGUE, targets))
    assert t.render(targets) in prompt_text
    # ... masking is a prefix (no trained token inside the prompt) ...
    assert all(label == IGNORE for label in ex["labels"][:n_prompt])
    # ... and every completion token is trained, the end-of-turn token included.
    assert ex["labels"][n_prompt:] == completion_ids
    assert completion_ids[-2:] == tok("<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert tok.decode(completion_ids).startswith(RESPONSE)


def test_truncation_keeps_block_and_masks(tok):
    for position in ("bottom", "top", "reply"):
        t = RewardTemplate(position=position)
        targets = {"helpful": 0.1, "harmless": 0.9}
        long = [{"role": "user", "content": "word " * 300}] + DIALOGUE[1:]
        ex = tokenise_example(tok, long, RESPONSE * 20, template=t, targets=targets,
                              max_prompt_tokens=80, max_completion_tokens=16)
        prompt_ids, completion_ids, n_prompt = _split(ex)
        assert n_prompt <= 80
        assert t.render(targets) in tok.decode(prompt_ids)   # the block survived the cut
        assert len(completion_ids) == 16                      # cut completion, all trained
        assert ex["labels"][n_prompt:] == completion_ids


@pytest.mark.parametrize("position", ["bottom", "top", "reply"])
def test_a_duplicated_block_takes_no_room_from_the_dialogue(tok, position):
    """The budget counts one copy of the block: 1, 2 or 4 copies keep the same dialogue."""
    targets = {"helpful": 0.1, "harmless": 0.9}
    long = [{"role": "user", "content": "word " * 300}] + DIALOGUE[1:]
    kept = set()
    for k in (1, 2, 4):
        t = RewardTemplate(position=position, duplicate=k)
        shown = fit_prompt(tok, long, t, targets, 80)
        text = render_prompt(tok, shown)
        assert text.count(RewardTemplate(position=position).render(targets)) == k
        kept.add(text.replace("\n" + t.render(targets), "").replace(t.render(targets), ""))
    assert len(kept) == 1


def test_fit_prompt_refuses_impossible_budget(tok):
    with pytest.raises(ValueError, match="no room"):
        fit_prompt(tok, DIALOGUE, RewardTemplate(), {"helpful": .5, "harmless": .5}, 10)


def test_a_prefill_is_continued_in_the_same_turn(tok):
    prefill = [{"role": "assistant", "content": "Bake it"}]
    ex = tokenise_example(tok, DIALOGUE + prefill, " for forty minutes.", template=RewardTemplate(),
                          targets=None, max_prompt_tokens=512, max_completion_tokens=512)
    prompt_ids, completion_ids, _ = _split(ex)
    assert tok.decode(prompt_ids) == render_prompt(tok, DIALOGUE + prefill)
    assert tok.decode(completion_ids) == " for forty minutes.<|im_end|>\n"  # no new turn


def test_reply_position_block_and_prefill_are_prompt(tok):
    """At the reply position the block opens the reply, before any prefill; neither is trained."""
    t = RewardTemplate(position="reply", close_tag="", decimals=1)
    targets = {"helpful": 0.1, "harmless": 0.9}
    prefill = [{"role": "assistant", "content": "Bake it"}]
    ex = tokenise_example(tok, DIALOGUE + prefill, " for forty minutes.", template=t,
                          targets=targets, max_prompt_tokens=512, max_completion_tokens=512)
    prompt_ids, completion_ids, _ = _split(ex)
    assert tok.decode(prompt_ids) == render_prompt(tok, DIALOGUE) + t.render(targets) + "Bake it"
    assert tok.decode(completion_ids) == " for forty minutes.<|im_end|>\n"


def test_unconditioned_has_no_block(tok):
    ex = tokenise_example(tok, DIALOGUE, RESPONSE, template=RewardTemplate(), targets=None)
    prompt_ids, _, _ = _split(ex)
    assert "<REWARD>" not in tok.decode(prompt_ids)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_keeps_masks(tok, side):
    t = RewardTemplate()
    exs = [tokenise_example(tok, DIALOGUE[:1], r, template=t, targets={"helpful": .3, "harmless": .6})
           for r in ("Yes.", RESPONSE * 3)]
    from transformers import DataCollatorForSeq2Seq  # what SFT pads its batches with

    old, tok.padding_side = tok.padding_side, side
    try:
        batch = DataCollatorForSeq2Seq(tok, label_pad_token_id=IGNORE)(exs)
    finally:
        tok.padding_side = old
    for row, ex in enumerate(exs):
        mask = batch["attention_mask"][row].bool()
        n = len(ex["input_ids"])
        assert int(mask.sum()) == n
        assert batch["input_ids"][row][mask].tolist() == ex["input_ids"]
        assert batch["labels"][row][mask].tolist() == ex["labels"]
        assert (batch["labels"][row][~mask] == IGNORE).all()   # padding is never trained
        assert bool(mask[0] if side == "right" else mask[-1])
