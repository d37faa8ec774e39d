"""Local sampling with transformers: batched, left-padded, KV-cached, seeded per batch."""
from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from ..models import load_policy, load_tokenizer
from ..chat import split_prefill
from ..policy.tokenise import render_prompt
from .base import Completion, Message, SamplingConfig


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The ids that end a reply: every ``model.generation_config.eos_token_id`` (an int, a list
    or None) and the tokenizer's end-of-sequence id, deduplicated in that order. Chat models
    often end a turn on their own token (Llama 3's ``<|eot_id|>``), listed only in the
    generation config, while the tokenizer's eos is the end of the document."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = []
    elif isinstance(ids, int) or (isinstance(ids, torch.Tensor) and ids.ndim == 0):
        ids = [ids]
    ids = [*ids, tokenizer.eos_token_id]
    return list(dict.fromkeys(int(t) for t in ids if t is not None))


class LocalBackend:
    def __init__(self, model: str) -> None:
        self.tokenizer = load_tokenizer(model, padding_side="left")
        self.model = load_policy(model).eval()
        self.device = next(self.model.parameters()).device
        self.eos_ids = stop_token_ids(self.model, self.tokenizer)

    @torch.inference_mode()
    def generate(self, prompts: list[list[Message]], cfg: SamplingConfig) -> list[Completion]:
        prompt_ids = self.tokenizer([render_prompt(self.tokenizer, p) for p in prompts],
                             add_special_tokens=False)["input_ids"]
        # Batches of similar length waste less compute on padding; results go back in order.
        order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        out: list[Completion | None] = [None] * len(prompt_ids)
        bar = tqdm(total=len(prompt_ids), desc="sampling", unit="seq")
        for b, start in enumerate(range(0, len(order), cfg.batch_size)):
            idx = order[start:start + cfg.batch_size]
            enc = self.tokenizer.pad({"input_ids": [prompt_ids[i] for i in idx]},
                                     return_tensors="pt").to(self.device)
            # Seed per batch: the same prompts and config give the same samples on a rerun.
            torch.manual_seed(cfg.seed * 100003 + b)
            sample = cfg.temperature > 0
            gen = self.model.generate(
                **enc, max_new_tokens=cfg.max_new_tokens, do_sample=sample,
                temperature=cfg.temperature if sample else None,
                top_p=cfg.top_p if sample else None, top_k=0 if sample else None,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos_ids or None,
                use_cache=True)
            new = gen[:, enc["input_ids"].shape[1]:]
            for row, i in enumerate(idx):
                ids = new[row].tolist()
                finished = any(t in self.eos_ids for t in ids)
                if finished:
                    ids = ids[:min(ids.index(t) for t in self.eos_ids if t in ids)]
                # A prefilled reply (a trailing assistant message) starts with its prefill.
                text = split_prefill(prompts[i])[1] + self.tokenizer.decode(
                    ids, skip_special_tokens=True)
                out[i] = Completion(text=text.strip(), n_tokens=len(ids), finished=finished)
            bar.update(len(idx))
        bar.close()
        return out  # type: ignore[return-value]
