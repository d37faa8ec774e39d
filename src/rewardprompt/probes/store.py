"""The activation store on disk: safetensors shards, read through memory maps.

A store is a folder::

    collect.json                 what was collected: config, plan hash, layers, positions, shards
    shard-00000.safetensors      rows 0..S-1: one (rows, positions, d) tensor per layer
    ...                          ("resid_pre.0" ... "final"), "mask" (rows, positions) and
                                 "tokens" (the token id read at each position, -1 for none);
                                 the rows' labels sit in the file's metadata
    labels.jsonl                 every row's labels, one per line (for people; written last)

Each shard is written whole by one atomic rename, with its labels inside it, so a shard that
exists is complete and matches its labels. Reading one layer at one position slices the memory
map (``safe_open(...).get_slice``): the other layers are never read from disk.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..runs import atomic_write_bytes, read_json

FORMAT = "rewardprompt-probe-acts/1"
INDEX = "collect.json"
LABELS_FILE = "labels.jsonl"
DTYPES = ("float16", "bfloat16", "float32")


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def write_shard(path: Path, tensors: dict[str, Any], *, plan: str, rows: list[dict],
                layers: list[str], positions: list[str]) -> Path:
    """Write one shard atomically; ``plan`` ties it to the collection it belongs to."""
    from safetensors.torch import save

    meta = {"format": FORMAT, "plan": plan, "rows": json.dumps(rows, ensure_ascii=False),
            "layers": json.dumps(layers), "positions": json.dumps(positions)}
    return atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}, meta))


def shard_plan(path: Path) -> str | None:
    """The plan hash a finished shard was written for (None: unreadable, so not finished)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - a truncated or foreign file: it is redone
        return None
    return meta.get("plan") if meta.get("format") == FORMAT else None


class ActivationStore:
    """A finished collection: its rows' labels and, per layer and position, their features."""

    def __init__(self, folder: str | Path) -> None:
        self.dir = Path(folder)
        index_path = self.dir / INDEX
        if not index_path.is_file():
            raise DataError(f"no activation store here (no {INDEX}); run `rewardprompt probe "
                            "collect` first", file=str(self.dir), code="not_found")
        self.index = read_json(index_path)
        if self.index.get("format") != FORMAT:
            raise DataError(f"not a probe activation store (format {self.index.get('format')!r})",
                            file=str(index_path), field="format", code="bad_field")
        if not self.index.get("complete"):
            raise DataError("the collection is unfinished; rerun the same `probe collect` "
                            "command to finish it", file=str(index_path), field="complete",
                            code="incomplete")
        self.layers: list[str] = list(self.index["layers"])
        self.positions: list[str] = list(self.index["positions"])
        self.hidden_size: int = int(self.index["hidden_size"])
        self.shards = [self.dir / s for s in self.index["shards"]]
        self.rows: list[dict] = []
        for path in self.shards:
            meta = self._meta(path)
            if meta.get("plan") != self.index["plan"]:
                raise DataError("shard belongs to another collection (plan hash differs)",
                                file=str(path), field="plan", code="bad_field")
            self.rows.extend(json.loads(meta["rows"]))
        if len(self.rows) != self.index["n_rows"]:
            raise DataError(f"the shards hold {len(self.rows)} rows, the index says "
                            f"{self.index['n_rows']}", file=str(index_path), field="n_rows",
                            code="bad_field")

    @staticmethod
    def _meta(path: Path) -> dict:
        from safetensors import safe_open

        if not path.is_file():
            raise DataError("shard is missing", file=str(path), code="not_found")
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}

    @property
    def model(self) -> str:
        """The model whose activations these are."""
        return str(self.index["model"])

    def check(self, layer: str, position: str) -> int:
        """The index of ``position``; a ValueError when the layer or position was not collected."""
        if layer not in self.layers:
            raise ValueError(f"{self.dir}: layer {layer!r} was not collected; collected: "
                             f"{', '.join(self.layers)}")
        if position not in self.positions:
            raise ValueError(f"{self.dir}: position {position!r} was not collected; collected: "
                             f"{', '.join(self.positions)}")
        return self.positions.index(position)

    def _slices(self, name: str, position: int | None) -> Iterator[np.ndarray]:
        from safetensors import safe_open

        for path in self.shards:
            with safe_open(str(path), framework="pt") as f:
                part = f.get_slice(name)
                t = part[:, position] if position is not None else part[:]
                yield t.float().numpy() if t.is_floating_point() else t.numpy()

    def features(self, layer: str, position: str) -> tuple[np.ndarray, np.ndarray]:
        """``(X, present)``: (rows, d) float32 features and which rows have that position."""
        k = self.check(layer, position)
        x = np.concatenate(list(self._slices(layer, k)))
        present = np.concatenate(list(self._slices("mask", k))).astype(bool)
        return x, present

    def layer(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """``(X, present)`` for every position: (rows, positions, d) and (rows, positions)."""
        self.check(layer, self.positions[0])
        x = np.concatenate(list(self._slices(layer, None)))
        present = np.concatenate(list(self._slices("mask", None))).astype(bool)
        return x, present

    def tokens(self) -> np.ndarray:
        """The token id read at each (row, position); -1 for ``mean`` and absent positions."""
        return np.concatenate(list(self._slices("tokens", None)))
