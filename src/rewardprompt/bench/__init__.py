"""Benchmarks: speed targets live here, measured side by side, never in timed tests.

``bench rm`` (reward-model training against TRL's RewardTrainer), ``bench sft`` (SFT against
TRL's SFTTrainer) and ``bench sample`` (the sampler against plain ``model.generate``) each write
their section into one bench file (default ``runs/bench/bench.json``), with the machine.
"""
from .machine import BENCH_FILE
from .rm import BenchRMConfig, bench_rm
from .sample import BenchSampleConfig, bench_sample
from .sft import BenchSFTConfig, bench_sft

__all__ = ["BENCH_FILE", "BenchRMConfig", "BenchSFTConfig", "BenchSampleConfig", "bench_rm",
           "bench_sample", "bench_sft"]
