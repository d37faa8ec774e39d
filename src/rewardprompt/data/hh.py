"""Anthropic HH-RLHF raw transcripts (``\\n\\nHuman:`` / ``\\n\\nAssistant:``) to turns and back."""
from __future__ import annotations

import re

from ..errors import DataError

# Only a marker after a blank line starts a turn: real replies contain "Human:" mid-text.
_TURN = re.compile(r"\n\n(Human|Assistant):")
ROLE_OF = {"Human": "user", "Assistant": "assistant"}
SPEAKER_OF = {v: k for k, v in ROLE_OF.items()}


def parse_transcript(text: str, field: str = "chosen") -> list[dict[str, str]]:
    """Split one HH transcript into ``[{"role", "content"}, ...]`` turns, contents stripped.

    Turns are not merged or validated here beyond the opening ``Human:`` marker; the caller
    (``preference.pair_from_row``) applies the same normalisation to every input format.
    """
    body = text.lstrip()
    if not body.startswith("Human:"):
        raise DataError(f"transcript must start with a 'Human:' turn, got {body[:30]!r}",
                        field=field, code="malformed_dialogue")
    parts = _TURN.split("\n\n" + body)  # ["", "Human", " hi", "Assistant", " hello", ...]
    return [{"role": ROLE_OF[s], "content": c.strip()} for s, c in zip(parts[1::2], parts[2::2])]


def dialogue_to_text(messages: list[dict[str, str]]) -> str:
    """Messages back to HH form, ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` (RMs, display)."""
    out = []
    for m in messages:
        speaker = SPEAKER_OF.get(m["role"])
        if speaker is None:
            raise ValueError(f"role must be 'user' or 'assistant', got {m['role']!r}")
        out.append(f"\n\n{speaker}: {m['content']}")
    return "".join(out)
