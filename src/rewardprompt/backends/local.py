"""Local sampling with transformers: batched, left-padded, KV-cached, seeded per batch."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..models import load_policy, load_tokenizer
from ..chat import split_prefill
from ..policy.tokenise import render_prompt
from .base import Completion, Message, SamplingConfig


class LocalBackend:
    def __init__(self, model: str) -> None:
        self.tokenizer = load_tokenizer(model, padding_side="left")
        self.model = load_policy(model).eval()
        self.device = next(self.model.parameters()).device
        self.eos_ids = [self.tokenizer.eos_token_id]

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
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos_ids, use_cache=True)
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
