"""The one tokenise-and-mask function: prompt tokens get label -100, completion tokens are trained.

The prompt is the dialogue rendered by the tokenizer's chat template with the generation prompt
(``<|im_start|>assistant\\n`` for SmolLM2), or left open after a prefill (a trailing assistant
message); the completion is whatever the template puts after it for the assistant's reply,
end-of-turn token included. Taking the completion as the difference of two renderings keeps this
right for any chat template. Every caller (SFT, the baseline, tests, the online loop later) goes
through :func:`tokenise_example`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING


from ..chat import Message, split_prefill, with_prefill
from ..template import RewardTemplate, Targets

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
IGNORE = -100


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> str:
    """The text the policy continues: the dialogue and the opening of the assistant's turn.

    A dialogue that ends with an assistant message is a prefill (as in vLLM's and transformers'
    ``continue_final_message``): the reply is rendered open, so the policy continues it.
    """
    if split_prefill(messages)[1]:
        return tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_completion(tokenizer: PreTrainedTokenizerBase, messages: list[Message],
                      response: str) -> str:
    """The text the template adds for the assistant reply, end-of-turn marker included.

    After a prefill (a trailing assistant message) the reply continues it, in the same turn.
    """
    prompt = render_prompt(tokenizer, messages)
    dialogue, prefill = split_prefill(messages)
    full = tokenizer.apply_chat_template(
        dialogue + [{"role": "assistant", "content": prefill + response}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the prompt as a prefix of the "
                         "full dialogue; completion-only masking needs it to")
    return full[len(prompt):]


def _n_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[Message], template: RewardTemplate,
               targets: Targets | dict | None, max_prompt_tokens: int) -> list[Message]:
    """The dialogue with its reward block, shortened to ``max_prompt_tokens``.

    Oldest turns go first; if the last user turn alone is too long, its beginning is cut. The
    reward block is put in after shortening, so it survives at either position; a prefill (a
    trailing assistant message) is kept whole and counted. A leading system message (the
    prompted-target baseline's instructions) is kept whole and not counted, so that it leaves
    the dialogue the same budget as a prompt without it. The budget counts one copy of the
    block: a duplicated block's other copies come on top, so that duplication takes no room
    from the dialogue.
    """
    budget = max_prompt_tokens
    if targets is not None and template.duplicate > 1:
        one = _n_tokens(tokenizer, "\n" + replace(template, duplicate=1).render(targets))
        budget += (template.duplicate - 1) * one
    dialogue, prefill = split_prefill(messages)
    system = [dict(m) for m in dialogue[:1] if m["role"] == "system"]
    msgs = [dict(m) for m in dialogue[len(system):]]
    own = (_n_tokens(tokenizer, render_prompt(tokenizer, system + [{"role": "user", "content": ""}]))
           - _n_tokens(tokenizer, render_prompt(tokenizer, [{"role": "user", "content": ""}]))
           if system else 0)
    while True:
        with_block = template.apply(with_prefill(system + msgs, prefill), targets)
        n = _n_tokens(tokenizer, render_prompt(tokenizer, with_block)) - own
        excess = n - budget
        if excess <= 0:
            return with_block
        if len(msgs) > 1:
            msgs = msgs[1:]
            while msgs and msgs[0]["role"] != "user":  # a dialogue starts with a user turn
                msgs = msgs[1:]
            continue
        content = msgs[0]["content"]
        n_content = _n_tokens(tokenizer, content)
        if excess >= n_content:
            raise ValueError(f"max_prompt_tokens={max_prompt_tokens} leaves no room for the "
                             "dialogue next to the reward block, chat markup and prefill")
        # Cut characters, not tokens: decoding a token slice can split a multi-byte character
        # and grow the text. Each pass removes at least one character, so this ends.
        cut = max(1, round(excess * len(content) / n_content))
        msgs[0]["content"] = content[cut:]


def tokenise_example(tokenizer: PreTrainedTokenizerBase, messages: list[Message], response: str,
                     *, template: RewardTemplate, targets: Targets | dict | None,
                     max_prompt_tokens: int = 256, max_completion_tokens: int = 128,
                     prompt_loss_weight: float = 0.0) -> dict:
    """``input_ids`` and ``labels`` for one (dialogue, reward targets, response) example.

    Prompt and reward-block tokens are labelled -100; completion tokens, the end-of-turn token
    included, keep their ids. A completion longer than ``max_completion_tokens`` is cut (and then
    has no end-of-turn token: it did not end there). With ``prompt_loss_weight`` > 0 the prompt's
    tokens are trained too, each weighted by it against 1 for a reply token (``loss_weights``).
    """
    prompt_msgs = fit_prompt(tokenizer, messages, template, targets, max_prompt_tokens)
    prompt_ids = tokenizer(render_prompt(tokenizer, prompt_msgs), add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(render_completion(tokenizer, prompt_msgs, response),
                               add_special_tokens=False)["input_ids"][:max_completion_tokens]
    if prompt_loss_weight > 0:
        return {"input_ids": prompt_ids + completion_ids,
                "labels": list(prompt_ids) + list(completion_ids),
                "loss_weights": [prompt_loss_weight] * len(prompt_ids) + [1.0] * len(completion_ids)}
    return {"input_ids": prompt_ids + completion_ids,
            "labels": [IGNORE] * len(prompt_ids) + list(completion_ids)}
