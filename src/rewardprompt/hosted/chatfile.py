"""The training file of a hosted job: labelled dialogues (or preference pairs) in the providers'
chat format, with the reward block where the template puts it, and the checks it must pass.

SFT rows are ``{"messages": [...]}``: the dialogue, the reward block put in by
``RewardTemplate.apply``, and the labelled reply as the final assistant message. With the loss on
the final reply only (as local SFT), messages carry a ``weight``: 1 on the final reply, 0 on the
provider's other weighted roles. DPO rows are OpenAI's preference format, which Together reads
too (``DatasetFormat.PREFERENCE_OPENAI``): ``{"input": {"messages"}, "preferred_output":
[assistant], "non_preferred_output": [assistant]}``.

Prompts are fitted to ``max_prompt_tokens`` by the same ``policy.tokenise.fit_prompt`` as local SFT
(oldest turns first, then the start of the last user turn; the block is put in after). Without a
tokenizer, tokens are estimated as one per ``CHARS_PER_TOKEN`` characters of the dialogue
(role names included), so the cut is by characters. Replies are never cut: a hosted chat model
always learns the end of its turn (label already clips replies to the policy's budget).

The template's ``reply`` position (the block opens the assistant's reply) cannot be used: a
hosted chat model cannot be prefilled when it is sampled, so it would never see the block.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..chat import Message
from ..errors import DataError
from ..policy.tokenise import fit_prompt
from ..runs import iter_jsonl, messages_error, read_rows
from ..template import RewardTemplate, TemplateError

#: The token estimate without a tokenizer: one token per this many characters.
CHARS_PER_TOKEN = 4
ROLES = ("system", "user", "assistant")


class CharTokens:
    """A stand-in tokenizer that counts one token per ``CHARS_PER_TOKEN`` characters.

    It has the two calls ``fit_prompt`` and :func:`count_tokens` make of a tokenizer, so the
    prompt budget and the per-example limit work the same with or without a real tokenizer.
    """

    name = f"estimate: 1 token per {CHARS_PER_TOKEN} characters"

    def apply_chat_template(self, messages: list[Message], tokenize: bool = False,
                            add_generation_prompt: bool = False,
                            continue_final_message: bool = False) -> str:
        """The dialogue as role lines and contents (the markup counts a little, as real chat
        markup does)."""
        text = "".join(f"{m['role']}\n{m['content']}\n" for m in messages)
        if continue_final_message:
            text = text[:-1]
        return text + ("assistant\n" if add_generation_prompt else "")

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [0] * math.ceil(len(text) / CHARS_PER_TOKEN)}


def token_counter(tokenizer: str | None) -> Any:
    """A tokenizer to count with: ``tokenizer`` (a folder or Hub id with a chat template) or the
    character estimate."""
    if tokenizer is None:
        return CharTokens()
    from ..models import load_tokenizer

    tok = load_tokenizer(tokenizer)
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"--hosted.tokenizer {tokenizer} has no chat template to count "
                         "dialogues with")
    return tok


def counter_name(tok: Any) -> str:
    """How tokens were counted, for the stage's result."""
    return tok.name if isinstance(tok, CharTokens) else f"tokenizer {tok.name_or_path}"


def count_tokens(tok: Any, messages: list[Message]) -> int:
    """The tokens of a whole dialogue, chat markup included (estimated without a tokenizer)."""
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    return len(tok(tok.apply_chat_template(plain, tokenize=False),
                   add_special_tokens=False)["input_ids"])


def check_template(template: RewardTemplate, conditioned: bool) -> None:
    """Refuse the ``reply`` position, which a hosted chat model cannot be sampled with."""
    if conditioned and template.position == "reply":
        raise TemplateError("the template's reply position puts the block at the start of the "
                            "assistant's reply, and a hosted chat model cannot be prefilled when "
                            "it is sampled, so it would never see the block: pass "
                            "--template.position bottom (or top)")


def with_weights(messages: list[Message], roles: tuple[str, ...]) -> list[dict]:
    """The dialogue with weight 1 on its final message (the reply) and 0 on every other
    message of the weighted roles."""
    last = len(messages) - 1
    return [{**m, "weight": int(i == last)} if m["role"] in roles else dict(m)
            for i, m in enumerate(messages)]


def sft_rows(rows: list[dict], template: RewardTemplate, *, conditioned: bool,
                 max_prompt_tokens: int, tok: Any, weight_roles: tuple[str, ...],
                 train_on_prompt: bool, source: str, targets: str = "exact",
                 seed: int = 0) -> list[dict]:
    """Chat rows from labelled rows (prompt, response, rewards), the block in each prompt when
    ``conditioned``, showing ``template.training_targets(rows, targets, seed)``. ``source``
    names the labelled file in errors."""
    check_template(template, conditioned)
    shown = template.training_targets(rows, targets, seed) if conditioned else [None] * len(rows)
    out = []
    for i, (r, t) in enumerate(zip(rows, shown)):
        try:
            prompt = fit_prompt(tok, r["prompt"], template, t, max_prompt_tokens)
        except ValueError as exc:  # a TemplateError too: a target outside [0, 1], no user turn
            raise DataError(f"row {i + 1}: {exc}", file=source, code="bad_prompt") from None
        messages = prompt + [{"role": "assistant", "content": r["response"]}]
        out.append({"messages": messages if train_on_prompt
                    else with_weights(messages, weight_roles)})
    return out


# ---------------------------------------------------------------- DPO pairs
@dataclass
class DPOPair:
    """A prompt and two replies, the preferred first; the rewards of each when known."""

    id: str
    prompt: list[Message]
    chosen: str
    rejected: str
    chosen_rewards: dict[str, float] | None = None
    rejected_rewards: dict[str, float] | None = None


def pairs_from_preferences(source: str | Path) -> list[DPOPair]:
    """DPO pairs from preference rows (prompt, chosen, rejected: the project's preference JSONL,
    or a shipped name); pairs whose replies are identical are skipped, with a warning."""
    from ..data.preference import drop_identical, load_preferences

    pairs, _ = drop_identical(load_preferences(source), str(source), drop=True)
    return [DPOPair(id=p.id, prompt=p.prompt, chosen=p.chosen, rejected=p.rejected) for p in pairs]


def pairs_from_samples(path: str | Path, *, rewards: str, dimension: str | None,
                       group_by: str = "id", model: str | None = None
                       ) -> tuple[list[DPOPair], dict[str, Any]]:
    """DPO pairs from a policy's own scored samples: per prompt (rows sharing ``group_by``), the
    sample with the highest reward is preferred to the one with the lowest.

    ``rewards`` is the field holding each row's rewards, a ``{dimension: reward}`` object
    (ranked by ``dimension``, by default the only one) or a number. Prompts with a single sample,
    or whose best and worst samples tie or read the same, give no pair and are counted.
    """
    base = {group_by: (str, int), "prompt": messages_error, "response": str}
    rows = read_rows(path, {**base, rewards: (dict, float)}, what="scored samples",
                     optional={"model": str})
    dim = None
    if isinstance(rows[0][rewards], dict):
        dims = list(rows[0][rewards])
        dim = dimension or (dims[0] if len(dims) == 1 else None)
        if dim is None:
            raise DataError(f"the rewards hold several dimensions ({', '.join(dims)}): name the "
                            "one that ranks the samples with --hosted.dpo-dimension",
                            file=str(path), field=rewards, code="ambiguous")
        rows = read_rows(path, {**base, f"{rewards}.{dim}": float}, what=f"samples scored on {dim}",
                         optional={"model": str})
    elif dimension is not None:
        raise DataError(f"the rewards are single numbers, not per dimension: drop "
                        f"--hosted.dpo-dimension {dimension}", file=str(path), field=rewards,
                        code="bad_field")

    def score(r: dict) -> float:
        return float(r[rewards][dim] if dim else r[rewards])

    models = sorted({r["model"] for r in rows if "model" in r})
    if model is not None:
        rows = [r for r in rows if r.get("model") == model]
        if not rows:
            raise DataError(f"no rows of model {model!r} (the file holds {', '.join(models)})",
                            file=str(path), field="model", code="empty")
    elif len(models) > 1:
        raise DataError(f"the file holds the samples of {len(models)} models ({', '.join(models)}):"
                        " name the one to learn from with --hosted.dpo-model", file=str(path),
                        field="model", code="ambiguous")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r[group_by]), []).append(r)
    pairs, skipped = [], Counter()
    for gid, rs in groups.items():
        if any(r["prompt"] != rs[0]["prompt"] for r in rs):
            raise DataError(f"the rows with {group_by} {gid!r} hold different prompts",
                            file=str(path), field=group_by, code="bad_field")
        if len(rs) < 2:
            skipped["single_sample"] += 1
            continue
        best, worst = max(rs, key=score), min(rs, key=score)  # the first of equals
        if score(best) == score(worst):
            skipped["tie"] += 1
        elif best["response"].strip() == worst["response"].strip():
            skipped["same_text"] += 1
        else:
            pairs.append(DPOPair(id=gid, prompt=rs[0]["prompt"], chosen=best["response"],
                                 rejected=worst["response"],
                                 chosen_rewards=best[rewards] if dim else None,
                                 rejected_rewards=worst[rewards] if dim else None))
    if not pairs:
        raise DataError(f"no prompt has two samples with different rewards (skipped: "
                        f"{dict(skipped)})", file=str(path), code="empty")
    return pairs, {"prompts": len(groups), "pairs": len(pairs), "skipped": dict(skipped),
                   "dimension": dim, "rewards": rewards}


def dpo_rows(pairs: list[DPOPair], template: RewardTemplate, *, conditioned: bool,
                 max_prompt_tokens: int, tok: Any, source: str) -> list[dict]:
    """Preference rows. Conditioned (reward-augmented DPO, Zhang et al. 2024): each pair gives
    two rows, the block carrying the chosen reply's rewards preferring it, the block carrying
    the rejected reply's rewards preferring that one, so the policy learns to match the block
    rather than to maximise one reward."""
    check_template(template, conditioned)

    def row(p: DPOPair, targets: dict | None, good: str, bad: str) -> dict:
        try:
            prompt = fit_prompt(tok, p.prompt, template, targets, max_prompt_tokens)
        except ValueError as exc:
            raise DataError(f"pair {p.id!r}: {exc}", file=source, code="bad_prompt") from None
        return {"input": {"messages": prompt},
                "preferred_output": [{"role": "assistant", "content": good}],
                "non_preferred_output": [{"role": "assistant", "content": bad}]}

    out = []
    for p in pairs:
        if not conditioned:
            out.append(row(p, None, p.chosen, p.rejected))
            continue
        for rewards, good, bad in ((p.chosen_rewards, p.chosen, p.rejected),
                                   (p.rejected_rewards, p.rejected, p.chosen)):
            missing = [d for d in template.dimensions if d not in (rewards or {})]
            if missing:
                raise DataError(f"pair {p.id!r} has no reward for {', '.join(missing)} to put in "
                                "the block (conditioned DPO needs every dimension of the "
                                "template)", file=source, code="missing_field")
            out.append(row(p, {d: rewards[d] for d in template.dimensions}, good, bad))
    return out


# ---------------------------------------------------------------- the file
def encode(rows: list[dict]) -> bytes:
    """The JSONL bytes of the training file."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def file_name(method: str, data: bytes) -> str:
    """The training file's name, which carries its content's sha256: the provider lists files
    by name, so a rerun finds the one it uploaded instead of uploading it again."""
    return f"rewardprompt-{method}-{hashlib.sha256(data).hexdigest()[:16]}.jsonl"


def _messages(msgs: Any, where: str, *, ends_with: str, weight_roles: tuple[str, ...],
              fail: Any) -> None:
    """Check one dialogue; ``fail(reason, field)`` raises."""
    if not isinstance(msgs, list) or not msgs:
        fail("expected a non-empty list of messages", where)
    expected = "user"
    for i, m in enumerate(msgs):
        at = f"{where}[{i}]"
        if not isinstance(m, dict):
            fail("expected a {role, content} object", at)
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            fail(f"role must be one of {', '.join(ROLES)}, not {role!r}", f"{at}.role")
        if role == "system":
            if i:
                fail("a system message may only come first", f"{at}.role")
        elif role != expected:
            article = "an" if expected == "assistant" else "a"
            fail(f"expected {article} {expected} turn (the dialogue starts with a user turn after "
                 f"an optional system message, then user and assistant alternate), got {role}",
                 f"{at}.role")
        else:
            expected = "assistant" if role == "user" else "user"
        if not isinstance(content, str) or not content.strip():
            fail("content must be a non-empty string", f"{at}.content")
        if "weight" in m:
            w = m["weight"]
            if isinstance(w, bool) or w not in (0, 1):
                fail(f"weight must be 0 or 1, not {w!r}", f"{at}.weight")
            if role not in weight_roles:
                fail(f"this provider takes a weight on {', '.join(weight_roles)} messages only, "
                     f"not on {role}", f"{at}.weight")
    if msgs[-1].get("role") != ends_with:
        fail(f"the dialogue must end with a{'n' if ends_with == 'assistant' else ''} "
             f"{ends_with} turn", f"{where}[{len(msgs) - 1}].role")


def validate_file(path: str | Path, *, method: str, max_file_bytes: int, max_example_tokens: int,
                  min_examples: int, tok: Any, weight_roles: tuple[str, ...]) -> dict[str, Any]:
    """Check a training file before it is uploaded; a DataError names the file, the line and
    the field at fault. Returns the examples' count and estimated tokens."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_file_bytes:
        raise DataError(f"{size} bytes, over the provider's limit of {max_file_bytes}",
                        file=str(path), code="too_large")
    n, total, longest = 0, 0, 0
    for line, row in iter_jsonl(path):
        def fail(reason: str, field: str | None = None, line: int = line) -> None:
            raise DataError(reason, file=str(path), line=line, field=field, code="invalid")

        if method == "supervised":
            msgs = row.get("messages")
            _messages(msgs, "messages", ends_with="assistant", weight_roles=weight_roles, fail=fail)
            if any("weight" in m for m in msgs) and msgs[-1].get("weight") != 1:
                fail("the final reply has weight 0: nothing of this example would be trained",
                     f"messages[{len(msgs) - 1}].weight")
            tokens = count_tokens(tok, msgs)
        else:
            inp = row.get("input")
            if not isinstance(inp, dict):
                fail("expected an object with the prompt's messages", "input")
            _messages(inp.get("messages"), "input.messages", ends_with="user", weight_roles=(),
                      fail=fail)
            replies = []
            for side in ("preferred_output", "non_preferred_output"):
                out = row.get(side)
                if not isinstance(out, list) or len(out) != 1 or not isinstance(out[0], dict):
                    fail("expected a list of exactly one assistant message", side)
                m = out[0]
                if m.get("role") != "assistant":
                    fail(f"role must be assistant, not {m.get('role')!r}", f"{side}[0].role")
                if not isinstance(m.get("content"), str) or not m["content"].strip():
                    fail("content must be a non-empty string", f"{side}[0].content")
                replies.append(m)
            if replies[0]["content"].strip() == replies[1]["content"].strip():
                fail("the preferred and the non-preferred reply are the same text",
                     "non_preferred_output[0].content")
            tokens = max(count_tokens(tok, inp["messages"] + [m]) for m in replies)
        if tokens > max_example_tokens:
            fail(f"about {tokens} tokens ({counter_name(tok)}), over the limit of "
                 f"{max_example_tokens} per example: shorten it or lower max_prompt_tokens",
                 "messages" if method == "supervised" else "input.messages")
        n, total, longest = n + 1, total + tokens, max(longest, tokens)
    if n < min_examples:
        raise DataError(f"{n} examples; the provider needs at least {min_examples}",
                        file=str(path), code="too_few")
    return {"examples": n, "tokens_estimated": total, "longest_example_tokens": longest,
            "token_count": counter_name(tok), "file_bytes": size}


def export_labelled(labels: str | Path, out: str | Path, providers: list[str], *,
                    template: dict, conditioned: bool = True,
                    max_prompt_tokens: int = 192) -> dict[str, dict[str, int]]:
    """A labelled set written in each provider's SFT format (``out/PROVIDER/sft.jsonl``), the
    way ``sft --backend PROVIDER`` would upload it, checked by the same rules (the token
    estimate and OpenAI's limits, the strictest). Returns rows per file."""
    from ..runs import atomic_write_bytes
    from .base import MAX_EXAMPLE_TOKENS, MAX_FILE_BYTES, MIN_EXAMPLES, WEIGHT_ROLES

    unknown = [p for p in providers if p not in WEIGHT_ROLES]
    if unknown:
        raise ValueError(f"unknown provider(s) {unknown}; choose from {', '.join(WEIGHT_ROLES)}")
    from ..labelling import read_labelled

    rows, tmpl = read_labelled(labels, dict(template), conditioned)
    tok = token_counter(None)
    written: dict[str, dict[str, int]] = {}
    for provider in providers:
        examples = sft_rows(rows, tmpl, conditioned=conditioned,
                            max_prompt_tokens=max_prompt_tokens, tok=tok,
                            weight_roles=WEIGHT_ROLES[provider], train_on_prompt=False,
                            source=str(labels))
        path = atomic_write_bytes(Path(out) / provider / "sft.jsonl", encode(examples))
        validate_file(path, method="supervised", max_file_bytes=MAX_FILE_BYTES,
                      max_example_tokens=MAX_EXAMPLE_TOKENS, min_examples=MIN_EXAMPLES, tok=tok,
                      weight_roles=WEIGHT_ROLES[provider])
        written[provider] = {"sft.jsonl": len(examples)}
    return written
