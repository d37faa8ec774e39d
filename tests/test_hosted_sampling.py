"""Hosted sampling: generate --backend openai-chat against rewardprompt serve on a tiny policy,
through a proxy that injects the faults a real server has (429 with Retry-After, 500/503, a
hang past the timeout, a connection dropped mid-response, a malformed body, refusals), and the
resume, concurrency, rate-limit and key-hygiene guarantees."""
from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.client
import json
import logging
import math
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from rewardprompt.backends import SamplingConfig
from rewardprompt.backends.openai_chat import ChatAPIConfig, ChatAPIError
from rewardprompt.runs import read_jsonl, write_jsonl
from rewardprompt.sampling import GenerateConfig, prompt_tokenizer, run_generate
from rewardprompt.serve import ServeConfig, start_server

KEY = "sk-rp-test-7f3a9c1e-distinctive"
TOPICS = ["bread", "tea", "bikes", "maps", "rain", "chess"]


# ---------------------------------------------------------------- the fault-injecting proxy
class FaultProxy:
    """An HTTP proxy in front of an OpenAI-compatible server. Each chat request takes the next
    fault of ``faults`` (None: relay it), or ``fail_after = (n, fault)``'s fault once n answers
    went through. It records every request (time, body hash, fault), the answers relayed per
    body, and the most requests it held at once."""

    def __init__(self, upstream: str, faults: list | None = None,
                 fail_after: tuple[int, str] | None = None, hold_s: float = 0.0) -> None:
        self.upstream = urlsplit(upstream)
        self.faults = list(faults or [])
        self.fail_after = fail_after
        self.hold_s = hold_s
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.requests: list[dict] = []  # {"t", "wall", "key", "fault"; "sent" for a 429}
        self.answered: Counter[str] = Counter()
        self.in_flight = self.max_in_flight = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                    fault = proxy._next_fault()
                    event = {"t": time.monotonic(), "wall": time.time(),
                             "key": hashlib.sha256(raw).hexdigest()[:16], "fault": fault}
                    proxy.requests.append(event)
                try:
                    with contextlib.suppress(OSError):
                        proxy._answer(self, raw, fault, event)
                finally:
                    with proxy.lock:
                        proxy.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = False
        self.server.block_on_close = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _next_fault(self) -> str | None:
        if self.faults:
            return self.faults.pop(0)
        if self.fail_after and sum(self.answered.values()) >= self.fail_after[0]:
            return self.fail_after[1]
        return None

    def _forward(self, handler: BaseHTTPRequestHandler, raw: bytes) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        if handler.headers.get("Authorization"):
            headers["Authorization"] = handler.headers["Authorization"]
        conn.request("POST", self.upstream.path + handler.path.removeprefix("/v1"), raw, headers)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, body

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes,
              headers: dict | None = None, length: int | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()

    def _answer(self, h: BaseHTTPRequestHandler, raw: bytes, fault: str | None, event: dict) -> None:
        error = lambda msg: json.dumps({"error": {"message": msg, "type": "injected"}}).encode()
        if fault is None or fault in ("drop", "malformed"):
            if self.hold_s:
                time.sleep(self.hold_s)
            status, body = self._forward(h, raw)
            if fault == "drop":  # the whole length announced, half of it sent, then the socket closed
                self._send(h, status, body[:len(body) // 2], length=len(body))
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
            elif fault == "malformed":
                self._send(h, 200, body[:len(body) // 2])  # complete over HTTP, cut-off JSON
            else:
                self._send(h, status, body)
                if status == 200:
                    with self.lock:
                        self.answered[event["key"]] += 1
        elif fault.startswith("429"):
            # Before the answer leaves: the client cannot start waiting any earlier.
            event["sent"] = time.monotonic()
            self._send(h, 429, error("injected rate limit"), {"Retry-After": fault.split("=", 1)[1]})
        elif fault.startswith("hang"):  # no answer until the test ends
            self.released.wait(float(fault.split("=")[1]))
            h.close_connection = True
            return
        elif fault == "401echo":  # as some servers do: the key it was sent, in the message
            self._send(h, 401, error(f"Incorrect API key provided: {h.headers.get('Authorization')}"))
        else:
            self._send(h, int(fault), error(f"injected {fault}"))

    def chat_requests(self) -> int:
        return len(self.requests)

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def served(tiny_policy):
    """rewardprompt serve on the tiny policy, on a free port."""
    server, url = start_server(ServeConfig(model=str(tiny_policy), port=0, name="tiny"))
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxies():
    made: list[FaultProxy] = []

    def make(upstream: str, **kw) -> FaultProxy:
        made.append(FaultProxy(upstream, **kw))
        return made[-1]
    yield make
    for p in made:
        p.close()


def write_prompts(path: Path, n: int) -> Path:
    write_jsonl(path, [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"Tell me about {t}."}]}
                       for i, t in enumerate(TOPICS[:n])])
    return path


def generate(tmp_path: Path, tiny_policy: Path, url: str, n: int = 3, samples: int = 2,
             out: str = "g.jsonl", **api) -> tuple[dict, list[dict]]:
    """run_generate through openai-chat: ``n`` prompts, ``samples`` samples each."""
    api = {"api_key_env": "", "model_id": "tiny", "max_retries": 3, "timeout_s": 5.0,
           "concurrency": 2, **api}
    summary = run_generate(GenerateConfig(
        prompts=str(write_prompts(tmp_path / "p.jsonl", n)), model=str(tiny_policy),
        out=str(tmp_path / out), conditioned=False, samples_per_prompt=samples,
        max_prompt_tokens=100, backend="openai-chat", sampling=SamplingConfig(max_new_tokens=5),
        api=ChatAPIConfig(base_url=url, **api)))
    return summary, read_jsonl(tmp_path / out)


def assert_each_answered_once(rows: list[dict], n: int = 3, samples: int = 2) -> None:
    assert len(rows) == n * samples
    assert Counter(r["id"] for r in rows) == {f"p{i}": samples for i in range(n)}


# ---------------------------------------------------------------- the server and the backend
def test_serve_answers_as_the_local_backend_samples(served, tiny_policy):
    """Same seed, same sample: the server is the project's LocalBackend behind HTTP."""
    import openai

    from rewardprompt.backends.local import LocalBackend

    client = openai.OpenAI(base_url=served, api_key="EMPTY", max_retries=0)
    msgs = [{"role": "user", "content": "How do I bake bread?"}]
    resp = client.chat.completions.create(model="tiny", messages=msgs, n=2, seed=11, max_tokens=6,
                                          logprobs=True, top_logprobs=2)
    again = client.chat.completions.create(model="tiny", messages=msgs, n=2, seed=11, max_tokens=6)
    assert [c.message.content for c in resp.choices] == [c.message.content for c in again.choices]
    assert resp.usage.completion_tokens == sum(len(c.logprobs.content) for c in resp.choices)
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for c in resp.choices
               for t in c.logprobs.content)
    local = LocalBackend(str(tiny_policy)).generate([msgs], SamplingConfig(max_new_tokens=6, seed=11,
                                                                             batch_size=1))[0]
    one = client.chat.completions.create(model="tiny", messages=msgs, seed=11, max_tokens=6,
                                         logprobs=True, top_logprobs=2)
    assert one.choices[0].message.content.strip() == local.text
    assert [m.id for m in client.models.list().data] == ["tiny"]
    plain = client.chat.completions.create(model="tiny", messages=msgs, seed=11, max_tokens=6,
                                           logprobs=True)  # the sampled tokens' log-probs only
    assert [t.logprob for t in plain.choices[0].logprobs.content] == \
        [t.logprob for t in one.choices[0].logprobs.content]
    assert all(t.top_logprobs == [] for t in plain.choices[0].logprobs.content)
    # A prefill is continued (vLLM's continue_final_message), its continuation alone returned.
    pre = msgs + [{"role": "assistant", "content": "Sure! Here"}]
    cont = client.chat.completions.create(model="tiny", messages=pre, seed=3, max_tokens=4,
                                          extra_body={"continue_final_message": True,
                                                      "add_generation_prompt": False})
    local = LocalBackend(str(tiny_policy)).generate([pre], SamplingConfig(max_new_tokens=4, seed=3,
                                                                            batch_size=1))[0]
    assert ("Sure! Here" + cont.choices[0].message.content).strip() == local.text
    with pytest.raises(openai.BadRequestError, match="continue_final_message"):
        client.chat.completions.create(model="tiny", messages=pre, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="tiny", messages=msgs, temperature=7)


def test_generate_writes_logprobs_usage_cost_and_a_cache(tmp_path, served, tiny_policy, proxies):
    proxy = proxies(served)
    summary, rows = generate(tmp_path, tiny_policy, proxy.url, top_logprobs=3)
    assert_each_answered_once(rows)
    for r in rows:
        assert len(r["logprobs"]) == r["n_tokens"] and r["shown"][-1]["role"] == "user"
        assert all(len(e["top"]) <= 3 and e["logprob"] <= 0 for e in r["logprobs"])
    assert summary["api"]["retries"] == 0 and summary["api"]["requests"] == 6
    cost = summary["cost"]
    assert (cost["provider"], cost["model"]) == ("openai-chat", "tiny")
    assert cost["completion_tokens"] == sum(r["n_tokens"] for r in rows) > 0
    assert cost["prompt_tokens"] > 0
    cache = tmp_path / "g.jsonl.cache"  # beside the output, and not a *.jsonl evaluate would read
    assert len(read_jsonl(cache)) == 6
    # A rerun answers from the cache: nothing is asked again, the same rows come out.
    summary2, rows2 = generate(tmp_path, tiny_policy, proxy.url, top_logprobs=3)
    assert proxy.chat_requests() == 6 and summary2["api"]["cached"] == 6
    assert [r["response"] for r in rows2] == [r["response"] for r in rows]


@pytest.mark.parametrize("header", ["0.2", "date"])
def test_retry_after_is_honoured(tmp_path, served, tiny_policy, proxies, header):
    if header == "date":  # an HTTP date 1-2 s ahead (whole seconds)
        target = math.ceil(time.time()) + 1
        header = email.utils.formatdate(target, usegmt=True)
    proxy = proxies(served, faults=[f"429={header}"])
    summary, rows = generate(tmp_path, tiny_policy, proxy.url, concurrency=1)
    assert_each_answered_once(rows)
    assert summary["api"]["retries"] == 1 and summary["api"]["statuses"]["429"] == 1
    first, retry = proxy.requests[0], proxy.requests[1]
    assert retry["key"] == first["key"]  # the same request again
    if header == "0.2":
        assert retry["t"] - first["sent"] >= 0.2
    else:
        assert retry["wall"] >= target - 0.01


@pytest.mark.parametrize("fault", ["500", "503", "drop", "malformed", "hang=10"])
def test_faults_are_retried_and_every_prompt_answered_once(tmp_path, served, tiny_policy, proxies,
                                                           fault):
    proxy = proxies(served, faults=[None, fault])  # the second request meets the fault
    summary, rows = generate(tmp_path, tiny_policy, proxy.url, concurrency=1,
                             timeout_s=1.0 if fault.startswith("hang") else 5.0)
    assert_each_answered_once(rows)
    assert summary["api"]["retries"] == 1 and proxy.chat_requests() == 7
    assert proxy.requests[2]["key"] == proxy.requests[1]["key"]  # the faulty one, asked again
    assert sum(proxy.answered.values()) == 6 and set(proxy.answered.values()) == {1}
    if fault == "malformed":
        assert summary["api"]["malformed"] == 1


@pytest.mark.parametrize("fault, cause", [
    ("500", r"answered 500 after 1 retries: injected 500"),
    ("malformed", r"no answer from .* after 1 retries: malformed response body: not JSON")])
def test_a_persistent_fault_stops_with_a_clear_error(tmp_path, served, tiny_policy, proxies, fault,
                                                     cause):
    proxy = proxies(served, fail_after=(0, fault))
    with pytest.raises(ChatAPIError, match=cause) as err:
        generate(tmp_path, tiny_policy, proxy.url, concurrency=1, max_retries=1)
    assert proxy.chat_requests() == 2  # one request and its retry; the rest were not sent
    assert "6 of 6 requests unanswered" in str(err.value)


@pytest.mark.parametrize("status", ["400", "401", "404"])
def test_refusals_are_not_retried(tmp_path, served, tiny_policy, proxies, status):
    proxy = proxies(served, fail_after=(0, status))
    with pytest.raises(ChatAPIError, match=f"answered {status}.*: injected {status}"):
        generate(tmp_path, tiny_policy, proxy.url, concurrency=1)
    assert proxy.chat_requests() == 1


def test_an_unknown_model_is_the_servers_404(tmp_path, served, tiny_policy):
    with pytest.raises(ChatAPIError, match="answered 404: The model `nope` does not exist"):
        generate(tmp_path, tiny_policy, served, model_id="nope", concurrency=1)


def test_resume_asks_only_for_what_was_not_answered(tmp_path, served, tiny_policy, proxies):
    broken = proxies(served, fail_after=(3, "500"))
    with pytest.raises(ChatAPIError, match=r"kept in .*g\.jsonl\.cache"):
        generate(tmp_path, tiny_policy, broken.url, concurrency=1, max_retries=0)
    assert not (tmp_path / "g.jsonl").exists()
    assert len(read_jsonl(tmp_path / "g.jsonl.cache")) == 3
    healthy = proxies(served)
    summary, rows = generate(tmp_path, tiny_policy, healthy.url)
    assert_each_answered_once(rows)
    assert healthy.chat_requests() == 3 and summary["api"]["cached"] == 3
    assert not set(broken.answered) & set(healthy.answered)  # none asked twice


def test_a_torn_last_cache_line_is_asked_again(tmp_path, served, tiny_policy, proxies):
    proxy = proxies(served)
    generate(tmp_path, tiny_policy, proxy.url)
    cache = tmp_path / "g.jsonl.cache"
    text = cache.read_text()
    cache.write_text(text[:-40])  # a kill in the middle of the last write
    again = proxies(served)
    _, rows = generate(tmp_path, tiny_policy, again.url)
    assert_each_answered_once(rows)
    assert again.chat_requests() == 1 and len(read_jsonl(cache)) == 6


def test_concurrency_is_bounded(tmp_path, served, tiny_policy, proxies):
    proxy = proxies(served, hold_s=0.15)
    _, rows = generate(tmp_path, tiny_policy, proxy.url, concurrency=2)
    assert_each_answered_once(rows)
    assert proxy.max_in_flight == 2  # in parallel, never more


def test_rate_limit_spaces_requests(tmp_path, served, tiny_policy, proxies):
    proxy = proxies(served)
    generate(tmp_path, tiny_policy, proxy.url, n=2, concurrency=4, requests_per_s=10)
    starts = sorted(r["t"] for r in proxy.requests)
    # Arrival at the proxy jitters around the client's 0.1 s spacing (the first request also
    # opens the connection, slower on a loaded machine), so the bounds
    # leave room for it; 4 concurrent requests without the limit arrive within milliseconds.
    assert len(starts) == 4 and starts[-1] - starts[0] >= 0.2
    assert all(b - a >= 0.03 for a, b in zip(starts, starts[1:]))


def test_a_prefill_needs_continue_final_message(tmp_path, served, tiny_policy, proxies):
    proxy = proxies(served)
    cfg = dict(prompts=str(write_prompts(tmp_path / "p.jsonl", 2)), model=str(tiny_policy),
               out=str(tmp_path / "g.jsonl"), conditioned=False, samples_per_prompt=1,
               prefills=["Sure! Here"], max_prompt_tokens=100, backend="openai-chat",
               sampling=SamplingConfig(max_new_tokens=4))
    with pytest.raises(ValueError, match="continue-final-message"):
        run_generate(GenerateConfig(**cfg, api=ChatAPIConfig(base_url=proxy.url, api_key_env="",
                                                             model_id="tiny")))
    assert proxy.chat_requests() == 0
    run_generate(GenerateConfig(**cfg, api=ChatAPIConfig(
        base_url=proxy.url, api_key_env="", model_id="tiny", continue_final_message=True)))
    rows = read_jsonl(tmp_path / "g.jsonl")
    assert len(rows) == 2 and all(r["response"].startswith("Sure! Here") for r in rows)


def test_model_and_server_come_from_the_hosted_policy_folder(tmp_path, served, tiny_policy):
    """A folder written by hosted training has no weights, only rewardprompt.json with the
    server's model id and URL; the prompt budget is counted with its base's tokenizer."""
    from rewardprompt.policy.meta import write_policy_meta

    folder = tmp_path / "hosted_policy"
    write_policy_meta(folder, {"conditioned": False, "max_prompt_tokens": 100,
                               "config": {"model": str(tiny_policy)},
                               "hosted": {"model_id": "tiny", "base_url": served}})
    cfg = GenerateConfig(prompts=str(write_prompts(tmp_path / "p.jsonl", 2)), model=str(folder),
                         out=str(tmp_path / "g.jsonl"), samples_per_prompt=1, backend="openai-chat",
                         sampling=SamplingConfig(max_new_tokens=4),
                         api=ChatAPIConfig(api_key_env=""))
    summary = run_generate(cfg)
    assert summary["n"] == 2 and summary["cost"]["model"] == "tiny"
    assert prompt_tokenizer(cfg, {"config": {"model": str(tiny_policy)}}) == (str(tiny_policy), True)
    bare = GenerateConfig(prompts="p.jsonl", model="gpt-4o-mini", backend="openai-chat")
    assert prompt_tokenizer(bare, {}) == ("smollm2-135m-instruct", False)  # an approximation


def test_a_missing_key_names_the_variable(tmp_path, served, tiny_policy, monkeypatch):
    monkeypatch.delenv("RP_ABSENT_KEY", raising=False)
    with pytest.raises(ValueError, match="environment variable RP_ABSENT_KEY"):
        generate(tmp_path, tiny_policy, served, api_key_env="RP_ABSENT_KEY")


def test_the_api_key_appears_in_no_output_or_log(tmp_path, tiny_policy, proxies, monkeypatch,
                                                 capfd, caplog):
    """The key is sent (a server that checks it answers), and found in no file written, no
    printed line and no log record, at DEBUG; nor in the error when the server echoes it."""
    from rewardprompt.cli import main

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("RP_SERVE_KEY", KEY)
    monkeypatch.setenv("RP_CLIENT_KEY", KEY)
    server, url = start_server(ServeConfig(model=str(tiny_policy), port=0, name="tiny",
                                           api_key_env="RP_SERVE_KEY"))
    try:
        write_prompts(tmp_path / "p.jsonl", 2)
        argv = ["generate", "--prompts", str(tmp_path / "p.jsonl"), "--model", str(tiny_policy),
                "--run", str(tmp_path / "run"), "--conditioned", "False", "--samples-per-prompt", "1",
                "--max-prompt-tokens", "100", "--backend", "openai-chat", "--sampling.max-new-tokens",
                "4", "--api.base-url", url, "--api.model-id", "tiny", "--api.api-key-env",
                "RP_CLIENT_KEY", "--api.top-logprobs", "2"]
        assert main(argv) == 0
        assert len(read_jsonl(tmp_path / "run" / "generate" / "conditioned.jsonl")) == 2
        # The wrong key: the server's 401, which echoes it back, and the error names the variable.
        wrong = KEY.replace("sk-", "sk-wrong-")
        monkeypatch.setenv("RP_CLIENT_KEY", wrong)
        echo = proxies(url, fail_after=(0, "401echo"))
        argv[argv.index(url)] = echo.url
        assert main(argv + ["--label", "again"]) == 2
    finally:
        server.shutdown()
        server.server_close()
    out, err = capfd.readouterr()
    assert "answered 401 (check the key in $RP_CLIENT_KEY)" in err
    logs = caplog.text + "".join(str(r.args) for r in caplog.records)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".cache") for p in files) and any(p.name == "manifest.json" for p in files)
    for secret in (KEY, wrong, KEY[3:], wrong[3:]):
        assert secret not in out and secret not in err and secret not in logs
        for p in files:
            assert secret.encode() not in p.read_bytes(), p
