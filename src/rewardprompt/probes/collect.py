"""The ``probe collect`` stage: activations and labels of preference pairs or generations.

Rows come from preference pairs (each pair gives two rows, its chosen and its rejected reply,
sharing a ``pair_id``) and from generation files (``generate``'s rows, or ``evaluate``'s
``eval/scores.jsonl``: prompt, response, model; targets and actual rewards when present). Every
row gets its side of the hash split (``assign_split``, on the first user turn, so a conversation
never lands on two sides): probes train on ``train``, are chosen on ``dev`` and reported on
``test``.

Labels per row (``labels``): ``chosen`` (1 or 0) for pair rows; ``rating`` where the data set
rates each reply (UltraFeedback's ``metadata.score_chosen`` / ``score_rejected``); ``rm`` when a
scorer is given; ``target.DIM`` and ``actual.DIM`` (and ``reward``) from generation rows.

Collection is batched and resumable: rows are cut into shards of ``shard_size``, each written
atomically once done. A rerun of the same command skips the finished shards; a rerun with
another config (or other data, or another model) refuses, unless ``overwrite`` starts over.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ..chat import Message
from ..data.preference import (PreferencePair, assign_split, drop_identical, pair_from_row,
                               read_preferences, source_files, split_key, split_point)
from ..errors import DataError
from ..models import DEFAULT_POLICY
from ..runs import (atomic_write_json, iter_jsonl, messages_error, read_json, read_rows, recorded,
                    update_metrics_entry, write_jsonl)
from ..template import RewardTemplate, Target, TemplateError, row_targets
from .capture import check_position, default_positions, layer_name, resolve_layers
from .store import DTYPES, FORMAT, INDEX, LABELS_FILE, shard_name, shard_plan, write_shard

SPLITS = ("train", "dev", "test")


@dataclass
class CollectConfig:
    """Residual-stream activations of preference pairs and/or generations, with their labels."""

    pairs: list[str] = field(default_factory=list)
    """Preference sources (shipped names such as hh-helpful, hh-harmless, ultrafeedback; files;
    Hub ids): each pair gives a chosen and a rejected row."""
    generations: list[str] = field(default_factory=list)
    """Generation JSONL files (rows with prompt, response, model; targets, actual, reward when
    present), e.g. RUN/generate/conditioned.jsonl or RUN/eval/scores.jsonl."""
    model: str = DEFAULT_POLICY
    """The model whose residual stream is read: a Hub id, a folder or the shipped name."""
    out: str | None = None
    """The store's folder (default: RUN/probes/acts)."""
    run: str | None = None
    """A run directory: the stage records itself in its manifest."""
    layers: list[int] = field(default_factory=list)
    """Hidden-state indices: 0..L-1 the input of block i (resid_pre.i), L (or -1) the final
    normalised output; empty: all of them."""
    positions: list[str] = field(default_factory=list)
    """prompt_end, resp_K, last, mean; empty: prompt_end, resp_1, 2, 4, ... (up to
    max_completion_tokens), last and mean."""
    test_fraction: float = 0.2
    """Share of the conversations on the test side of the hash split."""
    dev_fraction: float = 0.1
    """Share of the conversations on the dev side (carved from the training side)."""
    train_pairs: int | None = None
    """Per pair source, at most this many training pairs (in hash order); None: all."""
    dev_pairs: int | None = None
    """Per pair source, at most this many dev pairs (in hash order); None: all."""
    test_pairs: int | None = None
    """Per pair source, at most this many test pairs (in hash order); None: all."""
    max_rows: int | None = None
    """Per generation file, at most its first this many rows; None: all."""
    rating_fields: tuple[str, str] = ("metadata.score_chosen", "metadata.score_rejected")
    """Where a pair row rates its chosen and rejected reply (dotted paths); the label 'rating'
    where present."""
    scorer: str | None = None
    """A scorer spec (reward-model folder, synthetic:length, module:function) whose reward of
    each row becomes the label 'rm'."""
    reward_block: bool | None = None
    """Show rows that carry targets with the model's reward block (its rewardprompt.json): the
    conditioned policy's own view. None: when the model was fine-tuned conditioned."""
    max_prompt_tokens: int | None = None
    """Prompt budget in tokens (older turns go first); None: the policy's own, else 192."""
    max_completion_tokens: int = 64
    """Completion tokens kept per row (a longer reply is cut)."""
    drop_identical: bool = True
    """Skip pairs whose chosen and rejected replies are the same text (or stop at the first)."""
    skip_bad: bool = True
    """Skip malformed pair rows (counted and reported; the shipped HH files hold a few) instead
    of stopping at the first."""
    batch_size: int = 8
    """Rows per forward pass."""
    shard_size: int = 64
    """Rows per shard: the unit that is written atomically and skipped on a rerun."""
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    """How activations are stored (they are read back as float32)."""
    overwrite: bool = False
    """Start over when the folder holds a collection of another config."""


# ---------------------------------------------------------------- rows
def _group(prompt: list[Message]) -> str:
    """The conversation a row belongs to (bootstrap resamples these): its first user turn."""
    key = split_key(PreferencePair(id="", prompt=prompt, chosen="", rejected=""))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def _dotted(row: dict, path: str) -> tuple[bool, Any]:
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _number(value: Any, *, file: str, line: int | None, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"expected a number, got {type(value).__name__}", file=file, line=line,
                        field=field_name, code="bad_field")
    return float(value)


@dataclass
class _RatedPair:
    """A pair with the data set's own rating of each reply (None where it has none)."""

    pair: PreferencePair
    ratings: tuple[float, float] | None

    @property
    def id(self) -> str:
        return self.pair.id

    @property
    def chosen(self) -> str:
        return self.pair.chosen

    @property
    def rejected(self) -> str:
        return self.pair.rejected


def read_rated_pairs(source: str, rating_fields: tuple[str, str], *,
                     skip_bad: bool = False) -> tuple[list[_RatedPair], Counter]:
    """The pairs of ``source`` with their ratings, where its rows carry ``rating_fields``, and
    the rows skipped per reason code.

    A malformed row, or a rating other than a number, raises a DataError naming file, line and
    field (with ``skip_bad``, it is counted instead); a Hub dataset (no local file) is read
    without ratings.
    """
    paths = source_files(source)
    if not paths:
        pairs, skipped = read_preferences(source, skip_bad=skip_bad)
        return [_RatedPair(p, None) for p in pairs], skipped
    out, skipped = [], Counter()
    for path in paths:
        for line, row in iter_jsonl(path):
            try:
                pair = pair_from_row(row, file=str(path), line=line)
                found = [_dotted(row, f) for f in rating_fields]
                ratings = None
                if all(ok for ok, _ in found):
                    ratings = tuple(_number(v, file=str(path), line=line, field_name=f)
                                    for (_, v), f in zip(found, rating_fields))
            except DataError as e:
                if not skip_bad:
                    raise
                skipped[e.code] += 1
                continue
            out.append(_RatedPair(pair, ratings))  # type: ignore[arg-type]
    if not out:
        raise DataError(f"no usable preference pairs (skipped: {dict(skipped)})",
                        file=str(source), code="empty")
    return out, skipped


def _numbers(value: Any) -> str | None:
    """A mapping of names to numbers (targets, actual rewards)."""
    if not isinstance(value, dict):
        return f"expected an object of numbers, got {type(value).__name__}"
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"value of {k!r} is not a number"
    return None


def _prompt_error(value: Any) -> str | None:
    return None if isinstance(value, str) else messages_error(value)


def _as_messages(prompt: str | list[Message]) -> list[Message]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


@dataclass
class PlannedRow:
    """One row to capture: what the model reads, and the labels stored with it."""

    prompt: list[Message]
    response: str
    targets: dict[str, Target] | None
    meta: dict[str, Any]


def plan_rows(cfg: CollectConfig) -> list[PlannedRow]:
    """Every row of the collection, in order: pair sources first (chosen, then rejected, per
    pair; per split the pairs in hash order), then generation files in their order."""
    limits = {"train": cfg.train_pairs, "dev": cfg.dev_pairs, "test": cfg.test_pairs}
    rows: list[PlannedRow] = []
    seen: set[str] = set()
    for source in cfg.pairs:
        rated, bad = read_rated_pairs(source, cfg.rating_fields, skip_bad=cfg.skip_bad)
        if bad:
            print(f"[rewardprompt] probe collect: {source}: skipped {sum(bad.values())} malformed "
                  f"row(s) ({', '.join(f'{k}={v}' for k, v in sorted(bad.items()))})",
                  file=sys.stderr, flush=True)
        rated, _ = drop_identical(rated, source, cfg.drop_identical)
        # A pair twice (one source listed twice, or the same pair in two files of a group)
        # would make two rows claim one pair id; the first is kept.
        unique = []
        for rp in rated:
            if f"{source}:{rp.pair.id}" not in seen:
                seen.add(f"{source}:{rp.pair.id}")
                unique.append(rp)
        if len(unique) < len(rated):
            print(f"[rewardprompt] probe collect: {source}: skipped {len(rated) - len(unique)} "
                  "repeated pair(s)", file=sys.stderr, flush=True)
        rated = unique
        by_split: dict[str, list[_RatedPair]] = {s: [] for s in SPLITS}
        for rp in rated:
            by_split[assign_split(rp.pair, cfg.test_fraction,
                                  dev_fraction=cfg.dev_fraction)].append(rp)
        for split in SPLITS:
            chosen = sorted(by_split[split], key=lambda rp: (split_point(rp.pair), rp.pair.id))
            for rp in chosen[:limits[split]] if limits[split] is not None else chosen:
                p = rp.pair
                for is_chosen, reply in ((True, p.chosen), (False, p.rejected)):
                    labels: dict[str, float] = {"chosen": float(is_chosen)}
                    if rp.ratings is not None:
                        labels["rating"] = rp.ratings[0 if is_chosen else 1]
                    rows.append(PlannedRow(p.prompt, reply, None, {
                        "source": source, "split": split, "group": _group(p.prompt),
                        "pair_id": f"{source}:{p.id}", "chosen": is_chosen, "model": None,
                        "id": p.id, "labels": labels}))
    for path in cfg.generations:
        gen = read_rows(path, {"prompt": _prompt_error, "response": str, "model": str},
                        what="generation rows (prompt, response, model)",
                        optional={"id": (str, int), "targets": _numbers, "actual": _numbers,
                                  "reward": float, "target_ops": dict, "conditioned": bool})
        lines = [line for line, _ in iter_jsonl(path)]  # read_rows checked them; keep their lines
        for line, r in list(zip(lines, gen))[:cfg.max_rows]:
            prompt = _as_messages(r["prompt"])
            labels = {f"target.{d}": float(v) for d, v in (r.get("targets") or {}).items()}
            labels.update({f"actual.{d}": float(v) for d, v in (r.get("actual") or {}).items()})
            if "reward" in r:
                labels["reward"] = float(r["reward"])
            # Only a row sampled with the block is read with it: a baseline's rows record the
            # targets they were matched to, but their model never saw them.
            try:
                targets = (row_targets(r) if r.get("targets") and r.get("conditioned", True)
                           else None)
            except TemplateError as exc:
                raise DataError(str(exc), file=str(path), line=line, field="targets",
                                code="bad_field") from None
            split = assign_split(PreferencePair(id="", prompt=prompt, chosen="", rejected=""),
                                 cfg.test_fraction, dev_fraction=cfg.dev_fraction)
            rows.append(PlannedRow(prompt, r["response"], targets, {
                "source": str(path), "split": split, "group": _group(prompt), "pair_id": None,
                "chosen": None, "model": r["model"], "id": str(r.get("id", "")),
                "labels": labels}))
    if not rows:
        raise ValueError("nothing to collect: give --pairs and/or --generations")
    return rows


def _reading_template(cfg: CollectConfig, rows: list[PlannedRow]) -> RewardTemplate | None:
    """The reward block the model reads targets in (None: rows are shown without one)."""
    from ..policy.meta import read_policy_meta

    meta = read_policy_meta(cfg.model)
    want = cfg.reward_block
    if want is None:
        want = bool(meta.get("conditioned")) and "template" in meta and any(r.targets for r in rows)
    if not want:
        return None
    if "template" not in meta:
        raise ValueError(f"reward_block is on, but {cfg.model} has no rewardprompt.json with a "
                         "template: it was not fine-tuned with a reward block")
    return RewardTemplate.from_dict(meta["template"])


def _prompt_budget(cfg: CollectConfig) -> int:
    from ..policy.meta import read_policy_meta

    return cfg.max_prompt_tokens or int(read_policy_meta(cfg.model).get("max_prompt_tokens", 192))


def _plan_hash(cfg: CollectConfig, rows: list[PlannedRow], model_id: str | None) -> str:
    """What the collection's content depends on: the config (not where it is written), the
    rows' texts and labels, and the model's weights."""
    keep = {k: v for k, v in asdict(cfg).items() if k not in ("out", "run", "overwrite")}
    h = hashlib.sha256(json.dumps({"config": keep, "model": model_id}, sort_keys=True,
                                  default=str).encode())
    for r in rows:
        targets = {d: [t.value, t.op] for d, t in (r.targets or {}).items()}
        h.update(json.dumps([r.prompt, r.response, targets, r.meta], sort_keys=True,
                            ensure_ascii=False).encode("utf-8"))
    return "sha256:" + h.hexdigest()[:16]


# ---------------------------------------------------------------- the stage
def collect_activations(cfg: CollectConfig, *,
                        on_shard: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Collect the activations of ``cfg``'s rows into its folder; return a summary.

    ``on_shard(i)`` is called after shard ``i`` is written (tests stop a run there to check the
    resume). Finished shards of the same plan are kept and skipped.
    """
    import torch

    from ..models import load_policy, load_tokenizer, resolve_policy
    from ..runs import path_hash
    from .capture import capture, encode, n_blocks

    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {cfg.dtype!r}")
    if cfg.batch_size < 1 or cfg.shard_size < 1:
        raise ValueError("batch_size and shard_size must be >= 1")
    if cfg.max_completion_tokens < 1:
        raise ValueError("max_completion_tokens must be >= 1")
    out = Path(cfg.out) if cfg.out else (Path(cfg.run) / "probes" / "acts" if cfg.run else None)
    if out is None:
        raise ValueError("give --out, or --run DIR to write probes/acts inside a run directory")
    positions = [check_position(p) for p in cfg.positions] or default_positions(
        cfg.max_completion_tokens)
    rows = plan_rows(cfg)
    template = _reading_template(cfg, rows)
    budget = _prompt_budget(cfg)
    resolved = resolve_policy(cfg.model)
    model_id = path_hash(resolved) if Path(resolved).exists() else resolved
    plan = _plan_hash(cfg, rows, model_id)

    index_path = out / INDEX
    if index_path.is_file():
        old = read_json(index_path)
        if old.get("plan") != plan:
            if not cfg.overwrite:
                raise ValueError(f"{out} holds a collection of another config, data or model; "
                                 "pass --overwrite to start over, or use another --out")
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = load_tokenizer(cfg.model, padding_side="right")
    model = load_policy(cfg.model).eval()
    n_layers = n_blocks(model)
    layers = resolve_layers(cfg.layers, n_layers)
    names = [layer_name(i, n_layers) for i in layers]
    n_shards = (len(rows) + cfg.shard_size - 1) // cfg.shard_size
    shards = [shard_name(i) for i in range(n_shards)]
    index = {"format": FORMAT, "plan": plan, "model": cfg.model, "model_hash": model_id,
             "n_blocks": n_layers, "hidden_size": int(model.config.hidden_size),
             "layers": names, "positions": positions, "n_rows": len(rows),
             "shard_size": cfg.shard_size, "shards": shards, "dtype": cfg.dtype,
             "reward_block": template.to_dict() if template is not None else None,
             "max_prompt_tokens": budget, "max_completion_tokens": cfg.max_completion_tokens,
             "config": asdict(cfg), "complete": False}
    atomic_write_json(index_path, index)
    scorer = None
    if cfg.scorer:
        from ..rewards.scorer import load_scorer

        scorer = load_scorer(cfg.scorer)
    store_dtype = getattr(torch, cfg.dtype)
    done, computed = [], []
    t0 = time.perf_counter()
    n_tokens = 0
    for i, name in enumerate(shards):
        path = out / name
        if shard_plan(path) == plan:
            done.append(i)
            continue
        part = rows[i * cfg.shard_size:(i + 1) * cfg.shard_size]
        encoded = [encode(tokenizer, r.prompt, r.response, template=template,
                          targets=r.targets, max_prompt_tokens=budget,
                          max_completion_tokens=cfg.max_completion_tokens) for r in part]
        got = capture(model, encoded, layers, positions, batch_size=cfg.batch_size,
                      pad_id=tokenizer.pad_token_id)
        labels = [dict(r.meta, row=i * cfg.shard_size + k, n_prompt_tokens=e.n_prompt,
                       n_completion_tokens=e.n_completion)
                  for k, (r, e) in enumerate(zip(part, encoded))]
        if scorer is not None:
            rewards = scorer.score([r.prompt for r in part], [r.response for r in part])
            for lab, v in zip(labels, rewards):
                lab["labels"] = dict(lab["labels"], rm=float(v))
        tensors = {nm: got.acts[j].to(store_dtype) for nm, j in zip(names, layers)}
        tensors.update(mask=got.mask.to(torch.uint8), tokens=got.tokens)
        write_shard(path, tensors, plan=plan, rows=labels, layers=names, positions=positions)
        n_tokens += sum(len(e.ids) for e in encoded)
        computed.append(i)
        print(f"[rewardprompt] probe collect: shard {i + 1}/{n_shards} ({len(part)} rows) "
              f"in {out}", file=sys.stderr, flush=True)
        if on_shard is not None:
            on_shard(i)
    wall = time.perf_counter() - t0
    from .store import ActivationStore

    index["complete"] = True
    atomic_write_json(index_path, index)
    store = ActivationStore(out)
    write_jsonl(out / LABELS_FILE, store.rows)
    counts = {s: sum(1 for r in store.rows if r["split"] == s) for s in SPLITS}
    summary = {"out": str(out), "model": cfg.model, "n_rows": len(rows), "rows_per_split": counts,
               "layers": len(names), "positions": positions, "shards": n_shards,
               "computed_shards": computed, "skipped_shards": done,
               "labels": sorted({k for r in store.rows for k in r["labels"]}),
               "wall_s": round(wall, 2),
               "tokens_per_s": round(n_tokens / wall, 1) if computed and wall > 0 else None}
    update_metrics_entry(cfg.run, "probes", f"collect_{out.name}", summary)
    return summary


@recorded("probe collect")
def _run_collect(cfg: CollectConfig) -> dict[str, Any]:
    return collect_activations(cfg)


def run_collect(cfg: CollectConfig) -> dict[str, Any]:
    """The CLI stage: ``rewardprompt probe collect --pairs hh-harmless --run RUN``."""
    if cfg.out is None and cfg.run is not None:  # a named output names the manifest's stage
        from dataclasses import replace

        cfg = replace(cfg, out=str(Path(cfg.run) / "probes" / "acts"))
    return _run_collect(cfg)


def stored_rows(store: Any) -> list[PlannedRow]:
    """The rows of a finished store with their texts, planned again from the config it records.

    A store keeps labels, not texts; the plan is rebuilt from the same data and checked against
    the store's plan hash, so a data file changed since the collection is refused rather than
    misread."""
    known = {f.name for f in fields(CollectConfig)}
    cfg = CollectConfig(**{k: v for k, v in store.index["config"].items() if k in known})
    cfg.rating_fields = tuple(cfg.rating_fields)  # type: ignore[assignment]  # JSON gives a list
    rows = plan_rows(cfg)
    if _plan_hash(cfg, rows, store.index.get("model_hash")) != store.index["plan"]:
        raise DataError("the data this store was collected from changed since (plan hash "
                        "differs); collect again", file=str(store.dir / INDEX), field="plan",
                        code="bad_field")
    return rows


def split_rows(rows: list[dict], split: str) -> list[int]:
    """Indices of the rows on one side of the split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    return [i for i, r in enumerate(rows) if r["split"] == split]


__all__ = ["CollectConfig", "PlannedRow", "SPLITS", "collect_activations", "plan_rows",
           "read_rated_pairs", "run_collect", "split_rows", "stored_rows"]
