"""KL(policy || reference) per generated token: exact, and from the top-k log-probs an API returns.

At each generated position the policy pi and the reference r each have a next-token
distribution; KL(pi || r) summed over the positions of a sampled reply estimates the sequence
KL without bias. A hosted API returns only the policy's k most likely tokens and their
log-probs (OpenAI and vLLM: k <= 20), while a local reference model gives its whole
distribution, scored teacher-forced on the same sampled tokens. Over the policy's top-k set S
with policy mass P = pi(S) and reference mass R = r(S):

- ``truncated``: sum_S pi log(pi / r), the KL's own terms on S. Exact at k = V, but it drops the
  tail's terms, which can have either sign, so it is neither a bound nor monotone in k.
- ``renormalised``: the KL of both distributions conditioned on S,
  sum_S (pi/P) log((pi/P) / (r/R)). A proper divergence (>= 0, exact at k = V), but blind to how
  much mass each model puts outside S (at k = 1 it is always 0).
- ``lumped`` (the default): the tail lumped into one outcome,
  sum_S pi log(pi / r) + (1 - P) log((1 - P) / (1 - R)). Merging outcomes can only lose
  divergence (the log-sum inequality), so it is a lower bound on the exact KL that never
  decreases as k grows (nested top-k sets) and equals it at k = V: the one of the three whose
  error has a known sign and shrinks with k, hence the default.

The exact KL needs the policy's whole distribution too: a local copy of the policy, scored at
the same positions. :func:`compare_kl` puts them side by side for several k; :func:`run_kl` does
it for the rows ``generate`` writes when asked for log-probs (``--api.top-logprobs K``, best
with ``--api.tokens-as-ids``), which carry the messages the policy was sent (``shown``) and
its tokens (``logprobs``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..chat import Message
from ..runs import atomic_write_json, read_rows, update_metrics_entry

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

METHODS = ("lumped", "truncated", "renormalised")
#: Log-probs at or below this are an API's "not in the top 20" marker (OpenAI's -9999).
_UNKNOWN_LOGPROB = -9000.0


def exact_kl(policy_logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(pi || r) per position from full-vocabulary log-probs ``[T, V]``: ``[T]``."""
    p = policy_logprobs.exp()
    return (p * (policy_logprobs - ref_logprobs)).sum(-1)


def topk_kl(top_ids: torch.Tensor, top_logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
            method: str = "lumped") -> torch.Tensor:
    """KL(pi || r) per position from the policy's top-k ``[T, k]`` (ids and log-probs under the
    policy) and the reference's full log-probs ``[T, V]``: ``[T]`` (see the module's methods).

    Computed in float64: the tail mass 1 - P is a difference of numbers near 1.
    """
    import torch

    if method not in METHODS:
        raise ValueError(f"unknown KL method {method!r}; choose from {', '.join(METHODS)}")
    ref = ref_logprobs.double()
    lp = top_logprobs.double()
    lr = ref.gather(-1, top_ids)
    p = lp.exp()
    truncated = (p * (lp - lr)).sum(-1)
    if method == "truncated":
        return truncated
    if method == "renormalised":
        log_p, log_r = torch.logsumexp(lp, -1), torch.logsumexp(lr, -1)
        return truncated / log_p.exp() - log_p + log_r
    # The reference's tail mass from its own log-probs (exact, even when tiny); the policy's is
    # what its top-k leave, clamped at 0 against rounding in the reported log-probs.
    outside = ref.scatter(-1, top_ids, float("-inf"))
    log_r_tail = torch.logsumexp(outside, -1)
    p_tail = (1.0 - p.sum(-1)).clamp(min=0.0)
    tail = torch.where((p_tail > 0) & torch.isfinite(log_r_tail),
                       p_tail * (p_tail.clamp(min=1e-300).log() - log_r_tail),
                       torch.zeros_like(p_tail))
    return truncated + tail


def completion_logprobs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                        messages: list[Message], completion_ids: list[int]) -> torch.Tensor:
    """The model's next-token log-probs ``[T, V]`` (float32) at each of the ``T`` completion
    positions, teacher-forced on ``messages`` (rendered as the policy saw them) and the ids."""
    import torch

    from ..policy.tokenise import render_prompt

    prompt = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    device = next(model.parameters()).device
    x = torch.tensor([prompt + list(completion_ids)], device=device)
    with torch.inference_mode():
        logits = model(input_ids=x).logits[0, len(prompt) - 1:len(prompt) - 1 + len(completion_ids)]
    return logits.float().log_softmax(-1).cpu()


def token_id(token: str, tokenizer: PreTrainedTokenizerBase, _table: dict | None = None) -> int:
    """The vocabulary id of a token as an API shows it: ``token_id:N`` (vLLM's
    return_tokens_as_token_ids), else its text when exactly one id decodes to it."""
    if token.startswith("token_id:") and token[9:].isdigit():
        return int(token[9:])
    table = _table if _table is not None else decoded_vocabulary(tokenizer)
    hit = table.get(token)
    if hit is None:
        raise ValueError(f"token {token!r} is no single id of this tokenizer, or several decode "
                         "to it (pieces of one character); sample with --api.tokens-as-ids")
    return hit


def decoded_vocabulary(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    """Decoded text -> id, for texts that exactly one id decodes to (others map to None)."""
    table: dict[str, int | None] = {}
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        table[text] = None if text in table else i
    return table


@dataclass
class KLSample:
    """One sampled reply: what the policy was sent, the ids it sampled, and (from an API) its
    log-prob of each and its top tokens at each position, most likely first."""

    messages: list[Message]
    ids: list[int]
    logprobs: list[float] | None = None
    top: list[list[tuple[int, float]]] | None = None
    id: Any = None


def samples_from_rows(rows: list[dict], tokenizer: PreTrainedTokenizerBase) -> list[KLSample]:
    """KLSamples from generate's rows that carry ``shown`` and ``logprobs``."""
    table = None if all(e["token"].startswith("token_id:") for r in rows for e in r["logprobs"]) \
        else decoded_vocabulary(tokenizer)
    out = []
    for r in rows:
        ids = [token_id(e["token"], tokenizer, table) for e in r["logprobs"]]
        top = [sorted(((token_id(t, tokenizer, table), v) for t, v in e["top"].items()),
                      key=lambda x: -x[1]) for e in r["logprobs"]]
        out.append(KLSample(messages=r["shown"], ids=ids, id=r.get("id"),
                            logprobs=[e["logprob"] for e in r["logprobs"]], top=top))
    return out


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def compare_kl(samples: list[KLSample], reference: PreTrainedModel,
               tokenizer: PreTrainedTokenizerBase, policy: PreTrainedModel | None = None,
               ks: tuple[int, ...] | list[int] = (1, 5, 20), method: str = "lumped") -> dict:
    """Top-k estimates of KL(policy || reference) for each k, beside the exact KL when a local
    copy of the policy is given, on the same samples and positions.

    The top-k come from the samples (what an API returned) when every position has at least
    k; otherwise from the local policy (its own k most likely tokens). Returns per-sequence
    figures (KL summed over the reply's tokens) and their means, per token too, for every
    method, with ``method`` as the headline and its gap to the exact KL.
    """
    import torch

    if method not in METHODS:
        raise ValueError(f"unknown KL method {method!r}; choose from {', '.join(METHODS)}")
    samples = [s for s in samples if s.ids]
    if not samples:
        raise ValueError("no sampled tokens to score")
    vocab = reference.get_output_embeddings().weight.shape[0]
    recorded = min((len(t) for s in samples for t in (s.top or [[]])), default=0)
    ks = sorted({min(int(k), vocab) for k in ks})
    source = {}
    for k in ks:
        if k <= recorded:
            source[k] = "recorded"
        elif policy is not None:
            source[k] = "policy"
        else:
            raise ValueError(f"the samples carry the top {recorded} log-probs at some position; "
                             f"k={k} needs a local copy of the policy")
    per_seq, max_diff = [], 0.0
    for s in samples:
        ref_lp = completion_logprobs(reference, tokenizer, s.messages, s.ids)
        pol_lp = completion_logprobs(policy, tokenizer, s.messages, s.ids) if policy else None
        row: dict[str, Any] = {"id": s.id, "n_tokens": len(s.ids), "topk": {}}
        if pol_lp is not None:
            row["exact"] = float(exact_kl(pol_lp.double(), ref_lp.double()).sum())
            if s.logprobs is not None:  # is the local copy the model that was sampled?
                local = pol_lp[torch.arange(len(s.ids)), torch.tensor(s.ids)].tolist()
                max_diff = max([max_diff] + [abs(a - b) for a, b in zip(s.logprobs, local)
                                             if a > _UNKNOWN_LOGPROB])
        for k in ks:
            if source[k] == "recorded":
                ids = torch.tensor([[i for i, _ in t[:k]] for t in s.top])
                lps = torch.tensor([[v for _, v in t[:k]] for t in s.top], dtype=torch.float64)
            else:
                top = pol_lp.double().topk(k, dim=-1)
                ids, lps = top.indices, top.values
            row["topk"][str(k)] = {m: float(topk_kl(ids, lps, ref_lp, m).sum()) for m in METHODS}
        per_seq.append(row)
    n_tokens = sum(r["n_tokens"] for r in per_seq)
    result: dict[str, Any] = {"n_sequences": len(per_seq), "n_tokens": n_tokens, "method": method,
                              "ks": ks, "estimates": {}}
    if policy is not None:
        exact = [r["exact"] for r in per_seq]
        result["exact"] = {"mean_per_sequence": _mean(exact), "per_token": sum(exact) / n_tokens}
        if any(s.logprobs is not None for s in samples):
            result["recorded_vs_policy_max_abs_logprob_diff"] = max_diff
    for k in ks:
        est = {m: [r["topk"][str(k)][m] for r in per_seq] for m in METHODS}
        entry: dict[str, Any] = {"source": source[k]}
        for m in METHODS:
            entry[m] = {"mean_per_sequence": _mean(est[m]), "per_token": sum(est[m]) / n_tokens}
        if policy is not None:
            gaps = [e - x for e, x in zip(est[method], exact)]
            mean_exact = result["exact"]["mean_per_sequence"]
            entry["gap"] = {"mean": _mean(gaps), "mean_abs": _mean([abs(g) for g in gaps]),
                            "relative": _mean(gaps) / mean_exact if mean_exact else math.nan}
        result["estimates"][str(k)] = entry
    result["per_sequence"] = per_seq
    return result


@dataclass
class KLConfig:
    """KL(policy || reference) of generations that carry log-probs, top-k against exact."""

    generations: str
    """Generations JSONL from generate with --api.top-logprobs K (rows with shown, logprobs)."""
    reference: str
    """The reference model (e.g. the base the policy was fine-tuned from), scored locally."""
    policy: str | None = None
    """A local copy of the policy, for the exact KL (and top-k beyond what the rows carry)."""
    ks: list[int] = field(default_factory=lambda: [1, 5, 20])
    """The top-k sizes to compare."""
    method: str = "lumped"
    """The headline estimate: lumped (a lower bound, tightening with k), truncated or
    renormalised (see evaluation.kl)."""
    tokenizer: str | None = None
    """Renders the prompts and maps token texts to ids (default: the policy's, else the
    reference's); the reference must share the policy's vocabulary."""
    out: str | None = None
    """The JSON to write (default: GENERATIONS with .kl.json)."""
    run: str | None = None
    """A run directory: the summary goes into its metrics.json under kl."""


def run_kl(cfg: KLConfig) -> dict:
    """Score the generations' samples with the reference (and the policy copy): writes the
    comparison to ``cfg.out`` and returns it without the per-sequence rows."""
    import torch

    from ..models import load_policy, load_tokenizer

    rows = read_rows(cfg.generations, {"shown": list, "logprobs": list},
                     what="generations with log-probs (generate --api.top-logprobs K)")
    tok_name = cfg.tokenizer or cfg.policy or cfg.reference
    tokenizer = load_tokenizer(tok_name)
    if cfg.policy and cfg.tokenizer is None and \
            load_tokenizer(cfg.reference).get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"{cfg.reference} and {cfg.policy} have different vocabularies; the "
                         "reference must score the policy's own tokens")
    # float32: log-probs in bf16 would swamp the differences being measured.
    reference = load_policy(cfg.reference, dtype=torch.float32).eval()
    policy = load_policy(cfg.policy, dtype=torch.float32).eval() if cfg.policy else None
    result = compare_kl(samples_from_rows(rows, tokenizer), reference, tokenizer, policy,
                        cfg.ks, cfg.method)
    out = Path(cfg.out) if cfg.out else Path(cfg.generations).with_suffix(".kl.json")
    atomic_write_json(out, {"config": cfg, **result})
    summary = {k: v for k, v in result.items() if k != "per_sequence"} | {"out": str(out)}
    update_metrics_entry(cfg.run, "kl", Path(cfg.generations).stem, summary)
    return summary
