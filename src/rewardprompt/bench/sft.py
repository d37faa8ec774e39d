"""``rewardprompt bench sft``: tokens per second of this package's SFT against TRL's SFTTrainer.

Both sides train the same model (the base policy, its embeddings grown by the reward block's
tokens, the same LoRA adapter from the same seed, or every weight) on the same labelled replies
with the same batch size, steps, learning rate and schedule, loss on the completion tokens only,
one after the other in one process, the order alternating between repeats (the median of
``repeats`` runs is reported).

* Ours is exactly what ``rewardprompt sft`` runs: ``policy.sft.sft_examples`` (``tokenise_example``,
  the one tokenise-and-mask function), ``sft_model`` and ``sft_trainer`` (its collator, its
  completion-only LM head), checkpoints off.
* TRL gets the same examples as a prompt/completion dataset of text (the rendered prompt with its
  reward block, and the reply cut to ``max_completion_tokens``) with ``completion_only_loss=True``,
  and tokenises it itself (it appends an end-of-sequence token to replies that were cut, so its
  sequences can be one token longer). Its default gradient checkpointing is turned off
  (``trl_gradient_checkpointing``), since ours does not use it and it trades speed for memory.

Tokens are counted the same way on both sides, from the batches each training step received:
the non-pad tokens processed (the attention mask's ones, or a padding-free row's length), and
beside them the completion tokens the loss was taken on. Throughput is given over training alone
(the headline ``ratio_vs_trl``) and over setup + training. ``variants`` times ours again with one
change each, to measure what helps: ``full_logits`` (the model's own forward, logits at every
position), ``group_by_length`` (length-grouped batches), ``padding_free`` and ``padded`` (forced on
or off; by default padding-free only with varlen flash attention).
"""
from __future__ import annotations

import gc
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..models import DEFAULT_POLICY
from .machine import BENCH_FILE, PeakMemory, write_section

Variant = Literal["full_logits", "group_by_length", "padding_free", "padded"]
VARIANTS = ("full_logits", "group_by_length", "padding_free", "padded")


@dataclass
class BenchSFTConfig:
    """``rewardprompt bench sft``: SFT tokens per second, ours against TRL's SFTTrainer."""

    out: str = BENCH_FILE
    """The bench file; its ``sft`` section is replaced, the others stay."""
    model: str = DEFAULT_POLICY
    """The policy both sides train: a shipped name, a Hub id or a folder."""
    data: str = "hh-helpful"
    """Preference pairs whose prompts and chosen replies are the training examples."""
    examples: int = 64
    """Labelled replies (each with drawn rewards in its block)."""
    batch_size: int = 8
    """Examples per step, on both sides."""
    max_steps: int = 8
    """Optimiser steps per run, on both sides."""
    lr: float = 1e-3
    """Peak learning rate (cosine schedule, SFT's warm-up), on both sides."""
    max_prompt_tokens: int = 128
    """Prompt budget, reward block included."""
    max_completion_tokens: int = 64
    """Reply tokens trained on."""
    lora: bool = True
    """LoRA (SFT's default) or every weight, on both sides."""
    conditioned: bool = True
    """Put the reward block in the prompts (and its tokens in the vocabulary)."""
    repeats: int = 3
    """Runs per side (the median is reported; the order alternates)."""
    variants: list[Variant] = field(default_factory=list)
    """Ours again with one change each: full_logits, group_by_length, padding_free, padded."""
    trl_gradient_checkpointing: bool = False
    """TRL's SFTConfig turns gradient checkpointing on by default; False matches ours."""
    threads: int | None = None
    """torch intra-op threads (None: torch's default)."""
    cpu_bf16: bool = True
    """bf16 autocast where the hardware computes bf16 natively (both sides), else fp32."""
    seed: int = 0
    """Seed of the drawn rewards, the LoRA initialisation and the data order (both sides)."""


def _rows(cfg: BenchSFTConfig, dims: tuple[str, ...]) -> list[dict]:
    """Labelled replies: the pairs' prompts and chosen replies, rewards drawn uniformly."""
    import numpy as np

    from ..data import load_preferences

    pairs = [p for p in load_preferences(cfg.data, skip_bad=True) if p.chosen.strip()]
    if len(pairs) < cfg.examples:
        raise ValueError(f"bench sft: data {cfg.data!r} has {len(pairs)} pairs, fewer than "
                         f"examples={cfg.examples}")
    rng = np.random.default_rng(cfg.seed)
    return [{"prompt": p.prompt, "response": p.chosen,
             "rewards": {d: round(float(rng.random()), 2) for d in dims}}
            for p in pairs[:cfg.examples]]


def _sft_config(cfg: BenchSFTConfig, model: str):
    from ..policy.sft import SFTConfig

    return SFTConfig(model=model, conditioned=cfg.conditioned, lora=cfg.lora, lr=cfg.lr,
                     max_steps=cfg.max_steps, batch_size=cfg.batch_size,
                     max_prompt_tokens=cfg.max_prompt_tokens,
                     max_completion_tokens=cfg.max_completion_tokens, seed=cfg.seed,
                     cpu_bf16=cfg.cpu_bf16)


class _TokenCount:
    """Counts what each training step received (wraps ``trainer.training_step``), the same way
    for both trainers: non-pad tokens, and the completion tokens the loss is taken on."""

    def __init__(self, trainer: Any) -> None:
        self.tokens = self.completion_tokens = self.steps = 0
        step = trainer.training_step

        def counted(model: Any, inputs: dict, *args: Any, **kwargs: Any) -> Any:
            if "attention_mask" in inputs:
                self.tokens += int(inputs["attention_mask"].sum())
            else:  # a padding-free row: every position is a token
                self.tokens += int(inputs["input_ids"].numel())
            self.completion_tokens += int((inputs["labels"][:, 1:] != -100).sum())
            self.steps += 1
            return step(model, inputs, *args, **kwargs)

        trainer.training_step = counted


def _run(trainer: Any, setup_s: float) -> dict[str, Any]:
    """Train, timing it; the throughput and losses of the run."""
    count = _TokenCount(trainer)
    t0 = time.perf_counter()
    result = trainer.train()
    train_s = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"setup_s": setup_s, "train_s": train_s, "tokens": count.tokens,
            "completion_tokens": count.completion_tokens, "micro_steps": count.steps,
            "tokens_per_second": count.tokens / train_s,
            "tokens_per_second_with_setup": count.tokens / (setup_s + train_s),
            "train_loss": result.training_loss, "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None}


#: TrainingArguments both sides share in the bench: no checkpoints, a loss every step.
_QUIET = {"save_strategy": "no", "logging_steps": 1, "disable_tqdm": True, "report_to": "none"}


def _time_ours(cfg: BenchSFTConfig, model: str, rows: list[dict], template: Any, workdir: Path,
               variant: str | None) -> dict[str, Any]:
    from transformers import set_seed

    from ..device import pick_device, use_bf16
    from ..policy.sft import sft_examples, sft_model, sft_trainer

    sft = _sft_config(cfg, model)
    bf16 = use_bf16(pick_device(), cpu_bf16=cfg.cpu_bf16)
    t0 = time.perf_counter()
    set_seed(cfg.seed)
    tokenizer, examples, new_tokens = sft_examples(sft, rows, template)
    policy = sft_model(sft, tokenizer, new_tokens, completion_head=variant != "full_logits")
    padding_free = {"padding_free": True, "padded": False}.get(variant or "")
    trainer = sft_trainer(sft, policy, tokenizer, examples, workdir, bf16=bf16,
                          padding_free=padding_free, group_by_length=variant == "group_by_length",
                          **_QUIET)
    out = _run(trainer, time.perf_counter() - t0)
    return out | {"precision": "bf16" if bf16 else "fp32",
                  "padding_free": trainer.data_collator.__class__.__name__ != "DataCollatorForSeq2Seq"}


def _trl_rows(tokenizer: Any, examples: list[dict]) -> list[dict[str, str]]:
    """The masked examples as TRL's prompt/completion text: the prompt tokens (label -100, they
    lead each example) and the completion tokens, decoded."""
    rows = []
    for e in examples:
        n_prompt = next((i for i, y in enumerate(e["labels"]) if y != -100), len(e["labels"]))
        rows.append({"prompt": tokenizer.decode(e["input_ids"][:n_prompt]),
                     "completion": tokenizer.decode(e["input_ids"][n_prompt:])})
    return rows


def _time_trl(cfg: BenchSFTConfig, model: str, rows: list[dict], template: Any, workdir: Path,
              variant: str | None) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig as TRLConfig, SFTTrainer

    from ..device import pick_device, use_bf16
    from ..policy.sft import sft_examples, sft_model

    sft = _sft_config(cfg, model)
    bf16 = use_bf16(pick_device(), cpu_bf16=cfg.cpu_bf16)
    set_seed(cfg.seed)
    # The data a TRL user would bring: the same rendered prompts and cut replies, as text.
    tokenizer, examples, new_tokens = sft_examples(sft, rows, template)
    dataset = Dataset.from_list(_trl_rows(tokenizer, examples))
    t0 = time.perf_counter()
    set_seed(cfg.seed)
    policy = sft_model(sft, tokenizer, new_tokens, completion_head=False)  # TRL adds its own
    args = TRLConfig(
        output_dir=str(workdir), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, lr_scheduler_type="cosine", warmup_steps=sft.warmup_ratio,
        weight_decay=sft.weight_decay, seed=cfg.seed, data_seed=cfg.seed,
        use_cpu=pick_device().type != "cuda", bf16=bf16, completion_only_loss=True,
        # Room for the end-of-sequence token TRL appends to a cut reply: nothing is truncated.
        max_length=cfg.max_prompt_tokens + cfg.max_completion_tokens + 8,
        gradient_checkpointing=cfg.trl_gradient_checkpointing, dataloader_num_workers=0, **_QUIET)
    trainer = SFTTrainer(model=policy, args=args, train_dataset=dataset, processing_class=tokenizer)
    out = _run(trainer, time.perf_counter() - t0)
    return out | {"precision": "bf16" if bf16 else "fp32", "padding_free": False,
                  "gradient_checkpointing": cfg.trl_gradient_checkpointing}


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def bench_sft(cfg: BenchSFTConfig) -> dict[str, Any]:
    """Time both trainers (and ours' variants) ``repeats`` times; write the ``sft`` section."""
    import torch

    import trl  # noqa: F401 - imported before the first timed run, whichever side it is

    from ..models import resolve_policy
    from ..template import RewardTemplate

    bad = [v for v in cfg.variants if v not in VARIANTS]
    if bad:
        raise ValueError(f"bench sft: unknown variants {bad}; choose from {', '.join(VARIANTS)}")
    if cfg.repeats < 1 or cfg.max_steps < 1 or cfg.examples < cfg.batch_size:
        raise ValueError("bench sft: repeats and max_steps must be at least 1, and examples at "
                         "least batch_size")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = resolve_policy(cfg.model)  # a shipped model is converted once, before any timing
    template = RewardTemplate(position="reply", close_tag="", decimals=1)
    rows = _rows(cfg, template.dimensions)
    sides = ["rewardprompt", *(f"rewardprompt:{v}" for v in cfg.variants), "trl"]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory(prefix="rewardprompt-bench-sft-") as tmp:
        for r in range(cfg.repeats):
            # Alternate the order so that warm-up and drift do not favour one side.
            for side in sides if r % 2 == 0 else sides[::-1]:
                fn = _time_trl if side == "trl" else _time_ours
                variant = side.split(":", 1)[1] if ":" in side else None
                with PeakMemory() as mem:
                    run = fn(cfg, model, rows, template, Path(tmp) / f"{side}-{r}", variant)
                runs[side].append(run | {"peak_memory_mib": mem.mib, "memory": mem.method})
                gc.collect()
                print(f"[rewardprompt] bench sft: {side} run {r + 1}/{cfg.repeats}: "
                      f"{run['tokens_per_second']:.1f} tokens/s, loss {run['train_loss']:.4f}",
                      flush=True)
    med = {s: _median(v, "tokens_per_second") for s, v in runs.items()}
    med_setup = {s: _median(v, "tokens_per_second_with_setup") for s, v in runs.items()}
    ratio = lambda a, b: a / b if b else math.inf  # noqa: E731
    section = {
        "benchmark": "sft-train", "config": cfg, "model": model,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "precision": {s: v[0]["precision"] for s, v in runs.items()},
        "median_tokens_per_second": med,
        "ratio_vs_trl": ratio(med["rewardprompt"], med["trl"]),
        "median_tokens_per_second_with_setup": med_setup,
        "ratio_with_setup_vs_trl": ratio(med_setup["rewardprompt"], med_setup["trl"]),
        "variants_vs_trl": {v: ratio(med[f"rewardprompt:{v}"], med["trl"]) for v in cfg.variants},
        "peak_memory_mib": {s: _median(v, "peak_memory_mib") for s, v in runs.items()},
        "median_train_loss": {s: _median(v, "train_loss") for s, v in runs.items()},
        "runs": runs}
    written = write_section(cfg.out, "sft", section)
    print(f"[rewardprompt] bench sft: rewardprompt {med['rewardprompt']:.1f} vs TRL "
          f"{med['trl']:.1f} tokens/s, ratio {section['ratio_vs_trl']:.2f}; written to {cfg.out}",
          flush=True)
    return written
