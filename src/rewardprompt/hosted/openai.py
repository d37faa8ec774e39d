"""OpenAI fine-tuning through the official ``openai`` client, against any server that implements
``/v1/files`` and ``/v1/fine_tuning/jobs`` (with ``/events``, ``/checkpoints`` and ``/cancel``).

Methods: ``supervised`` and ``dpo``, both through the ``method=`` parameter (the top-level
``hyperparameters`` is deprecated). Prompt loss: OpenAI trains on assistant messages only;
a per-message ``weight`` of 0 or 1 (assistant messages only) chooses which of them.
"""
from __future__ import annotations

import contextlib
from collections.abc import Container, Iterator
from pathlib import Path
from typing import Any

import openai

from .base import (MAX_EXAMPLE_TOKENS, MAX_FILE_BYTES, MIN_EXAMPLES, WEIGHT_ROLES,
                   HostedConfig, HostedError, JobSpec, JobState, Limits, ProviderError)

#: The job metadata key that carries the stage's hash of the job's inputs.
KEY = "rewardprompt_key"
#: How many of the newest jobs find_job looks through.
SCAN_JOBS = 1000
_STATUS = {"validating_files": "queued", "queued": "queued", "running": "running",
           "succeeded": "succeeded", "failed": "failed", "cancelled": "cancelled"}


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """The client's exceptions as ProviderErrors; a body the client could not read (bad JSON,
    missing fields) is transient too, as a proxy's error page often is."""
    try:
        yield
    except openai.APIStatusError as exc:
        code = exc.status_code
        raise ProviderError(f"openai: {what}: HTTP {code}: {exc.message}",
                            transient=code in (408, 409, 429) or code >= 500) from None
    except openai.APIConnectionError as exc:  # timeouts included
        raise ProviderError(f"openai: {what}: {type(exc).__name__}: {exc}", transient=True) from None
    except openai.OpenAIError as exc:
        raise ProviderError(f"openai: {what}: {type(exc).__name__}: {exc}", transient=False) from None
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise ProviderError(f"openai: {what}: malformed response ({type(exc).__name__}: {exc})",
                            transient=True) from None


def _state(job: Any) -> JobState:
    if not isinstance(job.id, str) or not job.id:
        raise ValueError("the job has no id")
    raw = str(job.status)
    error = getattr(job, "error", None)
    message = None
    if error is not None:
        message = getattr(error, "message", None) or (error.get("message") if isinstance(error, dict)
                                                      else str(error))
    return JobState(id=job.id, status=_STATUS.get(raw, "running"), model_id=job.fine_tuned_model,
                    error=message, trained_tokens=getattr(job, "trained_tokens", None),
                    raw_status=raw)


class OpenAIBackend:
    """OpenAI's fine-tuning API (or a server that speaks it) as a TrainingBackend."""

    provider = "openai"
    #: With the loss on the final reply only, assistant messages carry a weight (OpenAI accepts
    #: the field on assistant messages only and never trains on user or system turns).
    weight_roles = WEIGHT_ROLES["openai"]

    def __init__(self, cfg: HostedConfig, key: str) -> None:
        self.cfg = cfg
        # The client retries reads itself; creations (uploads, jobs) are sent once per attempt,
        # because a retried POST whose first answer was lost would create a second one. The
        # stage retries those, after looking for what the lost answer created.
        self.client = openai.OpenAI(base_url=cfg.base_url or None, api_key=key,
                                    max_retries=cfg.max_retries, timeout=cfg.timeout)
        self._once = self.client.with_options(max_retries=0)
        self.sampling_base_url = str(self.client.base_url).rstrip("/")

    def parameters(self, sft: Any) -> dict[str, Any]:
        """The job's parameters for an SFTConfig, in OpenAI's names; refuses what OpenAI does
        not take."""
        h = sft.hosted
        if h.learning_rate is not None:
            raise HostedError("openai takes --hosted.learning-rate-multiplier, not "
                              "--hosted.learning-rate")
        if h.beta is not None and h.method != "dpo":
            raise HostedError("--hosted.beta is a DPO setting; pass --hosted.method dpo")
        hp = {"n_epochs": h.n_epochs, "learning_rate_multiplier": h.learning_rate_multiplier,
              "batch_size": h.batch_size}
        if h.method == "dpo":
            hp["beta"] = h.beta
        return {"hyperparameters": {k: v for k, v in hp.items() if v is not None},
                "seed": sft.seed, **({"suffix": h.suffix} if h.suffix else {})}

    def prompt_loss(self, train_on_prompt: bool) -> dict[str, Any]:
        """What the training file and job express about the loss, for the stage's result."""
        if train_on_prompt:
            return {"final_reply_only": False, "trained": "every assistant turn",
                    "how": "no weights (OpenAI trains on assistant turns)",
                    "not_expressible": "loss on user or system turns"}
        return {"final_reply_only": True, "trained": "the final reply",
                "how": "message weight 0 on earlier assistant turns, 1 on the final reply"}

    def limits(self, base_model: str, method: str) -> Limits:
        """OpenAI's file limit, and the documented per-example limit unless one is given."""
        return Limits(MAX_FILE_BYTES, self.cfg.max_example_tokens or MAX_EXAMPLE_TOKENS,
                      MIN_EXAMPLES)

    def find_file(self, filename: str, size: int) -> str | None:
        """A fine-tune file uploaded before under this name and size."""
        with _errors("list files"):
            for f in self.client.files.list(purpose="fine-tune"):
                if f.filename == filename and f.bytes == size and f.status != "error":
                    return f.id
        return None

    def upload(self, path: Path) -> str:
        """Upload ``path`` with purpose fine-tune."""
        with _errors("upload the training file"), path.open("rb") as fh:
            f = self._once.files.create(file=(path.name, fh, "application/jsonl"),
                                        purpose="fine-tune")
            if not isinstance(f.id, str) or not f.id:
                raise ValueError("the uploaded file has no id")
            return f.id

    def find_job(self, spec: JobSpec) -> JobState | None:
        """The newest job on this training file and model that has not failed or been
        cancelled and carries this spec's key (or no key, from a server without metadata, and
        the same method)."""
        with _errors("list jobs"):
            for i, job in enumerate(self.client.fine_tuning.jobs.list(limit=100)):
                if i >= SCAN_JOBS:
                    break
                if job.training_file != spec.training_file or job.model != spec.base_model \
                        or job.status in ("failed", "cancelled"):
                    continue
                key = (job.metadata or {}).get(KEY)
                method = job.method.type if getattr(job, "method", None) else "supervised"
                if key == spec.key or (key is None and method == spec.method):
                    return _state(job)
        return None

    def create_job(self, spec: JobSpec) -> JobState:
        """One attempt at creating the job (tagged with the spec's key)."""
        params = dict(spec.hyperparameters)
        hp = params.pop("hyperparameters", {})
        method = {"type": spec.method, spec.method: {"hyperparameters": hp}}
        with _errors("create the job"):
            return _state(self._once.fine_tuning.jobs.create(
                model=spec.base_model, training_file=spec.training_file, method=method,
                metadata={KEY: spec.key}, **params))

    def status(self, job_id: str) -> JobState:
        """The job's state now."""
        with _errors("read the job"):
            return _state(self.client.fine_tuning.jobs.retrieve(job_id))

    def events(self, job_id: str, seen: Container[str]) -> list[dict]:
        """New events, oldest first: the list comes newest first, so it is read up to the
        first event already seen."""
        new = []
        with _errors("list the job's events"):
            for ev in self.client.fine_tuning.jobs.list_events(job_id, limit=100):
                if ev.id in seen:
                    break
                new.append(ev.model_dump(mode="json"))
        return new[::-1]

    def checkpoints(self, job_id: str) -> list[dict]:
        """The job's checkpoints (fine-tuned model ids at steps, with their metrics)."""
        with _errors("list the job's checkpoints"):
            return [c.model_dump(mode="json")
                    for c in self.client.fine_tuning.jobs.checkpoints.list(job_id, limit=100)]

    def cancel(self, job_id: str) -> JobState:
        """Cancel the job."""
        with _errors("cancel the job"):
            return _state(self.client.fine_tuning.jobs.cancel(job_id))
