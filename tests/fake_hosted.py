"""Fake hosted fine-tuning servers (OpenAI's and Together's APIs) on 127.0.0.1, for the tests.

Each serves files, jobs, events, checkpoints and cancel (Together also its upload redirect and
PUT, model limits and price estimate) the way the official clients call them, records every
accepted upload and job creation (so tests can assert that nothing was paid twice), keeps the
uploaded bytes, and takes injectable faults: 429 with Retry-After, 500, 503, a hang past the
client's timeout, a connection dropped mid-response, a malformed body; each before the request
takes effect, or after it (the server did the work, the answer is lost).

A job's life is deterministic: it moves one status along ``PATH`` at each read of the job, and
ends as ``outcome`` says (succeed, fail, cancel). ``on_succeed(training_file_path) -> model_id``
lets a test make the "fine-tuned model" itself (e.g. train a tiny local model on the file).
"""
from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Fault:
    kind: str             # "429", "500", "503", "hang", "drop", "malformed"
    method: str
    path: str             # a regex matched against the request path
    times: int = 1
    after: bool = False   # True: the request takes effect, then its answer is spoilt
    hang_s: float = 2.0


class Reply(Exception):
    """Raised by a route to answer with a status and a JSON body."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, bytes) of a multipart/form-data body."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    return {part.get_param("name", header="content-disposition"):
            (part.get_filename(), part.get_payload(decode=True) or b"")
            for part in msg.iter_parts()}


class FakeHosted:
    """The shared machinery: server thread, auth, faults, records, job lifecycle."""

    #: The statuses a job passes through before it ends, one per read of the job.
    PATH: tuple[str, ...] = ()
    #: outcome -> the provider's terminal status.
    END: dict[str, str] = {}
    prefix = ""

    def __init__(self, workdir: Path, *, api_key: str, outcome: str = "succeed",
                 fail_message: str = "the training file has too few usable examples",
                 on_succeed: Callable[[Path], str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.api_key = api_key
        self.outcome, self.fail_message, self.on_succeed = outcome, fail_message, on_succeed
        self.lock = threading.RLock()
        self.faults: list[Fault] = []
        self.files: dict[str, dict] = {}
        self.data: dict[str, bytes] = {}
        self.jobs: dict[str, dict] = {}
        self.events: dict[str, list[dict]] = {}
        self.checkpoints: dict[str, list[dict]] = {}
        self.steps: dict[str, int] = {}     # job id -> its place along PATH
        self.uploads: list[str] = []        # every accepted upload, by file id
        self.creations: list[dict] = []     # every accepted job creation, its body
        self.requests: list[tuple[str, str]] = []
        self.auth_failures = 0
        self._n = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        # A dropped connection or a client that gave up is a fault under test, not noise.
        self.server.handle_error = lambda request, client_address: None
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    # ------------------------------------------------------------ running
    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        """The base URL to give the client."""
        return self.root + self.prefix

    def __enter__(self) -> FakeHosted:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fault(self, kind: str, method: str = "GET", path: str = ".*", *, times: int = 1,
              after: bool = False, hang_s: float = 2.0) -> None:
        """Spoil the next ``times`` requests that match ``method`` and ``path``."""
        with self.lock:
            self.faults.append(Fault(kind, method, path, times, after, hang_s))

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.times > 0 and f.method == method and re.search(f.path, path):
                    f.times -= 1
                    return f
        return None

    def new_id(self, prefix: str) -> str:
        with self.lock:
            self._n += 1
            return f"{prefix}-{self._n:04d}"

    # ------------------------------------------------------------ lifecycle
    def advance(self, job: dict) -> None:
        """One step along the job's life (called at each read of the job)."""
        with self.lock:
            status = job["status"]
            if status in self.END.values():
                return
            if status == self.cancel_requested_status():
                self.set_status(job, self.END["cancel"])
                return
            step = self.steps[job["id"]] = self.steps.get(job["id"], 0) + 1
            self.set_status(job, self.PATH[step] if step < len(self.PATH)
                            else self.END[self.outcome])

    def cancel_requested_status(self) -> str | None:
        return None

    def set_status(self, job: dict, status: str) -> None:
        job["status"] = status
        self.add_event(job["id"], f"status: {status}", level="info")
        if status == self.running_status():
            self.add_checkpoint(job, step=1)
        if status == self.END["succeed"]:
            path = self.workdir / "uploaded" / f"{self.job_file(job)}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.data[self.job_file(job)])
            model = (self.on_succeed(path) if self.on_succeed
                     else f"ft:{job['model']}:fake:{job['id']}")
            self.succeed(job, model, tokens=len(self.data[self.job_file(job)]) // 4)
            self.add_checkpoint(job, step=2)
        if status == self.END["fail"]:
            self.fail(job)
            self.add_event(job["id"], self.fail_message, level="error")

    def job_file(self, job: dict) -> str:
        return job["training_file"]

    def check_auth(self, headers: Any) -> None:
        if headers.get("Authorization") != f"Bearer {self.api_key}":
            with self.lock:
                self.auth_failures += 1
            raise Reply(401, {"error": {"message": "Incorrect API key provided",
                                        "type": "invalid_request_error"}})

    # ------------------------------------------------------------ http
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with fake.lock:
                    fake.requests.append((method, url.path))
                fault = fake._take_fault(method, url.path)
                try:
                    if fault and not fault.after and self._spoil(fault):
                        return
                    try:
                        if not url.path.startswith("/upload/"):  # a presigned URL: no key
                            fake.check_auth(self.headers)
                        result = fake.route(method, url.path, parse_qs(url.query), body,
                                            self.headers)
                        status, payload, headers = 200, result, {}
                    except Reply as r:
                        status, payload, headers = r.status, r.body, r.headers
                    if fault and fault.after and self._spoil(fault):
                        return
                    self._send(status, payload, headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout): nothing to answer

            def _spoil(self, fault: Fault) -> bool:
                """Answer as the fault says; False when the request should then be answered."""
                if fault.kind in ("429", "503"):
                    self._send(int(fault.kind), {"error": {"message": "slow down"}},
                               {"Retry-After": "0.01"})
                elif fault.kind == "500":
                    self._send(500, {"error": {"message": "internal error"}})
                elif fault.kind == "malformed":
                    raw = b'{"id": "oops", "data": [tru'
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                elif fault.kind == "drop":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "4096")
                    self.end_headers()
                    self.wfile.write(b'{"id": "ftjob-')
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                elif fault.kind == "hang":
                    time.sleep(fault.hang_s)
                    return False
                else:
                    raise ValueError(f"unknown fault {fault.kind}")
                return True

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None
                      ) -> None:
                raw = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

        return Handler

    def route(self, method: str, path: str, query: dict, body: bytes, headers: Any) -> Any:
        raise NotImplementedError


def _page(items: list[dict], query: dict) -> dict:
    """OpenAI's cursor page over newest-first items: ``after`` an id, at most ``limit``."""
    after = (query.get("after") or [None])[0]
    limit = int((query.get("limit") or [100])[0])
    if after is not None:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit}


class OpenAIFake(FakeHosted):
    """OpenAI's /v1/files and /v1/fine_tuning/jobs."""

    PATH = ("validating_files", "queued", "running")
    END = {"succeed": "succeeded", "fail": "failed", "cancel": "cancelled"}
    prefix = "/v1"

    def running_status(self) -> str:
        return "running"

    def add_event(self, job_id: str, message: str, *, level: str) -> None:
        self.events.setdefault(job_id, []).append({
            "id": self.new_id("ftevent"), "object": "fine_tuning.job.event",
            "created_at": int(time.time()), "level": level, "message": message,
            "type": "message"})

    def add_checkpoint(self, job: dict, *, step: int) -> None:
        self.checkpoints.setdefault(job["id"], []).append({
            "id": self.new_id("ftckpt"), "object": "fine_tuning.job.checkpoint",
            "created_at": int(time.time()), "fine_tuning_job_id": job["id"], "step_number": step,
            "fine_tuned_model_checkpoint": f"ft:{job['model']}:fake:{job['id']}:ckpt-step-{step}",
            "metrics": {"step": step, "train_loss": 1.0 / step}})

    def succeed(self, job: dict, model: str, *, tokens: int) -> None:
        epochs = job["hyperparameters"].get("n_epochs")
        job.update(fine_tuned_model=model, finished_at=int(time.time()),
                   trained_tokens=tokens * (epochs if isinstance(epochs, int) else 1))

    def fail(self, job: dict) -> None:
        job.update(error={"code": "invalid_training_file", "message": self.fail_message,
                          "param": "training_file"}, finished_at=int(time.time()))

    def route(self, method: str, path: str, query: dict, body: bytes, headers: Any) -> Any:
        with self.lock:
            if method == "POST" and path == "/v1/files":
                form = parse_multipart(headers["Content-Type"], body)
                filename, data = form["file"]
                fid = self.new_id("file")
                self.files[fid] = {"id": fid, "object": "file", "bytes": len(data),
                                   "created_at": int(time.time()), "filename": filename,
                                   "purpose": form["purpose"][1].decode(), "status": "processed"}
                self.data[fid] = data
                self.uploads.append(fid)
                return self.files[fid]
            if method == "GET" and path == "/v1/files":
                purpose = (query.get("purpose") or [None])[0]
                items = [f for f in reversed(self.files.values())
                         if purpose is None or f["purpose"] == purpose]
                return _page(items, query)
            if m := re.fullmatch(r"/v1/files/([\w-]+)", path):
                if m[1] not in self.files:
                    raise Reply(404, {"error": {"message": "no such file"}})
                return self.files[m[1]]
            if method == "POST" and path == "/v1/fine_tuning/jobs":
                req = json.loads(body)
                if req.get("training_file") not in self.files:
                    raise Reply(400, {"error": {"message": "invalid training_file",
                                                "param": "training_file"}})
                kind = (req.get("method") or {}).get("type", "supervised")
                hp = ((req.get("method") or {}).get(kind) or {}).get("hyperparameters") or {}
                jid = self.new_id("ftjob")
                self.jobs[jid] = {
                    "id": jid, "object": "fine_tuning.job", "created_at": int(time.time()),
                    "model": req["model"], "training_file": req["training_file"],
                    "status": "validating_files", "hyperparameters": hp,
                    "method": req.get("method"), "metadata": req.get("metadata"),
                    "seed": req.get("seed") or 0, "suffix": req.get("suffix"),
                    "organization_id": "org-fake", "result_files": [], "fine_tuned_model": None,
                    "trained_tokens": None, "error": None, "finished_at": None,
                    "validation_file": None}
                self.creations.append(req)
                self.add_event(jid, "job created", level="info")
                return self.jobs[jid]
            if method == "GET" and path == "/v1/fine_tuning/jobs":
                return _page(list(reversed(self.jobs.values())), query)
            if m := re.fullmatch(r"/v1/fine_tuning/jobs/([\w-]+)(/\w+)?", path):
                job = self.jobs.get(m[1])
                if job is None:
                    raise Reply(404, {"error": {"message": "no such job"}})
                sub = m[2]
                if method == "GET" and sub is None:
                    self.advance(job)
                    return job
                if method == "GET" and sub == "/events":
                    return _page(list(reversed(self.events.get(job["id"], []))), query)
                if method == "GET" and sub == "/checkpoints":
                    return _page(list(reversed(self.checkpoints.get(job["id"], []))), query)
                if method == "POST" and sub == "/cancel":
                    if job["status"] not in self.END.values():
                        self.set_status(job, "cancelled")
                    return job
            raise Reply(404, {"error": {"message": f"no route {method} {path}"}})


def _iso(t: float | None = None) -> str:
    return datetime.fromtimestamp(t or time.time(), tz=timezone.utc).isoformat()


class TogetherFake(FakeHosted):
    """Together's /v1/files (with its upload redirect and PUT) and /v1/fine-tunes."""

    PATH = ("pending", "queued", "running", "uploading")
    END = {"succeed": "completed", "fail": "error", "cancel": "cancelled"}
    LIMITS = {"model_name": "", "default_gradient_accumulation_steps": 1,
              "lora_training": {"default_rank": 8, "max_batch_size": 32, "max_batch_size_dpo": 16,
                                "max_rank": 64, "min_batch_size": 8,
                                "target_modules": ["q_proj", "v_proj"]},
              "full_training": {"max_batch_size": 16, "max_batch_size_dpo": 8, "min_batch_size": 8},
              "max_learning_rate": 1.0, "min_learning_rate": 1e-8, "max_num_checkpoints": 10,
              "max_num_epochs": 20, "max_num_evals": 10, "max_seq_length_dpo": 8192,
              "max_seq_length_sft": 8192, "merge_output_lora": True, "min_max_seq_length": 512,
              "supports_full_training": True, "supports_reasoning": False,
              "supports_tools": False, "supports_vision": False}

    def __init__(self, *args: Any, models: tuple[str, ...] = ("meta-llama/Tiny-Fake",),
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.models = models
        self.pending: dict[str, dict] = {}   # upload announced, bytes not yet PUT
        self.estimates: list[dict] = []
        self.limit_reads = 0

    def running_status(self) -> str:
        return "running"

    def cancel_requested_status(self) -> str:
        return "cancel_requested"

    def add_event(self, job_id: str, message: str, *, level: str) -> None:
        status = self.jobs.get(job_id, {}).get("status", "")
        kind = {"error": "job_error", "completed": "job_complete", "cancelled": "job_stopped",
                "running": "training_start", "cancel_requested": "cancel_requested"
                }.get(status, "job_pending")
        self.events.setdefault(job_id, []).append({
            "object": "fine-tune-event", "created_at": _iso(), "message": message,
            "type": "job_error" if level == "error" else kind, "level": level,
            "step": len(self.events.get(job_id, []))})

    def add_checkpoint(self, job: dict, *, step: int) -> None:
        self.checkpoints.setdefault(job["id"], []).append({
            "checkpoint_type": "final" if step == 2 else f"intermediate step {step}",
            "created_at": _iso(), "path": f"s3://fake/{job['id']}/step-{step}", "step": step})

    def succeed(self, job: dict, model: str, *, tokens: int) -> None:
        job.update(model_output_name=model, token_count=tokens * (job.get("n_epochs") or 1),
                   updated_at=_iso())

    def fail(self, job: dict) -> None:
        job.update(updated_at=_iso())

    def route(self, method: str, path: str, query: dict, body: bytes, headers: Any) -> Any:
        with self.lock:
            if method == "POST" and path == "/v1/files":
                form = {k: v[1].decode() for k, v in
                        parse_multipart(headers["Content-Type"], body).items()}
                fid = self.new_id("file")
                self.pending[fid] = form
                raise Reply(302, None, {"Location": f"{self.root}/upload/{fid}",
                                        "X-Together-File-Id": fid})
            if method == "PUT" and (m := re.fullmatch(r"/upload/([\w-]+)", path)):
                form = self.pending.get(m[1])
                if form is None:
                    raise Reply(404, {"error": {"message": "no such upload"}})
                if hashlib.sha256(body).hexdigest() != form["checksum"]:
                    raise Reply(400, {"error": {"message": "checksum mismatch"}})
                self.data[m[1]] = body
                self.files[m[1]] = {"id": m[1], "object": "file", "bytes": len(body),
                                    "created_at": int(time.time()), "filename": form["file_name"],
                                    "FileType": form["file_type"], "purpose": form["purpose"],
                                    "processing_status": "PENDING"}
                self.uploads.append(m[1])
                return None
            if method == "POST" and (m := re.fullmatch(r"/v1/files/([\w-]+)/preprocess", path)):
                if m[1] not in self.files:
                    raise Reply(404, {"error": {"message": "no such file"}})
                self.files[m[1]]["processing_status"] = "COMPLETED"
                return self.files[m[1]]
            if method == "GET" and path == "/v1/files":
                return {"data": list(self.files.values())}
            if method == "GET" and (m := re.fullmatch(r"/v1/files/([\w-]+)", path)):
                if m[1] not in self.files:
                    raise Reply(404, {"error": {"message": "no such file"}})
                return self.files[m[1]]
            if method == "GET" and path == "/v1/fine-tunes/models/limits":
                self.limit_reads += 1
                name = (query.get("model_name") or [""])[0]
                if name not in self.models:
                    raise Reply(404, {"error": {"message": f"model {name} is not available"}})
                return {**self.LIMITS, "model_name": name}
            if method == "POST" and path == "/v1/fine-tunes/estimate-price":
                req = json.loads(body)
                self.estimates.append(req)
                n = len(self.data.get(req.get("training_file"), b"")) // 4
                return {"estimation_available": True, "allowed_to_proceed": True,
                        "estimated_total_price": round(n * 1e-6, 6),
                        "estimated_train_token_count": n}
            if method == "POST" and path == "/v1/fine-tunes":
                req = json.loads(body)
                if req.get("training_file") not in self.files:
                    raise Reply(400, {"error": {"message": "invalid training_file"}})
                jid = self.new_id("ft")
                self.jobs[jid] = {
                    "id": jid, "status": "pending", "created_at": _iso(), "updated_at": _iso(),
                    "user_id": "user-fake", "model": req["model"],
                    "training_file": req["training_file"], "n_epochs": req.get("n_epochs"),
                    "learning_rate": req.get("learning_rate"),
                    "random_seed": req.get("random_seed"), "suffix": req.get("suffix"),
                    "batch_size": req.get("batch_size"), "training_method": req.get("training_method"),
                    "training_type": req.get("training_type"), "model_output_name": None,
                    "adapter_output_name": None, "token_count": None}
                self.creations.append(req)
                self.add_event(jid, "job created", level="info")
                return self.jobs[jid]
            if method == "GET" and path == "/v1/fine-tunes":
                return {"data": list(self.jobs.values())}
            if m := re.fullmatch(r"/v1/fine-tunes/([\w-]+)(/\w+)?", path):
                job = self.jobs.get(m[1])
                if job is None:
                    raise Reply(404, {"error": {"message": "no such job"}})
                sub = m[2]
                if method == "GET" and sub is None:
                    self.advance(job)
                    return job
                if method == "GET" and sub == "/events":
                    return {"data": self.events.get(job["id"], [])}
                if method == "GET" and sub == "/checkpoints":
                    return {"data": self.checkpoints.get(job["id"], [])}
                if method == "POST" and sub == "/cancel":
                    if job["status"] not in self.END.values():
                        self.set_status(job, "cancel_requested")
                    return job
            raise Reply(404, {"error": {"message": f"no route {method} {path}"}})
