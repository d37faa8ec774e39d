"""The backend interface, as lm-evaluation-harness has one ``LM``: everything samples through it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

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


#: One generated token's log-probability record, as backends return it and generate writes it:
#: ``{"token": str, "logprob": float, "top": {token: logprob}}`` (``top``: the k most likely
#: tokens at that position, the sampled one among them or not). A server's tokens are its
#: decoded pieces, or ``token_id:N`` when asked for ids (vLLM's return_tokens_as_token_ids).
TokenLogprob = dict[str, Any]


@dataclass
class Completion:
    text: str
    n_tokens: int
    """Tokens generated; a server counts them as it bills them (usage.completion_tokens, the
    stop token included), the local backend without the stop token."""
    finished: bool  # ended with end-of-turn rather than at max_new_tokens
    logprobs: list[TokenLogprob] | None = None
    """Per generated token, when the backend was asked for log-probs (None otherwise)."""
    usage: dict[str, int] | None = None
    """``{"prompt_tokens", "completion_tokens"}`` as the server reported them (None: local)."""


class PolicyBackend(Protocol):
    def generate(self, prompts: list[list[Message]], cfg: SamplingConfig) -> list[Completion]:
        """One completion per prompt (a prompt is a chat message list, reward block included).

        A prompt that ends with an assistant message is a prefill: the reply continues it, and
        the completion's text starts with it (``n_tokens`` counts the generated tokens only).
        """
        ...
