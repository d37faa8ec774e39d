"""The reward block: parse(render(x)) == x across the option space, and clear errors."""
from __future__ import annotations

import itertools

import pytest

from rewardprompt.template import RewardTemplate, Target, TemplateError

DIMS = [("helpful",), ("helpful", "harmless"), ("helpful", "harmless", "honest"),
        ("helpful", "harmless", "honest", "concise")]


@pytest.mark.parametrize("dims,position,decimals,duplicate,encoding,close_tag", list(itertools.product(
    DIMS, ["bottom", "top", "reply"], [1, 2, 3], [1, 3], ["digits", "tokens"], ["<SOS>", ""])))
def test_round_trip(dims, position, decimals, duplicate, encoding, close_tag):
    t = RewardTemplate(dimensions=dims, position=position, decimals=decimals, duplicate=duplicate,
                       encoding=encoding, close_tag=close_tag)
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
        where = {"bottom": msgs[2]["content"].endswith, "top": msgs[0]["content"].startswith,
                 "reply": msgs[-1]["content"].startswith}[position]
        assert where(text)
        if position == "reply":  # the block opens the assistant's reply
            assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
            assert msgs[-1]["content"] == text


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


def test_reply_position_opens_the_reply_and_keeps_a_prefill():
    t = RewardTemplate(position="reply", close_tag="", decimals=1)
    targets = {"helpful": 0.42, "harmless": 0.75}
    block = "<REWARD>\nHelpful reward: 0.4\nHarmless reward: 0.8"  # ends with the last value
    assert t.render(targets) == block
    msgs = t.apply([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure"}],
                   targets)
    assert msgs == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": block + "Sure"}]
    assert t.parse(block) == t.normalise_targets({"helpful": 0.4, "harmless": 0.8})
    # a completion of that prompt starts with the block; the reply is what follows it
    assert t.strip_reply_block(block + "Sure, here it is.", targets) == "Sure, here it is."
    assert t.strip_reply_block("Sure", None) == "Sure"
    assert RewardTemplate().strip_reply_block("Sure", targets) == "Sure"  # not the reply position
    with pytest.raises(TemplateError, match="does not start with"):
        t.strip_reply_block("Sure", targets)


@pytest.mark.parametrize("encoding", ["digits", "tokens"])
def test_no_close_tag_parse_stops_at_the_last_value(encoding):
    """A reply that follows the block directly, even one starting with a digit, is not read."""
    t = RewardTemplate(position="reply", close_tag="", decimals=1, encoding=encoding)
    targets = {"helpful": Target(t.quantise(0.6), ">="), "harmless": Target(t.quantise(0.9))}
    msgs = t.apply([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "3 ways"}],
                   targets)
    assert t.parse(msgs[-1]["content"]) == targets
    assert t.parse(t.render(targets) + "Sure") == targets


def test_from_dict_takes_command_line_strings():
    t = RewardTemplate.from_dict({"decimals": "1", "duplicate": "2", "n_bins": "5",
                                  "dimensions": "helpful,harmless", "position": "reply"})
    assert (t.decimals, t.duplicate, t.n_bins, t.dimensions) == (1, 2, 5, ("helpful", "harmless"))
    with pytest.raises(TemplateError, match="decimals must be an integer"):
        RewardTemplate.from_dict({"decimals": "two"})
    with pytest.raises(TemplateError, match="unknown template field"):
        RewardTemplate.from_dict({"postion": "reply"})


def test_reply_block_ending_in_whitespace_is_stripped_from_an_empty_reply():
    t = RewardTemplate(position="reply", close_tag="\n")
    targets = {"helpful": 0.5, "harmless": 0.5}
    assert t.strip_reply_block(t.render(targets).strip(), targets) == ""


def test_an_empty_open_tag_is_refused():
    with pytest.raises(TemplateError, match="open_tag"):
        RewardTemplate(open_tag="")


def test_unconditioned_apply_is_identity():
    msgs = [{"role": "user", "content": "hi"}]
    assert RewardTemplate().apply(msgs, None) == msgs


def test_dict_round_trip():
    for t in (RewardTemplate(dimensions=("a", "b"), position="top", decimals=3, duplicate=2),
              RewardTemplate(position="reply", close_tag="")):
        assert RewardTemplate.from_dict(t.to_dict()) == t


def test_at_least_training_targets_are_met_by_their_reply():
    """Hindsight thresholds: '>= t' with t at most the reply's reward as the block shows it,
    drawn the same for one seed; exact mode shows the labels."""
    import numpy as np

    from rewardprompt.policy.sft import SFTConfig, training_targets

    tmpl = RewardTemplate(dimensions=("helpful", "harmless"), decimals=1)
    assert tmpl.floor(0.79) == 0.7 and tmpl.floor(0.7) == 0.7 and tmpl.floor(0.0) == 0.0
    assert RewardTemplate(encoding="tokens", n_bins=10).floor(0.79) == 0.7
    rows = [{"rewards": {"helpful": h, "harmless": 1 - h}} for h in np.linspace(0, 1, 21)]
    cfg = SFTConfig(data="", out="", targets="at_least", seed=3)
    shown = training_targets(cfg, rows, tmpl)
    assert shown == training_targets(cfg, rows, tmpl)
    for r, t in zip(rows, shown):
        for d in tmpl.dimensions:
            assert t[d].op == ">=" and t[d].value <= r["rewards"][d] + 1e-9
            assert round(t[d].value, 1) == t[d].value
    assert ">= " in tmpl.render(shown[-1])
    assert len({t["helpful"].value for t in shown}) > 3  # drawn, not a constant
    exact = training_targets(SFTConfig(data="", out=""), rows, tmpl)
    assert exact[5] == rows[5]["rewards"]
    assert training_targets(SFTConfig(data="", out="", conditioned=False), rows, tmpl) == [None] * 21
