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
  the tokenizer, the options that shape the features (pooling, max_length, turns, layers, the
  end-of-turn token), whether passes run in bf16, this package's code, the computing
  libraries' versions and the device (``stage_cache.code_hash`` and ``environment``);
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
turn off the stage cache.
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

    if turns == "last" or isinstance(prompt, str):
        return prompt_context(prompt, "last")
    return json.dumps([[m.get("role"), m.get("content")] for m in prompt])


class FeatureStore:
    """Features on disk by featuriser and text digest, with what this process has read kept in
    memory (shards are only ever added, so a shard read once stays valid)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        # featuriser -> (shard names read, digest -> feature row)
        self._seen: dict[str, tuple[set[str], dict[bytes, np.ndarray]]] = {}

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
        return {d: rows[d] for d in digests if d in rows}

    def add(self, featuriser: str, digests: Sequence[bytes], features: np.ndarray) -> None:
        """Store ``features`` (one row per digest) as a new shard."""
        from safetensors.numpy import save_file

        if not len(digests):
            return
        feats = np.ascontiguousarray(features, dtype=np.float32)
        folder = self.root / featuriser
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex}{SHARD_SUFFIX}"
        tmp = folder / f".{name}.tmp"
        keys = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 32)
        save_file({"digests": keys, "features": feats}, str(tmp))
        os.replace(tmp, folder / name)
        read, rows = self._seen.setdefault(featuriser, (set(), {}))
        read.add(name)
        rows.update(zip(digests, feats))


_STORES: dict[Path, FeatureStore] = {}


def featuriser_key(model: BaseRewardModel) -> str:
    """What decides ``model``'s features but its head, hashed (see the module's docstring).

    The tensors are hashed once per model and again only after one of them changed (a training
    step, a loaded state dict): torch counts every in-place write in a tensor's version.
    """
    import torch

    from ..stage_cache import code_hash, environment

    head = {id(p) for p in model.head.parameters()}
    tensors = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()]
               if id(t) not in head]
    state = tuple((t.data_ptr(), t._version) for _, t in tensors)
    known = getattr(model, "_featuriser", None)
    if known is not None and known[0] == state:
        return known[1]
    options = {k: v for k, v in model.options().items() if k not in ("kind", "base_model")}
    described = {"options": options, "bf16": model.uses_bf16(), "code": code_hash(),
                 "environment": environment(), "tokenizer": tokenizer_fingerprint(model.tokenizer)}
    h = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode("utf-8"))
    with torch.no_grad():
        for name, t in tensors:
            flat = t.detach().cpu().contiguous().reshape(-1)
            h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode("utf-8"))
            h.update(flat.view(torch.uint8).numpy().tobytes())
    key = h.hexdigest()[:32]
    model._featuriser = (state, key)
    return key


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of a tokenizer's whole definition: its vocabulary and rules (the fast tokenizer's
    JSON), chat template and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = [backend.to_str() if backend is not None else repr(tokenizer.get_vocab()),
             str(getattr(tokenizer, "chat_template", None)),
             json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str),
             str(getattr(tokenizer, "padding_side", None)),
             str(getattr(tokenizer, "truncation_side", None))]
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()
