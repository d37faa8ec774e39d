"""The serve stage: an OpenAI-compatible chat-completions server on a local policy.

It samples through the project's own LocalBackend (chat template via render_prompt, stop tokens,
per-batch seeds), so ``generate --backend openai-chat`` against it gives what the local backend
would, with log-probs. It serves ``POST /v1/chat/completions`` (``n``, ``max_tokens`` /
``max_completion_tokens``, ``temperature``, ``top_p``, ``seed``, ``logprobs`` /
``top_logprobs``, and vLLM's ``continue_final_message`` and ``return_tokens_as_token_ids``)
and ``GET /v1/models``; requests reach the model one at a time. For tests and offline use:
stdlib http.server, no batching across requests.
"""
from __future__ import annotations

import contextlib
import hmac
import json
import os
import random
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any



@dataclass
class ServeConfig:
    """Serve a local policy as an OpenAI-compatible chat-completions API."""

    model: str
    """The policy: a folder (fine-tuned by sft or any HF causal LM), a Hub id or a shipped name."""
    host: str = "127.0.0.1"
    """The address to listen on (127.0.0.1: this machine only)."""
    port: int = 8000
    """The port (0: any free one; the URL is printed)."""
    name: str | None = None
    """The model's name in requests and /v1/models (default: the model string)."""
    api_key_env: str = ""
    """An environment variable whose value requests must carry as their Bearer key ('': none)."""
    max_tokens: int = 256
    """Tokens generated when a request does not say."""
    batch_size: int = 16
    """Samples of one request (n) generated together."""


class RequestError(Exception):
    """A request the server refuses, with the HTTP status and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param


def _number(body: dict, name: str, default: Any, kind: type, lo: float | None = None,
            hi: float | None = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
        raise RequestError(400, f"{name} must be {'a number' if kind is float else 'an integer'}",
                           param=name)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise RequestError(400, f"{name} must be in [{lo}, {hi}], got {value}", param=name)
    return kind(value)


class PolicyServer:
    """The model behind the HTTP handler: turns one request body into one response body."""

    def __init__(self, cfg: ServeConfig) -> None:
        from .backends.local import LocalBackend

        self.cfg = cfg
        self.name = cfg.name or cfg.model
        self.backend = LocalBackend(cfg.model)
        self.vocab = len(self.backend.tokenizer)
        self.key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if cfg.api_key_env and not self.key:
            raise ValueError(f"serve: api_key_env names {cfg.api_key_env}, which is not set")
        # One thread runs the model, one request at a time: torch state stays in a thread that
        # close() ends, not in the short-lived handler threads.
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardprompt-model")
        self._pieces: dict[int, str] = {}

    def close(self) -> None:
        self.worker.shutdown(wait=True, cancel_futures=True)

    def authorised(self, header: str | None) -> bool:
        if self.key is None:
            return True
        given = (header or "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), self.key.encode())

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model",
                                            "created": 0, "owned_by": "rewardprompt"}]}

    def _token(self, i: int, as_ids: bool) -> dict:
        """A token as the API shows it: its text (special tokens too) and UTF-8 bytes."""
        piece = self._pieces.get(i)
        if piece is None:
            piece = self._pieces[i] = self.backend.tokenizer.decode([i])
        return {"token": f"token_id:{i}" if as_ids else piece, "bytes": list(piece.encode("utf-8"))}

    def chat(self, body: dict) -> dict:
        """The chat.completion for one request body (raises RequestError for a bad one)."""
        from .backends.base import SamplingConfig
        from .policy.tokenise import render_prompt
        from .runs import messages_error

        if body.get("model") != self.name:
            raise RequestError(404, f"The model `{body.get('model')}` does not exist; this "
                                    f"server has `{self.name}`", "not_found_error", "model")
        messages = body.get("messages")
        error = messages_error(messages)
        if error:
            raise RequestError(400, f"messages: {error}", param="messages")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        if bool(body.get("continue_final_message")) != bool(messages[-1]["role"] == "assistant"):
            raise RequestError(400, "continue_final_message continues a final assistant message: "
                                    "give both or neither", param="continue_final_message")
        if body.get("stream"):
            raise RequestError(400, "stream is not supported", param="stream")
        n = _number(body, "n", 1, int, 1, 128)
        max_tokens = _number(body, "max_completion_tokens", None, int, 1) or \
            _number(body, "max_tokens", self.cfg.max_tokens, int, 1)
        temperature = _number(body, "temperature", 1.0, float, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, float, 0.0, 1.0)
        if top_p == 0:
            raise RequestError(400, "top_p must be above 0", param="top_p")
        seed = _number(body, "seed", None, int)
        if seed is None:
            seed = random.randrange(2**31)
        # logprobs alone: the sampled tokens' log-probs; top_logprobs k adds the k most likely.
        top = _number(body, "top_logprobs", 0, int, 0, self.vocab) if body.get("logprobs") else None
        if body.get("top_logprobs") is not None and not body.get("logprobs"):
            raise RequestError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        tok = self.backend.tokenizer
        # A prefill ends the text open (continue_final_message); otherwise the assistant turn opens.
        prompt_ids = tok(render_prompt(tok, messages), add_special_tokens=False)["input_ids"]
        cfg = SamplingConfig(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                             batch_size=min(n, self.cfg.batch_size), seed=seed)
        samples = self.worker.submit(self.backend.sample, [prompt_ids] * n, cfg,
                                     top_logprobs=top, progress=False).result()
        choices = []
        for i, s in enumerate(samples):
            text_ids = s.ids[:-1] if s.finished else s.ids
            logprobs = None
            if top is not None:
                logprobs = {"content": [
                    {**self._token(t, as_ids), "logprob": lp,
                     "top_logprobs": [{**self._token(j, as_ids), "logprob": v} for j, v in alts]}
                    for t, lp, alts in zip(s.ids, s.logprobs, s.top)], "refusal": None}
            # As vLLM does, a prefill's continuation alone is the content.
            choices.append({"index": i, "finish_reason": "stop" if s.finished else "length",
                            "message": {"role": "assistant",
                                        "content": tok.decode(text_ids, skip_special_tokens=True)},
                            "logprobs": logprobs})
        completion_tokens = sum(len(s.ids) for s in samples)  # billed as servers do: stop included
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": self.name, "choices": choices,
                "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": completion_tokens,
                          "total_tokens": len(prompt_ids) + completion_tokens}}


class ChatHandler(BaseHTTPRequestHandler):
    """HTTP for a PolicyServer (``self.server.policy``): JSON in, JSON out, OpenAI-style errors."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the openai client expects

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        if self.server.verbose:  # type: ignore[attr-defined]
            super().log_message(format, *args)

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, exc: RequestError) -> None:
        self._send(exc.status, {"error": {"message": str(exc), "type": exc.kind,
                                          "param": exc.param, "code": exc.status}})

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        policy: PolicyServer = self.server.policy  # type: ignore[attr-defined]
        if not policy.authorised(self.headers.get("Authorization")):
            return self._error(RequestError(401, "invalid API key", "authentication_error"))
        if self.path.rstrip("/") == "/v1/models":
            return self._send(200, policy.models())
        self._error(RequestError(404, f"no route {self.path}", "not_found_error"))

    def do_POST(self) -> None:  # noqa: N802
        policy: PolicyServer = self.server.policy  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not policy.authorised(self.headers.get("Authorization")):
            return self._error(RequestError(401, "invalid API key", "authentication_error"))
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._error(RequestError(404, f"no route {self.path}", "not_found_error"))
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise RequestError(400, "the request body must be a JSON object")
            return self._send(200, policy.chat(body))
        except json.JSONDecodeError as exc:
            return self._error(RequestError(400, f"the request body is not JSON: {exc}"))
        except RequestError as exc:
            return self._error(exc)
        except Exception as exc:  # a bug or the model failing: a 500, and the server lives on
            return self._error(RequestError(500, f"{type(exc).__name__}: {exc}", "server_error"))


class Server(ThreadingHTTPServer):
    """The HTTP server of one PolicyServer. ``server_close`` ends every connection, joins their
    threads and the model thread: no thread of it outlives the server (a daemon thread cut
    off at interpreter exit can abort the process)."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 policy: PolicyServer, verbose: bool = False) -> None:
        super().__init__(address, handler)
        self.policy, self.verbose = policy, verbose
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)

    def server_close(self) -> None:
        with self._open_lock:
            for conn in self._open:  # idle keep-alive connections: their threads wait to read
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        super().server_close()  # joins the connection threads
        self.policy.close()


def start_server(cfg: ServeConfig, handler: type[ChatHandler] = ChatHandler,
                 verbose: bool = False) -> tuple[Server, str]:
    """Load the policy and serve it on a background thread: ``(server, base_url)``, the URL
    ending in /v1. ``server.shutdown(); server.server_close()`` stops it. ``handler`` may be a
    subclass (tests)."""
    server = Server((cfg.host, cfg.port), handler, PolicyServer(cfg), verbose)
    threading.Thread(target=server.serve_forever, name="rewardprompt-serve", daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}/v1"


def run_serve(cfg: ServeConfig) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server, url = start_server(cfg, verbose=True)
    name = server.policy.name
    key = f" --api.api-key-env {cfg.api_key_env}" if cfg.api_key_env else " --api.api-key-env ''"
    print(f"[rewardprompt] serving {name} at {url} (generate --backend openai-chat "
          f"--api.base-url {url} --api.model-id {name}{key}); Ctrl-C stops", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
