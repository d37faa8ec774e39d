"""The training-backend interface: what every hosted fine-tuning API is driven through.

A provider is an adapter (``hosted.openai``, ``hosted.together``) that implements
:class:`TrainingBackend` with the provider's official client: upload a file, find one uploaded
before, create a job, find a job created before, read its state, events and checkpoints, cancel
it. The stage (``hosted.train``) holds the logic (what to upload, when to create, how to resume),
so every provider gets the same crash safety.

The ``local`` backend is not wrapped: ``sft --backend local`` (the default) is the existing
transformers path of ``policy.sft.run_sft``, which trains on this machine and resumes from its
own checkpoints.

This module imports nothing heavy: ``policy.sft`` imports :class:`HostedConfig` from here.
"""
from __future__ import annotations

import os
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

#: The hosted providers, and the environment variable each reads its API key from by default.
PROVIDERS = {"openai": "OPENAI_API_KEY", "together": "TOGETHER_API_KEY"}
# OpenAI's limits on a training file, the strictest of the providers (``data export`` checks
# files by them).
#: files.create's limit ("Individual files can be up to 512 MB", the client's docstring).
MAX_FILE_BYTES = 512 * 1024 * 1024
#: The per-example limit OpenAI documents for its current fine-tunable chat models (the client
#: does not carry one); override with --hosted.max-example-tokens.
MAX_EXAMPLE_TOKENS = 65_536
#: OpenAI requires at least 10 training examples.
MIN_EXAMPLES = 10
#: The roles a provider takes a per-message loss ``weight`` on (OpenAI: assistant turns only;
#: Together: any turn). Kept here, not on the adapters, so files can be written without a client.
WEIGHT_ROLES: dict[str, tuple[str, ...]] = {"openai": ("assistant",),
                                            "together": ("system", "user", "assistant")}
#: Fine-tuning methods the stage drives.
METHODS = ("supervised", "dpo")
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
#: States after which a job changes no more.
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class HostedConfig:
    """Knobs of a hosted fine-tuning job (``sft --backend openai|together``).

    The settings shared with local SFT stay on ``SFTConfig``: data, out, run, conditioned,
    template, max_prompt_tokens, seed, overwrite, and (Together) lora, lora_r, lora_alpha,
    lora_dropout. Hyper-parameters left None are the provider's defaults.
    """

    base_model: str = ""
    """The provider's model to fine-tune (gpt-4.1-mini-2025-04-14, meta-llama/...); required."""
    base_url: str | None = None
    """The API's base URL (default: the provider's). OpenAI's includes /v1
    (http://127.0.0.1:8000/v1); Together's does not (its paths start with /v1)."""
    api_key_env: str | None = None
    """The environment variable that holds the API key (default OPENAI_API_KEY or
    TOGETHER_API_KEY). A key is only ever read from the environment."""
    method: str = "supervised"
    """supervised (the labelled replies) or dpo (preference pairs: see dpo_from)."""
    n_epochs: int | None = None
    """Passes over the training file (None: the provider's default)."""
    learning_rate_multiplier: float | None = None
    """OpenAI: the learning-rate multiplier (None: auto)."""
    learning_rate: float | None = None
    """Together: the peak learning rate (None: the client's default, 1e-5)."""
    batch_size: int | None = None
    """Examples per batch (None: OpenAI auto, Together max)."""
    beta: float | None = None
    """DPO only: the strength of the pull towards the reference model (None: the default)."""
    suffix: str | None = None
    """A name part for the fine-tuned model (OpenAI: up to 64 characters, Together: 40)."""
    train_on_prompt: bool = False
    """False (as local SFT): the loss is on the final reply only. True: OpenAI also trains on
    the earlier assistant turns, Together on every turn (train_on_inputs)."""
    tokenizer: str | None = None
    """A tokenizer (folder or Hub id, with a chat template) to count tokens with for the prompt
    budget and the per-example limit; None: estimate a token per 4 characters."""
    max_example_tokens: int | None = None
    """Refuse an example longer than this (estimated tokens). None: OpenAI 65,536; Together the
    model's max_seq_length from its model limits."""
    dpo_from: str = "pairs"
    """DPO pairs from ``pairs`` (preference rows: prompt, chosen, rejected) or from ``samples``
    (the best and the worst of each prompt's scored samples by dpo_dimension)."""
    dpo_data: str | None = None
    """The DPO source file: preference pairs (required for pairs), or scored generations
    (default RUN/eval/scores.jsonl)."""
    dpo_rewards: str = "actual"
    """samples: the row field that holds the rewards ({dimension: reward}, as evaluate writes
    ``actual`` and label ``rewards``), or a number."""
    dpo_dimension: str | None = None
    """samples: the dimension that ranks a prompt's samples (default: the only one)."""
    dpo_group_by: str = "id"
    """samples: the row field that names the prompt (generate writes the prompt's id as id)."""
    dpo_model: str | None = None
    """samples: only the rows of this model label (needed when the file holds several)."""
    poll_interval: float = 10.0
    """Seconds before the first status poll; the wait doubles after each poll."""
    poll_max_interval: float = 300.0
    """The longest wait between two polls."""
    max_wait: float = 86400.0
    """Give up waiting after this many seconds (the job goes on: rerun to resume waiting)."""
    timeout: float = 60.0
    """Seconds one API request may take."""
    max_retries: int = 3
    """Retries of a failed request (rate limits, server errors, dropped connections)."""
    cancel: bool = False
    """Cancel the job recorded in ``out`` instead of training."""


@dataclass(frozen=True)
class Limits:
    """What a provider accepts in a training file."""

    max_file_bytes: int
    max_example_tokens: int
    min_examples: int = 10


@dataclass(frozen=True)
class JobSpec:
    """One fine-tuning job to create: everything that decides what the provider trains."""

    base_model: str
    training_file: str
    """The provider's id of the uploaded training file."""
    method: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    """The provider's own parameter names and values (None values are left out)."""
    key: str = ""
    """A hash of the job's inputs, attached to the job where the provider keeps metadata, so
    that a job found by its training file is known to be this one."""


@dataclass
class JobState:
    """A job as the provider reports it, its status normalised."""

    id: str
    status: Status
    model_id: str | None = None
    """The fine-tuned model's id, to sample from (set once the job succeeded)."""
    error: str | None = None
    """The provider's message for a failed job."""
    trained_tokens: int | None = None
    """The tokens the provider bills for training (known once the job ended)."""
    raw_status: str = ""
    """The provider's own word for the status."""


class ProviderError(Exception):
    """A request the provider did not answer usefully; ``transient`` ones are worth retrying
    (rate limits, server errors, timeouts, dropped connections, malformed bodies)."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class HostedError(ValueError):
    """A hosted stage that cannot go on; the message says why and what to do. A ValueError, so
    the command line reports it as an error, not a traceback."""


class TrainingBackend(Protocol):
    """One hosted fine-tuning API. Every call may raise :class:`ProviderError`.

    ``local`` is not one of these: it is ``run_sft``'s own transformers path.
    """

    provider: str
    """The provider's name (openai, together), as cost tables know it."""
    sampling_base_url: str
    """The OpenAI-compatible base URL to sample the fine-tuned model from."""
    weight_roles: tuple[str, ...]
    """The roles that carry a per-message ``weight`` when the loss is on the final reply."""

    def parameters(self, sft: Any) -> dict[str, Any]:
        """The job's parameters for an ``SFTConfig``, in the provider's own names; refuses the
        settings the provider does not take."""
        ...

    def prompt_loss(self, train_on_prompt: bool) -> dict[str, Any]:
        """What the file and the job express about where the loss is (for the result)."""
        ...

    def limits(self, base_model: str, method: str) -> Limits:
        """The file size, example length and example count the provider accepts."""
        ...

    def find_file(self, filename: str, size: int) -> str | None:
        """The id of a training file uploaded before under ``filename`` with ``size`` bytes."""
        ...

    def upload(self, path: Path) -> str:
        """Upload a training file (named by its content hash); its id."""
        ...

    def find_job(self, spec: JobSpec) -> JobState | None:
        """A job made from ``spec`` before (same training file, base model and inputs) that has
        not failed or been cancelled, or None."""
        ...

    def create_job(self, spec: JobSpec) -> JobState:
        """Start a job (one attempt: the stage retries, after looking for it first)."""
        ...

    def status(self, job_id: str) -> JobState:
        """The job's state now."""
        ...

    def events(self, job_id: str, seen: Container[str]) -> list[dict]:
        """The job's events not in ``seen`` (by their ``id``), oldest first."""
        ...

    def checkpoints(self, job_id: str) -> list[dict]:
        """The job's checkpoints so far."""
        ...

    def cancel(self, job_id: str) -> JobState:
        """Ask the provider to stop the job."""
        ...


def api_key(provider: str, cfg: HostedConfig) -> str:
    """The API key from the environment (never from a config); a missing one is an error that
    names the variable."""
    name = cfg.api_key_env or PROVIDERS[provider]
    key = os.environ.get(name, "")
    if not key.strip():
        raise HostedError(f"{provider}: no API key: set the environment variable {name} (or "
                          "name another with --hosted.api-key-env); keys are never read from a "
                          "config or the command line")
    return key


def make_backend(provider: str, cfg: HostedConfig) -> TrainingBackend:
    """The adapter for ``provider``, its client built with the key from the environment."""
    if provider not in PROVIDERS:
        raise HostedError(f"unknown hosted backend {provider!r}; choose from "
                          f"{', '.join(PROVIDERS)} (or local)")
    key = api_key(provider, cfg)
    try:
        if provider == "openai":
            from .openai import OpenAIBackend

            return OpenAIBackend(cfg, key)
        from .together import TogetherBackend

        return TogetherBackend(cfg, key)
    except ImportError as exc:
        raise HostedError(f"--backend {provider} needs the provider's client: pip install "
                          f"'rewardprompt[hosted]' ({exc})") from None
