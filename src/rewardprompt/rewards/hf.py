"""Hugging Face sequence-classification reward models as scorers, and the ``rm wrap`` stage.

Any ``AutoModelForSequenceClassification`` reward model (a Hub id or a local folder) gives raw
scores on an arbitrary scale (``logits[:, 0]``). ``wrap_reward_model`` fits the empirical CDF of
those scores on a preference set (chosen and rejected replies alike) and writes a small folder
that ``load_scorer`` reads; the weights stay where they are::

    rm_config.json      "kind": "hf", the model id (or absolute folder) and scoring options
    normaliser.json     the empirical CDF that maps raw scores to [0, 1]

Input text follows the model's tokenizer: with a chat template, the prompt's messages followed
by the response as the assistant turn; without one, ``prompt_context`` (the last user turn) and
the response as a text pair, as the classic encoder reward models were trained. When the text is
too long it is cut from its start (chat template) or in the context first (text pair), so the
response, which is what is being judged, survives.

torch and transformers are imported inside the functions that need them, so importing this
module (and the CLI that lists it) stays cheap.
"""
from __future__ import annotations

import inspect
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..chat import Message
from ..data import PairSource
from ..runs import atomic_write_json, publish_dir, read_json, to_jsonable
from .normaliser import EmpiricalCDFNormaliser, finite_scores

KIND_HF = "hf"
RM_CONFIG = "rm_config.json"
NORMALISER = "normaliser.json"
INPUT_CHAT, INPUT_PAIR = "chat_template", "text_pair"
#: A tokenizer's ``model_max_length`` above this is the "no limit" sentinel, not a real limit.
_NO_LIMIT = 1_000_000
Prompt = Sequence[Message] | str


def wrap_command(model: str = "ID") -> str:
    """The command that turns a Hugging Face reward model into a scorer folder."""
    return f"rewardprompt rm wrap --model {model} --data SOURCE --out DIR"


def unwrapped_error(spec: str) -> ValueError:
    """The error for a Hugging Face model given where a scorer (with a normaliser) is needed."""
    return ValueError(
        f"{spec!r} is a Hugging Face model, not a reward-model folder: its raw scores have no "
        "fixed scale, so they must first be mapped to [0, 1] by a normaliser fitted on a "
        f"preference set. Wrap it first: `{wrap_command(spec)}`, then pass DIR")


@dataclass
class RMWrapConfig(PairSource):
    """Wrap a Hugging Face sequence-classification reward model as a scorer folder ``out``.

    The model scores the chosen and rejected replies of ``data``; the empirical CDF of those raw
    scores becomes the normaliser. The folder records the model by id (or absolute path), so the
    weights are not copied.
    """

    model: str
    """Hub id or local folder of an AutoModelForSequenceClassification reward model."""
    data: str
    """Preference set to fit the normaliser on: any load_preferences source (shipped name,
    .jsonl(.gz) file, Hub dataset id or folder)."""
    out: str
    """Folder to write (rm_config.json and normaliser.json); replaced if it is a wrapped one."""
    max_length: int = 512
    """Tokens per (prompt, response) text; lowered to the tokenizer's own limit."""
    batch_size: int = 16
    """Texts per forward pass, when wrapping and (recorded) when scoring later."""
    trust_remote_code: bool = False
    """Let transformers run the model repository's own code (needed by some reward models)."""


def _model_ref(model: str) -> str:
    """A local folder as its absolute path (so the wrapped folder works from any directory),
    else the Hub id unchanged."""
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


class HFRewardModel:
    """A Hugging Face sequence-classification reward model with an empirical-CDF normaliser;
    implements ``Scorer`` (and ``score_raw`` / ``normaliser``, as the package's reward models,
    so ``rm score`` and ``rm eval`` take it too)."""

    family = KIND_HF

    def __init__(self, model: Any, tokenizer: Any, *, model_id: str, max_length: int = 512,
                 batch_size: int = 16, trust_remote_code: bool = False,
                 normaliser: EmpiricalCDFNormaliser | None = None,
                 name: str = "hf-reward-model") -> None:
        if max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.model_id = str(model_id)
        limit = getattr(tokenizer, "model_max_length", None) or _NO_LIMIT
        self.max_length = int(min(max_length, limit)) if limit < _NO_LIMIT else int(max_length)
        self.batch_size = int(batch_size)
        self.trust_remote_code = bool(trust_remote_code)
        self.normaliser = normaliser
        self.name = name
        self.num_labels = int(getattr(model.config, "num_labels", 1))
        self.input = INPUT_CHAT if getattr(tokenizer, "chat_template", None) else INPUT_PAIR
        # Right padding; a chat text too long loses its start, so the response and the closing
        # tokens a decoder reward model reads its score at survive.
        tokenizer.padding_side = "right"
        if self.input == INPUT_CHAT:
            tokenizer.truncation_side = "left"
        self._forward_keys = set(inspect.signature(model.forward).parameters)

    # ------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, model: str, *, max_length: int = 512, batch_size: int = 16,
                        trust_remote_code: bool = False,
                        normaliser: EmpiricalCDFNormaliser | None = None,
                        name: str | None = None) -> HFRewardModel:
        """Load the model and tokenizer by Hub id or folder, on ``pick_device()``, in eval mode.

        A checkpoint that lacks some weights (a causal LM or base encoder with no trained
        classification head) raises a ValueError: its scores would be random.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..device import pick_device, pick_dtype
        from .model import check_vocab

        ref = _model_ref(model)
        device = pick_device()
        try:
            tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
            net, info = AutoModelForSequenceClassification.from_pretrained(
                ref, dtype=pick_dtype(device), trust_remote_code=trust_remote_code,
                output_loading_info=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot load {model!r} as a Hugging Face sequence-classification "
                             f"reward model: {exc}") from exc
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise ValueError(f"{model!r}: {len(missing)} weight(s) are not in the checkpoint and "
                             f"would be random ({shown}); a reward model must ship a trained "
                             "sequence-classification head")
        check_vocab(tokenizer, net, ref)
        _set_padding(net, tokenizer)
        if int(getattr(net.config, "num_labels", 1)) != 1:
            print(f"[rewardprompt] warning: {model}: the model has {net.config.num_labels} "
                  "labels; its reward is read from the first logit", file=sys.stderr, flush=True)
        net = net.to(device).eval()
        return cls(net, tokenizer, model_id=ref, max_length=max_length, batch_size=batch_size,
                   trust_remote_code=trust_remote_code, normaliser=normaliser,
                   name=name or Path(ref).name or ref)

    @classmethod
    def load(cls, directory: str | Path) -> HFRewardModel:
        """Load a folder written by ``wrap_reward_model``; its name becomes the ``name``."""
        from .model import read_folder

        d = Path(directory)
        opts, normaliser = read_folder(d, KIND_HF, "model", "a wrapped Hugging Face reward model")
        ref = str(opts["model"])
        if Path(ref).is_absolute() and not Path(ref).exists():
            raise FileNotFoundError(f"wrapped reward model {d} points to the model folder {ref}, "
                                    "which does not exist (moved or deleted?); wrap it again: "
                                    f"`{wrap_command()}`")
        return cls.from_pretrained(ref, max_length=int(opts.get("max_length", 512)),
                                   batch_size=int(opts.get("batch_size", 16)),
                                   trust_remote_code=bool(opts.get("trust_remote_code", False)),
                                   normaliser=normaliser, name=d.resolve().name)

    def options(self) -> dict[str, Any]:
        """What ``rm_config.json`` records."""
        return {"kind": KIND_HF, "model": self.model_id, "max_length": self.max_length,
                "batch_size": self.batch_size, "input": self.input,
                "trust_remote_code": self.trust_remote_code, "num_labels": self.num_labels,
                "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch.")}

    def save(self, directory: str | Path, **extra: Any) -> Path:
        """Write ``rm_config.json`` (options plus ``extra``) and ``normaliser.json``."""
        if self.normaliser is None:
            raise ValueError("fit the normaliser before saving: a reward model without one "
                             "cannot produce rewards in [0, 1]")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / RM_CONFIG, {**self.options(), **extra})
        atomic_write_json(d / NORMALISER, self.normaliser.to_dict())
        return d

    # ------------------------------------------------------------ tokenising
    def texts(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[str]:
        """The chat-template texts of (prompt, response) pairs (chat-template models only)."""
        return [self.tokenizer.apply_chat_template(
            _messages(p) + [{"role": "assistant", "content": r}], tokenize=False)
            for p, r in zip(prompts, responses, strict=True)]

    def tokenize(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Any:
        """One padded batch of (prompt, response) pairs, at most ``max_length`` tokens each."""
        tok = self.tokenizer
        kw = {"max_length": self.max_length, "padding": True, "return_tensors": "pt"}
        if self.input == INPUT_CHAT:
            # The template already holds the special tokens the model was trained with.
            return tok(self.texts(prompts, responses), truncation=True,
                       add_special_tokens=False, **kw)
        from .model import prompt_context

        contexts = [prompt_context(p, "last") for p in prompts]
        try:
            return tok(text=contexts, text_pair=list(responses), truncation="only_first", **kw)
        except Exception:  # noqa: BLE001 - the tokenizers backend raises a bare Exception
            # Some response alone exceeds max_length: cut both for those pairs only.
            rows = []
            for c, r in zip(contexts, responses, strict=True):
                try:
                    rows.append(tok(text=c, text_pair=r, truncation="only_first",
                                    max_length=self.max_length))
                except Exception:  # noqa: BLE001
                    rows.append(tok(text=c, text_pair=r, truncation="longest_first",
                                    max_length=self.max_length))
            return tok.pad(rows, padding=True, return_tensors="pt")

    # ------------------------------------------------------------ scoring
    def score_raw(self, prompts: Sequence[Prompt], responses: Sequence[str],
                  batch_size: int | None = None) -> np.ndarray:
        """Raw rewards (``logits[:, 0]``), float32; only their order is meaningful.

        Empty contexts, non-text responses and non-finite scores raise a ValueError naming the
        first index at fault.
        """
        import torch
        from tqdm.auto import tqdm

        from .model import TQDM_MIN, _check_texts, prompt_context

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        contexts = [prompt_context(p, "last") for p in prompts]
        _check_texts(contexts, responses)
        bs = batch_size or self.batch_size
        # Batches of similar length waste little compute on padding; order restored at the end.
        lengths = [sum(len(m["content"]) for m in _messages(p)) + len(r)
                   for p, r in zip(prompts, responses)]
        order = sorted(range(len(responses)), key=lengths.__getitem__)
        device = next(self.model.parameters()).device
        out = np.empty(len(responses), dtype=np.float32)
        with torch.no_grad():
            for i in tqdm(range(0, len(order), bs), desc="scoring", unit="batch", leave=False,
                          disable=len(responses) < TQDM_MIN):
                idx = order[i:i + bs]
                batch = self.tokenize([prompts[j] for j in idx], [responses[j] for j in idx])
                batch = {k: v.to(device) for k, v in batch.items() if k in self._forward_keys}
                logits = self.model(**batch).logits
                out[idx] = logits[:, 0].float().cpu().numpy()
        finite_scores(out, f"reward model '{self.name}' scored")
        return out

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str],
              batch_size: int | None = None) -> np.ndarray:
        """Normalised rewards in [0, 1] (the ``Scorer`` protocol)."""
        if self.normaliser is None:
            raise ValueError(f"reward model '{self.name}' has no fitted normaliser; wrap it "
                             f"first: `{wrap_command(self.model_id)}`")
        return self.normaliser(self.score_raw(prompts, responses, batch_size))


def _set_padding(model: Any, tokenizer: Any) -> None:
    """Make the tokenizer pad with the token the model's config names (the convention the model
    was trained with; a decoder's head reads the last token that is not padding); when the
    config names none, pick one distinct from end-of-sequence and record it in the config."""
    text_cfg = model.config.get_text_config()
    pad_id = getattr(text_cfg, "pad_token_id", None)
    if isinstance(pad_id, int) and 0 <= pad_id < len(tokenizer):
        if tokenizer.pad_token_id != pad_id:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
        return
    from .decoder import pad_token_for

    pad, added = pad_token_for(tokenizer)
    if added:
        tokenizer.add_special_tokens({"pad_token": pad})
        # A new row only ever sits at padded positions, which the attention mask hides.
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
    tokenizer.pad_token = pad
    text_cfg.pad_token_id = tokenizer.pad_token_id


def _is_wrapped(d: Path) -> bool:
    try:
        return read_json(d / RM_CONFIG).get("kind") == KIND_HF
    except (OSError, ValueError, AttributeError):
        return False


def _check_out(out: Path, model_ref: str) -> None:
    """Refuse an ``out`` whose replacement would delete anything but an earlier wrap."""
    m = Path(model_ref)
    if m.exists():
        o, m = out.resolve(), m.resolve()
        if o == m or m.is_relative_to(o) or o.is_relative_to(m):
            raise ValueError(f"--out {out} overlaps the model folder {m}: write the wrapped "
                             "reward model to a folder of its own")
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_wrapped(out))):
        raise ValueError(f"refusing to replace {out}: it exists and is not a wrapped reward "
                         "model folder; pick another --out")


def wrap_reward_model(cfg: RMWrapConfig) -> dict[str, Any]:
    """Score ``cfg.data``'s chosen and rejected replies with ``cfg.model``, fit the normaliser on
    those raw scores and write ``cfg.out`` (replaced as a whole, atomically).

    Returns the folder, the model, how many pairs were scored and the model's pairwise accuracy
    on them (ties count half): a check that the model and the input format agree.
    """
    t0 = time.perf_counter()
    out = Path(cfg.out)
    ref = _model_ref(cfg.model)
    _check_out(out, ref)
    pairs, skipped = cfg.read_pairs(cfg.data)
    rm = HFRewardModel.from_pretrained(cfg.model, max_length=cfg.max_length,
                                       batch_size=cfg.batch_size,
                                       trust_remote_code=cfg.trust_remote_code, name=out.name)
    prompts = [p.prompt for p in pairs]
    raw = rm.score_raw(prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    n = len(pairs)
    chosen, rejected = raw[:n], raw[n:]
    # Chosen and rejected alike: the policy is scored against the spread of good and bad replies.
    rm.normaliser = EmpiricalCDFNormaliser.fit(raw)
    accuracy = float(np.mean(chosen > rejected) + 0.5 * np.mean(chosen == rejected))
    fitted_on = {"data": str(cfg.data), "split": cfg.split, "data_dir": cfg.data_dir,
                 "limit": cfg.limit, "n_pairs": n, "skipped": dict(skipped),
                 "accuracy": round(accuracy, 4)}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    rm.save(tmp, fitted_on=fitted_on)
    publish_dir(tmp, out)
    seconds = time.perf_counter() - t0
    print(f"[rewardprompt] wrapped {cfg.model} as {out}: pairwise accuracy {accuracy:.3f} on "
          f"{n} pairs of {cfg.data}, {seconds:.0f}s", flush=True)
    return to_jsonable({"out": str(out), "model": ref, "input": rm.input,
                        "max_length": rm.max_length, **fitted_on,
                        "raw_mean": round(float(raw.mean()), 4),
                        "raw_std": round(float(raw.std()), 4), "seconds": round(seconds, 2)})
