"""The ``probe search`` stage: choose among the policy's own samples by a probe's estimate.

The Q-probe idea: if a probe on the policy's residual stream estimates the reward, choosing the
samples it rates highest should gain reward, at the price of one forward pass of the policy per
candidate instead of a reward model's. Methods, at equal n:

* ``random``: a uniformly random candidate among n (its expected judge reward, the mean over
  the n, is reported: the same value without the draw's noise);
* ``best_of_n_probe`` / ``best_of_n_rm``: n whole replies, the one the probe / the RM rates
  highest (the same n candidates for every best-of-n method and for random, so the
  comparisons are paired);
* ``stepwise_probe`` / ``stepwise_rm``: the reply grows by ``chunk_tokens`` at a time; each
  step samples n continuations and keeps the one rated highest (a partial reply is rated as if
  it ended there: the template's end-of-turn is added).

A ``judge`` scorer (default: the selecting RM; a held-out one is the honest choice) gives the
reported reward. Cost is counted in forward passes of one sequence through a model: a prompt's
prefill is one, each generated token one (KV-cached decoding), each scoring of a candidate one
(by the policy for the probe, by the RM for the RM). The reward gained per pass is the gain over
random divided by the method's passes per prompt.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..chat import Message
from ..runs import atomic_write_json, recorded, update_metrics_entry, write_jsonl
from ..stats import bootstrap_mean_ci

METHODS = ("random", "best_of_n_probe", "best_of_n_rm", "stepwise_probe", "stepwise_rm")


@dataclass
class ProbeSearchConfig:
    """Best-of-n and step-wise selection by a probe, by an RM and at random, at equal n."""

    probe: str
    """A probe folder (probe train's OUT/METHOD) of a reward probe at position last or mean."""
    prompts: str
    """JSONL rows with id and prompt (data split's *_prompts.jsonl), or a preference source
    (shipped name, file) whose split side gives the prompts."""
    scorer: str
    """The reward model that selects for the _rm methods (a scorer spec)."""
    judge: str | None = None
    """The scorer whose reward is reported; None: the selecting scorer (a held-out RM is the
    honest judge)."""
    policy: str | None = None
    """The policy that samples; None: the probe's model (the Q-probe setting)."""
    out: str | None = None
    """Folder for search.json and the chosen replies (default: RUN/probes/search)."""
    run: str | None = None
    """A run directory: the stage records itself and its summary there."""
    split: str = "test"
    """The hash-split side the prompts come from, when prompts is a preference source."""
    test_fraction: float = 0.2
    """The hash split's test share (as collect's)."""
    dev_fraction: float = 0.1
    """The hash split's dev share (as collect's)."""
    n_prompts: int = 16
    """Prompts searched (the first in hash order)."""
    n: int = 4
    """Candidates per choice."""
    chunk_tokens: int = 16
    """Tokens per step of the step-wise methods."""
    max_new_tokens: int = 64
    """New tokens at most per reply."""
    max_prompt_tokens: int = 192
    """Prompt budget in tokens (older turns go first)."""
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    """Which of random, best_of_n_probe, best_of_n_rm, stepwise_probe, stepwise_rm to run."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    batch_size: int = 16
    """Sequences per sampling and scoring batch."""
    n_boot: int = 1000
    """Bootstrap resamples (over prompts) for every CI."""
    seed: int = 0
    """Seeds the sampling of every step and the bootstrap."""


def read_prompts(cfg: ProbeSearchConfig) -> list[tuple[str, list[Message]]]:
    """``(id, prompt)`` pairs: a prompts file as it is, or a preference source's split side in
    hash order, at most ``n_prompts``."""
    from ..data.preference import assign_split, read_preferences, split_point
    from ..runs import iter_jsonl, messages_error, read_rows

    path = Path(cfg.prompts)
    if path.is_file():
        first = next((row for _, row in iter_jsonl(path)), {})
        if "chosen" not in first:
            rows = read_rows(path, {"id": (str, int), "prompt": messages_error}, what="prompts")
            return [(str(r["id"]), r["prompt"]) for r in rows][:cfg.n_prompts]
    pairs, _ = read_preferences(cfg.prompts, skip_bad=True)
    side = [p for p in pairs if assign_split(p, cfg.test_fraction, dev_fraction=cfg.dev_fraction)
            == cfg.split]
    seen, out = set(), []
    for p in sorted(side, key=lambda p: (split_point(p), p.id)):
        key = json.dumps(p.prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append((p.id, p.prompt))
    if not out:
        raise ValueError(f"{cfg.prompts}: no prompts on the {cfg.split} side")
    return out[:cfg.n_prompts]


class _Selectors:
    """The probe and the scorers, each counting the passes it makes."""

    def __init__(self, cfg: ProbeSearchConfig, backend: Any) -> None:
        from ..rewards.scorer import load_scorer
        from .capture import n_blocks
        from .probe import Probe

        self.probe, meta = Probe.load(cfg.probe)
        if self.probe.objective == "classify":
            raise ValueError(f"{cfg.probe} is a classify probe; search needs a reward probe")
        if self.probe.position not in ("last", "mean"):
            raise ValueError(f"{cfg.probe} reads position {self.probe.position!r}; search rates "
                             "whole or partial replies, so it needs a probe at last or mean")
        self.tok = backend.tokenizer
        reader = meta["model"]
        if reader == (cfg.policy or reader):
            self.model = backend.model  # the Q-probe setting: the policy reads its own samples
        else:
            from ..models import load_policy

            self.model = load_policy(reader).eval()
        from .capture import layer_index

        self.layer = layer_index(self.probe.layer, n_blocks(self.model))
        self.max_prompt_tokens = cfg.max_prompt_tokens
        self.max_completion_tokens = int(meta.get("max_completion_tokens") or cfg.max_new_tokens)
        self.batch_size = cfg.batch_size
        self.scorer = load_scorer(cfg.scorer)
        self.judge = self.scorer if cfg.judge in (None, cfg.scorer) else load_scorer(cfg.judge)
        self.passes = {"probe": 0, "rm": 0, "judge": 0}

    def rate(self, kind: str, prompts: list[list[Message]], texts: list[str]) -> np.ndarray:
        """Probe estimates, RM rewards or judge rewards of (prompt, reply) pairs."""
        if not texts:
            return np.empty(0)
        self.passes[kind] += len(texts)
        if kind == "rm":
            return np.asarray(self.scorer.score(prompts, texts), dtype=float)
        if kind == "judge":
            return np.asarray(self.judge.score(prompts, texts), dtype=float)
        from .capture import capture, encode

        enc = [encode(self.tok, p, t, template=None, targets=None,
                      max_prompt_tokens=self.max_prompt_tokens,
                      max_completion_tokens=self.max_completion_tokens)
               for p, t in zip(prompts, texts)]
        got = capture(self.model, enc, [self.layer], [self.probe.position],
                      batch_size=self.batch_size, pad_id=self.tok.pad_token_id)
        return self.probe.scores(got.acts[self.layer][:, 0].numpy())


def search(cfg: ProbeSearchConfig) -> dict[str, Any]:
    """Run the methods on the prompts; write the chosen replies and the summary."""
    from ..backends.base import SamplingConfig
    from ..backends.local import LocalBackend
    from ..policy.tokenise import fit_prompt, render_prompt
    from ..template import RewardTemplate
    from .probe import Probe

    unknown = sorted(set(cfg.methods) - set(METHODS))
    if unknown or not cfg.methods:
        raise ValueError(f"methods must be among {', '.join(METHODS)}, got {cfg.methods}")
    if cfg.n < 1 or cfg.chunk_tokens < 1 or cfg.max_new_tokens < 1:
        raise ValueError("n, chunk_tokens and max_new_tokens must be >= 1")
    out = _out(cfg)
    _, meta = Probe.load(cfg.probe)
    backend = LocalBackend(cfg.policy or meta["model"])
    sel = _Selectors(cfg, backend)
    tok = backend.tokenizer
    prompts = read_prompts(cfg)
    fitted = [fit_prompt(tok, p, RewardTemplate(), None, cfg.max_prompt_tokens) for _, p in prompts]
    prompt_ids = tok([render_prompt(tok, p) for p in fitted], add_special_tokens=False)["input_ids"]
    n_prompt_tokens = float(np.mean([len(x) for x in prompt_ids]))

    def sampling(max_new: int, seed: int) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=max_new, temperature=cfg.temperature, top_p=cfg.top_p,
                              batch_size=cfg.batch_size, seed=seed)

    def decode(ids: list[int], finished: bool) -> str:
        return tok.decode(ids[:-1] if finished else ids, skip_special_tokens=True).strip()

    P, n = len(prompts), cfg.n
    chosen: dict[str, list[str]] = {}
    passes: dict[str, float] = {}
    best_of = [m for m in cfg.methods if m == "random" or m.startswith("best_of_n")]
    judged: dict[str, np.ndarray] = {}
    row_reward: dict[str, np.ndarray] = {}  # the judge's reward of each written reply
    if best_of:
        sampled = backend.sample([ids for ids in prompt_ids for _ in range(n)],
                                 sampling(cfg.max_new_tokens, cfg.seed), progress=False)
        texts = [decode(s.ids, s.finished) for s in sampled]
        cand_prompts = [p for p in fitted for _ in range(n)]
        gen_passes = sum(1 + len(s.ids) for s in sampled) / P
        judge = sel.rate("judge", cand_prompts, texts).reshape(P, n)
        for m in best_of:
            if m == "random":
                judged[m] = judge.mean(1)
                chosen[m] = [texts[i * n] for i in range(P)]  # a uniform draw: the first sample
                row_reward[m] = judge[:, 0]
                passes[m] = gen_passes
                continue
            kind = m.rsplit("_", 1)[1]
            rated = sel.rate(kind, cand_prompts, texts).reshape(P, n)
            pick = rated.argmax(1)
            judged[m] = judge[np.arange(P), pick]
            chosen[m] = [texts[i * n + k] for i, k in enumerate(pick)]
            passes[m] = gen_passes + n
        judged["best_of_n_judge"] = judge.max(1)  # the oracle: what perfect selection reaches
    for m in [m for m in cfg.methods if m.startswith("stepwise")]:
        kind = m.rsplit("_", 1)[1]
        so_far: list[list[int]] = [[] for _ in range(P)]
        done = [False] * P
        count = 0.0
        for step in range(math.ceil(cfg.max_new_tokens / cfg.chunk_tokens)):
            active = [i for i in range(P) if not done[i]]
            if not active:
                break
            budget = min(cfg.chunk_tokens, cfg.max_new_tokens - step * cfg.chunk_tokens)
            # Each step's candidates share a seed across selectors, so they start alike.
            got = backend.sample([prompt_ids[i] + so_far[i] for i in active for _ in range(n)],
                                 sampling(budget, cfg.seed + 1000 * (step + 1)), progress=False)
            count += sum(1 + len(s.ids) for s in got) + len(got)
            ids = [so_far[i] + s.ids for i, s in zip([i for i in active for _ in range(n)], got)]
            texts = [decode(x, s.finished) for x, s in zip(ids, got)]
            rated = sel.rate(kind, [fitted[i] for i in active for _ in range(n)], texts)
            for a, i in enumerate(active):
                k = int(np.argmax(rated[a * n:(a + 1) * n]))
                s = got[a * n + k]
                so_far[i] = ids[a * n + k]
                if s.finished or len(so_far[i]) >= cfg.max_new_tokens:
                    done[i] = True
                    if s.finished:
                        so_far[i] = so_far[i][:-1]  # the stop token ends it; not part of the text
        chosen[m] = [tok.decode(x, skip_special_tokens=True).strip() for x in so_far]
        judged[m] = sel.rate("judge", fitted, chosen[m])
        passes[m] = count / P
    result = _summary(cfg, prompts, judged, passes, n_prompt_tokens)
    write_jsonl(out / "search.jsonl", ({"id": pid, "prompt": p, "method": m, "response": chosen[m][i],
                                        "judge_reward": float(row_reward.get(m, judged[m])[i])}
                                       for m in chosen for i, (pid, p) in enumerate(prompts)))
    atomic_write_json(out / "search.json", result)
    update_metrics_entry(cfg.run, "probes", "search", result)
    return {"out": str(out / "search.json"),
            "methods": {m: {k: d[k] for k in ("judge_reward", "gain_vs_random", "passes_per_prompt")
                            if k in d} for m, d in result["methods"].items()}}


def _summary(cfg: ProbeSearchConfig, prompts: list, judged: dict[str, np.ndarray],
             passes: dict[str, float], n_prompt_tokens: float) -> dict[str, Any]:
    """Per method: the judge's mean reward (CI over prompts), the gain over random (paired by
    prompt), the passes per prompt and the gain per 1,000 passes."""
    groups = np.arange(len(prompts))
    methods: dict[str, Any] = {}
    for m, y in judged.items():
        lo, hi = bootstrap_mean_ci(y, cfg.n_boot, cfg.seed, groups=groups)
        d: dict[str, Any] = {"judge_reward": float(y.mean()), "ci_low": lo, "ci_high": hi}
        if m in passes:
            d["passes_per_prompt"] = round(passes[m], 1)
        if "random" in judged and m != "random":
            diff = y - judged["random"]
            dlo, dhi = bootstrap_mean_ci(diff, cfg.n_boot, cfg.seed, groups=groups)
            d.update(gain_vs_random=float(diff.mean()), gain_ci_low=dlo, gain_ci_high=dhi)
            if m in passes:
                d["gain_per_1k_passes"] = 1000 * float(diff.mean()) / passes[m]
        if m == "best_of_n_judge":
            d["note"] = "oracle: the candidate the judge itself rates highest (an upper bound)"
        methods[m] = d
    return {"probe": cfg.probe, "scorer": cfg.scorer, "judge": cfg.judge or cfg.scorer,
            "policy": cfg.policy, "n": cfg.n, "chunk_tokens": cfg.chunk_tokens,
            "max_new_tokens": cfg.max_new_tokens, "n_prompts": len(prompts),
            "mean_prompt_tokens": round(n_prompt_tokens, 1), "methods": methods}


def _out(cfg: ProbeSearchConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    if cfg.run is None:
        raise ValueError("give --out, or --run DIR to write probes/search inside a run")
    return Path(cfg.run) / "probes" / "search"


@recorded("probe search")
def _run_search(cfg: ProbeSearchConfig) -> dict[str, Any]:
    return search(cfg)


def run_search(cfg: ProbeSearchConfig) -> dict[str, Any]:
    """The CLI stage: ``rewardprompt probe search --probe P --prompts hh-harmless --scorer RM``."""
    if cfg.out is None and cfg.run is not None:
        cfg = replace(cfg, out=str(_out(cfg)))
    return _run_search(cfg)
