"""The decoder reward-model family: a causal LM with a scalar head.

The model is ``AutoModelForSequenceClassification`` with ``num_labels=1`` on a causal LM (by
default the shipped SmolLM2-135M-Instruct): a linear ``score`` head read at the last token of
the sequence, as in InstructGPT's and TRL's reward models. A (prompt, response) pair is the
dialogue in the tokenizer's chat template (the last user turn, or the whole dialogue with
``turns="all"``) followed by the response and the end-of-turn token, where the reward is read.
When it is too long, the prompt is cut from the left (its end, the assistant header, survives)
and the response keeps at least half the budget, cut at its end but still closed by the
end-of-turn token, so the head always reads the same kind of position.

The end-of-turn token is the first special token the chat template puts after an assistant
message's content (``end_of_turn_token``: ``<|im_end|>`` in SmolLM2, ``<|eot_id|>`` in Llama 3),
which need not be the tokenizer's end-of-sequence token; without a chat template it is the
end-of-sequence token. It is saved with the model; folders saved before it was recorded close
responses with end-of-sequence, as they were fitted.

Padding must not be the end-of-turn token: ``AutoModelForSequenceClassification`` reads the
score at the last token that is not padding, and SmolLM2 pads with ``<|im_end|>``, its
end-of-turn token, which would move the read one token to the left. ``pad_token_for`` picks a
distinct special token (``<|endoftext|>`` in SmolLM2) or adds one.

Two options make the family cheaper and, measured here, better as a frozen feature extractor
(the last layer of a small LM is specialised for next-token prediction, so a middle layer's
mean-pooled response states beat the last token as frozen features; see docs/results.md):

* ``layers=k`` keeps only the first k transformer blocks (then the final norm and the head), so
  the model is truncated, saved and run at k/L of the cost;
* ``pooling="mean"`` reads the mean of the response tokens' states (the response and its closing
  end-of-turn token) instead of the last token. This is a head on pooled features, not the
  ``AutoModelForSequenceClassification`` forward, so it is trained as a frozen-feature head;
  fine-tuning through RewardTrainer needs ``pooling="last"``.

A saved decoder reward model is a folder::

    model/              save_pretrained of the sequence-classification model and its tokenizer
    rm_config.json      "family": "decoder", base model and options
    normaliser.json     the empirical CDF that maps raw scores to [0, 1]
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, BatchEncoding

from ..device import pick_device
from ..runs import atomic_write_json
from .model import (KIND_SINGLE, RM_CONFIG, BaseRewardModel, Prompt, _read_options, check_vocab,
                    prompt_context)
from .normaliser import EmpiricalCDFNormaliser

MODEL_DIR = "model"
POOLINGS = ("last", "mean")
#: Padding candidates, in order, when the tokenizer pads with its end-of-sequence token.
PAD_CANDIDATES = ("<|endoftext|>", "<pad>", "<|pad|>")


#: Stands for an assistant reply when the chat template is rendered to find what closes it.
_REPLY_MARKER = "rewardprompt reply marker"


def pad_token_for(tokenizer: Any, end_of_turn: str | None = None) -> tuple[str, bool]:
    """A padding token distinct from end-of-sequence and from ``end_of_turn`` (the token the
    reward is read at), and whether it had to be added."""
    avoid = {tokenizer.eos_token, end_of_turn} - {None}
    if tokenizer.pad_token is not None and tokenizer.pad_token not in avoid:
        return tokenizer.pad_token, False
    vocab = tokenizer.get_vocab()
    for tok in (*PAD_CANDIDATES, tokenizer.unk_token):
        if tok and tok in vocab and tok not in avoid:
            return tok, False
    return "<|pad|>", True


def end_of_turn_token(tokenizer: Any) -> str | None:
    """The token that closes an assistant turn: the first special (or added) token that the
    chat template renders after an assistant message's content; the end-of-sequence token when
    there is no chat template, the template fails, or nothing special follows the content."""
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "Hello"},
                 {"role": "assistant", "content": _REPLY_MARKER}], tokenize=False)
        except Exception:  # templates raise freely (jinja errors, role checks): fall back
            text = ""
        if isinstance(text, str) and _REPLY_MARKER in text:
            tail = text[text.rindex(_REPLY_MARKER) + len(_REPLY_MARKER):]
            special = set(tokenizer.all_special_ids) | set(
                getattr(tokenizer, "added_tokens_decoder", {}))
            for t in tokenizer(tail, add_special_tokens=False)["input_ids"]:
                if t in special:
                    return tokenizer.convert_ids_to_tokens(t)
    return tokenizer.eos_token


def _messages(prompt: Prompt, turns: str) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if turns == "all":
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    return [{"role": "user", "content": prompt_context(prompt, "last")}]


class DecoderRewardModel(BaseRewardModel):
    """A causal LM with a linear scalar head, read at the closing end-of-turn token
    (``pooling="last"``, the sequence-classification head) or on the mean of the response
    tokens' states (``pooling="mean"``); implements ``Scorer``."""

    family = "decoder"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, base_model: str,
                 max_length: int = 256, turns: str = "last", pooling: str = "last",
                 normaliser: EmpiricalCDFNormaliser | None = None,
                 name: str = "reward-model", eot_token: str | None = None) -> None:
        """``eot_token`` closes every response (None: ``end_of_turn_token(tokenizer)``)."""
        super().__init__(base_model=base_model, max_length=max_length, turns=turns,
                         normaliser=normaliser, name=name)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        if max_length < 16:
            raise ValueError(f"max_length must be at least 16 tokens for a decoder reward model, "
                             f"got {max_length}")
        eot = eot_token or end_of_turn_token(tokenizer)
        if eot is None:
            raise ValueError(f"{base_model}: the tokenizer has no end-of-turn or end-of-sequence "
                             "token, which closes every response the decoder reward model reads")
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        pad, added = pad_token_for(tokenizer, eot)
        if added:
            tokenizer.add_special_tokens({"pad_token": pad})
            # Only grow: embedding matrices are often padded past the vocabulary already.
            if len(tokenizer) > model.get_input_embeddings().num_embeddings:
                model.resize_token_embeddings(len(tokenizer))
        tokenizer.pad_token = pad
        # What GenericForSequenceClassification and TRL read to find the last real token.
        model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
        check_vocab(tokenizer, model, base_model)
        self.eot_token = eot
        self.eot_id = int(tokenizer.convert_tokens_to_ids(eot))

    @property
    def head(self) -> torch.nn.Linear:  # type: ignore[override]
        return self.model.score

    # ------------------------------------------------------------ construction
    @classmethod
    def from_base(cls, name_or_path: str | Path | None = None, *, max_length: int = 256,
                  turns: str = "last", seed: int | None = None, layers: int = 0,
                  pooling: str = "last") -> DecoderRewardModel:
        """A fresh reward model on a pretrained causal LM (default: the shipped SmolLM2), cut to
        its first ``layers`` blocks when ``layers`` > 0."""
        from ..models import DEFAULT_POLICY, load_tokenizer, resolve_policy

        base = str(name_or_path) if name_or_path else DEFAULT_POLICY
        path = resolve_policy(base)
        if seed is not None:
            torch.manual_seed(seed)  # the score head's initialisation
        tokenizer = load_tokenizer(base, padding_side="right")
        from transformers.utils import logging as hf_logging

        # The score head is new by design: silence the load report that calls it "MISSING".
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1,
                                                                       dtype=torch.float32)
        finally:
            hf_logging.set_verbosity(verbosity)
        if layers:
            truncate_layers(model, layers)
        return cls(model, tokenizer, base_model=base, max_length=max_length, turns=turns,
                   pooling=pooling, name=Path(base).name or base).to(pick_device())

    def options(self) -> dict[str, Any]:
        return {"kind": KIND_SINGLE, "family": self.family, "base_model": self.base_model,
                "max_length": self.max_length, "turns": self.turns,
                "hidden_size": self.head.in_features, "pooling": self.pooling,
                "layers": self.model.config.num_hidden_layers, "cpu_bf16": self.cpu_bf16,
                "eot_token": self.eot_token}

    def save_weights(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(d / MODEL_DIR)
        self.tokenizer.save_pretrained(d / MODEL_DIR)
        atomic_write_json(d / RM_CONFIG, self.options())
        return d

    @classmethod
    def load_weights(cls, directory: str | Path, *,
                     normaliser: EmpiricalCDFNormaliser | None = None,
                     name: str | None = None) -> DecoderRewardModel:
        from transformers import AutoTokenizer

        d = Path(directory)
        opts = _read_options(d)
        if not (d / MODEL_DIR / "config.json").is_file():
            raise FileNotFoundError(f"decoder reward model folder {d} has no "
                                    f"{MODEL_DIR}/config.json: "
                                    "the model weights are missing")
        tokenizer = AutoTokenizer.from_pretrained(d / MODEL_DIR)
        model = AutoModelForSequenceClassification.from_pretrained(d / MODEL_DIR)
        check_vocab(tokenizer, model, d / MODEL_DIR)  # names the folder, before any pad is added
        out = cls(model, tokenizer, base_model=opts["base_model"],
                  max_length=opts.get("max_length", 256), turns=opts.get("turns", "last"),
                  pooling=opts.get("pooling", "last"), normaliser=normaliser,
                  name=name or d.resolve().name,
                  # Folders from before the option closed responses with end-of-sequence.
                  eot_token=opts.get("eot_token", tokenizer.eos_token))
        return out.to(pick_device()).eval()

    # ------------------------------------------------------------ tokenising
    def _prompt_text(self, prompt: Prompt) -> str:
        msgs = _messages(prompt, self.turns)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(msgs, tokenize=False,
                                                      add_generation_prompt=True)
        from ..data import dialogue_to_text  # a base model without a chat template

        return dialogue_to_text(msgs) + "\n\nAssistant: "

    def encode(self, prompt: Prompt, response: str) -> list[int]:
        """Token ids of one (prompt, response) pair, at most ``max_length``, ending with the
        end-of-turn token ``eot_id`` (SmolLM2-Instruct's ``<|im_end|>``)."""
        return self._encode(prompt, response)[0]

    def _encode(self, prompt: Prompt, response: str) -> tuple[list[int], int]:
        """``encode``'s ids and how many of them are the response and its end-of-turn token."""
        tok = self.tokenizer
        p = tok(self._prompt_text(prompt), add_special_tokens=False)["input_ids"]
        # A literal "<|im_end|>" inside a reply is text, not the end of the turn.
        r = tok(response, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        budget = self.max_length - 1  # the end-of-turn token
        r = r[:max(budget - len(p), budget // 2)]
        p = p[len(p) - (budget - len(r)):] if len(p) + len(r) > budget else p
        return p + r + [self.eot_id], len(r) + 1

    def tokenize(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> BatchEncoding:
        """Right-padded ``input_ids`` and ``attention_mask``, and ``response_mask`` (the response
        tokens and the closing end-of-turn token), which mean pooling reads."""
        tok = self.tokenizer
        rows, n_resp = [], []
        for p, r in zip(prompts, responses, strict=True):
            ids, k = self._encode(p, r)
            rows.append(ids)
            n_resp.append(k)
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        response = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, k) in enumerate(zip(rows, n_resp)):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            attention[i, :len(ids)] = 1
            response[i, len(ids) - k:len(ids)] = 1
        return BatchEncoding({"input_ids": input_ids, "attention_mask": attention,
                              "response_mask": response})

    # ------------------------------------------------------------ forward
    def embed(self, batch: BatchEncoding | dict[str, torch.Tensor]) -> torch.Tensor:
        """The last kept layer's (normed) states at the last real token, the end-of-turn token
        (``pooling="last"``), or their mean over the response tokens (``pooling="mean"``)."""
        inputs = {k: batch[k].to(self.device) for k in ("input_ids", "attention_mask")}
        with self._autocast():
            hidden = self.model.base_model(**inputs).last_hidden_state.float()
        if self.pooling == "mean":
            mask = batch["response_mask"].to(hidden.device).unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        last = inputs["attention_mask"].sum(1) - 1  # right padding
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def decoder_layers(model: torch.nn.Module, option: str) -> torch.nn.ModuleList:
    """The transformer blocks of a decoder, or a clear error naming ``option``."""
    layers = getattr(model.base_model, "layers", None)
    if layers is None:
        raise ValueError(f"{option} needs a decoder with a .layers stack; "
                         f"{type(model.base_model).__name__} has none (use {option}=0)")
    return layers


def truncate_layers(model: torch.nn.Module, k: int) -> None:
    """Keep the first ``k`` transformer blocks of a decoder (in place, config included)."""
    layers = decoder_layers(model, "layers")
    if not 0 < k <= len(layers):
        raise ValueError(f"layers must be in 1..{len(layers)} for this model, got {k}")
    model.base_model.layers = layers[:k]
    config = model.config.get_text_config()
    config.num_hidden_layers = k
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:k]
