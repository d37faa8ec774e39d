"""Device and dtype choice: CUDA with bf16 when a GPU is there, else CPU in fp32."""
from __future__ import annotations

import functools
import os

import torch


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device | None = None) -> torch.dtype:
    device = device or pick_device()
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


#: "0" or "1" overrides the CPU probe (tests pin "0" so that results do not depend on the CPU).
CPU_BF16_ENV = "REWARDPROMPT_CPU_BF16"


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast runs
    transformer passes 1.5-2x faster than fp32; on other CPUs it is emulated and slower.
    ``REWARDPROMPT_CPU_BF16=0|1`` overrides the probe."""
    forced = os.environ.get(CPU_BF16_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    return _probe_cpu_bf16()


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
