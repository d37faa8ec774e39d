"""The ``rm score`` stage: add a reward model's rewards to a JSONL of responses."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..runs import messages_error, read_rows, write_jsonl


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


def _prompt_error(value: Any) -> str | None:
    """A prompt is a string or a chat message list."""
    return None if isinstance(value, str) else messages_error(value)


def score_file(cfg: RMScoreConfig) -> dict[str, Any]:
    """Add ``reward`` (normalised, [0, 1]) and ``reward_raw`` to every row; write atomically."""
    from .model import RewardModel

    rows = read_rows(cfg.input, {"prompt": _prompt_error, "response": str},
                     what="prompt/response rows")
    model = RewardModel.load(cfg.rm)
    raw = model.score_raw([r["prompt"] for r in rows], [r["response"] for r in rows],
                          batch_size=cfg.batch_size)
    rewards = model.normaliser(raw) if rows else np.empty(0)
    for row, rr, r in zip(rows, raw, rewards, strict=True):
        row["reward"], row["reward_raw"] = float(r), float(rr)
    write_jsonl(cfg.output, rows)
    return {"rm": model.name, "input": str(cfg.input), "output": str(cfg.output), "n": len(rows),
            "mean_reward": round(float(rewards.mean()), 4) if rows else None}
