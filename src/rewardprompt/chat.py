"""Chat messages, the one type every stage passes dialogues in, and prefills.

A dialogue is a list of ``{"role", "content"}`` messages. One that ends with an assistant message
is a prefill: the reply is started with that text, and the policy continues it in the same turn
(as transformers' ``continue_final_message`` and vLLM's chat take it).
"""
from __future__ import annotations

Message = dict[str, str]


def split_prefill(messages: list[Message]) -> tuple[list[Message], str]:
    """``(dialogue, prefill)``: a trailing assistant message is the start of the reply."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, ""


def with_prefill(messages: list[Message], prefill: str) -> list[Message]:
    """The dialogue with its reply started by ``prefill`` (unchanged when it is empty)."""
    return messages + [{"role": "assistant", "content": prefill}] if prefill else messages
