"""Reward-model features, computed once per featuriser and text.

A reward model of either family is a linear head on pooled features of its backbone
(``BaseRewardModel.embed``). Frozen-feature reward models that share a backbone compute the
same features: a dimension's labelling and test RMs score the same held-out pairs, labelled
replies and policy samples; every dimension of a recipe scores the same replies; the variants
of an experiment train RMs on overlapping pairs (the combined reward's pairs are the four
subsets' pairs). The store keeps each feature on disk, so each is computed once.

A feature is keyed by its **featuriser** and its **text**:

* the featuriser (``featuriser_key``) is a hash of everything that decides the features but
  the head: every backbone tensor (a fine-tuned or retrained backbone is another featuriser),
  its config, the tokenizer, the options that shape the features (pooling, max_length, turns,
  layers, the end-of-turn token), whether passes run in bf16, the device the model runs on,
  this package's code and the computing libraries' versions (``stage_cache.code_hash`` and
  ``environment``);
* the text is what the family reads: the context (the last user turn, or the whole dialogue
  with ``turns="all"``) and the response.

Reward models embed texts in batches of one token length (``BaseRewardModel._batched``), so
nothing is padded and a text's feature does not depend on the texts batched with it: on the
project's CPU a stored feature is bitwise the one a fresh computation gives (docs/results.md),
and a run gives the same labels whatever ran before it. Where kernels round differently by batch
size (a GPU may), the two agree to that rounding. Features come out in the caller's order,
whether read or computed.

Layout: ``$REWARDPROMPT_CACHE/features/<featuriser>/<shard>.safetensors``, each shard holding
``digests`` (uint8, n x 32: sha256 of the text) and ``features`` (float32, n x hidden). Every
write is a new shard, written under a temporary name and renamed into place, so processes that
write at once and killed runs leave only whole shards; a shard that cannot be read is skipped.
``REWARDPROMPT_CACHE=off`` and a recipe's ``cache: false`` (``disabled``) turn it off, as they
turn off the stage cache. The store only grows (any change to the package's code starts new
featurisers): delete ``$REWARDPROMPT_CACHE/features`` to reclaim its space.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .model import BaseRewardModel, Prompt

FEATURES = "features"
SHARD_SUFFIX = ".safetensors"
_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("rewardprompt_features",
                                                               default=True)


@contextlib.contextmanager
def disabled(off: bool = True) -> Iterator[None]:
    """Within the block, no feature is read from or written to the store (``off=False``: no
    change), as a recipe's ``cache: false`` asks."""
    token = _ENABLED.set(False) if off else None
    try:
        yield
    finally:
        if token is not None:
            _ENABLED.reset(token)


def feature_store() -> FeatureStore | None:
    """The store under ``$REWARDPROMPT_CACHE/features``; None when the cache is off."""
    from ..stage_cache import cache_home

    home = cache_home()
    if home is None or not _ENABLED.get():
        return None
    root = home / FEATURES
    store = _STORES.get(root)
    if store is None:
        store = _STORES[root] = FeatureStore(root)
    return store


def text_digest(context: str, response: str) -> bytes:
    """sha256 of one (context, response) text, as the store keys it."""
    return hashlib.sha256(json.dumps([context, response]).encode("utf-8")).digest()


def feature_context(prompt: Prompt, turns: str) -> str:
    """What a reward model reads of ``prompt``: the last user turn (``turns="last"``, which both
    families reduce every prompt to), or every message with its role (``"all"``)."""
    from .model import prompt_context

    if turns == "last":
        return prompt_context(prompt, "last")
    if isinstance(prompt, str):  # a JSON string: never equal to a dialogue's JSON list
        return json.dumps(prompt)
    return json.dumps([[m.get("role"), m.get("content")] for m in prompt])


class FeatureStore:
    """Features on disk by featuriser and text digest, with what this process has read kept in
    memory (shards are only ever added, so a shard read once stays valid)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        # featuriser -> (shard names read, digest -> feature row)
        self._seen: dict[str, tuple[set[str], dict[bytes, np.ndarray]]] = {}
        #: Texts whose features were read from the store, and computed, in this process.
        self.read = self.computed = 0

    def _index(self, featuriser: str) -> dict[bytes, np.ndarray]:
        from safetensors.numpy import load_file

        read, rows = self._seen.setdefault(featuriser, (set(), {}))
        folder = self.root / featuriser
        try:
            names = sorted(p.name for p in folder.iterdir() if p.name.endswith(SHARD_SUFFIX))
        except FileNotFoundError:
            return rows
        for name in names:
            if name in read:
                continue
            read.add(name)
            try:
                shard = load_file(str(folder / name))
                digests, feats = shard["digests"], shard["features"]
                if digests.shape != (len(feats), 32):
                    raise ValueError(f"digests of shape {digests.shape} for {len(feats)} rows")
            except Exception as exc:  # noqa: BLE001 - any unreadable shard is skipped alike
                warnings.warn(f"feature store: skipping unreadable shard {folder / name} "
                              f"({type(exc).__name__}: {exc}); its features are recomputed",
                              stacklevel=2)
                continue
            rows.update(zip((bytes(d) for d in digests), feats))
        return rows

    def lookup(self, featuriser: str, digests: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The stored features among ``digests``."""
        rows = self._index(featuriser)
        found = {d: rows[d] for d in digests if d in rows}
        self.read += len(found)
        return found

    def add(self, featuriser: str, digests: Sequence[bytes], features: np.ndarray) -> None:
        """Keep ``features`` (one row per digest) for this process, and on disk as a new shard.

        Under a launch of several processes, which all compute the same features, only the
        main one writes. A write that fails (a full disk, a read-only cache) is warned about
        and skipped: the features were computed, and scoring goes on without the store.
        """
        from safetensors.numpy import save_file

        from ..runs import process_rank

        if not len(digests):
            return
        self.computed += len(digests)
        feats = np.ascontiguousarray(features, dtype=np.float32)
        read, rows = self._seen.setdefault(featuriser, (set(), {}))
        rows.update(zip(digests, feats))
        if process_rank() != 0:
            return
        folder = self.root / featuriser
        name = f"{os.getpid()}-{uuid.uuid4().hex}{SHARD_SUFFIX}"
        tmp = folder / f".{name}.tmp"
        keys = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 32)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            save_file({"digests": keys, "features": feats}, str(tmp))
            os.replace(tmp, folder / name)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            warnings.warn(f"feature store: cannot write to {folder} ({exc}); these features "
                          "are kept for this process only", stacklevel=2)
            return
        read.add(name)


_STORES: dict[Path, FeatureStore] = {}


def featuriser_key(model: BaseRewardModel) -> str:
    """What decides ``model``'s features but its head, hashed (see the module's docstring).

    The description (options, config, tokenizer, precision, device, code, environment) is read
    on every call; the tensors are hashed once per model and again only after one of them
    changed (a training step, a loaded state dict), as torch counts every in-place write in a
    tensor's version. Inference tensors have no version: they are hashed on every call.
    """
    from ..stage_cache import code_hash, environment

    described = {"options": {k: v for k, v in model.options().items()
                             if k not in ("kind", "base_model")},
                 "config": _config(model), "tokenizer": tokenizer_fingerprint(model.tokenizer),
                 "bf16": model.uses_bf16(), "device": model.device.type, "code": code_hash(),
                 "environment": environment()}
    h = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode("utf-8"))
    h.update(_tensors_hash(model).encode("ascii"))
    return h.hexdigest()[:32]


def _tensors_hash(model: BaseRewardModel) -> str:
    import torch

    head = {id(p) for p in model.head.parameters()}
    tensors = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()]
               if id(t) not in head]
    inference = any(t.is_inference() for _, t in tensors)
    state = None if inference else tuple((t.data_ptr(), t._version) for _, t in tensors)
    known = getattr(model, "_featuriser", None)
    if state is not None and known is not None and known[0] == state:
        return known[1]
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in tensors:
            flat = t.detach().cpu().contiguous().reshape(-1)
            h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode("utf-8"))
            h.update(flat.view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()
    model._featuriser = None if state is None else (state, digest)
    return digest


#: Config fields that name where a model came from or how it was saved, not what it computes:
#: the base model and the folder of a trained RM built on it must share their features.
_CONFIG_VOLATILE = ("_name_or_path", "transformers_version", "architectures", "dtype",
                    "torch_dtype", "_commit_hash", "_attn_implementation_autoset")


def _config(model: BaseRewardModel) -> dict[str, Any]:
    """The backbone's Hugging Face config (layer norms' eps, attention options, activations),
    less ``_CONFIG_VOLATILE``."""
    backbone = getattr(model, "model", None) or getattr(model, "encoder", None)
    config = getattr(backbone, "config", None)
    if config is None:
        return {}
    return {k: v for k, v in config.to_dict().items() if k not in _CONFIG_VOLATILE}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of a tokenizer's definition: its vocabulary and rules (a fast tokenizer's JSON,
    less the truncation and padding that every call resets; a slow one's class and vocabulary),
    chat template, special tokens and the side it truncates."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Serialised with no truncation or padding, then both put back as they were (as
        # transformers itself sets them on every call): no JSON round trip of the vocabulary.
        truncation, padding = backend.truncation, backend.padding
        backend.no_truncation()
        backend.no_padding()
        try:
            rules = backend.to_str()
        finally:
            if truncation is not None:
                backend.enable_truncation(**truncation)
            if padding is not None:
                backend.enable_padding(**padding)
    else:
        rules = type(tokenizer).__name__ + json.dumps(tokenizer.get_vocab(), sort_keys=True)
    parts = [rules, str(getattr(tokenizer, "chat_template", None)),
             json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str),
             str(getattr(tokenizer, "truncation_side", None))]
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()
