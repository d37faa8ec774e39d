"""Policy backends behind one small interface: local transformers, vLLM in process (a GPU with
vLLM installed), and any OpenAI-compatible chat-completions server (vLLM, llama.cpp,
`rewardprompt serve`, hosted APIs)."""
from typing import Any

from .base import Completion, PolicyBackend, SamplingConfig

__all__ = ["BACKENDS", "Completion", "PolicyBackend", "SamplingConfig", "get_backend"]

BACKENDS = ("local", "vllm", "openai-chat")


def get_backend(model: str, kind: str = "local", **options: Any) -> PolicyBackend:
    """The backend ``kind`` for ``model``; ``options`` go to its constructor (openai-chat:
    ``api`` a ChatAPIConfig, ``cache`` the request cache path)."""
    if kind == "local":
        from .local import LocalBackend

        return LocalBackend(model, **options)
    if kind == "vllm":
        from .vllm import VLLMBackend

        return VLLMBackend(model, **options)
    if kind == "openai-chat":
        from .openai_chat import ChatAPIBackend

        return ChatAPIBackend(model, **options)
    raise ValueError(f"unknown backend {kind!r}; available: {', '.join(BACKENDS)}")
