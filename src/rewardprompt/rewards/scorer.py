"""The one scorer interface: anything that gives a response a reward in [0, 1].

Reward models (``rewards.model.RewardModel``) and the synthetic scorers below all implement
``score(prompts, responses) -> np.ndarray`` of normalised rewards. Synthetic scorers are plain
functions of the text; they prove the conditioning mechanism apart from reward-model quality.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..chat import Message


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(self, prompts: list[list[Message]], responses: list[str]) -> np.ndarray:
        """Normalised rewards in [0, 1], one per (prompt, response)."""
        ...


@dataclass
class LengthScorer:
    """Reward = number of words / ``max_words``, clipped to [0, 1]."""

    max_words: int = 40
    name: str = "synthetic:length"

    def score(self, prompts: list[list[Message]], responses: list[str]) -> np.ndarray:
        n = np.array([len(r.split()) for r in responses], dtype=float)
        return np.clip(n / self.max_words, 0.0, 1.0)


@dataclass
class KeywordScorer:
    """Reward = 1 if the keyword occurs in the response (case-insensitive), else 0."""

    keyword: str
    name: str = "synthetic:keyword"

    def score(self, prompts: list[list[Message]], responses: list[str]) -> np.ndarray:
        pat = re.compile(re.escape(self.keyword), re.I)
        return np.array([1.0 if pat.search(r) else 0.0 for r in responses])


def load_scorer(spec: str | Path) -> Scorer:
    """``synthetic:length[:MAX_WORDS]``, ``synthetic:keyword:WORD``, or a reward-model folder."""
    s = str(spec)
    if s.startswith("synthetic:length"):
        parts = s.split(":")
        return LengthScorer(max_words=int(parts[2]) if len(parts) > 2 else 40, name=s)
    if s.startswith("synthetic:keyword:"):
        return KeywordScorer(keyword=s.split(":", 2)[2], name=s)
    from .model import RewardModel  # torch import only when a real RM is asked for

    return RewardModel.load(s)
