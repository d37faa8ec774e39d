"""The hosted SFT stage: ``sft --backend openai|together``, called by ``policy.sft.run_sft``.

It writes the training file into ``out`` (``RUN/sft/conditioned`` etc., as local SFT), checks it,
uploads it (or finds it uploaded), creates the job (or finds it created), follows it with
capped exponential backoff and, once it succeeded, publishes ``out/final/rewardprompt.json``:
the usual policy metadata plus ``hosted: {provider, model_id, base_url, job_id}``, so that
``generate --model out/final`` samples the fine-tuned model.

``out/hosted_job.json`` records every step (atomically), so that nothing is paid for twice:

- killed between upload and job creation: the rerun finds the file by its name (which carries
  its hash) and creates the job once;
- killed between job creation and its recording: the rerun finds the job by its training file;
- interrupted (Ctrl-C) while polling: the job goes on at the provider; the same command resumes
  following it, ``--hosted.cancel`` cancels it;
- a job made from other inputs (another file, other hyper-parameters) is never reused: the stage
  refuses unless ``--overwrite``, which also starts again after a failed or cancelled job.

The job's events go to ``out/events.jsonl`` (each once, by id), its checkpoints to
``out/checkpoints.json``. The API key is read from the environment only and written nowhere.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from ..cost import Usage
from ..policy.meta import read_policy_meta, write_policy_meta
from ..runs import (LABELS, SCORES, atomic_write_bytes, atomic_write_json, file_hash, in_run,
                    iter_jsonl, policy_dir, publish_dir, read_json, update_metrics_entry, write_jsonl)
from ..template import RewardTemplate
from .base import (METHODS, PROVIDERS, TERMINAL, HostedError, JobSpec, JobState, ProviderError,
                   TrainingBackend, make_backend)
from .chatfile import (check_template, dpo_rows, encode, file_name, pairs_from_preferences,
                       pairs_from_samples, sft_rows, token_counter, validate_file)

STATE = "hosted_job.json"
EVENTS = "events.jsonl"
CHECKPOINTS = "checkpoints.json"
#: The stage's result, in the final folder (the name local SFT uses, so either is found).
RESULT = "sft_metrics.json"
#: The config file local SFT keeps beside its checkpoints (policy.sft.SFT_CONFIG).
LOCAL_CONFIG = "sft_config.json"
T = TypeVar("T")


def _after(step: str) -> None:
    """Called right after a creation returns and before it is recorded ("uploaded", "created"):
    the moment a kill costs most. Tests replace it to kill the stage there."""


#: The waits between retries and polls (tests replace it to interrupt a wait, as Ctrl-C would).
_sleep = time.sleep


def _log(msg: str) -> None:
    print(f"[rewardprompt] {msg}", flush=True)


# ---------------------------------------------------------------- inputs
def _check_config(cfg: Any) -> None:
    h = cfg.hosted
    if cfg.backend not in PROVIDERS:
        raise HostedError(f"unknown --backend {cfg.backend!r}; choose from local, "
                          f"{', '.join(PROVIDERS)}")
    if not h.base_model:
        raise HostedError(f"--backend {cfg.backend} needs the provider's model to fine-tune: "
                          "--hosted.base-model NAME")
    if h.method not in METHODS:
        raise HostedError(f"--hosted.method must be one of {', '.join(METHODS)}, not {h.method!r}")
    if h.dpo_from not in ("pairs", "samples"):
        raise HostedError(f"--hosted.dpo-from must be pairs or samples, not {h.dpo_from!r}")
    if h.base_url and (urlparse(h.base_url).username or urlparse(h.base_url).password):
        raise HostedError("--hosted.base-url must not carry credentials: put the key in the "
                          "environment variable (--hosted.api-key-env) instead")
    limit = {"openai": 64, "together": 40}[cfg.backend]
    if h.suffix and len(h.suffix) > limit:
        raise HostedError(f"--hosted.suffix is {len(h.suffix)} characters; {cfg.backend} takes "
                          f"{limit} at most")
    if h.poll_interval <= 0 or h.poll_max_interval < h.poll_interval or h.max_wait <= 0:
        raise HostedError("polling needs 0 < poll_interval <= poll_max_interval and max_wait > 0")
    if h.method == "dpo" and h.dpo_from == "pairs" and cfg.conditioned:
        raise HostedError("DPO from preference pairs has no reward to put in the block: pass "
                          "--no-conditioned, or --hosted.dpo-from samples (scored samples, "
                          "reward-augmented DPO)")


def _examples(cfg: Any, backend: TrainingBackend, tok: Any
              ) -> tuple[list[dict], RewardTemplate, Path, dict[str, Any]]:
    """The training file's rows, the template they carry, the data file read, and what the
    reading found (for the result)."""
    from ..labelling import read_labelled

    h = cfg.hosted
    if h.method == "supervised":
        data = in_run(cfg.run, cfg.data, LABELS)
        rows, template = read_labelled(data, dict(cfg.template), cfg.conditioned)
        check_template(template, cfg.conditioned)
        examples = sft_rows(rows, template, conditioned=cfg.conditioned,
                            max_prompt_tokens=cfg.max_prompt_tokens, tok=tok,
                            weight_roles=backend.weight_roles,
                            train_on_prompt=h.train_on_prompt, source=str(data),
                            targets=cfg.targets, seed=cfg.seed)
        return examples, template, data, {}
    if h.dpo_from == "pairs":
        if not h.dpo_data:
            raise HostedError("--hosted.method dpo with --hosted.dpo-from pairs needs the "
                              "preference pairs: --hosted.dpo-data FILE (prompt, chosen, rejected)")
        data = Path(h.dpo_data)
        pairs = pairs_from_preferences(h.dpo_data)
        template = RewardTemplate.from_dict(dict(cfg.template))
        found = {"pairs": len(pairs)}
    else:
        data = in_run(cfg.run, h.dpo_data, SCORES)
        pairs, found = pairs_from_samples(data, rewards=h.dpo_rewards, dimension=h.dpo_dimension,
                                          group_by=h.dpo_group_by, model=h.dpo_model)
        first = pairs[0].chosen_rewards
        template = RewardTemplate.from_dict({**({"dimensions": tuple(first)} if first else {}),
                                             **cfg.template})
    check_template(template, cfg.conditioned)
    examples = dpo_rows(pairs, template, conditioned=cfg.conditioned,
                        max_prompt_tokens=cfg.max_prompt_tokens, tok=tok, source=str(data))
    return examples, template, data, {"dpo": {"from": h.dpo_from, **found}}


# ---------------------------------------------------------------- retries
def _retrying(what: str, fn: Callable[[], T], h: Any, *,
              find: Callable[[], T | None] | None = None) -> T:
    """``fn()``, retried on transient errors with capped exponential backoff. For a creation,
    ``find`` looks first for what an attempt whose answer was lost may have created."""
    delay = h.poll_interval
    for attempt in range(h.max_retries + 1):
        try:
            if attempt and find is not None:
                found = find()
                if found is not None:
                    _log(f"{what}: found what the interrupted attempt made")
                    return found
            return fn()
        except ProviderError as exc:
            if not exc.transient or attempt == h.max_retries:
                raise HostedError(f"{what}: {exc}") from None
            _log(f"{what}: {exc}; retrying in {delay:.2f}s")
            _sleep(delay)
            delay = min(2 * delay, h.poll_max_interval)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- state
def _save(out: Path, state: dict) -> None:
    atomic_write_json(out / STATE, {**state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})


def _job_fields(st: JobState) -> dict[str, Any]:
    return {"job_id": st.id, "status": st.status, "provider_status": st.raw_status,
            "model_id": st.model_id, "trained_tokens": st.trained_tokens, "error": st.error}


def _seen_events(out: Path) -> tuple[list[dict], set[str]]:
    path = out / EVENTS
    if not path.is_file():
        return [], set()
    events = [row for _, row in iter_jsonl(path)]
    return events, {str(e.get("id")) for e in events}


def _sync(backend: TrainingBackend, out: Path, job_id: str, *, checkpoints: bool) -> None:
    """Append the job's new events to events.jsonl and rewrite checkpoints.json; these are
    records, so a failure to read them is reported and left for the next poll."""
    try:
        events, seen = _seen_events(out)
        new = [e for e in backend.events(job_id, seen) if str(e.get("id")) not in seen]
        if new:
            write_jsonl(out / EVENTS, events + new)
        if checkpoints:
            atomic_write_json(out / CHECKPOINTS, backend.checkpoints(job_id))
    except ProviderError as exc:
        _log(f"could not read the job's events or checkpoints this time ({exc})")


def _discard(out: Path, why: str, state: dict) -> None:
    job, status = state.get("job_id"), state.get("status")
    left = (f"; its job {job} ({status}) is not cancelled by this: cancel it at the provider if "
            "it still runs" if job and status not in TERMINAL else "")
    _log(f"--overwrite: discarding {out} ({why}){left}")
    shutil.rmtree(out, ignore_errors=True)


def _previous(cfg: Any, out: Path, key: str, inputs: dict) -> dict:
    """The state to continue from: {} for a fresh start. Refuses to reuse a job made from other
    inputs, or to go past a failed or cancelled one, unless ``overwrite``."""
    state = read_json(out / STATE) if (out / STATE).is_file() else {}
    final = out / "final"
    if (out / LOCAL_CONFIG).is_file() or (final.is_dir() and "hosted" not in read_policy_meta(final)):
        if not cfg.overwrite:
            raise HostedError(f"{out} holds a locally trained SFT model or its checkpoints; pass "
                              "--overwrite to replace it with a hosted one, or use another --out")
        _discard(out, "a local SFT run", {})
        return {}
    if not state:
        return {}
    if state.get("key") != key:
        before = state.get("inputs") or {}
        changed = sorted(k for k in set(before) | set(inputs) if before.get(k) != inputs.get(k))
        if not cfg.overwrite:
            raise HostedError(f"{out} holds hosted job {state.get('job_id') or '(not created)'} "
                              f"({state.get('status') or 'not started'}) made from other inputs "
                              f"(changed: {', '.join(changed) or 'unknown'}); reusing it would "
                              "train on the wrong data or settings. Pass --overwrite to start a "
                              "new job, or use another --out")
        _discard(out, f"changed: {', '.join(changed)}", state)
        return {}
    if state.get("status") in ("failed", "cancelled"):
        what = (f"failed: {state.get('error') or 'no message'}" if state["status"] == "failed"
                else "was cancelled")
        if not cfg.overwrite:
            raise HostedError(f"{cfg.backend} job {state.get('job_id')} {what}. Pass --overwrite "
                              "to start a new job (the uploaded file is reused)")
        _discard(out, f"job {state.get('job_id')} {state['status']}", state)
        return {}
    return state


# ---------------------------------------------------------------- the stage
def train_hosted(cfg: Any) -> dict:
    """Fine-tune ``cfg.hosted.base_model`` at the provider ``cfg.backend`` on the labelled
    replies (or DPO pairs); resume a recorded job; publish ``out/final``."""
    _check_config(cfg)
    h = cfg.hosted
    out = in_run(cfg.run, cfg.out, policy_dir("conditioned" if cfg.conditioned else "uncond_sft"))
    backend = make_backend(cfg.backend, h)
    if h.cancel:
        return _cancel(cfg, backend, out)
    tok = token_counter(h.tokenizer)
    examples, template, data, found = _examples(cfg, backend, tok)
    blob = encode(examples)
    name = file_name(h.method, blob)
    params = backend.parameters(cfg)
    inputs = {"provider": cfg.backend, "base_url": h.base_url or "", "base_model": h.base_model,
              "method": h.method, "parameters": params,
              "training_file": "sha256:" + hashlib.sha256(blob).hexdigest()}
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    state = _previous(cfg, out, key, inputs)
    if state.get("status") == "succeeded" and (out / "final" / RESULT).is_file():
        return read_json(out / "final" / RESULT)

    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    if not path.is_file() or path.read_bytes() != blob:
        atomic_write_bytes(path, blob)
    for stale in out.glob("rewardprompt-*.jsonl"):  # files of inputs this run no longer has
        if stale.name != name:
            stale.unlink()
    limits = _retrying("read the provider's limits",
                       lambda: backend.limits(h.base_model, h.method), h)
    stats = validate_file(path, method=h.method, max_file_bytes=limits.max_file_bytes,
                          max_example_tokens=limits.max_example_tokens,
                          min_examples=limits.min_examples, tok=tok,
                          weight_roles=backend.weight_roles)
    state.update(provider=cfg.backend, key=key, inputs=inputs,
                 file={"path": name, "hash": inputs["training_file"], "bytes": len(blob)})
    _save(out, state)
    try:
        if not state.get("file_id"):
            find_file = lambda: backend.find_file(name, len(blob))
            file_id = _retrying("look for the uploaded file", find_file, h)
            if file_id:
                _log(f"{cfg.backend}: {name} is uploaded already ({file_id})")
            else:
                file_id = _retrying("upload the training file", lambda: backend.upload(path), h,
                                    find=find_file)
                _log(f"{cfg.backend}: uploaded {name} ({file_id}, {stats['examples']} examples)")
            _after("uploaded")
            state["file_id"] = file_id
            _save(out, state)
        if not state.get("job_id"):
            spec = JobSpec(h.base_model, state["file_id"], h.method, params, key)
            job = _retrying("look for the job", lambda: backend.find_job(spec), h)
            if job:
                _log(f"{cfg.backend}: job {job.id} was created already ({job.raw_status})")
            else:
                job = _retrying("create the job", lambda: backend.create_job(spec), h,
                                find=lambda: backend.find_job(spec))
                _log(f"{cfg.backend}: created job {job.id} ({h.method}, {h.base_model})")
            _after("created")
            state.update(_job_fields(job))
            _save(out, state)
        st = _follow(cfg, backend, out, state)
    except KeyboardInterrupt:
        _save(out, state)
        job = state.get("job_id")
        if job:
            raise HostedError(f"interrupted: {cfg.backend} job {job} goes on at the provider (and "
                              "is billed). Run the same command again to resume following it, or "
                              "add --hosted.cancel to cancel it") from None
        raise HostedError("interrupted before a job was recorded: run the same command again; "
                          "the uploaded file and any job already created are found, not made "
                          "twice") from None
    return _publish(cfg, backend, out, state, st, template, data, stats, found)


def _follow(cfg: Any, backend: TrainingBackend, out: Path, state: dict) -> JobState:
    """Poll the job until it ends: one line per status change, backoff doubling up to
    poll_max_interval, at most max_wait seconds."""
    h, job_id = cfg.hosted, state["job_id"]
    delay, start, last, errors = h.poll_interval, time.monotonic(), None, 0
    while True:
        try:
            st = backend.status(job_id)
            errors = 0
        except ProviderError as exc:
            errors += 1
            if not exc.transient or errors > h.max_retries:
                raise HostedError(f"reading job {job_id}: {exc}. The job goes on at the "
                                  "provider: run the same command again to resume following it"
                                  ) from None
            _log(f"reading job {job_id}: {exc}; trying again")
            st = None
        if st is not None:
            changed = (st.status, st.raw_status) != last
            if changed:
                last = (st.status, st.raw_status)
                _log(f"{cfg.backend} job {job_id}: {st.status}"
                     + (f" ({st.raw_status})" if st.raw_status != st.status else "")
                     + f" after {time.monotonic() - start:.0f}s")
                state.update(_job_fields(st))
                _save(out, state)
            _sync(backend, out, job_id, checkpoints=changed)
            if st.status in TERMINAL:
                return st
        if time.monotonic() - start > h.max_wait:
            raise HostedError(f"{cfg.backend} job {job_id} is still {state.get('status')} after "
                              f"{h.max_wait:.0f}s (--hosted.max-wait). It goes on at the "
                              "provider: run the same command again to resume following it, or "
                              "add --hosted.cancel to cancel it")
        _sleep(delay)
        delay = min(2 * delay, h.poll_max_interval)


def _publish(cfg: Any, backend: TrainingBackend, out: Path, state: dict, st: JobState,
             template: RewardTemplate, data: Path, stats: dict, found: dict) -> dict:
    """The ended job's result: an error for a failed or cancelled one; for a success, the
    final folder with the policy metadata sampling reads."""
    h = cfg.hosted
    if st.status == "failed":
        raise HostedError(f"{cfg.backend} job {st.id} failed: {st.error or 'no message'}. Fix "
                          "the cause and pass --overwrite to start a new job")
    if st.status == "cancelled":
        raise HostedError(f"{cfg.backend} job {st.id} was cancelled. Pass --overwrite to start a "
                          "new job (the uploaded file is reused)")
    if not st.model_id:
        raise HostedError(f"{cfg.backend} job {st.id} succeeded but reported no fine-tuned "
                          "model id")
    labels = file_hash(data) if data.is_file() else f"source:{data}"  # a shipped pair set
    hosted = {"provider": cfg.backend, "model_id": st.model_id,
              "base_url": backend.sampling_base_url, "job_id": st.id,
              "api_key_env": h.api_key_env or PROVIDERS[cfg.backend]}
    result = {"backend": cfg.backend, "base_model": h.base_model, "model_id": st.model_id,
              "job_id": st.id, "file_id": state["file_id"], "method": h.method,
              "conditioned": cfg.conditioned, **stats,
              "trained_tokens": st.trained_tokens,
              "prompt_loss": backend.prompt_loss(h.train_on_prompt),
              "prompt_fit": f"fit_prompt to max_prompt_tokens={cfg.max_prompt_tokens} "
                            f"({stats['token_count']}); replies not cut",
              **found,
              "cost": Usage(cfg.backend, h.base_model, trained_tokens=st.trained_tokens or 0,
                            method=h.method).to_dict()}
    tmp = out / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    atomic_write_json(tmp / RESULT, result)
    # What the model was trained to read, so that sampling shows it the same block, and where
    # it is served.
    write_policy_meta(tmp, {"config": cfg, "labels": labels, "template": template.to_dict(),
                            "conditioned": cfg.conditioned,
                            "max_prompt_tokens": cfg.max_prompt_tokens,
                            "max_completion_tokens": cfg.max_completion_tokens,
                            "hosted": hosted})
    publish_dir(tmp, out / "final")
    update_metrics_entry(cfg.run, "sft", out.name, result)
    _log(f"{cfg.backend}: fine-tuned model {st.model_id} -> {out / 'final'}")
    return result


def _cancel(cfg: Any, backend: TrainingBackend, out: Path) -> dict:
    """Cancel the job recorded in ``out`` (or, when its creation was not recorded, the job
    found by the recorded training file)."""
    h = cfg.hosted
    state = read_json(out / STATE) if (out / STATE).is_file() else {}
    job_id = state.get("job_id")
    if not job_id and state.get("file_id"):
        inputs = state.get("inputs") or {}
        spec = JobSpec(inputs.get("base_model", h.base_model), state["file_id"],
                       inputs.get("method", h.method), inputs.get("parameters") or {},
                       state.get("key", ""))
        job = _retrying("look for the job", lambda: backend.find_job(spec), h)
        job_id = job.id if job else None
    if not job_id:
        raise HostedError(f"{out}: no hosted job is recorded there, so there is nothing to cancel")
    if state.get("status") in TERMINAL:
        _log(f"{cfg.backend} job {job_id} has ended already ({state['status']})")
        return {"backend": cfg.backend, "job_id": job_id, "status": state["status"],
                "cancelled": False}
    st = _retrying("cancel the job", lambda: backend.cancel(job_id), h)
    state.update(_job_fields(st))
    _save(out, state)
    _log(f"{cfg.backend} job {job_id}: cancel requested ({st.raw_status})")
    return {"backend": cfg.backend, "job_id": job_id, "status": st.status,
            "provider_status": st.raw_status, "cancelled": True}

