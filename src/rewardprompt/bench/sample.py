"""``rewardprompt bench sample``: tokens per second of the sampler against plain ``generate``.

Three sides sample the same prompts with the same model object (weights, device, dtype), the same
``max_new_tokens`` and the same sampling settings (temperature, top_p, no top-k, the same stop
tokens), one after the other in one process, the order alternating between repeats (medians):

* ``rewardprompt``: ``LocalBackend.generate``, what every stage samples through: prompts sorted by
  length into batches, left-padded, KV-cached, seeded per batch;
* ``generate_b1``: ``model.generate`` on one prompt at a time;
* ``generate_batched``: ``model.generate`` on batches of ``batch_size`` in the prompts' own order
  (no sorting by length), left-padded.

Each side counts the tokens it generated for each row up to that row's end: its stop token
included when it stopped, else ``max_new_tokens``. Padding after a finished row is not counted:
it is the waste that batching by length is meant to reduce.
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

from ..models import DEFAULT_POLICY
from .machine import BENCH_FILE, PeakMemory, write_section

SIDES = ("rewardprompt", "generate_b1", "generate_batched")


@dataclass
class BenchSampleConfig:
    """``rewardprompt bench sample``: sampling tokens per second, ours against model.generate."""

    out: str = BENCH_FILE
    """The bench file; its ``sample`` section is replaced, the others stay."""
    model: str = DEFAULT_POLICY
    """The policy: a shipped name, a Hub id or a folder."""
    data: str = "hh-helpful"
    """Preference pairs whose prompts are sampled."""
    prompts: int = 32
    """Prompts per run (distinct dialogues, in the data's order)."""
    max_new_tokens: int = 32
    """New tokens at most per prompt, on every side."""
    batch_size: int = 16
    """Prompts per batch (ours, and the batched generate)."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy), on every side."""
    top_p: float = 1.0
    """Nucleus sampling, on every side."""
    max_prompt_tokens: int = 192
    """Prompt budget (the oldest turns go first), as generate shortens prompts."""
    repeats: int = 3
    """Runs per side (the median is reported; the order alternates)."""
    threads: int | None = None
    """torch intra-op threads (None: torch's default)."""
    seed: int = 0
    """Sampling seed, on every side."""


def _prompts(cfg: BenchSampleConfig, tokenizer: Any) -> list[list[dict]]:
    """The first ``prompts`` distinct dialogues of the data, shortened to the prompt budget."""
    import json

    from ..data import load_preferences
    from ..policy.tokenise import fit_prompt
    from ..template import RewardTemplate

    seen, out = set(), []
    for p in load_preferences(cfg.data, skip_bad=True):
        key = json.dumps(p.prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(fit_prompt(tokenizer, p.prompt, RewardTemplate(), None, cfg.max_prompt_tokens))
        if len(out) == cfg.prompts:
            return out
    raise ValueError(f"bench sample: data {cfg.data!r} has {len(out)} distinct prompts, fewer "
                     f"than prompts={cfg.prompts}")


def _row_tokens(ids: list[int], stops: list[int]) -> int:
    """Tokens generated up to the row's end: through its first stop token, else all of them."""
    ends = [ids.index(t) for t in stops if t in ids]
    return min(ends) + 1 if ends else len(ids)


def _generate_kwargs(backend: Any, cfg: BenchSampleConfig) -> dict[str, Any]:
    """The sampling settings ``LocalBackend`` passes to generate, for the plain sides."""
    sample = cfg.temperature > 0
    return {"max_new_tokens": cfg.max_new_tokens, "do_sample": sample,
            "temperature": cfg.temperature if sample else None,
            "top_p": cfg.top_p if sample else None, "top_k": 0 if sample else None,
            "pad_token_id": backend.tokenizer.pad_token_id,
            "eos_token_id": backend.eos_ids or None, "use_cache": True}


def _plain(backend: Any, prompts: list[list[dict]], cfg: BenchSampleConfig, batch: int) -> int:
    """``model.generate`` over the prompts in their order, ``batch`` at a time; tokens generated."""
    import torch

    from ..policy.tokenise import render_prompt

    tok = backend.tokenizer
    texts = [render_prompt(tok, p) for p in prompts]
    kwargs = _generate_kwargs(backend, cfg)
    torch.manual_seed(cfg.seed)
    n = 0
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            enc = tok(texts[start:start + batch], add_special_tokens=False, padding=True,
                      return_tensors="pt").to(backend.device)
            out = backend.model.generate(**enc, **kwargs)
            for row in out[:, enc["input_ids"].shape[1]:].tolist():
                n += _row_tokens(row, backend.eos_ids)
    return n


def _ours(backend: Any, prompts: list[list[dict]], cfg: BenchSampleConfig) -> int:
    from ..backends.base import SamplingConfig

    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              top_p=cfg.top_p, batch_size=cfg.batch_size, seed=cfg.seed)
    # n_tokens leaves the stop token out; the other sides count it, so it is added back here.
    return sum(c.n_tokens + c.finished for c in backend.generate(prompts, sampling))


def bench_sample(cfg: BenchSampleConfig) -> dict[str, Any]:
    """Time the three sides ``repeats`` times on the same prompts; write the ``sample`` section."""
    import torch

    from ..backends.local import LocalBackend

    if cfg.repeats < 1 or cfg.prompts < 1 or cfg.batch_size < 1 or cfg.max_new_tokens < 1:
        raise ValueError("bench sample: repeats, prompts, batch_size and max_new_tokens must be "
                         "at least 1")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    backend = LocalBackend(cfg.model)
    prompts = _prompts(cfg, backend.tokenizer)
    timed = {"rewardprompt": lambda: _ours(backend, prompts, cfg),
             "generate_b1": lambda: _plain(backend, prompts, cfg, 1),
             "generate_batched": lambda: _plain(backend, prompts, cfg, cfg.batch_size)}
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    for r in range(cfg.repeats):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            with PeakMemory(backend.device) as mem:
                t0 = time.perf_counter()
                tokens = timed[side]()
                seconds = time.perf_counter() - t0
            runs[side].append({"tokens": tokens, "seconds": seconds,
                               "tokens_per_second": tokens / seconds,
                               "peak_memory_mib": mem.mib, "memory": mem.method})
            gc.collect()
            print(f"[rewardprompt] bench sample: {side} run {r + 1}/{cfg.repeats}: "
                  f"{tokens / seconds:.1f} tokens/s", flush=True)
    med = {s: statistics.median(x["tokens_per_second"] for x in v) for s, v in runs.items()}
    ratio = lambda a, b: a / b if b else math.inf  # noqa: E731
    section = {
        "benchmark": "sample", "config": cfg, "model": cfg.model, "device": str(backend.device),
        "dtype": str(next(backend.model.parameters()).dtype).removeprefix("torch."),
        "median_tokens_per_second": med,
        "ratio_vs_generate_b1": ratio(med["rewardprompt"], med["generate_b1"]),
        "ratio_vs_generate_batched": ratio(med["rewardprompt"], med["generate_batched"]),
        "peak_memory_mib": {s: statistics.median(x["peak_memory_mib"] for x in v)
                            for s, v in runs.items()},
        "runs": runs}
    written = write_section(cfg.out, "sample", section)
    print(f"[rewardprompt] bench sample: rewardprompt {med['rewardprompt']:.1f} tokens/s, "
          f"{section['ratio_vs_generate_b1']:.2f}x generate at batch 1, "
          f"{section['ratio_vs_generate_batched']:.2f}x batched generate; written to {cfg.out}",
          flush=True)
    return written
