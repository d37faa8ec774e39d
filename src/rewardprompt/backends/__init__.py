"""Policy backends behind one small interface (local transformers now; vLLM and hosted APIs later)."""
from .base import Completion, PolicyBackend, SamplingConfig

__all__ = ["Completion", "PolicyBackend", "SamplingConfig", "get_backend"]


def get_backend(model: str, kind: str = "local") -> PolicyBackend:
    if kind == "local":
        from .local import LocalBackend

        return LocalBackend(model)
    raise ValueError(f"unknown backend {kind!r}; available: local")
