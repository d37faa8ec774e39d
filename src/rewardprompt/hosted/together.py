"""Together fine-tuning through the official ``together`` client.

Methods: SFT (``training_method="sft"``) and DPO (``training_method="dpo"``, ``dpo_beta``); LoRA
or full training from ``SFTConfig.lora``. Prompt loss: ``train_on_inputs`` (False masks the
user and system turns) and per-message ``weight`` 0/1, which Together accepts on every message
of a conversation (its file validation reports ``dataset_has_message_weights``).

The client's upload is a flow of three requests: POST /v1/files answers 302 with a Location and
an ``X-Together-File-Id``; the file is PUT to that Location (an API-issued URL, which may be http
and local); POST /v1/files/{id}/preprocess answers the file. ``fine_tuning.create`` first reads
the model's limits (GET /v1/fine-tunes/models/limits) and a price estimate (POST
/v1/fine-tunes/estimate-price), then posts the job.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Container, Iterator
from pathlib import Path
from typing import Any

import httpx
import together
from together.lib.constants import MAX_FILE_SIZE_GB, NUM_BYTES_IN_GB

from .base import WEIGHT_ROLES, HostedConfig, HostedError, JobSpec, JobState, Limits, ProviderError

#: The stage asks for at least this many examples (Together's own minimum is 1).
MIN_EXAMPLES = 10
_STATUS = {"pending": "queued", "queued": "queued", "running": "running",
           "compressing": "running", "uploading": "running", "cancel_requested": "running",
           "cancelled": "cancelled", "error": "failed", "user_error": "failed",
           "completed": "succeeded"}
#: Statuses of jobs that will never give a model: not ones to resume.
_GIVEN_UP = ("cancel_requested", "cancelled", "error", "user_error")


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """The client's exceptions as ProviderErrors (see hosted.openai._errors)."""
    try:
        yield
    except together.APIStatusError as exc:
        code = exc.status_code
        # Below 400: the upload flow's own check of an answer it did not expect (no redirect,
        # no file id), which a proxy's page also gives: worth another try.
        raise ProviderError(f"together: {what}: HTTP {code}: {exc.message}",
                            transient=code in (408, 409, 429) or code >= 500 or code < 400) from None
    except together.APIConnectionError as exc:  # timeouts included
        raise ProviderError(f"together: {what}: {type(exc).__name__}: {exc}",
                            transient=True) from None
    except together.FileTypeError as exc:  # the client's own check of the file
        raise ProviderError(f"together: {what}: {exc}", transient=False) from None
    except together.TogetherError as exc:
        raise ProviderError(f"together: {what}: {type(exc).__name__}: {exc}",
                            transient=False) from None
    except httpx.HTTPError as exc:  # the upload's PUT goes through httpx directly
        raise ProviderError(f"together: {what}: {type(exc).__name__}: {exc}",
                            transient=True) from None
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise ProviderError(f"together: {what}: malformed response ({type(exc).__name__}: {exc})",
                            transient=True) from None


def _raw(status: Any) -> str:
    return str(getattr(status, "value", status))


def _event_id(event: dict) -> str:
    """Together's events carry no id: their content names them."""
    blob = json.dumps(event, sort_keys=True, default=str)
    return "ev-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


class TogetherBackend:
    """Together's fine-tuning API as a TrainingBackend."""

    provider = "together"
    #: With the loss on the final reply only, every message carries a weight: Together turns
    #: train_on_inputs on when a file has weights, so user turns need theirs (0) too.
    weight_roles = WEIGHT_ROLES["together"]

    def __init__(self, cfg: HostedConfig, key: str) -> None:
        self.cfg = cfg
        # Reads are retried by the client; creations once per attempt (see hosted.openai).
        self.client = together.Together(base_url=cfg.base_url or None, api_key=key,
                                        max_retries=cfg.max_retries, timeout=cfg.timeout)
        self._once = self.client.with_options(max_retries=0)
        # Together's OpenAI-compatible chat API lives under /v1 of the same host.
        self.sampling_base_url = str(self.client.base_url).rstrip("/") + "/v1"

    def parameters(self, sft: Any) -> dict[str, Any]:
        """The job's parameters for an SFTConfig, in the client's names."""
        h = sft.hosted
        if h.learning_rate_multiplier is not None:
            raise HostedError("together takes --hosted.learning-rate, not "
                              "--hosted.learning-rate-multiplier")
        if h.beta is not None and h.method != "dpo":
            raise HostedError("--hosted.beta is a DPO setting; pass --hosted.method dpo")
        p: dict[str, Any] = {"n_epochs": h.n_epochs or 1, "batch_size": h.batch_size or "max",
                             "random_seed": sft.seed, "lora": sft.lora,
                             "training_method": "dpo" if h.method == "dpo" else "sft"}
        if sft.lora:
            p.update(lora_r=sft.lora_r, lora_alpha=sft.lora_alpha, lora_dropout=sft.lora_dropout)
        if h.learning_rate is not None:
            p["learning_rate"] = h.learning_rate
        if h.method == "dpo":
            if h.beta is not None:
                p["dpo_beta"] = h.beta
        else:
            p["train_on_inputs"] = h.train_on_prompt
        if h.suffix:
            p["suffix"] = h.suffix
        return p

    def prompt_loss(self, train_on_prompt: bool) -> dict[str, Any]:
        """What the training file and job express about the loss, for the stage's result."""
        if train_on_prompt:
            return {"final_reply_only": False, "trained": "every turn",
                    "how": "train_on_inputs=true, no weights"}
        return {"final_reply_only": True, "trained": "the final reply",
                "how": "train_on_inputs=false and message weight 0 on every turn but the final "
                       "reply (1)"}

    def limits(self, base_model: str, method: str) -> Limits:
        """The client's file size limit; the model's sequence length from its model limits."""
        tokens = self.cfg.max_example_tokens
        if tokens is None:
            with _errors(f"read the model limits of {base_model}"):
                lim = self.client.fine_tuning.model_limits(model_name=base_model)
                tokens = int(lim.max_seq_length_dpo if method == "dpo" else lim.max_seq_length_sft)
        return Limits(int(MAX_FILE_SIZE_GB * NUM_BYTES_IN_GB), tokens, MIN_EXAMPLES)

    def find_file(self, filename: str, size: int) -> str | None:
        """A fine-tune file uploaded before under this name and size."""
        with _errors("list files"):
            for f in self.client.files.list().data:
                if f.filename == filename and f.bytes == size and f.purpose == "fine-tune" \
                        and f.processing_status not in ("FAILED", "INVALID_FORMAT"):
                    return f.id
        return None

    def upload(self, path: Path) -> str:
        """Upload through the client's flow, with its own file check (after the stage's)."""
        with _errors("upload the training file"):
            f = self._once.files.upload(path, purpose="fine-tune", check=True)
            if not isinstance(f.id, str) or not f.id:
                raise ValueError("the uploaded file has no id")
            return f.id

    def _matches(self, job: Any, spec: JobSpec) -> bool:
        """Whether a listed job is the one ``spec`` describes (Together keeps no metadata, so
        its reported settings are compared)."""
        p = spec.hyperparameters
        method = getattr(getattr(job, "training_method", None), "method", None)
        if job.training_file != spec.training_file or job.model != spec.base_model \
                or _raw(job.status) in _GIVEN_UP or method not in (None, p["training_method"]):
            return False
        for name in ("n_epochs", "random_seed", "suffix"):
            got = getattr(job, name, None)
            if got is not None and p.get(name) is not None and got != p[name]:
                return False
        lr = getattr(job, "learning_rate", None)
        return lr is None or "learning_rate" not in p or abs(lr - p["learning_rate"]) < 1e-12

    def find_job(self, spec: JobSpec) -> JobState | None:
        """The newest matching job that has not failed or been cancelled."""
        with _errors("list jobs"):
            jobs = sorted(self.client.fine_tuning.list().data, key=lambda j: j.created_at,
                          reverse=True)
            for job in jobs:
                if self._matches(job, spec):
                    return self.status(job.id)
        return None

    def create_job(self, spec: JobSpec) -> JobState:
        """One attempt at creating the job (the client reads the model limits and a price
        estimate first)."""
        with _errors("create the job"):
            job = self._once.fine_tuning.create(training_file=spec.training_file,
                                                model=spec.base_model, **spec.hyperparameters)
            return self._state(job)

    def _state(self, job: Any) -> JobState:
        if not isinstance(job.id, str) or not job.id:
            raise ValueError("the job has no id")
        raw = _raw(job.status)
        status = _STATUS.get(raw, "running")
        model = getattr(job, "x_model_output_name", None) or getattr(job, "output_name", None)
        error = None
        if status == "failed":  # Together reports why in the job's events, not on the job
            events = self.events(job.id, ())
            errors = [e for e in events if e.get("type") in ("job_error", "JOB_ERROR", "job_user_error")
                      or e.get("level") in ("error", "Error")]
            error = (errors or events or [{}])[-1].get("message")
        return JobState(id=job.id, status=status, model_id=model, error=error,
                        trained_tokens=getattr(job, "token_count", None), raw_status=raw)

    def status(self, job_id: str) -> JobState:
        """The job's state now."""
        with _errors("read the job"):
            return self._state(self.client.fine_tuning.retrieve(job_id))

    def events(self, job_id: str, seen: Container[str]) -> list[dict]:
        """The events not seen yet, in the order the provider lists them (oldest first)."""
        with _errors("list the job's events"):
            out = []
            for ev in self.client.fine_tuning.list_events(job_id).data:
                d = ev.model_dump(mode="json")
                d["id"] = _event_id(d)
                if d["id"] not in seen:
                    out.append(d)
            return out

    def checkpoints(self, job_id: str) -> list[dict]:
        """The job's checkpoints (paths and steps)."""
        with _errors("list the job's checkpoints"):
            return [c.model_dump(mode="json")
                    for c in self.client.fine_tuning.list_checkpoints(job_id).data]

    def cancel(self, job_id: str) -> JobState:
        """Ask Together to cancel the job (it answers cancel_requested, then cancelled)."""
        with _errors("cancel the job"):
            return self._state(self.client.fine_tuning.cancel(job_id))
