"""Local sampling with transformers: batched, left-padded, KV-cached, seeded per batch."""
from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class Sampled:
    """The tokens sampled after one prompt: the stop token is the last id when ``finished``."""

    ids: list[int]
    finished: bool
    logprobs: list[float] | None = None
    """Log-probability of each id (when asked for)."""
    top: list[list[tuple[int, float]]] | None = None
    """The most likely ``(id, logprob)`` pairs at each position, most likely first."""


class LocalBackend:
    def __init__(self, model: str) -> None:
        self.tokenizer = load_tokenizer(model, padding_side="left")
        self.model = load_policy(model).eval()
        self.device = next(self.model.parameters()).device
        self.eos_ids = stop_token_ids(self.model, self.tokenizer)

    @torch.inference_mode()
    def sample(self, prompt_ids: list[list[int]], cfg: SamplingConfig, *,
               top_logprobs: int | None = None, progress: bool = True) -> list[Sampled]:
        """The tokens sampled after each prompt (token ids, not padded), in order.

        Prompts of similar length are batched together; each batch is seeded from ``cfg.seed``
        and its index, so the same prompts and config give the same samples. With
        ``top_logprobs`` (0 or more) each sampled token comes with its log-probability and the
        ``top_logprobs`` most likely tokens, from the model's own distribution (before
        temperature and top_p, as vLLM's default ``raw_logprobs``).
        """
        # Batches of similar length waste less compute on padding; results go back in order.
        order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        out: list[Sampled | None] = [None] * len(prompt_ids)
        bar = tqdm(total=len(prompt_ids), desc="sampling", unit="seq", disable=not progress)
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
                use_cache=True, return_dict_in_generate=True,
                output_logits=top_logprobs is not None)
            new = gen.sequences[:, enc["input_ids"].shape[1]:]
            logprobs = (torch.stack(gen.logits, dim=1).float().log_softmax(-1)
                        if top_logprobs is not None else None)
            for row, i in enumerate(idx):
                ids = new[row].tolist()
                stops = [ids.index(t) for t in self.eos_ids if t in ids]
                finished = bool(stops)
                if finished:  # the stop token is kept: it was sampled, and it has a log-prob
                    ids = ids[:min(stops) + 1]
                s = Sampled(ids=ids, finished=finished)
                if logprobs is not None:
                    lp = logprobs[row, :len(ids)]
                    s.logprobs = lp.gather(-1, torch.tensor(ids, device=lp.device)[:, None]
                                           )[:, 0].tolist()
                    if top_logprobs:
                        top = lp.topk(min(top_logprobs, lp.shape[-1]), dim=-1)
                        s.top = [list(zip(i_.tolist(), v.tolist()))
                                 for i_, v in zip(top.indices, top.values)]
                    else:
                        s.top = [[] for _ in ids]
                out[i] = s
            bar.update(len(idx))
        bar.close()
        return out  # type: ignore[return-value]

    def generate(self, prompts: list[list[Message]], cfg: SamplingConfig) -> list[Completion]:
        prompt_ids = self.tokenizer([render_prompt(self.tokenizer, p) for p in prompts],
                                    add_special_tokens=False)["input_ids"]
        out = []
        for prompt, s in zip(prompts, self.sample(prompt_ids, cfg)):
            ids = s.ids[:-1] if s.finished else s.ids
            # A prefilled reply (a trailing assistant message) starts with its prefill.
            text = split_prefill(prompt)[1] + self.tokenizer.decode(ids, skip_special_tokens=True)
            out.append(Completion(text=text.strip(), n_tokens=len(ids), finished=s.finished))
        return out
