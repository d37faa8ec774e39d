"""The LM head and the loss only where a label is set: completion-only SFT without the full logits.

A causal LM's own forward projects *every* position through the LM head (``batch x seq x vocab``
logits; for SmolLM2 a 49k vocabulary) and then drops the prompt positions from the loss. With
completion-only labels most positions are prompt, so most of that projection, its softmax and
their backward pass are thrown away. :func:`add_completion_head` patches the model's forward so
that, given ``labels``, it runs the backbone, projects only the positions whose next-token label
is not ``-100``, and returns the same cross-entropy (summed over those tokens, divided by
``num_items_in_batch`` when the Trainer passes it, else by their count) as
``transformers.loss.loss_utils.ForCausalLMLoss``. Given ``loss_weights`` (a prompt-loss weight),
each token's cross-entropy is weighted and the sum divided by the weights' sum. Without labels
the forward is the original one, so generation and evaluation are unchanged.

The patch sits on the model's own ``forward``, so every wrapper (PEFT, DDP, FSDP, DeepSpeed)
still calls through its forward, and the backbone and head are looked up on each call, since
those wrappers replace them after patching. Models whose head does more than a projection
(soft-capped or scaled logits) are left alone.
"""
from __future__ import annotations

import functools
import types
from typing import Any

from .tokenise import IGNORE

#: Config attributes of heads that do more than ``lm_head(hidden)``: soft-capping (Gemma 2),
#: scaled logits (Cohere, Granite, Falcon-H1, MiniCPM). Such a model keeps its own forward.
_HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "output_multiplier",
                "lm_head_multiplier", "logits_scaling")


def supports_completion_head(model: Any) -> bool:
    """Whether ``model`` is a causal LM whose logits are its backbone's last hidden state through
    the output embedding, and nothing more."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
        else model.config
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _HEAD_EXTRAS):
        return False
    prefix = getattr(model, "base_model_prefix", "")
    return bool(prefix) and hasattr(model, prefix) and model.get_output_embeddings() is not None


def add_completion_head(model: Any) -> bool:
    """Patch ``model.forward`` as the module docstring says; returns False (and leaves the model
    as it was) when the model's head is not a plain projection. Call before wrapping with PEFT."""
    import torch
    import torch.nn.functional as F
    from transformers.modeling_outputs import CausalLMOutputWithPast

    if not supports_completion_head(model):
        return False
    original = model.forward
    prefix = model.base_model_prefix

    # Keep the original signature: Trainer reads it to decide whether to pass num_items_in_batch.
    @functools.wraps(type(model).forward)
    def forward(self: Any, *args: Any, labels: Any = None, num_items_in_batch: Any = None,
                loss_weights: Any = None, **kwargs: Any) -> Any:
        if labels is None:
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return original(*args, **kwargs)
        kwargs.pop("logits_to_keep", None)
        kwargs["use_cache"] = False
        hidden = getattr(self, prefix)(*args, **kwargs).last_hidden_state
        # Position t predicts token t + 1: the same shift as ForCausalLMLoss.
        targets = labels[:, 1:].to(hidden.device)
        keep = targets != IGNORE
        logits = self.get_output_embeddings()(hidden[:, :-1][keep]).float()
        if loss_weights is not None:  # prompt tokens weighted (SFTConfig.prompt_loss_weight)
            w = loss_weights[:, 1:].to(hidden.device)[keep].float()
            loss = (F.cross_entropy(logits, targets[keep], reduction="none") * w).sum()
            # Divided by this micro-batch's weights: exact for one batch per step on one process
            # (SFT refuses prompt_loss_weight with gradient accumulation or several processes).
            return CausalLMOutputWithPast(loss=loss / w.sum().clamp(min=1e-8), logits=None)
        loss = F.cross_entropy(logits, targets[keep], reduction="sum")
        if num_items_in_batch is None:
            loss = loss / keep.sum().clamp(min=1)
        else:
            loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
        # No logits: the training step reads only the loss (and the full tensor is what is saved).
        return CausalLMOutputWithPast(loss=loss, logits=None)

    model.forward = types.MethodType(forward, model)
    model._rewardprompt_completion_head = True
    return True


def remove_completion_head(model: Any) -> None:
    """Undo :func:`add_completion_head` (the class's forward again)."""
    if getattr(model, "_rewardprompt_completion_head", False):
        del model.forward
        del model._rewardprompt_completion_head
