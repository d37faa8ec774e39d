"""Sampling with vLLM in this process: the same ``generate(prompts, cfg)`` as ``LocalBackend``.

Everything that decides what a policy is shown and how it samples is shared with the local
backend, so that switching backends changes speed, not results' meaning:

* prompts are rendered by ``policy.tokenise.render_prompt`` (the chat template; a trailing
  assistant message is a prefill, rendered open with ``continue_final_message``) with this
  package's tokenizer, and sent as token ids, so vLLM adds no second BOS and applies no template
  of its own;
* the stop tokens are ``local.stop_token_ids`` (the generation config's end-of-turn ids and the
  tokenizer's eos), and a stopped reply is decoded without its stop token, as locally;
* seeds: ``LocalBackend`` seeds each batch from ``cfg.seed`` and the batch's index; vLLM
  batches requests itself, so each request gets its own seed from ``cfg.seed`` and the prompt's
  index (``request_seed``), which also makes a sample independent of what it was batched with;
* ``enable_prefix_caching``: the several targets (and samples) of one prompt share its tokens up
  to the reward block, and a prefill's dialogue is shared by every opener, so vLLM reuses their
  KV cache.

vLLM is imported on first use and is not a dependency of this package (it needs a CUDA machine):
``pip install vllm``.
"""
from __future__ import annotations

import types
from pathlib import Path
from typing import Any

from ..chat import split_prefill
from .base import Completion, Message, SamplingConfig

#: ``LocalBackend`` seeds batch b with ``seed * SEED_STRIDE + b``; vLLM request i gets
#: ``seed * SEED_STRIDE + i``.
SEED_STRIDE = 100003


def import_vllm() -> Any:
    """The ``vllm`` module, or an ImportError that says how to get it."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError("the vllm backend needs vLLM, which is not installed: pip install vllm "
                          "(on a machine with a CUDA GPU); or sample with --backend local, or "
                          "serve the model with vLLM and use --backend openai-chat") from exc
    return vllm


def request_seed(seed: int, index: int) -> int:
    """The seed of the ``index``-th prompt's request (see the module docstring)."""
    return seed * SEED_STRIDE + index


def sampling_params(vllm: Any, cfg: SamplingConfig, seed: int, stop_ids: list[int]) -> Any:
    """``vllm.SamplingParams`` for one request, with the local backend's settings: temperature
    and top_p as given (temperature 0: greedy), no top-k, at most ``max_new_tokens``, stopping on
    ``stop_ids``; special tokens are left out of the text."""
    sample = cfg.temperature > 0
    return vllm.SamplingParams(n=1, temperature=cfg.temperature if sample else 0.0,
                               top_p=cfg.top_p if sample else 1.0, top_k=-1,
                               max_tokens=cfg.max_new_tokens, seed=seed,
                               stop_token_ids=list(stop_ids), skip_special_tokens=True)


def to_completion(output: Any, prompt: list[Message], tokenizer: Any,
                  stop_ids: list[int]) -> Completion:
    """A ``Completion`` from one vLLM ``CompletionOutput``, as ``LocalBackend`` makes it: the
    stop token not counted nor decoded, a prefill put back in front of the text."""
    ids = list(output.token_ids)
    finished = output.finish_reason == "stop"
    if finished and ids and ids[-1] in stop_ids:
        ids = ids[:-1]
    text = split_prefill(prompt)[1] + tokenizer.decode(ids, skip_special_tokens=True)
    return Completion(text=text.strip(), n_tokens=len(ids), finished=finished)


def _generation_config(path: str) -> Any:
    """An object with the folder's ``generation_config`` (None when it has none), which is what
    ``stop_token_ids`` reads of a model."""
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(path)
    except (OSError, ValueError):
        config = None
    return types.SimpleNamespace(generation_config=config)


class VLLMBackend:
    """A policy served by an in-process ``vllm.LLM`` (``--backend vllm``)."""

    def __init__(self, model: str, *, gpu_memory_utilization: float = 0.9,
                 tensor_parallel_size: int = 1, max_model_len: int | None = None,
                 dtype: str = "auto", **llm_options: Any) -> None:
        from ..models import load_tokenizer, resolve_policy
        from .local import stop_token_ids

        self.vllm = import_vllm()
        path = resolve_policy(model)
        if (Path(path) / "adapter_config.json").is_file():
            raise ValueError(f"{path} is a LoRA adapter; the vllm backend loads whole models "
                             "(rewardprompt sft saves its policies merged)")
        self.tokenizer = load_tokenizer(model, padding_side="left")
        self.eos_ids = stop_token_ids(_generation_config(path), self.tokenizer)
        self.llm = self.vllm.LLM(model=path, tokenizer=path, enable_prefix_caching=True,
                                 gpu_memory_utilization=gpu_memory_utilization,
                                 tensor_parallel_size=tensor_parallel_size,
                                 max_model_len=max_model_len, dtype=dtype, **llm_options)

    def generate(self, prompts: list[list[Message]], cfg: SamplingConfig) -> list[Completion]:
        """One completion per prompt, in order (the ``PolicyBackend`` protocol)."""
        from ..policy.tokenise import render_prompt

        ids = self.tokenizer([render_prompt(self.tokenizer, p) for p in prompts],
                             add_special_tokens=False)["input_ids"]
        params = [sampling_params(self.vllm, cfg, request_seed(cfg.seed, i), self.eos_ids)
                  for i in range(len(prompts))]
        outputs = self.llm.generate([{"prompt_token_ids": x} for x in ids], params)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM answered {len(outputs)} of {len(prompts)} requests")
        return [to_completion(o.outputs[0], p, self.tokenizer, self.eos_ids)
                for o, p in zip(outputs, prompts)]
