"""The generate stage: sample responses to held-out prompts with target rewards in the prompt."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends import BACKENDS, SamplingConfig, get_backend
from .backends.openai_chat import ChatAPIConfig
from .runs import (generations_file, in_run, messages_error, read_rows, recorded,
                   update_metrics_entry, write_jsonl)
from .template import RewardTemplate, Target

#: Prompts of an unconditioned base model carry no block; the template only shortens them.
_NO_BLOCK = RewardTemplate()


@dataclass
class GenerateConfig:
    """Sample a policy on prompts, with target rewards in the reward block."""

    prompts: str
    """JSONL of prompts: rows with id and prompt (a message list)."""
    model: str
    """The policy: a folder fine-tuned by sft (its template is read from it), a Hub id or a
    shipped name."""
    out: str | None = None
    """The generations JSONL to write (default: RUN/generate/LABEL.jsonl)."""
    run: str | None = None
    """A run directory: the stage records itself in its manifest and its summary in metrics.json."""
    label: str = "conditioned"
    """The model's name in the outputs (and in evaluate's tables)."""
    conditioned: bool | None = None
    """None: as the policy was fine-tuned. False: no reward block; the targets are still drawn
    and recorded when the template has dimensions, so a baseline meets the same targets."""
    template: dict | None = None
    """RewardTemplate fields; None: the policy's own (from its rewardprompt.json)."""
    targets: list[str] = field(default_factory=list)
    """Given targets, e.g. 0.1 0.9 '>= 0.6' (every prompt gets each); empty: drawn uniformly."""
    samples_per_prompt: int = 4
    """Samples per prompt when the targets are drawn."""
    prefills: list[str] = field(default_factory=list)
    """Steering: each sample is taken once per text here, the reply started by it and continued
    by the policy ('' is its own start); n_tokens counts only the generated tokens."""
    max_prompt_tokens: int | None = None
    """Prompt budget; None: the policy's own (from its rewardprompt.json), else 192."""
    system: str | None = None
    """A system message put before each dialogue, with {targets} (e.g. "helpful 0.42, harmless
    0.75") and {dimensions} filled in: the prompted-target baseline, which tells a model the
    targets in words instead of training it on the block."""
    opener_rule: dict[str, dict[str, float]] = field(default_factory=dict)
    """Opener -> its mean training label per dimension: each reply is started with the opener
    whose mean labels are nearest its targets (Euclidean), and continued by the policy (the
    opener-rule baseline). Empty: off."""
    target_range: tuple[float, float] = (0.0, 1.0)
    """Drawn targets are uniform on this interval (e.g. 0.7 1 beside '>= 0.7' targets)."""
    backend: str = "local"
    """Sampling backend: local (transformers in this process) or openai-chat (an
    OpenAI-compatible server: vLLM, llama.cpp, rewardprompt serve, a hosted API; see api)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How to sample."""
    tokenizer: str | None = None
    """The tokenizer that counts the prompt budget (fit_prompt). None: the model itself when it
    is a folder with a tokenizer or a shipped name (always, for the local backend); else the
    policy folder's recorded tokenizer or base model; else the default policy's, which for a
    hosted model of another family is only an approximation of its count."""
    api: ChatAPIConfig = field(default_factory=ChatAPIConfig)
    """The server, key, concurrency, retries, log-probs and cache of the openai-chat backend."""


def draw_targets(n: int, dimensions: tuple[str, ...], seed: int,
                 lo: float = 0.0, hi: float = 1.0) -> list[dict[str, float]]:
    """``n`` target vectors, uniform on [lo, hi] and independent per dimension.

    Stratified (one draw in each of n equal slices, shuffled per dimension) so that even a small
    evaluation covers the whole range evenly.
    """
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"target_range must satisfy 0 <= lo < hi <= 1, got {lo}, {hi}")
    rng = np.random.default_rng(seed)
    cols = {d: lo + (hi - lo) * (rng.permutation(n) + rng.random(n)) / n for d in dimensions}
    return [{d: round(float(cols[d][i]), 4) for d in dimensions} for i in range(n)]


def targets_in_words(targets: dict[str, Target]) -> str:
    """``helpful 0.42, harmless at least 0.7``: the targets as the prompted baseline states them."""
    words = {"=": "", ">=": "at least ", "<=": "at most "}
    return ", ".join(f"{d} {words[t.op]}{t.value:.2f}" for d, t in targets.items())


def nearest_opener(rule: dict[str, dict[str, float]], targets: dict[str, Target]) -> str:
    """The opener whose mean training labels are nearest the targets (the first on a tie)."""
    return min(rule, key=lambda o: sum((rule[o][d] - t.value) ** 2 for d, t in targets.items()))


def prompt_tokenizer(cfg: GenerateConfig, meta: dict) -> tuple[str, bool]:
    """``(tokenizer, exact)``: what fit_prompt counts the prompt budget with (see
    ``GenerateConfig.tokenizer``), and whether it is the policy's own tokenizer."""
    from .models import _GGUF, DEFAULT_POLICY

    if cfg.tokenizer:
        return cfg.tokenizer, True
    folder = Path(cfg.model)
    if cfg.backend == "local" or cfg.model in _GGUF or (folder / "tokenizer_config.json").is_file() \
            or (folder / "tokenizer.json").is_file():
        return cfg.model, True
    hosted = meta.get("hosted") or {}
    recorded = [hosted.get("tokenizer"), meta.get("tokenizer"), hosted.get("base"), meta.get("base"),
                (meta.get("config") or {}).get("model")]
    named = next((t for t in recorded if t), None)
    # A fine-tuned model keeps its base's tokenizer; anything else is a guess.
    return (named, True) if named else (DEFAULT_POLICY, False)


@recorded("generate")
def run_generate(cfg: GenerateConfig) -> dict:
    from .models import load_tokenizer
    from .chat import with_prefill
    from .policy.tokenise import fit_prompt
    from .policy.meta import read_policy_meta

    if cfg.backend not in BACKENDS:
        raise ValueError(f"unknown backend {cfg.backend!r}; available: {', '.join(BACKENDS)}")
    meta = read_policy_meta(cfg.model)
    for key in ("template", "conditioned"):
        given = getattr(cfg, key)
        trained = meta.get(key)
        if key == "template" and given is not None and trained is not None:
            given = RewardTemplate.from_dict({"dimensions": trained["dimensions"], **given}).to_dict()
        if given is not None and trained is not None and given != trained:
            raise ValueError(f"{cfg.model} was fine-tuned with {key}={trained}, not {given}; "
                             "sampling it with another block would measure a prompt it never saw")
    if cfg.template is None and "template" not in meta:
        if cfg.conditioned:
            raise ValueError(f"{cfg.model} was not fine-tuned by rewardprompt (no "
                             "rewardprompt.json), so give the reward block: --template "
                             "dimensions helpful,harmless ...")
        template = None  # an unconditioned base model: no dimensions, so no targets
    else:
        template = RewardTemplate.from_dict(cfg.template if cfg.template is not None
                                            else meta["template"])
    conditioned = (cfg.conditioned if cfg.conditioned is not None
                   else meta.get("conditioned", template is not None))
    max_prompt_tokens = cfg.max_prompt_tokens or meta.get("max_prompt_tokens", 192)
    rows = read_rows(cfg.prompts, {"id": (str, int), "prompt": messages_error}, what="prompts")
    dims = template.dimensions if template is not None else ()
    jobs = []
    if template is None:
        jobs = [(r, {}) for r in rows for _ in range(cfg.samples_per_prompt)]
    elif cfg.targets:
        given = [Target.parse(t) for t in cfg.targets]
        rng = np.random.default_rng(cfg.sampling.seed)
        for r in rows:
            # Every prompt gets every given target in each dimension, paired independently
            # across dimensions (a fresh permutation each), so one dimension's r never measures
            # control over another.
            perms = {d: (np.arange(len(given)) if i == 0 else rng.permutation(len(given)))
                     for i, d in enumerate(dims)}
            jobs += [(r, {d: given[perms[d][k]] for d in dims})
                     for k in range(len(given))]
    else:
        drawn = draw_targets(len(rows) * cfg.samples_per_prompt, dims, cfg.sampling.seed,
                             *cfg.target_range)
        for i, r in enumerate(rows):
            jobs += [(r, {d: Target(v) for d, v in t.items()})
                     for t in drawn[i * cfg.samples_per_prompt:(i + 1) * cfg.samples_per_prompt]]
    if cfg.opener_rule and cfg.prefills:
        raise ValueError("give prefills (every opener for every sample) or opener_rule (the "
                         "nearest opener per sample), not both")
    if (cfg.opener_rule or cfg.system) and not dims:
        raise ValueError("opener_rule and system need targets: give the template's dimensions")
    if cfg.opener_rule:
        missing = sorted({d for m in cfg.opener_rule.values() for d in dims} - set().union(
            *(m.keys() for m in cfg.opener_rule.values())))
        if missing:
            raise ValueError(f"opener_rule lacks mean labels for {missing}")
        jobs = [(r, t, nearest_opener(cfg.opener_rule, t)) for r, t in jobs]
    else:
        jobs = [(r, t, p) for r, t in jobs for p in (cfg.prefills or [""])]

    def dialogue(r: dict, t: dict) -> list:
        if not cfg.system:
            return r["prompt"]
        shown = {d: Target(template.quantise(v.value), v.op) for d, v in t.items()}  # as recorded
        text = cfg.system.format(targets=targets_in_words(shown), dimensions=", ".join(dims))
        return [{"role": "system", "content": text}] + r["prompt"]

    out = in_run(cfg.run, cfg.out, generations_file(cfg.label))
    options = {}
    if cfg.backend == "openai-chat":
        # Beside the generations, but not *.jsonl: evaluate reads every RUN/generate/*.jsonl.
        options = {"api": cfg.api, "cache": cfg.api.cache or f"{out}.cache"}
    backend = get_backend(cfg.model, cfg.backend, **options)
    tok_name, exact = prompt_tokenizer(cfg, meta)
    if not exact:
        print(f"[rewardprompt] generate: counting prompt tokens with {tok_name}'s tokenizer, an "
              "approximation for this model (give --tokenizer)", flush=True)
    tok = load_tokenizer(tok_name)  # fit_prompt counts tokens the way the policy sees them
    prompts = [fit_prompt(tok, with_prefill(dialogue(r, t), p), template or _NO_BLOCK,
                          t if conditioned else None, max_prompt_tokens)
               for r, t, p in jobs]
    try:
        completions = backend.generate(prompts, cfg.sampling)
    finally:
        if hasattr(backend, "close"):  # a server's connections
            backend.close()
    out_rows = [{"id": r["id"], "model": cfg.label, "prompt": r["prompt"],
                 # What the model was shown: rounded, or the centre of its quantile bin.
                 "targets": {d: template.quantise(t[d].value) for d in dims},
                 "target_ops": {d: t[d].op for d in dims},
                 "conditioned": conditioned,
                 "response": (template or _NO_BLOCK).strip_reply_block(
                     c.text, t if conditioned else None),
                 "n_tokens": c.n_tokens,
                 "finished": c.finished, "seed": cfg.sampling.seed,
                 **({"prefill": p} if cfg.prefills or cfg.opener_rule else {}),
                 **({"target_range": list(cfg.target_range)}
                    if tuple(cfg.target_range) != (0.0, 1.0) else {}),
                 # What the model was sent (block, prefill, shortening) and its token log-probs:
                 # what the KL estimate (evaluation.kl) scores a reference model on.
                 **({"shown": shown, "logprobs": c.logprobs} if c.logprobs is not None else {})}
                for (r, t, p), shown, c in zip(jobs, prompts, completions)]
    write_jsonl(out, out_rows)
    summary = {"n": len(out_rows), "out": str(out),
               "mean_tokens": float(np.mean([c.n_tokens for c in completions])),
               "finished": float(np.mean([c.finished for c in completions])),
               "max_new_tokens": cfg.sampling.max_new_tokens}
    if any(c.usage for c in completions):
        from .cost import Usage

        # Every answer in the file, cached ones included: what these generations cost once.
        summary["cost"] = Usage(
            provider=getattr(backend, "provider", cfg.backend),
            model=getattr(backend, "model_id", cfg.model),
            prompt_tokens=sum(c.usage["prompt_tokens"] for c in completions if c.usage),
            completion_tokens=sum(c.usage["completion_tokens"] for c in completions if c.usage),
        ).to_dict()
    if getattr(backend, "stats", None):
        summary["api"] = backend.stats
    update_metrics_entry(cfg.run, "generate", Path(out).name.removesuffix(".jsonl"), summary)
    return summary
