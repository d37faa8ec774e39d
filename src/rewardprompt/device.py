"""Device and precision choice: CUDA when a GPU is there, and one bf16 decision (``use_bf16``)
that every stage (policy loading, SFT, reward models, benchmarks) asks."""
from __future__ import annotations

import functools
import os

import torch


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device | None = None) -> torch.dtype:
    """The dtype to load weights in: bf16 on a GPU that supports it, else fp32. A CPU keeps fp32
    weights even with native bf16: there bf16 is used through autocast (``use_bf16``), which
    keeps fp32 master weights for training."""
    return torch.bfloat16 if use_bf16(device, cpu_bf16=False) else torch.float32


#: "0" or "1" overrides the CPU probe (tests pin "0" so that results do not depend on the CPU).
CPU_BF16_ENV = "REWARDPROMPT_CPU_BF16"


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast runs
    native bf16 matmul kernels and beats fp32; on other CPUs bf16 is emulated through fp32
    conversions and runs slower than fp32. ``REWARDPROMPT_CPU_BF16=0|1`` overrides the
    probe."""
    forced = os.environ.get(CPU_BF16_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    return _probe_cpu_bf16()


def use_bf16(device: torch.device | str | None = None, cpu_bf16: bool = True) -> bool:
    """Whether passes on ``device`` (default: ``pick_device()``) should run in bf16: the one
    precision decision for every stage. CUDA: when the GPU supports bf16. CPU: only when
    ``cpu_bf16`` allows it and the CPU computes bf16 natively (``cpu_has_fast_bf16``, which
    honours ``REWARDPROMPT_CPU_BF16``), since emulated bf16 is slower than fp32. Other devices
    stay in fp32."""
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16 and cpu_has_fast_bf16()
    return False


@functools.cache
def _probe_cpu_bf16() -> bool:
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, name, None)  # private helpers: absent in some builds
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:  # a build without the probe's kernels
            continue
    return False
