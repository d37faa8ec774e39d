"""The reward block: the one place that writes and reads rewards as text.

    <REWARD>
    Helpful reward: 0.42
    Harmless reward: 0.75<SOS>

Labelling, SFT, sampling and (later) the online loop all call :class:`RewardTemplate`, so a
change of format is made once. Options: where the block goes (bottom of the prompt, i.e. the end
of the last user turn, or top, the start of the first turn), decimals, duplication (the block
repeated ``duplicate`` times), any number of named dimensions, satisficing targets (``>= 0.60``),
and the encoding of the value: ``digits`` (plain decimals) or ``tokens`` (one dedicated token per
quantile bin, ``<|r3|>``, as Quark does, which the tokenizer learns as a new embedding).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Literal, Union, get_args

from .chat import Message
Position = Literal["bottom", "top", "reply"]
Encoding = Literal["digits", "tokens"]


def _one_of(kind: object) -> str:
    """"'a', 'b' or 'c'": the values of a Literal, for an error message."""
    names = [repr(x) for x in get_args(kind)]
    return ", ".join(names[:-1]) + " or " + names[-1]


class TemplateError(ValueError):
    """A malformed reward block or an out-of-range target."""


@dataclass(frozen=True)
class Target:
    """A target reward for one dimension: ``value`` exactly, or satisficing (``>=``/``<=``)."""

    value: float
    op: Literal["=", ">=", "<="] = "="

    def __post_init__(self) -> None:
        if not isinstance(self.value, (int, float)) or math.isnan(self.value) \
                or not 0.0 <= self.value <= 1.0:
            raise TemplateError(f"target {self.value!r} is outside [0, 1]")
        if self.op not in ("=", ">=", "<="):
            raise TemplateError(f"unknown target operator {self.op!r}")

    @classmethod
    def parse(cls, spec: Union[str, float, "Target"]) -> "Target":
        """``0.4`` -> Target(0.4); ``">= 0.6"`` -> Target(0.6, ">=")."""
        if isinstance(spec, Target):
            return spec
        if isinstance(spec, (int, float)):
            return cls(float(spec))
        m = re.fullmatch(r"\s*(>=|<=|=)?\s*([-+0-9.eE]+)\s*", str(spec))
        if not m:
            raise TemplateError(f"cannot read target {spec!r}: expected a number or '>= 0.6'")
        try:
            value = float(m.group(2))
        except ValueError:
            raise TemplateError(f"cannot read target {spec!r}: not a number") from None
        return cls(value, m.group(1) or "=")


Targets = dict[str, Target]


def row_targets(row: dict) -> Targets:
    """The targets a generated row was sampled with: its ``targets`` and their satisficing
    operators (``target_ops``; '=' where it names none)."""
    ops = row.get("target_ops") or {}
    return {d: Target(float(v), ops.get(d, "=")) for d, v in row["targets"].items()}


@dataclass(frozen=True)
class RewardTemplate:
    """How the reward block is rendered into a dialogue and parsed back."""

    dimensions: tuple[str, ...] = ("helpful", "harmless")
    # bottom: the end of the last user turn; top: the start of the first; reply: the start of
    # the assistant's reply, which the policy continues right after the block (the block is
    # prompt, never trained). The reply position puts the number next to the token that
    # predicts the reply's first word.
    position: Position = "bottom"
    decimals: int = 2
    duplicate: int = 1
    encoding: Encoding = "digits"
    n_bins: int = 10
    open_tag: str = "<REWARD>"
    close_tag: str = "<SOS>"                # "" = none: the block ends with its last value
    line_format: str = "{label} reward: {value}"
    labels: dict[str, str] = field(default_factory=dict)  # dimension -> label; default Title case

    def __post_init__(self) -> None:
        if not self.dimensions:
            raise TemplateError("a reward template needs at least one dimension")
        if len(set(self.dimensions)) != len(self.dimensions):
            raise TemplateError(f"duplicate dimension names in {self.dimensions}")
        if self.position not in get_args(Position):
            raise TemplateError(f"position must be {_one_of(Position)}, not {self.position!r}")
        if not self.open_tag:
            raise TemplateError("open_tag must not be empty: parse finds a block by it")
        if self.duplicate < 1:
            raise TemplateError("duplicate must be >= 1")
        if not 0 <= self.decimals <= 6:
            raise TemplateError("decimals must be in 0..6")
        if self.encoding not in get_args(Encoding):
            raise TemplateError(f"encoding must be {_one_of(Encoding)}, not {self.encoding!r}")
        if self.n_bins < 2:
            raise TemplateError("n_bins must be >= 2")

    # ------------------------------------------------------------ values
    def label(self, dim: str) -> str:
        return self.labels.get(dim, dim.replace("_", " ").capitalize())

    def quantise(self, value: float) -> float:
        """The value the model will actually see (rounded, or the centre of its bin)."""
        if self.encoding == "digits":
            return round(value, self.decimals)
        b = min(int(value * self.n_bins), self.n_bins - 1)
        return (b + 0.5) / self.n_bins

    def floor(self, value: float) -> float:
        """The largest value the block shows that is at most ``value`` (the lower edge of its bin
        with the tokens encoding, whose block shows no finer)."""
        if self.encoding == "digits":
            scale = 10 ** self.decimals
            return math.floor(value * scale + 1e-9) / scale
        return min(int(value * self.n_bins), self.n_bins - 1) / self.n_bins

    def training_targets(self, rows: list[dict], form: str = "exact", seed: int = 0
                         ) -> list[dict]:
        """The targets each labelled row's block shows in training: ``exact``, its rewards;
        ``at_least``, hindsight satisficing targets, per dimension '>= t' with t drawn uniformly
        from [0, reward] (seeded) and rounded down to what the block shows, so that the reply
        meets every threshold it is shown with."""
        if form == "exact":
            return [{d: r["rewards"][d] for d in self.dimensions} for r in rows]
        if form != "at_least":
            raise TemplateError(f"training targets must be exact or at_least, not {form!r}")
        import numpy as np

        rng = np.random.default_rng(seed)
        return [{d: Target(self.floor(float(rng.uniform(0.0, max(0.0, min(1.0, r["rewards"][d]))))),
                           ">=") for d in self.dimensions} for r in rows]

    def extra_tokens(self) -> list[str]:
        """New tokens the tokenizer must learn for this template (``tokens`` encoding only)."""
        return [f"<|r{b}|>" for b in range(self.n_bins)] if self.encoding == "tokens" else []

    def _fmt_value(self, t: Target) -> str:
        if self.encoding == "digits":
            v = f"{t.value:.{self.decimals}f}"
        else:
            v = f"<|r{min(int(t.value * self.n_bins), self.n_bins - 1)}|>"
        return v if t.op == "=" else f"{t.op} {v}"

    def _value_pattern(self) -> str:
        """A regex for exactly one rendered value (with its satisficing operator)."""
        if self.encoding == "tokens":
            v = r"<\|r\d+\|>"
        else:
            v = r"-?\d+" + (r"\.\d{%d}" % self.decimals if self.decimals else "")
        return r"(?:(?:>=|<=) )?" + v

    def _read_value(self, text: str) -> Target:
        m = re.fullmatch(r"(>=|<=)?\s*(\S+)", text.strip())
        if not m:
            raise TemplateError(f"malformed reward value {text!r}")
        op, raw = m.group(1) or "=", m.group(2)
        if self.encoding == "digits":
            if not re.fullmatch(r"-?\d+(\.\d+)?", raw):
                raise TemplateError(f"malformed reward value {raw!r}: expected a decimal number")
            return Target(float(raw), op)
        mt = re.fullmatch(r"<\|r(\d+)\|>", raw)
        if not mt or int(mt.group(1)) >= self.n_bins:
            raise TemplateError(f"malformed reward token {raw!r}: expected <|r0|>..<|r{self.n_bins - 1}|>")
        return Target((int(mt.group(1)) + 0.5) / self.n_bins, op)

    def normalise_targets(self, targets: dict[str, Union[Target, float, str]]) -> Targets:
        missing = [d for d in self.dimensions if d not in targets]
        extra = [d for d in targets if d not in self.dimensions]
        if missing or extra:
            raise TemplateError(f"targets {sorted(targets)} do not match the template's "
                                f"dimensions {list(self.dimensions)}")
        return {d: Target.parse(targets[d]) for d in self.dimensions}

    # ------------------------------------------------------------ render / parse
    def render(self, targets: dict[str, Union[Target, float, str]]) -> str:
        """The block text, duplicated ``duplicate`` times."""
        ts = self.normalise_targets(targets)
        lines = [self.line_format.format(label=self.label(d), value=self._fmt_value(ts[d]))
                 for d in self.dimensions]
        block = f"{self.open_tag}\n" + "\n".join(lines) + self.close_tag
        return "\n".join([block] * self.duplicate)

    def parse(self, text: str) -> Targets:
        """Read the targets back from text holding exactly ``duplicate`` identical blocks."""
        if self.close_tag:
            pattern = re.escape(self.open_tag) + r"\n(.*?)" + re.escape(self.close_tag)
        else:
            # No close tag: a block is its open tag and one line per dimension, the last line
            # ending with its value (so a reply that follows it directly is not read as part).
            prefix, suffix = self.line_format.split("{value}")
            last = (re.escape(prefix).replace(re.escape("{label}"), r"[^\n]*?")
                    + self._value_pattern() + re.escape(suffix))
            pattern = re.escape(self.open_tag) + r"\n((?:[^\n]*\n){%d}%s)" % (
                len(self.dimensions) - 1, last)
        bodies = re.findall(pattern, text, flags=re.S)
        if not bodies:
            raise TemplateError(f"no reward block ({self.open_tag} ... {self.close_tag}) found")
        if len(bodies) != self.duplicate:
            raise TemplateError(f"found {len(bodies)} reward blocks, the template duplicates "
                                f"{self.duplicate}")
        if any(b != bodies[0] for b in bodies):
            raise TemplateError("duplicated reward blocks disagree")
        by_label = {self.label(d): d for d in self.dimensions}
        prefix, suffix = self.line_format.split("{value}")
        out: Targets = {}
        for line in bodies[0].split("\n"):
            m = re.fullmatch(re.escape(prefix).replace(re.escape("{label}"), "(.+?)")
                             + "(.*)" + re.escape(suffix), line)
            if not m or m.group(1) not in by_label:
                raise TemplateError(f"malformed reward line {line!r}")
            dim = by_label[m.group(1)]
            if dim in out:
                raise TemplateError(f"dimension {dim!r} appears twice in the block")
            out[dim] = self._read_value(m.group(2))
        missing = [d for d in self.dimensions if d not in out]
        if missing:
            raise TemplateError(f"reward block lacks dimension(s) {missing}")
        return out

    def apply(self, messages: list[Message], targets: dict[str, Union[Target, float, str]] | None
              ) -> list[Message]:
        """A copy of the dialogue with the block put in (``targets=None``: unconditioned).

        At the ``reply`` position the block opens the assistant's reply: a trailing assistant
        message (a prefill) gets the block in front of it, otherwise the block becomes one.
        """
        msgs = [dict(m) for m in messages]
        if targets is None:
            return msgs
        users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
        if not users:
            raise TemplateError("the dialogue has no user turn to carry the reward block")
        block = self.render(targets)
        if self.position == "reply":
            if msgs[-1]["role"] == "assistant":
                msgs[-1]["content"] = block + msgs[-1]["content"]
            else:
                msgs.append({"role": "assistant", "content": block})
        elif self.position == "bottom":
            i = users[-1]
            msgs[i]["content"] = msgs[i]["content"].rstrip() + "\n" + block
        else:
            i = users[0]
            msgs[i]["content"] = block + "\n" + msgs[i]["content"].lstrip()
        return msgs

    def strip_reply_block(self, text: str, targets: dict[str, Union[Target, float, str]] | None
                          ) -> str:
        """A completion's reply without the block a ``reply``-position prompt started it with.

        A backend's completion of a prefilled prompt starts with the prefill; at the reply
        position the block is part of that prefill, and is prompt, not reply.
        """
        if targets is None or self.position != "reply":
            return text
        block = self.render(targets).rstrip()  # backends strip the completion's text
        if not text.startswith(block):
            raise TemplateError("the completion does not start with the reply-position block "
                                "it was prefilled with")
        return text[len(block):].lstrip()

    def to_dict(self) -> dict:
        return {"dimensions": list(self.dimensions), "position": self.position,
                "decimals": self.decimals, "duplicate": self.duplicate,
                "encoding": self.encoding, "n_bins": self.n_bins, "open_tag": self.open_tag,
                "close_tag": self.close_tag, "line_format": self.line_format,
                "labels": dict(self.labels)}

    @classmethod
    def from_dict(cls, d: dict) -> "RewardTemplate":
        """From a dict, e.g. ``--template KEY VALUE`` pairs, whose values may all be strings."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TemplateError(f"unknown template field(s) {unknown}; choose from {sorted(names)}")
        d = dict(d)
        if isinstance(d.get("dimensions"), str):  # "helpful,harmless" from the command line
            d["dimensions"] = [x.strip() for x in d["dimensions"].split(",") if x.strip()]
        if "dimensions" in d:
            d["dimensions"] = tuple(d["dimensions"])
        for key in (f.name for f in fields(cls) if f.type == "int"):
            if key in d:
                try:
                    d[key] = int(d[key])
                except (TypeError, ValueError):
                    raise TemplateError(f"template field {key} must be an integer, not {d[key]!r}") from None
        if "labels" in d and not isinstance(d["labels"], dict):
            raise TemplateError("template field labels must be a mapping of dimension -> label")
        return cls(**d)
