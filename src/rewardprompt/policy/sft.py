"""Supervised fine-tuning of the policy on labelled dialogues (completion-only loss).

One stage for both the reward-conditioned policy (``conditioned=True``: the reward block from the
labels is put in every prompt) and the unconditioned baseline (same data, same steps, no block).
transformers' Trainer runs the loop: checkpoints, resume, progress bars and ``--report-to``.
The config a run was started with is kept beside its checkpoints: a checkpoint written under
another config is never continued (``overwrite`` starts again instead).
"""
from __future__ import annotations

import itertools
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..hosted.base import HostedConfig
from ..models import DEFAULT_POLICY
from ..runs import (LABELS, atomic_write_json, file_hash, in_run, policy_dir,
                    publish_dir, read_json, recorded, to_jsonable,
                    update_metrics_entry)
from .meta import read_policy_meta, write_policy_meta

#: The config a run of checkpoints was started with, beside them in ``out``.
SFT_CONFIG = "sft_config.json"
#: Fields that say where things live: a run that differs only in them is the same run (the
#: labels are compared by their hash instead of their path).
_LOCATION_FIELDS = ("data", "out", "run")


@dataclass
class SFTConfig:
    """Knobs of one fine-tuning run; the run records exactly these."""

    data: str | None = None
    """Labelled JSONL (prompt, response, rewards), as label writes it (default: RUN/label/train.jsonl)."""
    out: str | None = None
    """Folder for checkpoints and the final model (default: RUN/sft/conditioned or RUN/sft/uncond_sft)."""
    run: str | None = None
    """A run directory: the stage records itself in its manifest and its metrics in metrics.json."""
    model: str = DEFAULT_POLICY
    """The base policy: a shipped name, a Hub id or a folder."""
    conditioned: bool = True
    """False: the unconditioned-SFT baseline (the same data and steps, no reward block)."""
    template: dict = field(default_factory=dict)
    """RewardTemplate fields; the dimensions default to those of the labels."""
    lora: bool = True
    """Train a LoRA adapter (merged into the saved model) instead of every weight."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA inputs."""
    trainable_top_layers: int = 0
    """Full fine-tuning only: train just the top k blocks (0: all)."""
    lr: float = 1e-3
    """Peak learning rate (cosine schedule)."""
    epochs: float = 1.0
    """Passes over the data, when max_steps is not set."""
    max_steps: int = -1
    """Optimiser steps; > 0 overrides epochs."""
    batch_size: int = 8
    """Examples per device and step."""
    grad_accum: int = 1
    """Gradient-accumulation steps per optimiser step."""
    warmup_ratio: float = 0.05
    """Share of the steps spent warming the learning rate up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_prompt_tokens: int = 192
    """Prompt budget: the oldest turns go first, the reward block and a prefill are kept."""
    max_completion_tokens: int = 64
    """Train on the first k tokens of each reply (the end-of-turn token only if it fits)."""
    prompt_loss_weight: float = 0.0
    """Weight of the prompt's tokens (the reward block's included) in the loss, against 1 for a
    reply token; 0: completion-only."""
    targets: Literal["exact", "at_least"] = "exact"
    """What the block of a training example says: exact, its labels; at_least, hindsight
    satisficing targets, '>= t' per dimension with t drawn uniformly from [0, label] (seeded),
    so that the policy learns to meet thresholds rather than to hit values."""
    save_steps: int = 50
    """Checkpoint interval in steps (a killed run resumes from the last one)."""
    seed: int = 0
    """Seed of the data order and of the LoRA initialisation."""
    report_to: str = "none"
    """Trainer loggers: none, tensorboard, wandb, ..."""
    cpu_bf16: bool = True
    """bf16 autocast where the hardware computes bf16 natively (a GPU with bf16, a CPU with
    AVX512-BF16 or AMX); elsewhere fp32. False: always fp32."""
    overwrite: bool = False
    """Discard checkpoints and a final model written under another config instead of refusing."""
    backend: str = "local"
    """Where to train: local (this machine, transformers) or a hosted fine-tuning API (openai,
    together; see hosted)."""
    hosted: HostedConfig = field(default_factory=HostedConfig)
    """The hosted job (--backend openai|together): base model, method, hyper-parameters, polling."""


def _comparable(cfg: SFTConfig | dict, labels: str | None) -> dict:
    """What decides the training: the config less where things live, and the labels' hash."""
    d = {k: v for k, v in to_jsonable(cfg).items()
         if k not in _LOCATION_FIELDS + ("overwrite", "labels")}
    if d.get("backend", "local") == "local":  # folders from before hosted training lack these
        d.pop("backend", None)
        d.pop("hosted", None)
    return d | ({"labels": labels} if labels else {})


def _check_previous(cfg: SFTConfig, out: Path, labels: str) -> None:
    """Refuse to continue or reuse what ``out`` holds when it was made under another config or
    on other labels (``overwrite`` discards it instead)."""
    saved_path = out / SFT_CONFIG
    meta = read_policy_meta(out / "final")
    if saved_path.is_file():
        saved = read_json(saved_path)
    elif "config" in meta:
        saved = {**meta["config"], "labels": meta.get("labels")}
    else:
        return
    before = _comparable(saved, saved.get("labels"))
    now = _comparable(cfg, labels if saved.get("labels") else None)  # older folders: no hash
    if before == now:
        return
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if not cfg.overwrite:
        raise ValueError(f"{out} holds SFT checkpoints or a model made with another config "
                         f"(changed: {', '.join(changed)}); continuing would mix the two. Pass "
                         "--overwrite to start again, or use another --out")
    print(f"[rewardprompt] --overwrite: discarding {out} (changed: {', '.join(changed)})",
          flush=True)
    shutil.rmtree(out, ignore_errors=True)


def _last_complete_checkpoint(out: Path) -> str | None:
    """transformers' last checkpoint, once it is complete (its trainer_state.json is written
    last; a checkpoint a kill cut short is dropped)."""
    from transformers.trainer_utils import get_last_checkpoint

    while out.is_dir() and (ckpt := get_last_checkpoint(str(out))):
        if (Path(ckpt) / "trainer_state.json").exists():
            return ckpt
        shutil.rmtree(ckpt, ignore_errors=True)
    return None


def check_prompt_loss(cfg: SFTConfig) -> None:
    """``prompt_loss_weight`` where it is exact: local SFT, one batch per step, one process (the
    completion head divides by each micro-batch's own weights)."""
    w = cfg.prompt_loss_weight
    if w < 0:
        raise ValueError(f"prompt_loss_weight must be >= 0, got {w}")
    if w > 0 and cfg.backend != "local":
        raise ValueError("prompt_loss_weight is for local SFT; a hosted job's prompt loss is "
                         "--hosted.train-on-prompt (what each provider can express: README)")
    if w > 0 and (cfg.grad_accum > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        raise ValueError("prompt_loss_weight divides by each micro-batch's weights, which is exact "
                         "only for one batch per step on one process: use grad_accum 1, one device")


@recorded("sft")
def run_sft(cfg: SFTConfig) -> dict:
    """Fine-tune and save the policy to ``out/final``; resume from the last checkpoint.

    ``backend`` openai or together runs the job at that provider instead (``hosted.train``).
    """
    check_prompt_loss(cfg)
    if cfg.backend != "local":
        from ..hosted.train import train_hosted

        return train_hosted(cfg)
    from ..labelling import read_labelled

    data = in_run(cfg.run, cfg.data, LABELS)
    out = in_run(cfg.run, cfg.out, policy_dir("conditioned" if cfg.conditioned else "uncond_sft"))
    final = out / "final"
    labels = file_hash(data) if data.is_file() else None
    if labels:
        _check_previous(cfg, out, labels)
    if (final / "sft_metrics.json").exists():
        return read_json(final / "sft_metrics.json")
    rows, template = read_labelled(data, dict(cfg.template), cfg.conditioned)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / SFT_CONFIG, {**to_jsonable(cfg), "labels": labels})
    metrics = _train(cfg, rows, template, out, labels)
    update_metrics_entry(cfg.run, "sft", out.name, metrics)
    return metrics


def sft_examples(cfg: SFTConfig, rows: list[dict], template) -> tuple[Any, list[dict], list[str]]:
    """The tokenizer (right padding, the block's new tokens added), the tokenised and masked
    examples (``tokenise_example``, the one tokenise-and-mask function) and the new tokens."""
    from ..models import load_tokenizer
    from .tokenise import tokenise_example

    tokenizer = load_tokenizer(cfg.model, padding_side="right")
    new_tokens = template.extra_tokens() if cfg.conditioned else []
    if new_tokens:
        tokenizer.add_tokens(new_tokens, special_tokens=True)
    examples = [tokenise_example(tokenizer, r["prompt"], r["response"], template=template,
                                 targets=t,
                                 max_prompt_tokens=cfg.max_prompt_tokens,
                                 max_completion_tokens=cfg.max_completion_tokens,
                                 prompt_loss_weight=cfg.prompt_loss_weight)
                for r, t in zip(rows, training_targets(cfg, rows, template))]
    return tokenizer, examples, new_tokens


def training_targets(cfg: SFTConfig, rows: list[dict], template) -> list[Any]:
    """What each training example's block shows (``RewardTemplate.training_targets`` in the
    form ``cfg.targets``, seeded by ``cfg.seed``); None per row for an unconditioned policy."""
    if not cfg.conditioned:
        return [None] * len(rows)
    return template.training_targets(rows, cfg.targets, cfg.seed)


def sft_model(cfg: SFTConfig, tokenizer: Any, new_tokens: list[str], *,
              completion_head: bool = True) -> Any:
    """The base policy in fp32 on the CPU (the Trainer moves it), its embeddings grown by the new
    tokens, with the completion-only LM head (``completion_head``: the same loss without the
    prompt positions' logits), then LoRA or the frozen lower blocks."""
    import torch

    from ..models import load_policy
    from .completion_head import add_completion_head

    model = load_policy(cfg.model, device=torch.device("cpu"), dtype=torch.float32)
    if new_tokens:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    head = completion_head and add_completion_head(model)  # before PEFT, which calls through it
    if cfg.prompt_loss_weight > 0 and not head:  # only the completion head weighs the loss
        raise ValueError(f"prompt_loss_weight needs the completion head: off here, or {cfg.model}'s "
                         "LM head does more than a projection (soft-capped or scaled logits)")
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
    return model


#: Attention implementations with variable-length kernels: a padding-free batch (one row of
#: concatenated examples, positions restarting at 0) costs each example only its own length.
_VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


def padding_free_default(model: Any) -> bool:
    """Padding-free batches where attention has varlen kernels (flash attention on a GPU). With
    sdpa or eager attention (every CPU) the concatenated row is attended as one block-diagonal
    square, which costs more than the padding it saves once sequences grow, so batches are padded."""
    impl = str(getattr(model.config, "_attn_implementation", "") or "")
    return impl in _VARLEN_ATTENTION or impl.endswith("flash-attn2") or impl.endswith("flash-attn3")


def sft_collator(tokenizer: Any, padding_free: bool) -> Any:
    """Padded batches (labels padded with -100), or padding-free ones: the examples of a batch in
    one row with restarting position ids, the first label of each example -100 so that no
    example learns to predict the next one's first token (a prompt token, -100 anyway)."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    from .tokenise import IGNORE

    base = (DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)
            if padding_free else DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE))

    def collate(features: list[dict]) -> dict:
        """The base collator, and the prompt-loss weights laid out as its labels are: padded
        with 0 on the right, or concatenated into the one padding-free row."""
        import torch

        if "loss_weights" not in features[0]:
            return base(features)
        weights = [f["loss_weights"] for f in features]
        batch = base([{k: v for k, v in f.items() if k != "loss_weights"} for f in features])
        width = batch["labels"].shape[1]
        rows = ([list(itertools.chain.from_iterable(weights))] if padding_free
                else [w + [0.0] * (width - len(w)) for w in weights])
        batch["loss_weights"] = torch.tensor(rows, dtype=torch.float32)
        return batch

    return collate


def sft_trainer(cfg: SFTConfig, model: Any, tokenizer: Any, examples: list[dict], out: Path, *,
                bf16: bool, padding_free: bool | None = None, group_by_length: bool = False,
                **args: Any) -> Any:
    """transformers' Trainer as SFT runs it (the bench times this same object).

    ``padding_free`` None: ``padding_free_default(model)``. ``group_by_length`` batches examples
    of similar length (fewer pads, but other batches than the random order: the bench measures
    it, SFT keeps the random order). ``args`` override TrainingArguments (the bench turns
    checkpoints off).
    """
    import dataclasses

    from transformers import Trainer, TrainingArguments

    from ..device import pick_device

    if padding_free is None:
        padding_free = padding_free_default(model)
    # transformers >= 5.3 names the length-grouped sampler by a strategy; older ones by a flag.
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    grouping = ({} if not group_by_length else
                {"train_sampling_strategy": "group_by_length"}
                if "train_sampling_strategy" in names else {"group_by_length": True})
    settings = dict(
        output_dir=str(out), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, lr_scheduler_type="cosine", warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay, logging_steps=0.1, save_strategy="steps",
        save_steps=cfg.save_steps, save_total_limit=2, seed=cfg.seed, data_seed=cfg.seed,
        report_to=cfg.report_to, use_cpu=pick_device().type != "cuda", bf16=bf16,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=False,
        save_only_model=False)
    return Trainer(model=model, args=TrainingArguments(**(settings | grouping | args)),
                   train_dataset=examples, data_collator=sft_collator(tokenizer, padding_free))


def _weights_sharded(trainer: Any) -> bool:
    """Whether no process holds the whole model after training (FSDP, DeepSpeed ZeRO-3)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and getattr(plugin, "zero_stage", 0) == 3


def final_model(trainer: Any, cfg: SFTConfig, tokenizer: Any, new_tokens: list[str], staging: Path,
                sharded: bool | None = None) -> Any:
    """The trained model, whole, merged (LoRA) and with the class's own forward, on the main
    process (None on the others).

    With DDP or one process every rank holds the whole model. When the weights are sharded
    (``sharded`` None: asked of the trainer) every process takes part in ``trainer.save_model``
    (which gathers them) into ``staging``, and the main process loads them from there.
    """
    from .completion_head import remove_completion_head

    if sharded is None:
        sharded = _weights_sharded(trainer)
    if sharded:
        trainer.save_model(str(staging))
    if not trainer.is_world_process_zero():
        return None
    if sharded:
        import torch
        from transformers import AutoModelForCausalLM

        from ..models import load_policy

        if cfg.lora:
            from peft import PeftModel

            base = load_policy(cfg.model, device=torch.device("cpu"), dtype=torch.float32)
            if new_tokens:
                base.resize_token_embeddings(len(tokenizer), mean_resizing=True)
            model = PeftModel.from_pretrained(base, str(staging)).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(str(staging), dtype=torch.float32)
        shutil.rmtree(staging, ignore_errors=True)
        return model
    model = trainer.model
    if cfg.lora:
        model = model.merge_and_unload()
    remove_completion_head(model)
    return model


def _train(cfg: SFTConfig, rows: list[dict], template, out: Path, labels: str | None) -> dict:
    from transformers import set_seed

    from ..device import pick_device, use_bf16

    set_seed(cfg.seed)
    tokenizer, examples, new_tokens = sft_examples(cfg, rows, template)
    model = sft_model(cfg, tokenizer, new_tokens)
    bf16 = use_bf16(pick_device(), cpu_bf16=cfg.cpu_bf16)
    trainer = sft_trainer(cfg, model, tokenizer, examples, out, bf16=bf16)
    resume = _last_complete_checkpoint(out)
    if resume:
        print(f"[rewardprompt] resuming SFT from {resume}", flush=True)
    result = trainer.train(resume_from_checkpoint=resume)
    n_steps = trainer.state.max_steps
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics = {"steps": n_steps, "examples": len(examples), "train_loss": result.training_loss,
               "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
               "train_runtime_s": result.metrics.get("train_runtime"), "conditioned": cfg.conditioned,
               "lora": cfg.lora, "precision": "bf16" if bf16 else "fp32",
               "tokens_seen": sum(len(e["input_ids"]) for e in examples)
               * n_steps * cfg.batch_size * cfg.grad_accum // max(1, len(examples))}
    # Under `accelerate launch` every process gets here; only the main one writes the folder,
    # and the others wait for it, so that none returns before the model exists.
    model = final_model(trainer, cfg, tokenizer, new_tokens, out / "final.gathered")
    if model is not None:
        tmp = out / "final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.padding_side = "left"
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "sft_metrics.json", metrics)
        # What the model was trained to read, so that sampling shows it the same block.
        write_policy_meta(tmp, {"config": cfg, "labels": labels, "template": template.to_dict(),
                                "conditioned": cfg.conditioned,
                                "max_prompt_tokens": cfg.max_prompt_tokens,
                                "max_completion_tokens": cfg.max_completion_tokens})
        publish_dir(tmp, out / "final")
        # The final model is complete; the optimizer states in the checkpoints are no longer needed.
        for c in out.glob("checkpoint-*"):
            shutil.rmtree(c, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return metrics
