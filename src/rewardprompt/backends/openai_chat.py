"""Sampling from any OpenAI-compatible chat-completions server (vLLM, llama.cpp, `rewardprompt
serve`, a hosted API) through the official ``openai`` client.

Retries: the client's own machinery does them (``max_retries``): 408, 409, 429 and 5xx answers,
timeouts and dropped connections, with exponential backoff (0.5 s doubling, at most 8 s, less
up to 25 % jitter) or the server's ``Retry-After`` / ``retry-after-ms`` (seconds or an HTTP
date) when it is at most 2 minutes; a longer Retry-After, and 400/401/403/404/422, are not
retried. What it lacks is added here, inside that same machinery: a 200 whose body is not a chat
completion (malformed JSON, no choices, no usage) is a transport error to the client, retried
like a dropped connection; a client-side rate limit and a request counter, on every HTTP
attempt, retries included.

Resume: every answer is appended (and flushed) to a cache JSONL keyed by a hash of the model,
the messages, the sampling settings and the sample's index among identical prompts, so a rerun
asks only for what is not answered yet.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..chat import Message, split_prefill
from ..errors import DataError
from ..runs import iter_jsonl_lines, parse_jsonl_line, redact
from .base import Completion, SamplingConfig, TokenLogprob

#: The key a local server may take (vLLM's convention) when ``api_key_env`` is empty.
NO_KEY = "EMPTY"
#: The longest Retry-After the openai client honours (openai._constants.MAX_RETRY_AFTER_DELAY).
MAX_RETRY_AFTER_S = 120


@dataclass
class ChatAPIConfig:
    """How to reach an OpenAI-compatible chat-completions server (``--backend openai-chat``)."""

    base_url: str | None = None
    """The server, e.g. http://127.0.0.1:8000/v1; None: the policy folder's hosted base_url
    (written by hosted training), else the client's default (the OpenAI API)."""
    model_id: str | None = None
    """The server's name for the model; None: the policy folder's hosted model_id, else the
    --model string itself."""
    api_key_env: str | None = None
    """The environment variable that holds the key (the key is never taken from a flag or a
    file); None: the one the policy folder's hosted training used (TOGETHER_API_KEY for a
    Together model), else OPENAI_API_KEY; '' for a local server that takes none."""
    concurrency: int = 8
    """Requests in flight at most."""
    requests_per_s: float = 0.0
    """Client-side rate limit on HTTP requests, retries included (0: none)."""
    timeout_s: float = 120.0
    """Seconds one HTTP request may take before it counts as timed out (and is retried)."""
    max_retries: int = 5
    """Retries per request (the openai client's, with backoff) before the stage stops."""
    top_logprobs: int = 0
    """Log-probs of the k most likely tokens at each generated position (0: none). OpenAI and
    vLLM allow at most 20; rewardprompt serve allows the whole vocabulary."""
    tokens_as_ids: bool = False
    """Ask for tokens as ``token_id:N`` (vLLM's and rewardprompt serve's
    return_tokens_as_token_ids), so log-probs map onto a local model's vocabulary exactly."""
    continue_final_message: bool = False
    """Send prefills (a prompt ending with an assistant message) with vLLM's
    continue_final_message; without it a prefill is an error, as most APIs start a new turn."""
    cache: str | None = None
    """The request cache JSONL; None: beside the generations (OUT.cache)."""
    provider: str | None = None
    """The provider in the cost record (its prices in configs/prices/prices.yaml); None: the policy
    folder's hosted provider, else openai-chat."""


class ChatAPIError(OSError):
    """The server could not answer (after retries), or refused the request."""


def resolve_hosted(model: str, api: ChatAPIConfig) -> tuple[str, str | None, str]:
    """``(model_id, base_url, provider)``: the config's own, else those a hosted training stage
    wrote into the policy folder's rewardprompt.json (``hosted: {model_id, base_url,
    provider}``), else the model string as the server's model name."""
    from ..policy.meta import read_policy_meta

    hosted = read_policy_meta(model).get("hosted") or {}
    # Sent to another server (a local copy, a proxy), the samples are not the provider's to bill.
    at_provider = not api.base_url or api.base_url == hosted.get("base_url")
    return (api.model_id or hosted.get("model_id") or model,
            api.base_url or hosted.get("base_url"),
            api.provider or (hosted.get("provider") if at_provider else None) or "openai-chat")


def request_key(model_id: str, messages: list[Message], settings: dict[str, Any], index: int) -> str:
    """The cache key of one request: what decides its answer."""
    blob = json.dumps({"model": model_id, "messages": messages, "settings": settings,
                       "index": index}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


class RequestCache:
    """Answered requests, one JSON line each, appended and flushed as they come."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self.answers: dict[str, dict] = {}
        self._lock = threading.Lock()
        if self.path is None or not self.path.exists():
            return
        lines = list(iter_jsonl_lines(self.path))
        for n, (lineno, raw) in enumerate(lines):
            try:
                row = parse_jsonl_line(raw, file=str(self.path), line=lineno)
            except DataError:
                if n < len(lines) - 1:
                    raise
                # A write cut short by a kill: cut it off (that answer is asked again), so
                # that the next answer starts a line of its own.
                data = self.path.read_bytes()
                with open(self.path, "rb+") as fh:
                    fh.truncate(data.rstrip().rfind(b"\n") + 1)
                continue
            self.answers[row["key"]] = row["completion"]

    def get(self, key: str) -> Completion | None:
        hit = self.answers.get(key)
        return Completion(**hit) if hit is not None else None

    def put(self, key: str, completion: Completion) -> None:
        if self.path is None:
            return
        record = {"key": key, "completion": dataclasses.asdict(completion)}
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                fh.flush()
            self.answers[key] = record["completion"]


class RateLimit:
    """A token bucket of one token: requests start at least ``1 / per_s`` seconds apart."""

    def __init__(self, per_s: float) -> None:
        self.gap = 1.0 / per_s if per_s > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.gap:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.gap
        time.sleep(start - now)


def _httpx():
    """The HTTP library the installed openai client is built on (httpx2 from openai 3)."""
    try:
        import httpx2
        return httpx2
    except ImportError:
        import httpx
        return httpx


def _malformed(body: bytes, want_logprobs: bool) -> str | None:
    """Why ``body`` is not a usable chat completion (None when it is one)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"not JSON ({exc})"
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return "no choices"
    message = choices[0].get("message")
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        return "no message content"
    usage = data.get("usage")
    if not isinstance(usage, dict) or not isinstance(usage.get("completion_tokens"), int):
        return "no usage.completion_tokens"
    if want_logprobs and not isinstance((choices[0].get("logprobs") or {}).get("content"), list):
        return "no logprobs although they were asked for"
    return None


class ChatAPIBackend:
    """A PolicyBackend on an OpenAI-compatible chat-completions server: one request per sample,
    ``concurrency`` in flight, answers cached for resume."""

    def __init__(self, model: str, api: ChatAPIConfig | None = None,
                 cache: str | Path | None = None) -> None:
        import openai

        self.api = api or ChatAPIConfig()
        if self.api.concurrency < 1:
            raise ValueError(f"api.concurrency must be at least 1, got {self.api.concurrency}")
        self.model_id, self.base_url, self.provider = resolve_hosted(model, self.api)
        if self.api.api_key_env is None:
            from ..policy.meta import read_policy_meta

            hosted = read_policy_meta(model).get("hosted") or {}
            self.api = dataclasses.replace(
                self.api, api_key_env=hosted.get("api_key_env") or "OPENAI_API_KEY")
        if self.api.api_key_env:
            key = os.environ.get(self.api.api_key_env)
            if not key:
                raise ValueError(f"openai-chat needs an API key in the environment variable "
                                 f"{self.api.api_key_env}; set it, or give --api.api-key-env '' "
                                 "for a local server that takes none")
        else:
            key = NO_KEY
        self._key = key
        self.cache = RequestCache(cache or self.api.cache)
        self._limit = RateLimit(self.api.requests_per_s)
        self._lock = threading.Lock()
        self.stats: dict[str, Any] = {}
        httpx = _httpx()
        want_logprobs = self.api.top_logprobs > 0

        class MalformedResponse(httpx.DecodingError):
            """A 200 whose body is no chat completion: a transport error, so the client retries."""

        def on_request(request: Any) -> None:
            self._limit.wait()
            with self._lock:
                self.stats["attempts"] += 1

        def on_response(response: Any) -> None:
            with self._lock:
                self.stats["statuses"][response.status_code] += 1
            if 200 <= response.status_code < 300 and response.request.url.path.endswith(
                    "/chat/completions"):
                why = _malformed(response.read(), want_logprobs)
                if why is not None:
                    with self._lock:
                        self.stats["malformed"] += 1
                    raise MalformedResponse(f"malformed response body: {why}",
                                            request=response.request)

        http_client = openai.DefaultHttpxClient(
            event_hooks={"request": [on_request], "response": [on_response]},
            limits=httpx.Limits(max_connections=self.api.concurrency,
                                max_keepalive_connections=self.api.concurrency))
        self.client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=self.api.timeout_s,
                                    max_retries=self.api.max_retries, http_client=http_client)
        self._reset_stats()

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def _reset_stats(self) -> None:
        self.stats = {"model": self.model_id, "requests": 0, "cached": 0, "attempts": 0,
                      "malformed": 0, "statuses": Counter()}

    def _redact(self, text: str) -> str:
        """The text without the key (a server may echo it) or credentials in a URL."""
        return redact(text.replace(self._key, "***") if self._key != NO_KEY else text)

    def requests(self, prompts: list[list[Message]], cfg: SamplingConfig) -> list[tuple[str, dict]]:
        """``(cache key, create() arguments)`` for each prompt.

        Each sample's seed is drawn from its messages, its index among identical prompts and
        ``cfg.seed``, so a retried or resumed request asks for the same sample.
        """
        settings = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                    "top_p": cfg.top_p, "seed": cfg.seed, "top_logprobs": self.api.top_logprobs,
                    "tokens_as_ids": self.api.tokens_as_ids}
        seen: Counter[str] = Counter()
        out = []
        for messages in prompts:
            blob = json.dumps(messages, sort_keys=True, ensure_ascii=False)
            index = seen[blob]
            seen[blob] += 1
            key = request_key(self.model_id, messages, settings, index)
            seed = int(hashlib.sha256(f"{cfg.seed}\0{index}\0{blob}".encode()).hexdigest()[:8], 16)
            kwargs: dict[str, Any] = {
                "model": self.model_id, "messages": messages, "n": 1,
                "max_completion_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                "top_p": cfg.top_p, "seed": seed % 2**31}
            if self.api.top_logprobs > 0:
                kwargs.update(logprobs=True, top_logprobs=self.api.top_logprobs)
            extra: dict[str, Any] = {}
            if split_prefill(messages)[1]:
                if not self.api.continue_final_message:
                    raise ValueError(
                        "a prompt ends with an assistant message (a prefill), which chat APIs "
                        "answer with a new turn; give --api.continue-final-message for a server "
                        "that can continue it (vLLM, rewardprompt serve)")
                extra.update(continue_final_message=True, add_generation_prompt=False)
            if self.api.tokens_as_ids:
                extra["return_tokens_as_token_ids"] = True
            if extra:
                kwargs["extra_body"] = extra
            out.append((key, kwargs))
        return out

    def _ask(self, kwargs: dict) -> Completion:
        import openai

        where = f"{self.base_url or 'the OpenAI API'} (model {self.model_id})"
        try:
            resp = self.client.chat.completions.create(**kwargs)
        except openai.APIStatusError as exc:
            body = exc.body
            message = (body.get("message") if isinstance(body, dict) else None) or str(body or exc)
            hint = ""
            # The client's own parser (seconds, milliseconds or an HTTP date), for the message.
            parse = getattr(self.client, "_parse_retry_after_header", lambda headers: None)
            wait_s = parse(exc.response.headers)
            if exc.status_code == 401:
                hint = f" (check the key in ${self.api.api_key_env})" if self.api.api_key_env \
                    else " (no key was sent: set --api.api-key-env)"
            elif wait_s is not None and wait_s > MAX_RETRY_AFTER_S:
                hint = (f" asking to wait {wait_s:.0f} s, longer than the openai client waits "
                        f"({MAX_RETRY_AFTER_S} s), so it was not retried")
            elif exc.status_code >= 500 or exc.status_code in (408, 409, 429):
                hint = f" after {self.api.max_retries} retries"
            raise ChatAPIError(self._redact(
                f"{where} answered {exc.status_code}{hint}: {message}")) from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__
            why = (f"timed out after {self.api.timeout_s:g} s" if isinstance(exc, openai.APITimeoutError)
                   else f"{cause}" if cause is not None and str(cause) else
                   type(cause).__name__ if cause is not None else str(exc))
            raise ChatAPIError(self._redact(
                f"no answer from {where} after {self.api.max_retries} retries: {why}")) from None
        choice = resp.choices[0]
        prefill = split_prefill(kwargs["messages"])[1]
        logprobs: list[TokenLogprob] | None = None
        if self.api.top_logprobs > 0:
            logprobs = [{"token": t.token, "logprob": t.logprob,
                         "top": {x.token: x.logprob for x in t.top_logprobs}}
                        for t in choice.logprobs.content]
        # vLLM returns only the continuation of a prefill; the reply starts with it, as locally.
        return Completion(text=(prefill + choice.message.content).strip(),
                          n_tokens=resp.usage.completion_tokens,
                          finished=choice.finish_reason == "stop", logprobs=logprobs,
                          usage={"prompt_tokens": resp.usage.prompt_tokens,
                                 "completion_tokens": resp.usage.completion_tokens})

    def generate(self, prompts: list[list[Message]], cfg: SamplingConfig) -> list[Completion]:
        """One completion per prompt, in order; cached answers are not asked again.

        The first request that fails for good (refused, or still failing after its retries)
        stops the others from starting; the answers so far stay in the cache, and the error
        names the cause and the cache.
        """
        from tqdm.auto import tqdm

        self._reset_stats()
        jobs = self.requests(prompts, cfg)
        out: list[Completion | None] = [self.cache.get(key) for key, _ in jobs]
        todo = [i for i, c in enumerate(out) if c is None]
        self.stats["cached"] = len(prompts) - len(todo)
        stop = threading.Event()
        bar = tqdm(total=len(todo), desc="requests", unit="req", disable=not todo)

        def work(i: int) -> None:
            if stop.is_set():
                return
            with self._lock:
                self.stats["requests"] += 1
            key, kwargs = jobs[i]
            try:
                out[i] = self._ask(kwargs)
            except BaseException:
                stop.set()  # requests not yet started are not sent
                raise
            self.cache.put(key, out[i])
            bar.update(1)

        pool = ThreadPoolExecutor(max_workers=self.api.concurrency, thread_name_prefix="openai-chat")
        try:
            futures = [pool.submit(work, i) for i in todo]
            wait(futures)  # after a failure the requests in flight finish and are cached
            failed = [f.exception() for f in futures if f.exception() is not None]
        except BaseException:
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        self.stats["retries"] = self.stats["attempts"] - self.stats["requests"]
        self.stats["statuses"] = {str(k): v for k, v in sorted(self.stats["statuses"].items())}
        if failed:
            answered = sum(c is not None for c in out)
            where = f"; the {answered} answers so far are kept in {self.cache.path}, and a " \
                    "rerun asks only for the rest" if self.cache.path else ""
            raise ChatAPIError(f"openai-chat: {len(prompts) - answered} of {len(prompts)} "
                               f"requests unanswered: {failed[0]}{where}")
        print(f"[rewardprompt] openai-chat {self.model_id}: {len(prompts)} answers "
              f"({self.stats['cached']} from the cache), {self.stats['attempts']} HTTP requests, "
              f"{self.stats['retries']} retries", flush=True)
        return out  # type: ignore[return-value]
