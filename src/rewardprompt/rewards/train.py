"""The ``rm train`` stage: pairwise (Bradley-Terry) reward-model training.

``train_reward_model(RMTrainConfig)`` trains with ``-logsigmoid(r_chosen - r_rejected - margin)``
on the train part of the hash split (optionally one half of it, for an independent held-out
"test" reward model; optionally an ensemble of k seeds), fits the score normaliser on the raw
scores of every training response, reports held-out accuracy (``rewards.eval``) and saves the
model folder atomically. Pairs whose chosen and rejected replies are the same text state no
preference: they are skipped and counted by default (``drop_identical``), or raise a
``DataError`` naming the pair.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import PairSource, drop_identical
from ..errors import DataError
from ..runs import (atomic_write_json, rm_dir, in_run, process_rank, publish_dir, recorded,
                    to_jsonable, update_metrics_entry)
from .eval import accuracy_from_raw, pair_field, pair_raw, pair_report
from .normaliser import EmpiricalCDFNormaliser

if TYPE_CHECKING:  # torch, transformers and the models load on first use: `--help` stays fast
    import torch

    from .model import BaseRewardModel, RewardModel

METRICS = "metrics.json"
WARMUP_FRACTION = 0.1
#: Inverse L2 strengths the frozen-feature head (logistic regression on scaled features)
#: chooses from by cross-validation.
HEAD_CS = np.logspace(-4, 2, 13)
HEAD_CV_FOLDS = 5
HALVES = ("first", "second")
#: Salt of the pair-id hash that picks a training half; unrelated to the train/test split's salt,
#: so the halves cut across it evenly.
HALF_SALT = "rewardprompt-half"


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def assign_half(pair: Any, salt: str = HALF_SALT) -> str:
    """``"first"`` or ``"second"``, from sha256(salt + pair id): stable across runs and machines."""
    h = hashlib.sha256((salt + str(pair_field(pair, "id"))).encode("utf-8")).digest()
    return HALVES[0] if int.from_bytes(h[:8], "big") < 2**63 else HALVES[1]


def select_half(pairs: Sequence[Any], half: str | None) -> list[Any]:
    """The pairs of one half (``None``: all of them), in input order."""
    if half is None:
        return list(pairs)
    if half not in HALVES:
        raise ValueError(f"half must be one of {HALVES} or None, got {half!r}")
    return [p for p in pairs if assign_half(p) == half]


# ---------------------------------------------------------------- training
@dataclass
class RMTrainConfig(PairSource):
    """Reward-model training on any ``load_preferences`` source.

    With frozen features (the default) training costs one forward pass over the training
    responses plus a logistic-regression head; ``freeze_encoder=False`` fine-tunes end to end
    (``lr``, ``epochs`` and, for the encoder, ``head_lr`` then apply).
    """

    data: str
    """Preference pairs: a file, a shipped name or a Hub id."""
    out: str | None = None
    """The reward-model folder to write (default: RUN/rm/NAME, NAME the data file's stem)."""
    run: str | None = None
    """A run directory: the stage records itself in its manifest and its accuracy in metrics.json."""
    eval_data: str | None = None
    """Report the held-out accuracy on these pairs instead of the hash split's held-out part."""
    eval_limit: int | None = None
    """Score at most the first this many held-out pairs for the accuracy (None: all)."""
    family: str = "encoder"
    """encoder: a MiniLM-style encoder, mean pooling, scalar head; decoder: a causal LM with a
    scalar head (fine-tuned through TRL's RewardTrainer)."""
    base_model: str | None = None
    """None: the family's shipped default (all-MiniLM-L6-v2 / SmolLM2-135M-Instruct)."""
    test_fraction: float = 0.2
    """Pairs held out by the hash split of the first user turn; 0 trains on everything."""
    max_length: int = 128
    """Tokens per (prompt, response) pair; the prompt is cut first."""
    turns: str = "last"
    """last: the last user turn is the context; all: the whole dialogue."""
    epochs: int = 1
    """Full training only: passes over the pairs."""
    lr: float = 3e-5
    """Full training only: the learning rate of the encoder (decoder: of the whole model)."""
    head_lr: float = 1e-3
    """Full training, encoder family only: the learning rate of the head."""
    train_layers: int = 0
    """Decoder family, full training: fine-tune only the top k blocks (with the final norm and
    the head); 0 trains every block."""
    layers: int = 0
    """Decoder family: keep only the first k blocks of the LM (0: all)."""
    pooling: str | None = None
    """Decoder family: last (the sequence-classification head at the end-of-turn token, needed
    for fine-tuning) or mean (of the response tokens, frozen features only); None: the family's
    own (encoder mean, decoder last)."""
    batch_size: int = 16
    """Pairs per step."""
    seed: int = 0
    """Seed of the head and the data order."""
    freeze_encoder: bool = True
    """Train only the head, on features computed once."""
    margin: float = 0.0
    """Full training only: the loss is -logsigmoid(r_c - r_r - margin), which pushes the raw
    scores further apart."""
    ensemble: int = 1
    """Full training only: k models trained with seeds seed..seed+k-1, saved as one folder; the
    reward is the mean of their raw scores."""
    half: str | None = None
    """first or second: train only on that half of the training pairs (by a hash of the pair
    id), so that a held-out test reward model can be trained on the other half."""
    drop_identical: bool = True
    """Skip and count pairs whose chosen equals rejected (they state no preference), or raise."""
    cpu_bf16: bool = True
    """bf16 autocast where the hardware computes bf16 natively (a GPU with bf16, a CPU with
    AVX512-BF16 or AMX); elsewhere fp32. Saved with the model, which then scores the same way."""

    def validate(self) -> None:
        from .model import FAMILIES
        from .model import TURNS

        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.train_layers < 0 or self.layers < 0:
            raise ValueError("train_layers and layers must be >= 0")
        if (self.train_layers or self.layers) and self.family != "decoder":
            raise ValueError("train_layers and layers apply to the decoder family only")
        if self.train_layers and self.freeze_encoder:
            raise ValueError(f"train_layers={self.train_layers} fine-tunes blocks, but "
                             "freeze_encoder=True trains only the head; set "
                             "freeze_encoder=False")
        if self.family == "decoder" and self.max_length < 16:
            raise ValueError(f"max_length must be at least 16 tokens for a decoder reward "
                             f"model, got {self.max_length}")
        if self.pooling not in (None, "last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {self.pooling!r}")
        if self.family == "encoder" and self.pooling not in (None, "mean"):
            raise ValueError("the encoder family mean-pools its last layer; pooling="
                             f"{self.pooling!r} applies to the decoder family only")
        if self.pooling == "mean" and not self.freeze_encoder:
            raise ValueError("pooling='mean' is a head on frozen features; fine-tuning through "
                             "RewardTrainer reads the last token: use pooling='last' or "
                             "freeze_encoder=True")
        if self.turns not in TURNS:
            raise ValueError(f"turns must be one of {TURNS}, got {self.turns!r}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.head_lr <= 0:
            raise ValueError("learning rates must be positive")
        if not math.isfinite(self.margin) or self.margin < 0:
            raise ValueError(f"margin must be finite and >= 0, got {self.margin}")
        if self.margin != 0 and self.freeze_encoder:
            raise ValueError(f"margin={self.margin} is not supported with freeze_encoder=True: the "
                             "frozen-encoder head is fitted as a logistic regression, which has "
                             "no margin; set freeze_encoder=False or margin=0")
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be at least 1, got {self.ensemble}")
        if self.ensemble > 1 and self.freeze_encoder:
            raise ValueError(f"ensemble={self.ensemble} needs freeze_encoder=False: with a frozen "
                             "encoder the head is a convex problem solved to convergence, so "
                             "every seed would train the same member")
        if self.half is not None and self.half not in HALVES:
            raise ValueError(f"half must be one of {HALVES} or None, got {self.half!r}")


def _bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
             margin: float = 0.0) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood, with the chosen reply asked to lead by ``margin``."""
    import torch.nn.functional as F

    return -F.logsigmoid(r_chosen - r_rejected - margin).mean()


def _optimiser(model: RewardModel, cfg: RMTrainConfig, steps: int):
    from transformers import get_linear_schedule_with_warmup
    import torch

    groups = [{"params": model.head.parameters(), "lr": cfg.head_lr, "weight_decay": 0.0}]
    if not cfg.freeze_encoder:
        groups.append({"params": model.encoder.parameters(), "lr": cfg.lr, "weight_decay": 0.01})
    opt = torch.optim.AdamW(groups)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(WARMUP_FRACTION * steps), steps)
    return opt, sched


def _batches(pairs: Sequence[Any], cfg: RMTrainConfig, seed: int) -> list[np.ndarray]:
    """Index batches for all epochs, grouped by length, in random order.

    Chosen and rejected are padded together to the longest text in the batch, so batching
    similar lengths (transformers' length-grouped sampling) saves much of the compute on CPU;
    shuffling the batches keeps the order of lengths from being systematic.
    """
    from .model import prompt_context
    from transformers.trainer_pt_utils import get_length_grouped_indices
    import torch

    lengths = [len(prompt_context(pair_field(p, "prompt"), cfg.turns))
               + max(len(pair_field(p, "chosen")), len(pair_field(p, "rejected"))) for p in pairs]
    g = torch.Generator().manual_seed(seed)
    out: list[np.ndarray] = []
    for _ in range(cfg.epochs):
        order = get_length_grouped_indices(lengths, cfg.batch_size, generator=g)
        batches = [np.asarray(order[i:i + cfg.batch_size])
                   for i in range(0, len(order), cfg.batch_size)]
        out.extend(batches[j] for j in torch.randperm(len(batches), generator=g).tolist())
    return out


def _bt_loss_share(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float,
                   weight: float) -> torch.Tensor:
    """One process's share of a batch's Bradley-Terry loss: its pairs' summed loss times
    ``weight`` (processes / pairs in the whole batch), so that the mean DDP takes over the
    processes' gradients is the gradient of the whole batch's mean loss."""
    import torch.nn.functional as F

    return -F.logsigmoid(r_chosen - r_rejected - margin).sum() * weight


def _train_full(model: RewardModel, pairs: Sequence[Any], cfg: RMTrainConfig, seed: int) -> None:
    """Encoder family: fine-tune encoder and head end to end with the Bradley-Terry loss.

    A hand-written loop, not TRL's RewardTrainer: that trainer takes an
    ``AutoModelForSequenceClassification``, whose BERT head reads the [CLS] pooler, while this
    family's head reads the mean of the token states that the sentence encoder was trained to
    produce. ``rewardprompt bench rm`` times this loop against RewardTrainer on the same weights.

    The loop runs through ``accelerate.Accelerator``: under ``accelerate launch`` (or torchrun)
    with k processes the model is wrapped in DDP, every process draws the same batches (the same
    seed), takes every k-th pair of each and weighs its loss so that the averaged gradient is
    that of the whole batch: ``batch_size`` stays the pairs per optimiser step, and the weights
    match one process's (up to float rounding, and dropout, whose masks differ).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs
    from tqdm.auto import tqdm

    prompts = [pair_field(p, "prompt") for p in pairs]
    chosen = [pair_field(p, "chosen") for p in pairs]
    rejected = [pair_field(p, "rejected") for p in pairs]
    batches = _batches(pairs, cfg, seed)
    opt, sched = _optimiser(model, cfg, len(batches))
    # The model keeps its own precision decision (cpu_bf16, saved with it): no mixed precision
    # from a launcher's config. The BERT pooler takes no part in the loss: DDP must allow that.
    # A Trainer earlier in this process (a decoder RM, SFT) left accelerate's state set to its
    # own precision; start from a fresh one, as every TrainingArguments does (the process group
    # stays).
    AcceleratorState._reset_state(reset_partial_state=True)
    acc = Accelerator(mixed_precision="no", cpu=_launch_on_cpu(), kwargs_handlers=[
        DistributedDataParallelKwargs(find_unused_parameters=True)])
    # The scheduler is stepped once per global batch here, not through accelerate (which would
    # step it once per process).
    wrapped, opt = acc.prepare(model, opt)
    n, rank = acc.num_processes, acc.process_index
    model.train()
    bar = tqdm(batches, desc="reward model", unit="step", disable=not acc.is_main_process)
    for idx in batches:
        mine, weight = idx[rank::n], n / len(idx)
        if len(mine) == 0:  # a last batch smaller than the processes: take part, add nothing
            mine, weight = idx[:1], 0.0
        ps = [prompts[i] for i in mine]
        # Chosen and rejected go through one forward pass: half the kernel launches.
        batch = model.tokenize(ps + ps, [chosen[i] for i in mine] + [rejected[i] for i in mine])
        r = wrapped(batch)
        loss = (_bt_loss(r[:len(mine)], r[len(mine):], cfg.margin) if n == 1 else
                _bt_loss_share(r[:len(mine)], r[len(mine):], cfg.margin, weight))
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(wrapped.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()


def _train_head(model: BaseRewardModel, pairs: Sequence[Any], cfg: RMTrainConfig,
                seed: int) -> np.ndarray:
    """Frozen features: embed every training response once, then fit only the linear head.

    With fixed features e, Bradley-Terry with a linear head is logistic regression without an
    intercept on e_chosen - e_rejected, so it is solved to convergence by scikit-learn instead of
    with a few noisy AdamW epochs; ``lr``, ``head_lr`` and ``epochs`` do not apply, nor does
    ``margin`` (``RMTrainConfig.validate`` rejects it). The differences are scaled to unit root
    mean square per feature and the L2 strength is chosen by 5-fold cross-validation of the
    log-likelihood on the training pairs (``HEAD_CS``): the best strength differs by orders of
    magnitude between MiniLM and a decoder's hidden states. Half the differences are negated
    (label 0) so both classes are present, which leaves the likelihood unchanged. Returns the raw
    scores of all training responses (chosen first); the chosen C is ``model.head_c``.
    """
    import torch

    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    prompts = [pair_field(p, "prompt") for p in pairs]
    emb = model.embed_texts(prompts + prompts, [pair_field(p, "chosen") for p in pairs]
                            + [pair_field(p, "rejected") for p in pairs]).double().numpy()
    n = len(pairs)
    sign = np.random.default_rng(seed).permutation(np.arange(n) % 2) * 2 - 1
    diff = (emb[:n] - emb[n:]) * sign[:, None]
    rms = np.sqrt(np.mean(diff ** 2, axis=0))
    # A relative floor: features that barely differ between chosen and rejected are not blown
    # up to unit scale (their weight would then amplify numerical noise at scoring time).
    scale = np.maximum(rms, 1e-3 * max(float(np.median(rms)), 1e-12))
    diff = diff / scale
    labels = (sign > 0).astype(int)
    if labels.min() == labels.max():  # one pair: add its mirror image so both classes exist
        diff, labels = np.concatenate([diff, -diff]), np.concatenate([labels, 1 - labels])
    folds = min(HEAD_CV_FOLDS, int(np.bincount(labels).min()))
    if folds >= 2:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)  # not file-order blocks
        with warnings.catch_warnings():  # scikit-learn's notice about its future attributes
            warnings.simplefilter("ignore", FutureWarning)
            clf = LogisticRegressionCV(Cs=HEAD_CS, cv=cv, scoring="neg_log_loss",
                                       fit_intercept=False, max_iter=5000).fit(diff, labels)
        model.head_c = float(np.ravel(clf.C_)[0])
    else:  # too few pairs to cross-validate
        clf = LogisticRegression(C=1.0, fit_intercept=False, max_iter=5000).fit(diff, labels)
        model.head_c = 1.0
    weight = clf.coef_ / scale[None, :]  # undo the scaling: the head reads raw features
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(weight, dtype=model.head.weight.dtype))
        if model.head.bias is not None:
            model.head.bias.zero_()  # a constant offset cancels in every comparison
    return emb @ weight[0]


def _freeze_below(model: BaseRewardModel, top: int) -> None:
    """Decoder family: train only the top ``top`` blocks, the final norm and the score head."""
    from .decoder import decoder_layers

    layers = decoder_layers(model.model, "train_layers")
    if top > len(layers):
        raise ValueError(f"train_layers={top} but the model has {len(layers)} blocks; "
                         "use train_layers=0 to train every block")
    model.requires_grad_(False)
    for module in [*layers[-top:], getattr(model.model.base_model, "norm", None), model.head]:
        if module is not None:
            module.requires_grad_(True)


def _train_trl(model: BaseRewardModel, pairs: Sequence[Any], cfg: RMTrainConfig, seed: int,
               workdir: Path) -> None:
    """Decoder family, full training with TRL's ``RewardTrainer`` (the Bradley-Terry loss, with
    ``margin`` as its per-pair margin column).

    Pairs are tokenised here by the model's own ``encode`` (prompt cut from the left, response
    closed by the end-of-turn token), so RewardTrainer gets ``chosen_ids``/``rejected_ids`` that
    already fit ``max_length``: its own path would drop every longer pair instead of truncating
    it. A ``length`` column lets the Trainer group pairs of similar length into batches, which
    saves most of the padding compute on CPU. Training is short (one stage of a run), so it
    keeps no checkpoints; a killed run retrains the reward model.

    The fresh score head is first fitted on the frozen features (``_train_head``: a linear probe,
    then fine-tuning, which keeps the pretrained features from being distorted by gradients
    through a random head, Kumar et al. 2022).
    """
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    model.requires_grad_(False)
    _train_head(model, pairs, cfg, seed)
    if cfg.train_layers:
        _freeze_below(model, cfg.train_layers)
    else:
        model.requires_grad_(True)
    chosen = [model.encode(pair_field(p, "prompt"), pair_field(p, "chosen")) for p in pairs]
    rejected = [model.encode(pair_field(p, "prompt"), pair_field(p, "rejected")) for p in pairs]
    rows: dict[str, list] = {"chosen_ids": chosen, "rejected_ids": rejected,
                             "length": [max(len(c), len(r)) for c, r in zip(chosen, rejected)]}
    if cfg.margin:
        rows["margin"] = [cfg.margin] * len(pairs)
    use_cuda = model.device.type == "cuda"
    steps = cfg.epochs * math.ceil(len(pairs) / cfg.batch_size)
    # batch_size is the pairs per optimiser step: split over the processes of a launch.
    per_device = cfg.batch_size // world_size()
    # transformers >= 5.3 names the length-grouped sampler by a strategy; older ones by a flag.
    fields = {f.name for f in dataclasses.fields(RewardConfig)}
    grouping = ({"train_sampling_strategy": "group_by_length"}
                if "train_sampling_strategy" in fields else {"group_by_length": True})
    args = RewardConfig(
        output_dir=str(workdir), num_train_epochs=cfg.epochs,
        per_device_train_batch_size=per_device, learning_rate=cfg.lr,
        lr_scheduler_type="linear", warmup_steps=math.ceil(WARMUP_FRACTION * steps),
        weight_decay=0.01, max_grad_norm=1.0, max_length=None, disable_dropout=True,
        remove_unused_columns=False, logging_steps=max(1, min(10, steps // 10)),
        save_strategy="no", report_to="none", seed=seed, data_seed=seed, use_cpu=not use_cuda,
        bf16=model.uses_bf16(), dataloader_num_workers=0, **grouping)
    trainer = RewardTrainer(model=model.model, args=args, train_dataset=Dataset.from_dict(rows),
                            processing_class=model.tokenizer)
    try:
        trainer.train()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    model.eval()


def set_precision(model: BaseRewardModel, cfg: RMTrainConfig) -> str:
    """Apply ``cfg.cpu_bf16`` and record on the model (saved with it) whether its passes really
    run in bf16 here, so that it later scores the way it was fitted; returns "bf16" or "fp32"."""
    from ..device import use_bf16

    model.cpu_bf16 = use_bf16(model.device, cpu_bf16=cfg.cpu_bf16)
    return "bf16" if model.cpu_bf16 else "fp32"


def fine_tune(model: BaseRewardModel, pairs: Sequence[Any], cfg: RMTrainConfig, seed: int,
              workdir: Path) -> None:
    """Train ``model`` end to end on ``pairs``: the family's trainer (the encoder's loop, or TRL's
    RewardTrainer for the decoder, which keeps its scratch files in ``workdir``)."""
    if cfg.family == "decoder":
        _train_trl(model, pairs, cfg, seed, workdir)
    else:
        _train_full(model, pairs, cfg, seed)
    model._featuriser = None  # new weights: hashed again when next embedded (rewards.features)


def _train_member(cfg: RMTrainConfig, train: Sequence[Any], seed: int, name: str,
                  workdir: Path) -> tuple[BaseRewardModel, np.ndarray]:
    """One reward model trained with ``seed``; returns it and its training raw scores."""
    from .model import family_class

    _seed_everything(seed)
    extra = ({"layers": cfg.layers, "pooling": cfg.pooling or "last"}
             if cfg.family == "decoder" else {})
    model = family_class(cfg.family).from_base(cfg.base_model, max_length=cfg.max_length,
                                               turns=cfg.turns, seed=seed, **extra)
    model.name = name
    set_precision(model, cfg)
    if cfg.freeze_encoder:
        model.requires_grad_(False)
        train_raw = _train_head(model, train, cfg, seed)
    else:
        fine_tune(model, train, cfg, seed, workdir)
        train_raw = np.concatenate(pair_raw(model, train))
    return model, np.asarray(train_raw, dtype=np.float64)


# ---------------------------------------------------------------- launches
#: The environment `accelerate launch` sets for the backends that shard the weights.
_SHARDED_LAUNCH = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}


def world_size() -> int:
    """Processes of this launch (``accelerate launch``, torchrun); 1 when run plainly."""
    import os

    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def check_launch(cfg: RMTrainConfig) -> None:
    """Refuse a launch this stage cannot run exactly, before any work; under a data-parallel
    launch of several processes, set up the process group (each process on its own GPU).

    Reward-model training scores every training and held-out pair after training, on every
    process, with the whole model: FSDP and DeepSpeed, which shard it, are refused (these models
    fit one device; launch with configs/accelerate/multi_gpu.yaml). Fine-tuning splits each batch
    of ``batch_size`` pairs over the processes, so the processes must divide it.
    """
    import os

    for var, name in _SHARDED_LAUNCH.items():
        if os.environ.get(var, "").lower() in ("1", "true", "yes"):
            raise ValueError(f"rm train: {name} shards the model over the processes, but reward-"
                             "model training scores every pair with the whole model on each "
                             "process; launch it data-parallel (accelerate launch --config_file "
                             "configs/accelerate/multi_gpu.yaml) or in one process")
    n = world_size()
    if n == 1:
        return
    if not cfg.freeze_encoder and cfg.batch_size % n:
        raise ValueError(f"rm train: batch_size={cfg.batch_size} pairs per step cannot be split "
                         f"evenly over {n} processes; use a multiple of {n}")
    from accelerate import PartialState

    # The process group, and this process's GPU as the current device (gloo on CPUs).
    PartialState(cpu=_launch_on_cpu())


def _launch_on_cpu() -> bool:
    """Whether this launch trains on CPUs: no GPU, or `accelerate launch --cpu`."""
    import os

    import torch

    return not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in (
        "1", "true", "yes")


def _wait_for_everyone() -> None:
    """A barrier across the launch's processes (nothing when run plainly)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@recorded("rm train")
def train_reward_model(cfg: RMTrainConfig) -> dict[str, Any]:
    """Train a reward model (or an ensemble) on ``cfg.data``, save it to ``cfg.out``.

    Returns the metrics also written to ``metrics.json``: held-out accuracy with its CI, ECE,
    counts (``n_train``, ``n_test``, ``skipped_identical``), timing and the config.
    """
    from .model import RewardEnsemble

    from ..data import load_preferences, split_pairs

    cfg.validate()
    check_launch(cfg)
    pairs = cfg.read_pairs(cfg.data)[0]
    pairs, n_identical = drop_identical(pairs, cfg.data, cfg.drop_identical)
    if cfg.test_fraction > 0:
        train, test = split_pairs(pairs, test_fraction=cfg.test_fraction)
    else:
        train, test = list(pairs), []
    if cfg.eval_data:
        test = drop_identical(load_preferences(cfg.eval_data, skip_bad=cfg.skip_bad),
                              cfg.eval_data, cfg.drop_identical)[0]
    if cfg.eval_limit is not None:
        test = test[:cfg.eval_limit]
    n_split = len(train)
    train = select_half(train, cfg.half)
    if not train:
        half = f", then keeping the {cfg.half} half ({n_split} before)" if cfg.half else ""
        raise DataError(f"no training pairs left after holding out {cfg.test_fraction:.0%}{half} "
                        f"({len(pairs)} pairs loaded)", file=str(cfg.data), code="empty")

    out = in_run(cfg.run, cfg.out, rm_dir(Path(str(cfg.data)).name.split(".")[0]))
    tmp = out.with_name(out.name + ".tmp")
    if process_rank() == 0:
        for stale in (tmp, tmp.with_name(tmp.name + "-trainer")):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
    _wait_for_everyone()  # no process starts writing before the leftovers are gone

    from .features import feature_store

    store = feature_store()
    counts = (store.read, store.computed) if store is not None else None
    t0 = time.perf_counter()
    members, member_raw = [], []
    for k in range(cfg.ensemble):
        name = out.name if cfg.ensemble == 1 else f"{out.name}/{RewardEnsemble.member_dir(k)}"
        model, raw = _train_member(cfg, train, cfg.seed + k, name,
                                   tmp.with_name(tmp.name + "-trainer"))
        members.append(model)
        member_raw.append(raw)
    model = members[0] if cfg.ensemble == 1 else RewardEnsemble(members, name=out.name)
    train_raw = np.mean(member_raw, axis=0)  # what the ensemble's score_raw gives
    # All training responses, chosen and rejected: the policy will be scored against the spread
    # of both good and bad answers, so the CDF should cover both.
    model.normaliser = EmpiricalCDFNormaliser.fit(train_raw)
    train_seconds = time.perf_counter() - t0

    passes = (1 if cfg.freeze_encoder else cfg.epochs) * cfg.ensemble
    if test:
        # Each member scores the test pairs once; the ensemble's raw score is their mean.
        member_test = [np.stack(pair_raw(m, test)).astype(np.float64) for m in members]
        test_raw = np.mean(member_test, axis=0)
    else:
        member_test, test_raw = [], np.empty((2, 0))
    held_out = pair_report(model, test_raw[0], test_raw[1])
    n = len(train)
    metrics = {"accuracy": held_out["accuracy"], "ci_low": held_out["ci_low"],
               "ci_high": held_out["ci_high"], "n_test": held_out["n"], "ece": held_out["ece"],
               "n_train": n, "skipped_identical": n_identical,
               "train_seconds": round(train_seconds, 2),
               # Pairs seen per second; the frozen-encoder path reads each pair once.
               "examples_per_second": round(n * passes / train_seconds, 2),
               "train_accuracy": accuracy_from_raw(train_raw[:n], train_raw[n:])["accuracy"],
               "config": cfg}
    if store is not None:
        # Texts whose features came from the feature store, and were computed, in training
        # and held-out scoring: the seconds above are for the computed ones.
        metrics["features"] = {"read": store.read - counts[0],
                               "computed": store.computed - counts[1]}
    if cfg.freeze_encoder or cfg.family == "decoder":
        # The cross-validated L2 of each frozen-feature head (for a fine-tuned decoder: of the
        # linear probe its head started from).
        metrics["head_c"] = [getattr(m, "head_c", None) for m in members]
    if cfg.ensemble > 1:
        # How much the ensemble adds over its members shows only next to their own accuracy.
        metrics["member_accuracy"] = [accuracy_from_raw(*r)["accuracy"] for r in member_test]
    # Under a launch every process trained the same model; the main one writes it, the others
    # wait until it exists.
    if process_rank() == 0:
        model.save(tmp)
        atomic_write_json(tmp / METRICS, metrics)
        publish_dir(tmp, out)
        what = "reward model" if cfg.ensemble == 1 else f"reward ensemble of {cfg.ensemble}"
        print(f"[rewardprompt] {what} saved to {out}: held-out accuracy "
              f"{metrics['accuracy']} [{metrics['ci_low']}, {metrics['ci_high']}] on "
              f"{metrics['n_test']} pairs, {train_seconds:.0f}s", flush=True)
        if cfg.run:
            summary = {k: metrics[k] for k in ("accuracy", "ci_low", "ci_high", "n_test",
                                               "n_train", "train_seconds")}
            summary |= {"family": cfg.family, "half": cfg.half, "seed": cfg.seed,
                        "eval_data": cfg.eval_data}
            update_metrics_entry(cfg.run, "rm", out.name, summary)
    _wait_for_everyone()
    return to_jsonable(metrics)
