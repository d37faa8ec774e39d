"""The label stage: score responses with one scorer per reward dimension, write the training set.

Inputs are preference pairs (both replies are used: chosen and rejected give the policy the same
prompt with two different rewards) and, optionally, the policy's own samples. Responses are first
clipped to what SFT will train on, so the reward describes exactly the text the policy sees.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from .errors import DataError
from .models import DEFAULT_POLICY
from .rewards.scorer import scorer_for
from .runs import LABELS, in_run, messages_error, read_rows, recorded, update_metrics, write_jsonl

#: Which labelled rows are written.
Keep = Literal["all", "extremes"]



def read_labelled(path: str | Path, template: dict, conditioned: bool) -> tuple[list[dict], Any]:
    """The rows of a labelled set (prompt, response, rewards) and the reward template they are
    trained with: its dimensions are the first row's rewards unless ``template`` names them.

    Conditioned, every row must carry a number for every dimension of the block (a DataError
    names the file, line and field otherwise). Unconditioned (plain SFT, the baseline), rewards
    are optional: a set of prompts and replies without any is trained as it is."""
    from .template import RewardTemplate

    rows = read_rows(path, {"prompt": messages_error, "response": str},
                     what="prompt-response rows", optional={"rewards": dict})
    have = tuple(rows[0].get("rewards") or ())
    if conditioned and not (have or template.get("dimensions")):
        raise DataError("missing field (a reward-conditioned policy trains on labelled replies; "
                        "label them first, or pass --no-conditioned for plain SFT)",
                        file=str(path), line=1, field="rewards", code="missing_field")
    tmpl = RewardTemplate.from_dict({**({"dimensions": have} if have else {}), **template})
    if conditioned:
        rows = read_rows(path, {"prompt": messages_error, "response": str,
                                **{f"rewards.{d}": float for d in tmpl.dimensions}},
                         what=f"labelled replies with rewards for {', '.join(tmpl.dimensions)}")
    return rows, tmpl

@dataclass
class LabelConfig:
    """Score responses with one scorer per reward dimension and write the labelled set."""

    pairs: list[str] = field(default_factory=list)
    """Preference JSONL files: both the chosen and the rejected reply of each pair are labelled."""
    samples: list[str] = field(default_factory=list)
    """JSONL files of the policy's own samples (rows with prompt and response, as generate writes)."""
    scorers: dict[str, str] = field(default_factory=dict)
    """Dimension -> scorer: a reward-model folder, synthetic:..., or module:function."""
    out: str | None = None
    """The labelled JSONL to write (default: RUN/label/train.jsonl)."""
    run: str | None = None
    """A run directory: the stage records itself in its manifest and its label statistics in
    its metrics.json."""
    policy: str = DEFAULT_POLICY
    """The policy whose tokenizer decides the clipping: a shipped name, a Hub id or a folder."""
    max_completion_tokens: int = 64
    """Responses are clipped to this many tokens (end-of-turn included) before scoring."""
    prefixes: int = 0
    """Also label up to k sentence-prefixes of each response (replies that differ only in where
    they stop)."""
    keep: Keep = "all"
    """all: every labelled row; extremes: per prompt and dimension only the lowest- and the
    highest-scored reply (best and worst of n), so only the label tells them apart. Not with
    prefixes."""


def keep_extremes(rows: list[dict], dimensions: list[str]) -> list[dict]:
    """Per prompt (the whole message list) and per dimension, the rows with the lowest and the
    highest reward, each kept once, in their original order."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(json.dumps(r["prompt"], sort_keys=True), []).append(i)
    keep: set[int] = set()
    for idx in groups.values():
        for dim in dimensions:
            scores = [rows[i]["rewards"][dim] for i in idx]
            keep.add(idx[int(np.argmin(scores))])
            keep.add(idx[int(np.argmax(scores))])
    return [r for i, r in enumerate(rows) if i in keep]


def clip_response(tokenizer, text: str, max_tokens: int) -> str:
    """At most ``max_tokens`` tokens, cut back to the last sentence end when there is one."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text.strip()
    cut = tokenizer.decode(ids[:max_tokens])
    ends = [cut.rfind(p) for p in (". ", "! ", "? ", ".\n", "\n")]
    end = max(ends)
    # Keep a sentence boundary only if it keeps at least half the text.
    return (cut[:end + 1] if end >= len(cut) // 2 else cut).strip()


_SENTENCE_END = re.compile(r"(?<=[.!?:])(?<!\d\.)\s+|\n+")  # "1." of a list is no end


def sentence_prefixes(text: str, k: int) -> list[str]:
    """Up to ``k`` proper prefixes of ``text`` that end at sentence ends, evenly spread."""
    cuts = [m.start() for m in _SENTENCE_END.finditer(text) if 0 < m.start() < len(text.rstrip())]
    if not cuts or k <= 0:
        return []
    m = min(k, len(cuts))
    picks = sorted({cuts[round(i * (len(cuts) - 1) / max(1, m - 1))] for i in range(m)})
    return [text[:c].strip() for c in picks]


def _prompt_groups(rows: list[dict]) -> np.ndarray:
    keys = [json.dumps(r["prompt"], sort_keys=True) for r in rows]
    return np.unique(keys, return_inverse=True)[1].reshape(-1)


def label_spread(rows: list[dict], dim: str) -> dict:
    """How the labels of one dimension vary between prompts (the spread of the prompts' mean
    labels) and within them (the mean spread of one prompt's replies): a policy steers only
    within a prompt, so the within-prompt part is what its control can use."""
    g = _prompt_groups(rows)
    y = np.array([r["rewards"][dim] for r in rows], dtype=float)
    size = np.bincount(g).astype(float)
    means = np.bincount(g, weights=y) / size
    within = y - means[g]
    total = float(np.var(y))
    return {"between_prompt_std": float(np.sqrt(np.average((means - y.mean()) ** 2, weights=size))),
            "within_prompt_std": float(np.sqrt(np.mean(within ** 2))),
            "within_share_of_variance": float(np.mean(within ** 2) / total) if total > 0 else None,
            "replies_per_prompt": float(size.mean())}


def _nearest(groups: np.ndarray, feats: np.ndarray, draws: int, rng: Any
             ) -> tuple[np.ndarray, np.ndarray]:
    """Per group, ``draws`` targets drawn uniformly and independently per column, and for each
    the index of the group's row whose ``feats`` are nearest them: (targets, indices)."""
    t_all, idx_all = [], []
    for k in range(int(groups.max()) + 1):
        members = np.flatnonzero(groups == k)
        t = rng.random((draws, feats.shape[1]))
        idx_all.append(members[((feats[members][None] - t[:, None]) ** 2).sum(-1).argmin(1)])
        t_all.append(t)
    return np.concatenate(t_all), np.concatenate(idx_all)


def _r(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson's r, or None where either side is constant."""
    return float(np.corrcoef(x, y)[0, 1]) if np.ptp(x) > 0 and np.ptp(y) > 0 else None


def imitation_bound(rows: list[dict], dims: list[str], draws: int = 20, seed: int = 0) -> dict:
    """The r a policy that imitates its training data could reach: for each training prompt and
    targets drawn uniformly and independently per dimension, the prompt's labelled reply whose
    labels are nearest the targets; r of target against that reply's label, per dimension
    (in-sample, so an upper estimate for these replies; 'imitation_r')."""
    labels = np.array([[r["rewards"][d] for d in dims] for r in rows], dtype=float)
    t, idx = _nearest(_prompt_groups(rows), labels, draws, np.random.default_rng(seed))
    return {d: {"imitation_r": _r(t[:, j], labels[idx, j])} for j, d in enumerate(dims)}


def judged_bounds(rows: list[dict], judged: list[dict], dims: list[str], draws: int = 20,
                  seed: int = 0) -> dict:
    """What the labels allow under the judge (the held-out test RMs), per dimension, on the
    labelled replies ``rows`` with their judged rewards ``judged`` (one dict per row):

    - ``label_vs_judge_r``: r of label and judged reward over the replies, and
      ``label_vs_judge_r_within``: the same within prompts (each minus its prompt's mean), the
      part a policy can steer;
    - ``imitation_r`` / ``imitation_r_judged``: a perfect imitator of the data (the reply with
      the nearest labels, as :func:`imitation_bound`), r of target against the chosen reply's
      label / judged reward;
    - ``opener_r`` / ``opener_r_judged``: a policy that only picks the opener (per prompt, the
      opener whose replies' mean labels are nearest the targets), r of target against those
      replies' mean label / mean judged reward, over the replies that carry their opener (the
      steered samples).

    All in-sample, on the training prompts: upper estimates of what these replies allow."""
    g = _prompt_groups(rows)
    labels = np.array([[r["rewards"][d] for d in dims] for r in rows], dtype=float)
    judge = np.array([[j[d] for d in dims] for j in judged], dtype=float)
    out: dict[str, dict] = {}
    for j, d in enumerate(dims):
        within = [x - (np.bincount(g, weights=x) / np.bincount(g))[g] for x in (labels[:, j],
                                                                                 judge[:, j])]
        out[d] = {"label_vs_judge_r": _r(labels[:, j], judge[:, j]),
                  "label_vs_judge_r_within": _r(*within)}
    t, idx = _nearest(g, labels, draws, np.random.default_rng(seed))
    for j, d in enumerate(dims):
        out[d].update(imitation_r=_r(t[:, j], labels[idx, j]),
                      imitation_r_judged=_r(t[:, j], judge[idx, j]))
    steered = np.array([r.get("prefill") is not None for r in rows])
    if steered.any():  # the steered replies only: the pairs' replies have no opener to pick
        sub = [r for r, k in zip(rows, steered) if k]
        g, labels, judge = _prompt_groups(sub), labels[steered], judge[steered]
        opener = np.unique([r["prefill"] for r in sub], return_inverse=True)[1].reshape(-1)
        _, first, units = np.unique(np.stack([g, opener], 1), axis=0, return_index=True,
                                    return_inverse=True)
        units, size = units.reshape(-1), np.bincount(units.reshape(-1)).astype(float)
        unit_labels, unit_judge = (np.stack([np.bincount(units, weights=x[:, k]) / size
                                             for k in range(len(dims))], 1)
                                   for x in (labels, judge))
        t, idx = _nearest(g[first], unit_labels, draws, np.random.default_rng(seed))
        for j, d in enumerate(dims):
            out[d].update(opener_r=_r(t[:, j], unit_labels[idx, j]),
                          opener_r_judged=_r(t[:, j], unit_judge[idx, j]))
    return out


@dataclass
class JudgeLabelsConfig:
    """Score the labelled replies with the held-out test RMs: what the labels allow under the
    judge (``metrics.json: labels_judged``). The judge's scores are written beside the labels,
    never into them: no policy trains on them."""

    labels: str
    """The labelled set (label/train.jsonl)."""
    judges: dict[str, str] = field(default_factory=dict)
    """Dimension -> the held-out test scorer."""
    run: str | None = None
    """The run directory (the judged scores go to RUN/label/judged.jsonl)."""
    seed: int = 0


#: The labelled replies' rewards under the held-out test RMs, row by row with label/train.jsonl.
JUDGED_LABELS = "label/judged.jsonl"


def run_judge_labels(cfg: JudgeLabelsConfig) -> dict:
    rows = read_rows(cfg.labels, {"prompt": messages_error, "response": str,
                                  **{f"rewards.{d}": float for d in cfg.judges}},
                     what="labelled replies", optional={"prefill": str})
    judged: list[dict] = [{} for _ in rows]
    for dim, spec in cfg.judges.items():
        scores = scorer_for(spec).score([r["prompt"] for r in rows], [r["response"] for r in rows])
        for j, v in zip(judged, scores):
            j[dim] = round(float(v), 4)
    out = in_run(cfg.run, None, JUDGED_LABELS)
    write_jsonl(out, ({"id": r.get("id"), "judged": j} for r, j in zip(rows, judged)))
    stats = judged_bounds(rows, judged, list(cfg.judges), seed=cfg.seed)
    update_metrics(cfg.run, labels_judged=stats)
    return {"n": len(rows), "out": str(out), "labels_judged": stats}


@recorded("label")
def run_label(cfg: LabelConfig) -> dict:
    from .models import load_tokenizer
    from .policy.tokenise import render_completion

    if not cfg.scorers:
        raise ValueError("label needs at least one scorer (dimension -> RM folder or synthetic:...)")
    if cfg.keep not in get_args(Keep):
        raise ValueError(f"keep must be one of {get_args(Keep)}, got {cfg.keep!r}")
    if cfg.keep == "extremes" and cfg.prefixes:
        raise ValueError("keep='extremes' picks the best and worst of the whole replies; "
                         "prefixes would compete with them: use prefixes=0")
    rows: list[dict] = []  # every input is checked before the tokenizer loads
    for path in cfg.pairs:
        for p in read_rows(path, {"id": (str, int), "prompt": messages_error, "chosen": str,
                                  "rejected": str}, what="preference pairs"):
            for source in ("chosen", "rejected"):
                rows.append({"id": f"{p['id']}:{source}", "pair_id": p["id"], "prompt": p["prompt"],
                             "response": p[source], "source": source})
    for path in cfg.samples:
        for i, s in enumerate(read_rows(path, {"prompt": messages_error, "response": str},
                                        what="policy samples",
                                        optional={"prefill": str})):
            # A steered sample (generate --prefills) keeps the prefill its reply was started with.
            rows.append({"id": f"{s.get('id', i)}:sample{i}", "pair_id": s.get("id"),
                         "prompt": s["prompt"], "response": s["response"],
                         "source": "policy-steered" if s.get("prefill") else "policy",
                         **({"prefill": s["prefill"]} if s.get("prefill") else {})})
    tok = load_tokenizer(cfg.policy)
    # Leave room for the end-of-turn marker the chat template adds, so SFT that cuts the
    # completion at the same max_completion_tokens never cuts the end-of-turn token of a clipped
    # reply (an SFT with a shorter cut, as the demo's sft.max_completion_tokens, trains a prefix).
    suffix = render_completion(tok, [{"role": "user", "content": "x"}], "")
    budget = cfg.max_completion_tokens - len(tok(suffix, add_special_tokens=False)["input_ids"])
    for r in rows:
        r["response"] = clip_response(tok, r["response"], budget)
    rows = [r for r in rows if r["response"]]
    if not rows:
        raise DataError("every response is empty once clipped: nothing to label",
                        file=", ".join(cfg.pairs + cfg.samples), code="empty")
    rows += [{**r, "id": f"{r['id']}:prefix{j}", "response": p, "source": f"{r['source']}-prefix"}
             for r in list(rows) for j, p in enumerate(sentence_prefixes(r["response"], cfg.prefixes))]
    prompts = [r["prompt"] for r in rows]
    responses = [r["response"] for r in rows]
    for dim, spec in cfg.scorers.items():
        scores = scorer_for(spec).score(prompts, responses)
        for r, s in zip(rows, scores):
            r.setdefault("rewards", {})[dim] = round(float(s), 4)
    n_scored = len(rows)
    if cfg.keep == "extremes":
        rows = keep_extremes(rows, list(cfg.scorers))
    stats = {}  # of the rewards the policy will be conditioned on (the rows written)
    for dim in cfg.scorers:
        scores = np.array([r["rewards"][dim] for r in rows])
        stats[dim] = {"mean": float(np.mean(scores)), "std": float(np.std(scores)),
                      "quantiles": [float(q) for q in np.quantile(scores, [0, .1, .25, .5, .75, .9, 1])],
                      "frac_below_0.1": float(np.mean(scores < 0.1)),
                      "frac_above_0.9": float(np.mean(scores > 0.9)),
                      **label_spread(rows, dim)}
    for dim, bound in imitation_bound(rows, list(cfg.scorers)).items():
        stats[dim].update(bound)
    out = in_run(cfg.run, cfg.out, LABELS)
    write_jsonl(out, rows)
    update_metrics(cfg.run, labels=stats)
    return {"n": len(rows), "n_scored": n_scored, "out": str(out), "labels": stats}
