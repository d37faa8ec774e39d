"""The reward block: parse(render(x)) == x across the option space, and clear errors."""
from __future__ import annotations

import itertools

import pytest

from rewardprompt.template import RewardTemplate, Target, TemplateError

DIMS = [("helpful",), ("helpful", "harmless"), ("helpful", "harmless", "honest"),
        ("helpful", "harmless", "honest", "concise")]


@pytest.mark.parametrize("dims,position,decimals,duplicate,encoding", list(itertools.product(
    DIMS, ["bottom", "top"], [1, 2, 3], [1, 3], ["digits", "tokens"])))
def test_round_trip(dims, position, decimals, duplicate, encoding):
    t = RewardTemplate(dimensions=dims, position=position, decimals=decimals, duplicate=duplicate,
                       encoding=encoding)
    values = [0.0, 0.05, 0.42, 0.5, 0.999, 1.0]
    for i, op in enumerate(["=", ">=", "<="]):
        targets = {d: Target(t.quantise(values[(i + j) % len(values)]), op)
                   for j, d in enumerate(dims)}
        text = t.render(targets)
        assert text.count(t.open_tag) == duplicate
        assert t.parse(text) == targets
        # parse works on the whole prompt the block was put into, at either position
        msgs = t.apply([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                        {"role": "user", "content": "why?"}], targets)
        assert t.parse("\n".join(m["content"] for m in msgs)) == targets
        where = msgs[2]["content"].endswith if position == "bottom" else msgs[0]["content"].startswith
        assert where(text)


def test_seed_format_exactly():
    text = RewardTemplate().render({"helpful": 0.42, "harmless": 0.75})
    assert text == "<REWARD>\nHelpful reward: 0.42\nHarmless reward: 0.75<SOS>"


def test_satisficing_text():
    t = RewardTemplate(dimensions=("helpful",))
    assert t.render({"helpful": ">= 0.6"}) == "<REWARD>\nHelpful reward: >= 0.60<SOS>"
    assert Target.parse(">=0.6") == Target(0.6, ">=")


@pytest.mark.parametrize("bad", [1.2, -0.1, float("nan"), "1.5", ">= 2", "abc", "> 0.5"])
def test_targets_outside_range_or_malformed(bad):
    with pytest.raises(TemplateError):
        RewardTemplate(dimensions=("helpful",)).render({"helpful": bad})


@pytest.mark.parametrize("text,msg", [
    ("no block here", "no reward block"),
    ("<REWARD>\nHelpful reward: 0.4\nHarmless reward: x<SOS>", "malformed reward value"),
    ("<REWARD>\nHelpful reward: 0.4<SOS>", "lacks dimension"),
    ("<REWARD>\nHelpful reward: 0.4\nHelpful reward: 0.4<SOS>", "appears twice"),
    ("<REWARD>\nHelpful: 0.4\nHarmless reward: 0.5<SOS>", "malformed reward line"),
    ("<REWARD>\nHelpful reward: 0.4\nHarmless reward: 1.5<SOS>", "outside [0, 1]"),
    ("<REWARD>\nHelpful reward: 0.4\nHarmless reward: 0.5<SOS>\n"
     "<REWARD>\nHelpful reward: 0.4\nHarmless reward: 0.5<SOS>", "found 2 reward blocks"),
])
def test_malformed_blocks(text, msg):
    with pytest.raises(TemplateError, match=msg.replace("[", r"\[")):
        RewardTemplate().parse(text)


def test_duplicates_must_agree():
    t = RewardTemplate(dimensions=("helpful",), duplicate=2)
    with pytest.raises(TemplateError, match="disagree"):
        t.parse("<REWARD>\nHelpful reward: 0.40<SOS>\n<REWARD>\nHelpful reward: 0.50<SOS>")


def test_dimension_mismatch_and_options():
    with pytest.raises(TemplateError, match="do not match"):
        RewardTemplate().render({"helpful": 0.3})
    with pytest.raises(TemplateError):
        RewardTemplate(position="middle")  # type: ignore[arg-type]
    with pytest.raises(TemplateError):
        RewardTemplate(duplicate=0)
    with pytest.raises(TemplateError, match="no user turn"):
        RewardTemplate().apply([{"role": "assistant", "content": "x"}], {"helpful": .1, "harmless": .2})


def test_unconditioned_apply_is_identity():
    msgs = [{"role": "user", "content": "hi"}]
    assert RewardTemplate().apply(msgs, None) == msgs


def test_dict_round_trip():
    t = RewardTemplate(dimensions=("a", "b"), position="top", decimals=3, duplicate=2)
    assert RewardTemplate.from_dict(t.to_dict()) == t
