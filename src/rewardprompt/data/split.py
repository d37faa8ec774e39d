"""The ``data split`` stage: train / dev / test pairs and prompt files by the hash rule.

Every pair goes by ``split_point``: sha256("rewardprompt" + its first user turn) read as a
number in [0, 1). Below ``test_fraction`` it is a test pair, below ``test_fraction +
dev_fraction`` a dev pair, otherwise a training pair. Pairs of one conversation share their
first user turn, so a conversation never lands on two sides; ``rm train``'s held-out part with
the same ``test_fraction`` is exactly this test side.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..runs import atomic_write_json, write_jsonl
from .preference import PairSource, assign_split, drop_identical

SIDES = ("train", "dev", "test")


@dataclass
class SplitConfig(PairSource):
    """Split preference pairs into train / dev / test files by the hash rule."""

    input: str
    """Preference pairs: a file, a shipped name or a Hub id."""
    out: str
    """Folder for train/dev/test.jsonl (pairs), *_prompts.jsonl (id, prompt) and split.json."""
    test_fraction: float = 0.2
    """Share of the pairs that are test pairs (locked: for reported figures only)."""
    dev_fraction: float = 0.1
    """Share of the pairs that are dev pairs (recipe search), carved from the training side."""
    drop_identical: bool = True
    """Skip and count pairs whose chosen equals rejected, or raise."""


def split_data(cfg: SplitConfig) -> dict:
    """Write the three sides' pairs and prompts; returns (and writes to split.json) the counts."""
    pairs, skipped = cfg.read_pairs(cfg.input)
    pairs, n_identical = drop_identical(pairs, cfg.input, cfg.drop_identical)
    sides: dict[str, list] = {s: [] for s in SIDES}
    for p in pairs:
        sides[assign_split(p, cfg.test_fraction, dev_fraction=cfg.dev_fraction)].append(p)
    out = Path(cfg.out)
    for side, rows in sides.items():
        write_jsonl(out / f"{side}.jsonl", (p.to_dict() for p in rows))
        write_jsonl(out / f"{side}_prompts.jsonl", ({"id": p.id, "prompt": p.prompt} for p in rows))
    summary = {"input": cfg.input, "rule": "sha256('rewardprompt' + first user turn) in [0, 1)",
               "test_fraction": cfg.test_fraction, "dev_fraction": cfg.dev_fraction,
               "counts": {s: len(v) for s, v in sides.items()},
               "skipped_bad": dict(skipped), "skipped_identical": n_identical}
    atomic_write_json(out / "split.json", summary)
    return summary
