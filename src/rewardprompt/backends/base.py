"""The backend interface, as lm-evaluation-harness has one ``LM``: everything samples through it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..chat import Message


@dataclass
class SamplingConfig:
    """How a backend samples: the same settings for every model that is compared."""

    max_new_tokens: int = 64
    """New tokens at most per completion; a reply that reaches it did not end by itself."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    batch_size: int = 16
    """Prompts sampled together (local backend)."""
    seed: int = 0
    """Seeds each batch, so the same prompts and settings give the same samples."""


@dataclass
class Completion:
    text: str
    n_tokens: int
    finished: bool  # ended with end-of-turn rather than at max_new_tokens


class PolicyBackend(Protocol):
    def generate(self, prompts: list[list[Message]], cfg: SamplingConfig) -> list[Completion]:
        """One completion per prompt (a prompt is a chat message list, reward block included).

        A prompt that ends with an assistant message is a prefill: the reply continues it, and
        the completion's text starts with it (``n_tokens`` counts the generated tokens only).
        """
        ...
