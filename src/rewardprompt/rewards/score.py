"""The ``rm score`` stage: add a reward model's rewards to a JSONL of responses."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from ..runs import iter_jsonl, write_jsonl


@dataclass
class RMScoreConfig:
    """Score ``input`` (JSONL rows with prompt and response) into ``output``."""

    rm: str
    """The reward-model folder."""
    input: str
    """JSONL rows with prompt and response."""
    output: str
    """The same rows with reward (in [0, 1]) and reward_raw added."""
    batch_size: int = 32
    """Responses per scoring batch."""


def _check_row(row: dict, file: str, line: int) -> None:
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                 for m in prompt):
            raise DataError("expected a non-empty list of {role, content} messages", file=file,
                            line=line, field="prompt")
    elif not isinstance(prompt, str):
        raise DataError("missing or not a message list", file=file, line=line, field="prompt")
    if not isinstance(row.get("response"), str):
        raise DataError("missing or not a string", file=file, line=line, field="response")


def score_file(cfg: RMScoreConfig) -> dict[str, Any]:
    """Add ``reward`` (normalised, [0, 1]) and ``reward_raw`` to every row; write atomically."""
    from .model import RewardModel

    model = RewardModel.load(cfg.rm)
    rows = []
    for line, row in iter_jsonl(cfg.input):
        _check_row(row, str(cfg.input), line)
        rows.append(row)
    raw = model.score_raw([r["prompt"] for r in rows], [r["response"] for r in rows],
                          batch_size=cfg.batch_size)
    rewards = model.normaliser(raw) if rows else np.empty(0)
    for row, rr, r in zip(rows, raw, rewards, strict=True):
        row["reward"], row["reward_raw"] = float(r), float(rr)
    write_jsonl(cfg.output, rows)
    return {"rm": model.name, "input": str(cfg.input), "output": str(cfg.output), "n": len(rows),
            "mean_reward": round(float(rewards.mean()), 4) if rows else None}
