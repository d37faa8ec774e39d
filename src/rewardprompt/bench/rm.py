"""Benchmarks: speed targets live here, measured side by side, never in timed tests.

``rewardprompt bench rm``: reward-model training throughput of this package's trainer against
TRL's ``RewardTrainer`` used the way its documentation shows (``AutoModelForSequenceClassification``
with ``num_labels=1`` on the same base weights, a ``prompt``/``chosen``/``rejected`` dataset, the
same batch size, learning rate, maximum length and pairs), one after the other in one process on
one machine, each repeated ``repeats`` times (median reported). Examples per second counts the
pairs each trainer actually trained on: TRL drops pairs longer than ``max_length`` where this
package truncates them, so its count can be smaller and the JSON records both. Throughput is
given twice: over setup + training (model loading, and TRL's tokenisation, included) and over
training alone. Both sides read the same context (the last user turn, ``turns="last"``). The
result goes into the ``rm`` section of the bench file ``out`` (beside ``bench sft`` and ``bench
sample``), one part per family, with the machine, the versions and the config.

For the encoder family the comparison is this package's own loop against RewardTrainer. For the
decoder family this package trains *through* RewardTrainer too, so the ratio measures what it
adds around it: its own truncating tokenisation, length-grouped batches and the linear-probe
initialisation of the head (a full pass over the data, counted in its training time).
"""
from __future__ import annotations

import math
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from ..runs import package_versions, to_jsonable
from .machine import BENCH_FILE, PeakMemory, write_section


@dataclass
class BenchRMConfig:
    """``rewardprompt bench rm``: pairs per second, ours vs TRL's RewardTrainer."""

    out: str = BENCH_FILE
    """The bench file; its ``rm`` part for this family is replaced, the rest stays."""
    family: str = "encoder"
    """encoder (MiniLM) or decoder (SmolLM2-135M)."""
    base_model: str | None = None
    """None: the family's shipped default."""
    data: str = "hh-harmless"
    """Preference pairs to train on."""
    pairs: int = 256
    """Pairs per run."""
    batch_size: int = 16
    """Pairs per step, on both sides."""
    max_length: int = 128
    """Tokens per pair, on both sides."""
    lr: float = 3e-5
    """Learning rate, on both sides."""
    repeats: int = 3
    """Runs per side (the median is reported; the order alternates)."""
    threads: int | None = None
    """torch intra-op threads (None: torch's default)."""
    cpu_bf16: bool = True
    """Ours: bf16 autocast where the hardware computes bf16 natively, else fp32 (False: fp32)."""
    trl_bf16: bool = False
    """TRL's RewardConfig stays fp32 on a CPU unless told; True tells it (on any CPU), for a
    same-precision comparison. On a GPU both use bf16 where it is supported."""
    seed: int = 0
    """Seed of both trainers."""


def _trl_conversational(pairs: list[Any]) -> list[dict[str, Any]]:
    """The pairs in TRL's conversational preference format, with the last user turn as the
    prompt (what the decoder reward model reads with ``turns="last"``)."""
    from ..rewards.decoder import _messages

    rows = []
    for p in pairs:
        rows.append({"prompt": _messages(p.prompt, "last"),
                     "chosen": [{"role": "assistant", "content": p.chosen}],
                     "rejected": [{"role": "assistant", "content": p.rejected}]})
    return rows


def _trl_text(pairs: list[Any], turns: str) -> list[dict[str, str]]:
    """Plain-text rows for an encoder: the context the RM reads, then the reply."""
    from ..rewards.model import prompt_context

    return [{"prompt": prompt_context(p.prompt, turns) + "\n", "chosen": p.chosen,
             "rejected": p.rejected} for p in pairs]


def _time_trl(cfg: BenchRMConfig, base: str, pairs: list[Any], workdir: Path) -> dict[str, Any]:
    import torch

    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from ..device import pick_device, use_bf16
    from ..models import resolve_policy

    path = resolve_policy(base) if cfg.family == "decoder" else base
    rows = _trl_conversational(pairs) if cfg.family == "decoder" else _trl_text(pairs, "last")
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.eos_token is None:  # BERT-style encoders: TRL appends eos, [SEP] plays its part
        tokenizer.eos_token = tokenizer.sep_token
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1,
                                                               dtype=torch.float32)
    device = pick_device()
    use_cuda = device.type == "cuda"
    # trl_bf16 forces bf16 on a CPU on purpose (a same-precision comparison), whatever it has.
    bf16 = use_bf16(device) if use_cuda else cfg.trl_bf16
    args = RewardConfig(output_dir=str(workdir), num_train_epochs=1,
                        per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr,
                        max_length=cfg.max_length, save_strategy="no", report_to="none",
                        seed=cfg.seed, use_cpu=not use_cuda, bf16=bf16,
                        disable_tqdm=True, logging_steps=10**6)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                            processing_class=tokenizer)
    setup = time.perf_counter() - t0
    if len(trainer.train_dataset) == 0:
        raise ValueError(f"TRL's RewardTrainer dropped all {len(pairs)} pairs as longer than "
                         f"max_length={cfg.max_length} tokens; raise max_length")
    t1 = time.perf_counter()
    trainer.train()
    train = time.perf_counter() - t1
    n = len(trainer.train_dataset)
    return _timing(n, setup, train) | {"precision": "bf16" if bf16 else "fp32"}


def _timing(n: int, setup: float, train: float) -> dict[str, Any]:
    return {"pairs_trained": n, "setup_s": setup, "train_s": train,
            "examples_per_second": n / (setup + train), "train_examples_per_second": n / train}


def _time_ours(cfg: BenchRMConfig, base: str, pairs: list[Any], workdir: Path) -> dict[str, Any]:
    from ..rewards.features import disabled
    from ..rewards.model import family_class
    from ..rewards.train import RMTrainConfig, fine_tune, set_precision

    tcfg = RMTrainConfig(data=cfg.data, out=str(workdir), family=cfg.family, base_model=base,
                         max_length=cfg.max_length, batch_size=cfg.batch_size, lr=cfg.lr,
                         epochs=1, freeze_encoder=False, seed=cfg.seed, cpu_bf16=cfg.cpu_bf16)
    t0 = time.perf_counter()
    model = family_class(cfg.family).from_base(base, max_length=cfg.max_length, seed=cfg.seed)
    precision = set_precision(model, tcfg)
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    with disabled():  # the decoder's linear probe embeds every pair, as TRL's side does
        fine_tune(model, pairs, tcfg, cfg.seed, workdir / "trainer")
    seconds = time.perf_counter() - t1
    return _timing(len(pairs), setup, seconds) | {"precision": precision}


def bench_rm(cfg: BenchRMConfig) -> dict[str, Any]:
    """Time both trainers ``repeats`` times on the same pairs; write and return the JSON."""
    import torch

    from ..data import load_preferences
    from ..models import DEFAULT_POLICY
    from ..rewards.model import FAMILIES, default_encoder_path

    if cfg.family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {cfg.family!r}")
    if cfg.pairs < cfg.batch_size or cfg.repeats < 1:
        raise ValueError("pairs must be at least batch_size, and repeats at least 1")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base = cfg.base_model or (default_encoder_path() if cfg.family == "encoder"
                              else DEFAULT_POLICY)
    pairs = [p for p in load_preferences(cfg.data, skip_bad=True) if p.chosen != p.rejected]
    pairs = pairs[:cfg.pairs]
    runs: dict[str, list[dict[str, Any]]] = {"rewardprompt": [], "trl": []}
    with tempfile.TemporaryDirectory(prefix="rewardprompt-bench-") as tmp:
        for r in range(cfg.repeats):
            # Alternate the order so that warm-up and thermal drift do not favour one side.
            order = ("rewardprompt", "trl") if r % 2 == 0 else ("trl", "rewardprompt")
            for name in order:
                fn = _time_ours if name == "rewardprompt" else _time_trl
                with PeakMemory() as mem:
                    timing = fn(cfg, base, pairs, Path(tmp) / f"{name}-{r}")
                runs[name].append(timing | {"peak_memory_mib": mem.mib, "memory": mem.method})
                print(f"[rewardprompt] bench rm: {name} run {r + 1}/{cfg.repeats}: "
                      f"{runs[name][-1]['examples_per_second']:.2f} pairs/s", flush=True)
    med = {k: statistics.median(x["examples_per_second"] for x in v) for k, v in runs.items()}
    med_train = {k: statistics.median(x["train_examples_per_second"] for x in v)
                 for k, v in runs.items()}
    result = {"benchmark": "rm-train", "config": cfg, "base_model": base,
              "device": "cuda" if torch.cuda.is_available() else "cpu",
              "precision": {k: v[0]["precision"] for k, v in runs.items()},
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_threads": torch.get_num_threads(),
                          "gpu": (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                                  else None)},
              "versions": package_versions(),
              "median_examples_per_second": med,
              "ratio": med["rewardprompt"] / med["trl"] if med["trl"] else math.inf,
              "median_train_examples_per_second": med_train,
              "train_ratio": med_train["rewardprompt"] / med_train["trl"],
              "peak_memory_mib": {k: statistics.median(x["peak_memory_mib"] for x in v)
                                  for k, v in runs.items()},
              "runs": runs}
    write_section(cfg.out, "rm", result, part=cfg.family)
    prec = result["precision"]
    print(f"[rewardprompt] bench rm: rewardprompt ({prec['rewardprompt']}) "
          f"{med['rewardprompt']:.2f} vs TRL ({prec['trl']}) {med['trl']:.2f} pairs/s, "
          f"ratio {result['ratio']:.2f} (training alone {result['train_ratio']:.2f}); "
          f"written to {cfg.out}", flush=True)
    return to_jsonable(result)
