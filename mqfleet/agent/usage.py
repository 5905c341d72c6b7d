"""What one trainer attempt used, over its whole process tree: wall time, CPU time, peak resident memory
and, where NVML sees a GPU, peak GPU memory.

The runner samples the tree while it runs (processes come and go, so a sum taken once would miss
them) and, on POSIX, adds the kernel's own account from wait4() when it reaps the trainer: that one
counts every descendant the trainer itself waited for, including any too short-lived to be sampled.
Each figure is the larger of the two accounts, since each can only miss time, never invent it.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable
from typing import Any, Protocol

import psutil

from mqfleet.wire.reports import Usage

logger = logging.getLogger(__name__)

# ru_maxrss is in KiB on Linux, in bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


class GpuProbe(Protocol):
    def used_bytes(self, pids: set[int]) -> int | None: ...


class GpuMemoryProbe:
    """GPU memory used by given pids, summed over every device, through NVML (loaded lazily, as in
    agent/capability.py). Unavailable NVML makes it answer None for good."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._lock = threading.Lock()
        self._started = False

    def _start(self) -> bool:
        if self._started:
            return self._nvml is not None
        self._started = True
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as e:  # no library, no driver, no device: the usage says null
            logger.debug("usage: NVML unavailable (%s); GPU memory not measured", e)
            return False
        if not self._handles:
            return False
        self._nvml = pynvml
        return True

    def used_bytes(self, pids: set[int]) -> int | None:
        """Bytes of GPU memory held by these processes now; None without NVML or GPUs."""
        with self._lock:
            if not self._start():
                return None
            nvml = self._nvml
            total = 0
            for handle in self._handles:
                for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                    try:
                        procs = getattr(nvml, getter)(handle)
                    except Exception:
                        continue
                    for p in procs:
                        used = getattr(p, "usedGpuMemory", None)
                        if p.pid in pids and isinstance(used, int):
                            total += used
            return total


_GPU_PROBE = GpuMemoryProbe()


class UsageMeter:
    """Accumulates the usage of one process tree from repeated samples and, at the end, the kernel's account."""

    def __init__(self, *, gpu: GpuProbe | None = _GPU_PROBE) -> None:
        self._gpu = gpu
        self._lock = threading.Lock()
        # (pid, create time) -> the most CPU seconds seen for that process (its own, not its children's)
        self._cpu: dict[tuple[int, float], float] = {}
        self._peak_rss = 0
        self._peak_gpu: int | None = None
        self._reaped_cpu = 0.0
        self._reaped_rss = 0

    def sample(self, procs: Iterable[psutil.Process]) -> int:
        """Read CPU and memory of every live process of the tree at one moment; the tree's resident bytes."""
        rss_now = 0
        pids: set[int] = set()
        seen: list[tuple[tuple[int, float], float]] = []
        for p in procs:
            try:
                with p.oneshot():
                    times = p.cpu_times()
                    rss = p.memory_info().rss
                    key = (p.pid, p.create_time())
            except psutil.Error:
                continue
            rss_now += rss
            pids.add(p.pid)
            seen.append((key, times.user + times.system))
        gpu_now = self._gpu.used_bytes(pids) if (self._gpu is not None and pids) else None
        with self._lock:
            for key, cpu in seen:
                self._cpu[key] = max(cpu, self._cpu.get(key, 0.0))
            self._peak_rss = max(self._peak_rss, rss_now)
            if gpu_now is not None:
                self._peak_gpu = max(self._peak_gpu or 0, gpu_now)
        return rss_now

    def add_reaped(self, rusage: Any) -> None:
        """The kernel's account of the reaped trainer and every descendant it waited for (os.wait4)."""
        with self._lock:
            self._reaped_cpu = float(rusage.ru_utime + rusage.ru_stime)
            self._reaped_rss = int(rusage.ru_maxrss) * _MAXRSS_UNIT

    def result(self, wall_s: float) -> Usage:
        """The usage over the run's `wall_s` (the larger of the sampled and the kernel's account): the `usage` of the
        attempt's `complete` or `fail`; gpu_mem_max_bytes is None without NVML, 0 when the trainer held none."""
        with self._lock:
            sampled_cpu = sum(self._cpu.values())
            gpu = self._peak_gpu
            if gpu is None and self._gpu is not None and self._gpu.used_bytes(set()) is not None:
                gpu = 0  # NVML works and the trainer never held GPU memory
            return Usage(
                wall_s=round(max(0.0, wall_s), 3),
                cpu_s=round(max(sampled_cpu, self._reaped_cpu), 3),
                max_rss_bytes=max(self._peak_rss, self._reaped_rss),
                gpu_mem_max_bytes=gpu,
            )
