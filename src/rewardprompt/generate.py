"""The generate stage: sample responses to held-out prompts with target rewards in the prompt."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends import SamplingConfig, get_backend
from .runs import read_jsonl, write_jsonl
from .template import RewardTemplate, Target


@dataclass
class GenerateConfig:
    prompts: str = "runs/demo/data/eval_prompts.jsonl"  # rows: id, prompt (message list)
    model: str = "runs/demo/sft/conditioned/final"
    out: str = "runs/demo/generate/conditioned.jsonl"
    label: str = "conditioned"          # the model's name in the outputs
    # None: as the policy was fine-tuned (its rewardprompt.json), else block on, default template.
    conditioned: bool | None = None     # False: no reward block (baselines); targets still recorded
    template: dict | None = None
    targets: list[str] = field(default_factory=list)  # e.g. ["0.1", "0.9", ">= 0.6"]; [] = draw
    samples_per_prompt: int = 4
    # Steering: every sample (each target of each prompt) is taken once per text here, the reply
    # started by it (prefilled, then continued by the policy; "" is the policy's own start). The
    # replies begin with their prefill; n_tokens counts the generated tokens only. For widening
    # what the policy's own samples cover before labelling.
    prefills: list[str] = field(default_factory=list)
    max_prompt_tokens: int = 192
    backend: str = "local"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


def draw_targets(n: int, dimensions: tuple[str, ...], seed: int) -> list[dict[str, float]]:
    """``n`` target vectors, uniform on [0, 1] and independent per dimension.

    Stratified (one draw in each of n equal slices, shuffled per dimension) so that even a small
    evaluation covers the whole range evenly.
    """
    rng = np.random.default_rng(seed)
    cols = {d: (rng.permutation(n) + rng.random(n)) / n for d in dimensions}
    return [{d: round(float(cols[d][i]), 4) for d in dimensions} for i in range(n)]


def run_generate(cfg: GenerateConfig) -> dict:
    from .models import load_tokenizer
    from .chat import with_prefill
    from .policy.tokenise import fit_prompt
    from .policy.meta import read_policy_meta

    meta = read_policy_meta(cfg.model)
    for key in ("template", "conditioned"):
        given = getattr(cfg, key)
        trained = meta.get(key)
        if key == "template" and given is not None and trained is not None:
            given = RewardTemplate.from_dict(given).to_dict()
        if given is not None and trained is not None and given != trained:
            raise ValueError(f"{cfg.model} was fine-tuned with {key}={trained}, not {given}; "
                             "sampling it with another block would measure a prompt it never saw")
    template = RewardTemplate.from_dict(cfg.template if cfg.template is not None
                                        else meta.get("template", {}))
    conditioned = cfg.conditioned if cfg.conditioned is not None else meta.get("conditioned", True)
    rows = read_jsonl(cfg.prompts)
    jobs = []
    if cfg.targets:
        given = [Target.parse(t) for t in cfg.targets]
        rng = np.random.default_rng(cfg.sampling.seed)
        for r in rows:
            # Every prompt gets every given target in each dimension, paired independently
            # across dimensions (a fresh permutation each), so one dimension's r never measures
            # control over another.
            perms = {d: (np.arange(len(given)) if i == 0 else rng.permutation(len(given)))
                     for i, d in enumerate(template.dimensions)}
            jobs += [(r, {d: given[perms[d][k]] for d in template.dimensions})
                     for k in range(len(given))]
    else:
        drawn = draw_targets(len(rows) * cfg.samples_per_prompt, template.dimensions,
                             cfg.sampling.seed)
        for i, r in enumerate(rows):
            jobs += [(r, {d: Target(v) for d, v in t.items()})
                     for t in drawn[i * cfg.samples_per_prompt:(i + 1) * cfg.samples_per_prompt]]
    prefills = cfg.prefills or [""]
    jobs = [(r, t, p) for r, t in jobs for p in prefills]
    backend = get_backend(cfg.model, cfg.backend)
    tok = load_tokenizer(cfg.model)  # fit_prompt counts tokens the way the policy sees them
    prompts = [fit_prompt(tok, with_prefill(r["prompt"], p), template,
                          t if conditioned else None, cfg.max_prompt_tokens)
               for r, t, p in jobs]
    completions = backend.generate(prompts, cfg.sampling)
    out_rows = [{"id": r["id"], "model": cfg.label, "prompt": r["prompt"],
                 # What the model was shown: rounded, or the centre of its quantile bin.
                 "targets": {d: template.quantise(t[d].value) for d in template.dimensions},
                 "target_ops": {d: t[d].op for d in template.dimensions},
                 "conditioned": conditioned,
                 "response": template.strip_reply_block(c.text, t if conditioned else None),
                 "n_tokens": c.n_tokens,
                 "finished": c.finished, **({"prefill": p} if cfg.prefills else {})}
                for (r, t, p), c in zip(jobs, completions)]
    write_jsonl(cfg.out, out_rows)
    return {"n": len(out_rows), "out": str(Path(cfg.out)),
            "mean_tokens": float(np.mean([c.n_tokens for c in completions])) if completions else 0.0}
