"""What a benchmark ran on, how much memory each side took, and the one ``bench.json`` file.

Every figure in a bench file is only meaningful next to the machine that produced it, so each
section carries the machine (CPU model, cores, whether it computes bf16 natively, torch, GPU)
and the versions. Memory is the peak *growth* of each side: on a CPU the resident set's high-water
mark above what the process held when the side started (Linux resets the mark per side through
``/proc/self/clear_refs``; elsewhere a sampling thread watches the resident set), on a GPU
``torch.cuda.max_memory_allocated`` above the allocation at the start.
"""
from __future__ import annotations

import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..runs import package_versions, to_jsonable, update_json

#: Where ``bench sft``, ``bench sample`` and ``bench rm`` write their sections by default.
BENCH_FILE = "runs/bench/bench.json"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """The machine a figure was measured on."""
    import torch

    from ..device import _probe_cpu_bf16, cpu_has_fast_bf16

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_cores": os.cpu_count(), "cpu_cores_usable": usable,
        "torch_threads": torch.get_num_threads(),
        # The probe itself, and what the run used (REWARDPROMPT_CPU_BF16 can override it).
        "cpu_bf16_native": _probe_cpu_bf16(), "cpu_bf16_used": cpu_has_fast_bf16(),
        "torch": torch.__version__, "platform": platform.platform(), "host": platform.node(),
        "gpu": None}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    cuda=torch.version.cuda, gpu_bf16=torch.cuda.is_bf16_supported())
    return info


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss_kib() -> int | None:
    rss = _status_kib("VmRSS")
    if rss is not None:
        return rss
    scale = 1 if sys.platform != "darwin" else 1 / 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)


def _release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc's ``malloc_trim``), so
    that a side does not run in memory an earlier side freed but the process kept: its resident
    growth would then read as zero."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakMemory:
    """``with PeakMemory(device) as m: ...``; then ``m.mib`` is the peak growth in MiB.

    On a GPU this is allocated tensor memory (the allocator's cache excluded); on a CPU it is the
    process's resident set, which includes everything the side allocated, the model included.
    """

    def __init__(self, device: Any = None) -> None:
        import torch

        self.cuda = (str(device).startswith("cuda") if device is not None
                     else torch.cuda.is_available())
        self.mib: float | None = None
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = 0

    def __enter__(self) -> PeakMemory:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated"
            return self
        _release_freed_memory()
        self._base = _rss_kib() or 0
        try:  # Linux: "5" resets the high-water mark (VmHWM) to the current resident set
            Path("/proc/self/clear_refs").write_text("5")
            if _status_kib("VmHWM") is not None:
                self.method = "VmHWM after clear_refs"
                return self
        except OSError:
            pass
        self.method = "sampled VmRSS every 10 ms"
        self._peak = self._base
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self._peak = max(self._peak, _rss_kib() or 0)

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.mib = round((torch.cuda.max_memory_allocated() - self._base) / 2**20, 1)
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_kib() or 0)
        else:
            peak = _status_kib("VmHWM") or 0
        self.mib = round(max(0, peak - self._base) / 1024, 1)


def write_section(path: str | Path, name: str, section: dict[str, Any],
                  part: str | None = None) -> dict[str, Any]:
    """Put ``section`` under ``name`` (under ``name`` / ``part`` when given: ``rm`` keeps one
    part per reward-model family) in the bench file at ``path``, other sections kept, with the
    machine and the time; the file is replaced atomically. Returns the section written."""
    section = to_jsonable({**section, "machine": machine_info(), "versions": package_versions(),
                           "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def merge(doc: dict) -> None:
        if part is None:
            doc[name] = section
        else:
            doc.setdefault(name, {})[part] = section
        # The machine of the latest section, for a reader who looks at the top first; each
        # section keeps its own, since sections can come from different machines.
        doc["machine"] = section["machine"]

    update_json(path, merge)
    return section
