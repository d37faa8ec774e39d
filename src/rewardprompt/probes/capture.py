"""Residual-stream activations at named token positions: the one capture function.

Layers are indices into Hugging Face's ``output_hidden_states``: for a model of L blocks,
``hidden_states[i]`` (0 <= i < L) is the input of block i (``resid_pre.i``: the residual stream
before that block; 0 is the token embedding) and ``hidden_states[L]`` the final, normalised
output (``final``), which the unembedding reads.

A row is a prompt and a reply, tokenised by :func:`rewardprompt.policy.tokenise.tokenise_example`
(the one tokenise-and-mask function, so the tokens are those fine-tuning trains on and
sampling conditions on): the prompt is the chat-templated dialogue up to the opening of the
assistant's turn (a reward block included when the row has targets), the completion is what the
template adds for the reply, its end-of-turn marker included. Positions:

* ``prompt_end``: the last prompt token, before any token of the reply;
* ``resp_K``: the K-th completion token (1-based; masked when the completion is shorter);
* ``last``: the last completion token;
* ``mean``: the mean over the completion tokens.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..chat import Message
from ..template import RewardTemplate, Targets

if TYPE_CHECKING:
    import torch

_RESP = re.compile(r"resp_([1-9][0-9]*)")
FINAL = "final"
#: The template whose block is put in when a row has targets; without targets none is.
_NO_BLOCK = RewardTemplate()


def default_positions(max_completion_tokens: int) -> list[str]:
    """``prompt_end``, completion tokens 1, 2, 4, 8, ... up to ``max_completion_tokens``,
    ``last`` and ``mean``."""
    ks, k = [], 1
    while k <= max_completion_tokens:
        ks.append(k)
        k *= 2
    return ["prompt_end", *[f"resp_{k}" for k in ks], "last", "mean"]


def check_position(name: str) -> str:
    """``name`` when it is a known position; else a ValueError listing the forms."""
    if name in ("prompt_end", "last", "mean") or _RESP.fullmatch(name):
        return name
    raise ValueError(f"unknown position {name!r}: choose prompt_end, resp_K (K >= 1), last or mean")


def layer_name(index: int, n_layers: int) -> str:
    """``resid_pre.i`` for a block's input, ``final`` for the normalised output."""
    return FINAL if index == n_layers else f"resid_pre.{index}"


def layer_index(name: str, n_layers: int) -> int:
    """The inverse of :func:`layer_name`."""
    if name == FINAL:
        return n_layers
    m = re.fullmatch(r"resid_pre\.([0-9]+)", name)
    if not m or int(m.group(1)) >= n_layers:
        raise ValueError(f"unknown layer {name!r}: choose resid_pre.0 .. resid_pre.{n_layers - 1} "
                         "or final")
    return int(m.group(1))


def resolve_layers(spec: list[int], n_layers: int) -> list[int]:
    """Hidden-state indices from ``spec`` (empty: all; negative counts from ``final``)."""
    if not spec:
        return list(range(n_layers + 1))
    out = []
    for i in spec:
        j = i + n_layers + 1 if i < 0 else i
        if not 0 <= j <= n_layers:
            raise ValueError(f"layer {i} is out of range for a model of {n_layers} blocks "
                             f"(0..{n_layers - 1}: block inputs, {n_layers} or -1: final)")
        out.append(j)
    return sorted(set(out))


@dataclass
class Encoded:
    """One row's tokens: the prompt's ``n_prompt`` tokens, then the completion's."""

    ids: list[int]
    n_prompt: int

    @property
    def n_completion(self) -> int:
        return len(self.ids) - self.n_prompt


def encode(tokenizer: Any, prompt: list[Message], response: str, *, template: RewardTemplate | None,
           targets: Targets | None, max_prompt_tokens: int, max_completion_tokens: int) -> Encoded:
    """A row's tokens as fine-tuning sees them (``tokenise_example``): prompt, then completion."""
    from ..policy.tokenise import IGNORE, tokenise_example

    ex = tokenise_example(tokenizer, prompt, response, template=template or _NO_BLOCK,
                          targets=targets if template is not None else None,
                          max_prompt_tokens=max_prompt_tokens,
                          max_completion_tokens=max_completion_tokens)
    # tokenise_example labels the prompt's tokens, and only those, IGNORE: they lead the row.
    n_prompt = sum(1 for x in ex["labels"] if x == IGNORE)
    if n_prompt == 0 or n_prompt == len(ex["input_ids"]):
        raise ValueError("a row needs prompt tokens and completion tokens; got "
                         f"{n_prompt} prompt and {len(ex['input_ids']) - n_prompt} completion tokens")
    return Encoded(ids=list(ex["input_ids"]), n_prompt=n_prompt)


def position_index(position: str, n_prompt: int, n_total: int) -> int | None:
    """The sequence index a (non-mean) position reads, or None where the row has no such token."""
    if position == "prompt_end":
        return n_prompt - 1
    if position == "last":
        return n_total - 1
    m = _RESP.fullmatch(position)
    if m is None:
        raise ValueError(f"position {position!r} is not a single token")
    i = n_prompt + int(m.group(1)) - 1
    return i if i < n_total else None


@dataclass
class Captured:
    """Activations of ``n`` rows: ``acts[layer]`` is (n, positions, d) float32; ``mask`` says
    which (row, position) exists; ``tokens`` the token id read there (-1: mean or absent)."""

    acts: dict[int, torch.Tensor]
    mask: torch.Tensor
    tokens: torch.Tensor


def decoder_of(model: Any) -> Any:
    """The model without its language-model head: the hidden states without vocabulary logits
    (which, for a 49k vocabulary, would take more memory than all the hidden states)."""
    base = getattr(model, "base_model", None)
    return base if base is not None and base is not model else model


def n_blocks(model: Any) -> int:
    """The number of transformer blocks of an HF causal LM."""
    cfg = model.config
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    if n is None and hasattr(cfg, "get_text_config"):
        n = getattr(cfg.get_text_config(), "num_hidden_layers", None)
    if not n:
        raise ValueError(f"cannot tell the number of blocks of {type(model).__name__} from its config")
    return int(n)


def capture(model: Any, rows: list[Encoded], layers: list[int], positions: list[str], *,
            batch_size: int, pad_id: int) -> Captured:
    """Run ``model`` over ``rows`` (batched, right-padded, longest first) and read the hidden
    states ``layers`` at ``positions``.

    Right padding keeps every real token at its own index, and causal attention keeps padding
    from reaching them; the attention mask is passed all the same.
    """
    import torch

    for p in positions:
        check_position(p)
    device = next(model.parameters()).device
    decoder = decoder_of(model)
    n, n_pos = len(rows), len(positions)
    mask = torch.zeros(n, n_pos, dtype=torch.bool)
    tokens = torch.full((n, n_pos), -1, dtype=torch.long)
    acts: dict[int, torch.Tensor] = {}
    order = sorted(range(n), key=lambda i: -len(rows[i].ids))
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            width = max(len(rows[i].ids) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            att = torch.zeros((len(idx), width), dtype=torch.long)
            for b, i in enumerate(idx):
                ids[b, :len(rows[i].ids)] = torch.tensor(rows[i].ids)
                att[b, :len(rows[i].ids)] = 1
            out = decoder(input_ids=ids.to(device), attention_mask=att.to(device),
                          output_hidden_states=True, use_cache=False)
            hidden = out.hidden_states
            if len(hidden) <= max(layers):
                raise ValueError(f"the model returned {len(hidden)} hidden states; layer "
                                 f"{max(layers)} does not exist")
            # Which (batch row, sequence index) each present (row, position) reads, found once
            # per batch and applied to every layer.
            src_b, src_j, dst_i, dst_k = [], [], [], []
            mean_k = positions.index("mean") if "mean" in positions else None
            for b, i in enumerate(idx):
                r = rows[i]
                for k, p in enumerate(positions):
                    if p == "mean":
                        mask[i, k] = True
                        continue
                    j = position_index(p, r.n_prompt, len(r.ids))
                    if j is not None:
                        src_b.append(b)
                        src_j.append(j)
                        dst_i.append(i)
                        dst_k.append(k)
                        mask[i, k] = True
                        tokens[i, k] = r.ids[j]
            for layer in layers:
                h = hidden[layer].float().cpu()
                if layer not in acts:
                    acts[layer] = torch.zeros(n, n_pos, h.shape[-1])
                acts[layer][dst_i, dst_k] = h[src_b, src_j]
                if mean_k is not None:  # slices, not a weighted sum: padding never enters
                    for b, i in enumerate(idx):
                        acts[layer][i, mean_k] = h[b, rows[i].n_prompt:len(rows[i].ids)].mean(0)
    return Captured(acts=acts, mask=mask, tokens=tokens)
