"""The one scorer interface: anything that gives a response a reward in [0, 1].

Reward models (``rewards.model.RewardModel``), wrapped Hugging Face reward models
(``rewards.hf.HFRewardModel``), a user's own function (``FunctionScorer``) and the synthetic
scorers below all implement ``score(prompts, responses) -> np.ndarray`` of normalised rewards.
Synthetic scorers are plain functions of the text; they prove the conditioning mechanism apart
from reward-model quality. ``load_scorer`` turns a spec string into any of them.
"""
from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
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


@dataclass
class FunctionScorer:
    """A user's function ``fn(prompts, responses) -> sequence of floats in [0, 1]`` as a scorer.

    Every return is checked (one finite value per response, within [0, 1]): a function's bug
    would otherwise become silently wrong labels for the policy.
    """

    fn: Callable[[list[list[Message]], list[str]], object]
    name: str

    def score(self, prompts: list[list[Message]], responses: list[str]) -> np.ndarray:
        """The function's scores as a float array; a bad return raises a ValueError naming the
        spec."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        got = self.fn(list(prompts), list(responses))
        try:
            out = np.asarray(got, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"scorer {self.name!r} returned {type(got).__name__}, not a sequence "
                             f"of floats: {exc}") from None
        if out.shape != (len(responses),):
            raise ValueError(f"scorer {self.name!r} returned shape {out.shape} for "
                             f"{len(responses)} responses; expected one score per response")
        bad = ~np.isfinite(out) | (out < 0.0) | (out > 1.0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"scorer {self.name!r} returned {int(bad.sum())} score(s) that are "
                             f"not finite values in [0, 1], first {float(out[i])!r} at index {i}")
        return out

    @classmethod
    def from_spec(cls, spec: str) -> FunctionScorer:
        """Import ``module:function``; an unimportable module, a missing attribute or one that
        is not a function raises a ValueError naming it."""
        module_name, attr = spec.split(":", 1)
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - any failure to import means the same here
            raise ValueError(f"scorer {spec!r}: cannot import module {module_name!r} "
                             f"({type(exc).__name__}: {exc}); is it on the Python path?") from exc
        fn = getattr(module, attr, None)
        if fn is None:
            raise ValueError(f"scorer {spec!r}: module {module_name!r} has no attribute "
                             f"{attr!r}")
        if inspect.isclass(fn) or not callable(fn):
            raise ValueError(f"scorer {spec!r}: {attr!r} is a {type(fn).__name__}, not a "
                             "function f(prompts, responses) -> scores in [0, 1]")
        return cls(fn=fn, name=spec)


#: Scores kept for this process: scorer identity (``scorer_identity``) -> (prompt as JSON,
#: response) -> normalised score. A recipe scores the same replies in several stages (a best-of
#: pool is the baseline's own generations; Elo's judge is evaluate's labelling scorer).
_REMEMBERED: dict[str, dict[tuple[str, str], float]] = {}


@dataclass
class RememberedScorer:
    """A scorer that scores each distinct (prompt, response) once per process: repeats within a
    call (a best-of-N pick is one of the baseline's own replies) and across stages come from
    memory, so a reward model makes no second pass over them, and equal pairs get exactly equal
    scores whatever batch they would have been padded in. Keyed by the scorer's content, so a
    reward model retrained in place is another scorer."""

    scorer: Scorer
    identity: str
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.scorer.name

    def score(self, prompts: list[list[Message]], responses: list[str]) -> np.ndarray:
        import json

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        memo = _REMEMBERED.setdefault(self.identity, {})
        keys = [(json.dumps(p, sort_keys=True), r) for p, r in zip(prompts, responses)]
        todo: dict[tuple[str, str], int] = {}
        for i, k in enumerate(keys):
            if k not in memo:
                todo.setdefault(k, i)
        if todo:
            idx = list(todo.values())
            scores = np.asarray(self.scorer.score([prompts[i] for i in idx],
                                                  [responses[i] for i in idx]), dtype=float)
            memo.update(zip(todo, scores.tolist()))
        return np.array([memo[k] for k in keys], dtype=float)


def scorer_for(spec: str | Path) -> Scorer:
    """``load_scorer(spec)``, remembering its scores (``RememberedScorer``) when what it computes
    is fixed by its content: a reward-model folder (by its files' hash) or a synthetic scorer (by
    its spec). A ``module:function`` scorer is the user's code, which may keep state: it is
    asked every time."""
    scorer = load_scorer(spec)
    if isinstance(scorer, FunctionScorer):
        return scorer
    return RememberedScorer(scorer, scorer_identity(spec))


def scorer_identity(spec: str | Path) -> str:
    """What a scorer spec is, by content: a folder's or file's hash (a reward model retrained in
    place is another scorer), else the spec itself (synthetic:..., module:function)."""
    from ..stage_cache import content_hash

    path = Path(str(spec))
    return (content_hash(path) or str(spec)) if path.exists() else str(spec)


#: ``package.module:function``; a Hub id has no ':' and an existing path is tried first.
_FUNCTION_SPEC = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
#: ``org/name``: what a Hugging Face Hub id looks like.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SPECS = ("synthetic:length[:MAX_WORDS]", "synthetic:keyword:WORD", "a reward-model folder",
          "module:function")


def load_scorer(spec: str | Path) -> Scorer:
    """A scorer from its spec, one of:

    * ``synthetic:length[:MAX_WORDS]`` or ``synthetic:keyword:WORD``;
    * a reward-model folder: trained by ``rm train``, or a Hugging Face reward model wrapped by
      ``rm wrap`` (a bare Hub id or model folder raises a ValueError naming that command);
    * ``module:function``: ``function(prompts, responses)`` returning one score in [0, 1] per
      response, imported from the Python path.
    """
    s = str(spec)
    if s.startswith("synthetic:length"):
        parts = s.split(":")
        return LengthScorer(max_words=int(parts[2]) if len(parts) > 2 else 40, name=s)
    if s.startswith("synthetic:keyword:"):
        return KeywordScorer(keyword=s.split(":", 2)[2], name=s)
    if s.startswith("synthetic:"):
        raise ValueError(f"unknown synthetic scorer {s!r}; choose synthetic:length[:MAX_WORDS] "
                         "or synthetic:keyword:WORD")
    path = Path(s)
    if path.exists():
        if path.is_dir() and not (path / "rm_config.json").is_file() \
                and (path / "config.json").is_file():
            from .hf import unwrapped_error

            raise unwrapped_error(s)
    elif _FUNCTION_SPEC.fullmatch(s):
        return FunctionScorer.from_spec(s)
    elif _HUB_ID.fullmatch(s):
        from .hf import wrap_command

        raise ValueError(f"scorer {s!r}: no such folder. If it is a Hugging Face Hub id of a "
                         "reward model, wrap it first: "
                         f"`{wrap_command(s)}`, then pass DIR; other scorer specs: "
                         f"{', '.join(_SPECS)}")
    from .model import RewardModel  # torch import only when a real RM is asked for

    return RewardModel.load(s)
