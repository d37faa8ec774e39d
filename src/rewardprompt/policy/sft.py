"""Supervised fine-tuning of the policy on labelled dialogues (completion-only loss).

One stage for both the reward-conditioned policy (``conditioned=True``: the reward block from the
labels is put in every prompt) and the unconditioned baseline (same data, same steps, no block).
transformers' Trainer runs the loop: checkpoints, resume, progress bars and ``--report-to``.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments, set_seed

from ..device import pick_device
from ..runs import atomic_write_json, publish_dir, read_jsonl
from ..template import RewardTemplate
from ..models import load_policy, load_tokenizer
from .meta import read_policy_meta, write_policy_meta
from .tokenise import PadCollator, tokenise_example


@dataclass
class SFTConfig:
    """Knobs of one fine-tuning run; the run records exactly these."""

    data: str = "runs/demo/label/train.jsonl"  # rows: prompt, response, rewards
    out: str = "runs/demo/sft/conditioned"
    model: str = "smollm2-135m-instruct"       # shipped default, a Hub id or a folder
    conditioned: bool = True                   # False: the unconditioned-SFT baseline
    template: dict = field(default_factory=dict)  # RewardTemplate fields; {} = defaults
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    trainable_top_layers: int = 0              # full FT only: train just the top k blocks (0 = all)
    lr: float = 1e-3
    epochs: float = 1.0
    max_steps: int = -1                        # > 0 overrides epochs
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_prompt_tokens: int = 192
    max_completion_tokens: int = 64
    save_steps: int = 50
    seed: int = 0
    report_to: str = "none"                    # "tensorboard", "wandb", ...
    bf16_cpu: bool = False                     # bf16 autocast on CPU (faster here, less exact)


class LabelledDataset(Dataset):
    def __init__(self, rows: list[dict], tokenizer, template: RewardTemplate, conditioned: bool,
                 max_prompt_tokens: int, max_completion_tokens: int) -> None:
        self.examples = [
            tokenise_example(tokenizer, r["prompt"], r["response"], template=template,
                             targets={d: r["rewards"][d] for d in template.dimensions}
                             if conditioned else None,
                             max_prompt_tokens=max_prompt_tokens,
                             max_completion_tokens=max_completion_tokens)
            for r in rows]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]


def last_checkpoint(out: Path) -> str | None:
    ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    # A checkpoint is complete once Trainer wrote its trainer_state.json (written last).
    ckpts = [c for c in ckpts if (c / "trainer_state.json").exists()]
    return str(ckpts[-1]) if ckpts else None


def steps_for(n_examples: int, cfg: SFTConfig) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    return math.ceil(math.ceil(n_examples / (cfg.batch_size * cfg.grad_accum)) * cfg.epochs)


def run_sft(cfg: SFTConfig) -> dict:
    """Fine-tune and save the policy to ``cfg.out/final``; resume from the last checkpoint."""
    out = Path(cfg.out)
    final = out / "final"
    if (final / "sft_metrics.json").exists():
        from ..runs import read_json, to_jsonable

        saved = read_policy_meta(str(final)).get("config")
        if saved is not None and saved != to_jsonable(cfg):
            raise ValueError(f"{final} was fine-tuned with another config; use another --out or "
                             "delete it to train again")
        return read_json(final / "sft_metrics.json")
    set_seed(cfg.seed)
    template = RewardTemplate.from_dict(cfg.template)
    tokenizer = load_tokenizer(cfg.model, padding_side="right")
    new_tokens = template.extra_tokens() if cfg.conditioned else []
    if new_tokens:
        tokenizer.add_tokens(new_tokens, special_tokens=True)
    rows = read_jsonl(cfg.data)
    ds = LabelledDataset(rows, tokenizer, template, cfg.conditioned, cfg.max_prompt_tokens,
                         cfg.max_completion_tokens)
    device = pick_device()
    model = load_policy(cfg.model, device=torch.device("cpu"), dtype=torch.float32)
    if new_tokens:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        peft_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules="all-linear", task_type="CAUSAL_LM",
                              trainable_token_indices=(
                                  tokenizer.convert_tokens_to_ids(new_tokens) if new_tokens else None))
        model = get_peft_model(model, peft_cfg)
    elif cfg.trainable_top_layers > 0:
        layers = model.model.layers
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in layers[-cfg.trainable_top_layers:]:
            for p in layer.parameters():
                p.requires_grad_(True)
        for p in model.model.norm.parameters():
            p.requires_grad_(True)
        if new_tokens:  # the reward tokens' fresh embeddings must learn, whatever is frozen
            model.get_input_embeddings().weight.requires_grad_(True)
    n_steps = steps_for(len(ds), cfg)
    use_cuda = device.type == "cuda"
    args = TrainingArguments(
        output_dir=str(out), max_steps=n_steps, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr,
        lr_scheduler_type="cosine", warmup_steps=max(1, int(cfg.warmup_ratio * n_steps)),
        weight_decay=cfg.weight_decay, logging_steps=max(1, min(10, n_steps // 10)),
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2,
        seed=cfg.seed, data_seed=cfg.seed, report_to=cfg.report_to, use_cpu=not use_cuda,
        bf16=use_cuda or cfg.bf16_cpu, dataloader_num_workers=0, remove_unused_columns=False,
        disable_tqdm=False, save_only_model=False)
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      data_collator=PadCollator(tokenizer.pad_token_id, "right"))
    resume = last_checkpoint(out)
    if resume:
        print(f"[rewardprompt] resuming SFT from {resume}", flush=True)
    result = trainer.train(resume_from_checkpoint=resume)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics = {"steps": n_steps, "examples": len(ds), "train_loss": result.training_loss,
               "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
               "train_runtime_s": result.metrics.get("train_runtime"), "conditioned": cfg.conditioned,
               "lora": cfg.lora, "tokens_seen": sum(len(e["input_ids"]) for e in ds.examples)
               * n_steps * cfg.batch_size * cfg.grad_accum // max(1, len(ds))}
    tmp = out / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model = trainer.model
    if cfg.lora:
        model = model.merge_and_unload()
    model.save_pretrained(tmp)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(tmp)
    atomic_write_json(tmp / "sft_metrics.json", metrics)
    # What the model was trained to read, so that sampling shows it the same block.
    write_policy_meta(tmp, {"config": cfg, "template": template.to_dict(),
                                          "conditioned": cfg.conditioned,
                                          "max_prompt_tokens": cfg.max_prompt_tokens,
                                          "max_completion_tokens": cfg.max_completion_tokens})
    publish_dir(tmp, final)
    # The final model is complete; the optimizer states in the checkpoints are no longer needed.
    for c in out.glob("checkpoint-*"):
        shutil.rmtree(c, ignore_errors=True)
    return metrics
