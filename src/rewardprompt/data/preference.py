"""Preference pairs: one structured form for HH, UltraFeedback and generic JSONL, plus splits.

Every input row becomes a ``PreferencePair``: a prompt (chat messages ending with a user turn)
and two final assistant replies. Bad rows raise a ``DataError`` naming file, line, field and a
reason code; with ``skip_bad`` they are counted per code instead.
"""
from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..runs import iter_jsonl_lines, parse_jsonl_line, write_jsonl
from .hh import dialogue_to_text, parse_transcript

from ..chat import Message
ROLES = ("user", "assistant")

_SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
SHIPPED: dict[str, Path] = {
    "hh-harmless": _SHIPPED_DIR / "hh-harmless-base-test.jsonl.gz",
    "hh-helpful-base": _SHIPPED_DIR / "hh-helpful-base-test.jsonl.gz",
    "hh-helpful-online": _SHIPPED_DIR / "hh-helpful-online-test.jsonl.gz",
    "hh-helpful-rejection-sampled": _SHIPPED_DIR / "hh-helpful-rejection-sampled-test.jsonl.gz",
    "ultrafeedback": _SHIPPED_DIR / "ultrafeedback-train.jsonl.gz",
    "ultrafeedback-eval": _SHIPPED_DIR / "ultrafeedback-eval.jsonl.gz",
}
#: Shipped names that stand for several shipped files, read one after the other.
SHIPPED_GROUPS: dict[str, tuple[str, ...]] = {
    "hh-helpful": ("hh-helpful-base", "hh-helpful-online", "hh-helpful-rejection-sampled"),
    # One combined preference: every HH file (the "split" experiment's single dimension).
    "hh-all": ("hh-helpful-base", "hh-helpful-online", "hh-helpful-rejection-sampled",
               "hh-harmless"),
}


def source_files(source: str | Path) -> list[Path]:
    """The files a source reads: a shipped file, each file of a shipped group, or the path
    itself (empty for a Hub id or a folder)."""
    src = str(source)
    names = SHIPPED_GROUPS.get(src, (src,))
    paths = [SHIPPED.get(n) or Path(n) for n in names]
    return [p for p in paths if p.is_file()]

__all__ = ["PreferencePair", "SHIPPED", "SHIPPED_GROUPS", "source_files", "shipped_path",
           "pair_from_row", "read_preferences",
           "load_preferences", "split_key", "assign_split", "split_pairs", "dialogue_to_text",
           "ConvertConfig", "convert"]


@dataclass
class PreferencePair:
    id: str
    prompt: list[Message]  # chat messages, ends with a user turn
    chosen: str            # final assistant reply
    rejected: str

    def to_dict(self) -> dict:
        return {"id": self.id, "prompt": [dict(m) for m in self.prompt],
                "chosen": self.chosen, "rejected": self.rejected}

    @classmethod
    def from_dict(cls, d: dict) -> PreferencePair:
        """Any supported row format (structured, generic, HH raw), validated."""
        return pair_from_row(d)


def shipped_path(name: str) -> Path:
    if name not in SHIPPED:
        raise DataError(f"unknown shipped dataset {name!r}; choose from {', '.join(SHIPPED)} "
                        f"(or a group: {', '.join(SHIPPED_GROUPS)})",
                        code="not_found")
    return SHIPPED[name]


# ---------------------------------------------------------------- one row -> one pair
def _messages(value: Any, field: str) -> list[Message]:
    """Validate a message list; strip contents and merge consecutive same-role turns.

    Merging keeps roles alternating, which chat templates expect: real HH transcripts hold a few
    assistant turns sent back to back.
    """
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise DataError(f"expected a list of {{'role', 'content'}} messages, got "
                        f"{type(value).__name__}", field=field, code="missing_field")
    out: list[Message] = []
    for i, m in enumerate(value):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DataError(f"message {i}: role must be 'user' or 'assistant', got {role!r}",
                            field=field, code="malformed_dialogue")
        if not isinstance(content, str):
            raise DataError(f"message {i}: 'content' must be a string", field=field,
                            code="missing_field")
        if out and out[-1]["role"] == role:
            out[-1]["content"] = f"{out[-1]['content']}\n\n{content.strip()}".strip()
        else:
            out.append({"role": role, "content": content.strip()})
    return out


def _final_reply(turns: list[Message], field: str) -> tuple[list[Message], str]:
    """(turns before the final assistant turn, that turn's content)."""
    if not turns or turns[-1]["role"] != "assistant":
        raise DataError("dialogue does not end with an Assistant turn", field=field,
                        code="no_final_assistant")
    if not turns[-1]["content"]:
        raise DataError("final assistant reply is empty", field=field, code="empty_reply")
    return turns[:-1], turns[-1]["content"]


def _reply(value: Any, field: str, prompt: list[Message]) -> str:
    """A reply given as a string, or as a message list ending with it (UltraFeedback on the Hub)."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError("reply is empty", field=field, code="empty_reply")
        return value.strip()
    prefix, reply = _final_reply(_messages(value, field), field)
    if prefix and prefix != prompt:
        raise DataError("messages before the final reply differ from 'prompt'", field=field,
                        code="prefix_mismatch")
    return reply


def _required(row: dict, field: str) -> Any:
    value = row.get(field)
    if value is None:
        raise DataError("missing field", field=field, code="missing_field")
    return value


def _pair(row: Any) -> PreferencePair:
    if not isinstance(row, dict):
        raise DataError(f"expected an object, got {type(row).__name__}", code="missing_field")
    chosen, rejected = _required(row, "chosen"), _required(row, "rejected")
    if row.get("prompt") is None:
        # No prompt: the prompt is the shared history of two whole dialogues.
        if isinstance(chosen, str) and isinstance(rejected, str):  # HH raw transcripts
            c_turns = _messages(parse_transcript(chosen, "chosen"), "chosen")
            r_turns = _messages(parse_transcript(rejected, "rejected"), "rejected")
        elif isinstance(chosen, list) and isinstance(rejected, list):  # implicit-prompt messages
            c_turns, r_turns = _messages(chosen, "chosen"), _messages(rejected, "rejected")
        else:
            raise DataError("missing field (chosen/rejected are neither HH transcripts nor "
                            "message lists)", field="prompt", code="missing_field")
        prompt, c_reply = _final_reply(c_turns, "chosen")
        r_prefix, r_reply = _final_reply(r_turns, "rejected")
        if r_prefix != prompt:
            raise DataError("turns before the final reply differ from those of 'chosen'",
                            field="rejected", code="prefix_mismatch")
    else:
        raw = row["prompt"]
        if isinstance(raw, str):
            prompt = [{"role": "user", "content": raw.strip()}]
        else:
            prompt = _messages(raw, "prompt")
        c_reply, r_reply = _reply(chosen, "chosen", prompt), _reply(rejected, "rejected", prompt)
    if not prompt or prompt[-1]["role"] != "user" or not prompt[-1]["content"]:
        raise DataError("prompt must end with a non-empty user turn", field="prompt",
                        code="malformed_dialogue")
    rid = row.get("id")
    if rid is None:
        blob = json.dumps([prompt, c_reply, r_reply], ensure_ascii=False, sort_keys=True)
        rid = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
    elif not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise DataError(f"expected a string, got {type(rid).__name__}", field="id",
                        code="missing_field")
    return PreferencePair(id=str(rid), prompt=prompt, chosen=c_reply, rejected=r_reply)


def pair_from_row(row: Any, *, file: str | None = None,
                  line: int | None = None) -> PreferencePair:
    """Detect the row's format (HH raw, generic, structured) and convert it."""
    try:
        return _pair(row)
    except DataError as e:
        if file is None and line is None:
            raise
        raise DataError(e.reason, file=file, line=line, field=e.field, code=e.code) from None


# ---------------------------------------------------------------- sources
def _rows(source: str | Path, split: str | None,
          data_dir: str | None) -> Iterator[tuple[str, int, Callable[[], Any]]]:
    """Yield ``(file, line, load)``; ``load()`` gives the row or raises its DataError.

    Loading is deferred so that a bad line raises inside the caller's per-row ``try`` and
    reading can go on past it.
    """
    src = str(source)
    if src in SHIPPED_GROUPS:
        for name in SHIPPED_GROUPS[src]:
            yield from _rows(name, split, data_dir)
        return
    path = SHIPPED.get(src) or Path(src)
    if path.is_file():
        for lineno, raw in iter_jsonl_lines(path):
            yield str(path), lineno, lambda raw=raw, lineno=lineno: parse_jsonl_line(
                raw, file=str(path), line=lineno)
        return
    if not path.exists() and path.suffix in (".jsonl", ".gz", ".json"):
        raise DataError("no such file", file=src, code="not_found")
    import datasets  # slow to import; only Hub ids and dataset folders need it

    try:
        ds = datasets.load_dataset(src, data_dir=data_dir, split=split or "train")
    except Exception as exc:  # noqa: BLE001 - many failure types; all mean "cannot load this"
        raise DataError(f"not a file or shipped name ({', '.join([*SHIPPED, *SHIPPED_GROUPS])}), "
                        "and loading it as a "
                        f"Hub dataset failed: {exc}", file=src, code="not_found") from exc
    for i, row in enumerate(ds):
        yield src, i + 1, lambda row=row: row


def read_preferences(source: str | Path, *, split: str | None = None, data_dir: str | None = None,
                     skip_bad: bool = False,
                     limit: int | None = None) -> tuple[list[PreferencePair], Counter]:
    """Pairs from a shipped name, a .jsonl(.gz) file, or a Hub id / dataset folder.

    ``split`` and ``data_dir`` apply to Hub datasets only. Returns the pairs and a Counter of
    skipped rows per reason code (empty unless ``skip_bad``).
    """
    pairs: list[PreferencePair] = []
    skipped: Counter = Counter()
    if limit is not None and limit <= 0:
        return pairs, skipped
    for file, line, load in _rows(source, split, data_dir):
        try:
            pairs.append(pair_from_row(load(), file=file, line=line))
        except DataError as e:
            if not skip_bad:
                raise
            skipped[e.code] += 1
            continue
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        detail = f" (skipped: {dict(skipped)})" if skipped else ""
        raise DataError(f"no usable preference pairs{detail}", file=str(source), code="empty")
    return pairs, skipped


def load_preferences(source: str | Path, **kwargs: Any) -> list[PreferencePair]:
    """``read_preferences`` without the skip counts."""
    return read_preferences(source, **kwargs)[0]


# ---------------------------------------------------------------- splits
def split_key(pair: PreferencePair) -> str:
    """The first user turn: pairs from one conversation share it, so they share a split."""
    return next((m["content"] for m in pair.prompt if m["role"] == "user"), "").strip()


def split_point(pair: PreferencePair, salt: str = "rewardprompt") -> float:
    """The pair's place in [0, 1): sha256(salt + split_key), stable across runs and machines."""
    h = hashlib.sha256((salt + split_key(pair)).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def assign_split(pair: PreferencePair, test_fraction: float = 0.2,
                 salt: str = "rewardprompt", dev_fraction: float = 0.0) -> str:
    """``"test"`` below ``test_fraction``, ``"dev"`` below ``test_fraction + dev_fraction``,
    else ``"train"``, by ``split_point``. The test side does not depend on ``dev_fraction``: a
    dev split is carved from what would otherwise be training pairs."""
    if not (0.0 <= test_fraction <= 1.0 and 0.0 <= dev_fraction <= 1.0 - test_fraction):
        raise ValueError(f"test_fraction and dev_fraction must be in [0, 1] with a sum of at most "
                         f"1, got {test_fraction} and {dev_fraction}")
    u = split_point(pair, salt)
    return "test" if u < test_fraction else "dev" if u < test_fraction + dev_fraction else "train"


def split_pairs(pairs: list[PreferencePair], test_fraction: float = 0.2,
                salt: str = "rewardprompt") -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, test), each in input order."""
    train: list[PreferencePair] = []
    test: list[PreferencePair] = []
    for p in pairs:
        (test if assign_split(p, test_fraction, salt) == "test" else train).append(p)
    return train, test


def drop_identical(pairs: list[Any], source: str, drop: bool) -> tuple[list[Any], int]:
    """Pairs whose chosen and rejected differ, and how many were dropped.

    With ``drop=False`` the first identical pair raises a DataError naming the file, its line
    (pairs come one per non-blank line, or one per row of a Hub dataset, when not skipping bad
    rows) and its id.
    """
    same = [i for i, p in enumerate(pairs) if p.chosen == p.rejected]
    if not same:
        return pairs, 0
    ids = [str(pairs[i].id) for i in same]
    if not drop:
        file, line = _locate(source, same[0])
        raise DataError(f"pair id {ids[0]!r}: chosen and rejected are the same text, so the pair "
                        f"states no preference ({len(same)} such pair(s) in all); pass "
                        "drop_identical=True to skip them", file=file, line=line,
                        field="rejected", code="identical_pair")
    shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
    print(f"[rewardprompt] warning: {source}: skipped {len(same)} pair(s) whose chosen and "
          f"rejected replies are identical (ids {shown})", file=sys.stderr, flush=True)
    skip = set(same)
    return [p for i, p in enumerate(pairs) if i not in skip], len(same)


def _locate(source: str, index: int) -> tuple[str, int | None]:
    """(file, line) of the ``index``-th pair loaded from ``source``, as the loader names them."""
    paths = source_files(source)
    if not paths:  # a Hub dataset: the loader numbers its rows from 1
        return str(source), index + 1
    k = 0
    for path in paths:  # a shipped group is its files one after the other
        for line, _ in iter_jsonl_lines(path):
            if k == index:
                return str(path), line
            k += 1
    return str(paths[-1]), None


# ---------------------------------------------------------------- reading options
@dataclass(kw_only=True)
class PairSource:
    """How a stage reads its preference pairs; every stage that reads pairs takes these."""

    data_dir: str | None = None
    """Hub datasets only: the dataset's data_dir (e.g. harmless-base)."""
    split: str | None = None
    """Hub datasets only: the split to load."""
    limit: int | None = None
    """Read at most this many pairs."""
    skip_bad: bool = False
    """Skip malformed rows (counted) instead of stopping at the first."""

    def read_pairs(self, source: str | Path) -> tuple[list[PreferencePair], Counter]:
        """The pairs of ``source`` and the skipped rows per reason code."""
        return read_preferences(source, split=self.split, data_dir=self.data_dir,
                                skip_bad=self.skip_bad, limit=self.limit)


# ---------------------------------------------------------------- the convert stage
@dataclass
class ConvertConfig(PairSource):
    """Any supported preference source to structured JSONL (id, prompt, chosen, rejected)."""

    input: str
    """A file (.jsonl or .jsonl.gz), a shipped name, or a Hub id."""
    output: str
    """Structured JSONL (.jsonl or .jsonl.gz) to write."""


def convert(cfg: ConvertConfig) -> dict:
    """Any supported source to structured JSONL (written atomically); returns counts."""
    pairs, skipped = cfg.read_pairs(cfg.input)
    write_jsonl(cfg.output, (p.to_dict() for p in pairs))
    if cfg.skip_bad:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())) or "none"
        print(f"[rewardprompt] convert: {len(pairs)} pairs from {cfg.input}; skipped "
              f"{sum(skipped.values())} ({detail})", flush=True)
    return {"n": len(pairs), "skipped": dict(skipped)}
