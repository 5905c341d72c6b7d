"""`when_busy`: whether the machine's owner is using it, measured from the processes outside the fleet.

Outside the fleet means every process but the agent and its descendants (the trainers and all they started)
and the trainers' trees the runner knows (a child that left its parent stays one of them). With `users` set
only those users' processes count (the owner's), so a system daemon's burst does not make the host yield.

CPU: the share of the whole machine (all cores) those processes used since the last sample, from their CPU
times (psutil). GPU: the largest share of one GPU's time they used (NVML's per-process utilisation); hosts
without NVML measure CPU only. Hysteresis (`BusyState`): busy once the share stays above the threshold for
`busy_s`, calm again once it stays at or below it for `calm_s`, so a host does not flap.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psutil

from mqfleet.wire.owner import WhenBusy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """Outside the fleet at one look: the CPU share of the machine and the largest GPU share, in percent."""

    cpu_percent: float
    gpu_percent: float | None


class OutsideUse:
    """Measures what processes outside the fleet use; `fleet_pids` names the fleet's own besides the agent's tree."""

    def __init__(self, fleet_pids: Callable[[], Iterable[int]], users: list[str] | None = None,
                 *, gpu: bool = True) -> None:
        self._fleet_pids = fleet_pids
        self._users = set(users) if users is not None else None
        self._cpu_seen: dict[tuple[int, float], float] = {}
        self._last_ts: float | None = None
        self._cpus = psutil.cpu_count() or 1
        self._agent = psutil.Process(os.getpid())
        self._gpu = _GpuUse() if gpu else None

    def sample(self) -> Sample:
        """The share used since the previous sample (the first sample only sets the baseline: 0)."""
        now = time.monotonic()
        fleet = self._fleet()
        seen: dict[tuple[int, float], float] = {}
        used = 0.0
        for proc in psutil.process_iter(["username", "cpu_times", "create_time"]):
            info = proc.info
            times, created = info.get("cpu_times"), info.get("create_time")
            if proc.pid in fleet or times is None or created is None:
                continue
            if self._users is not None and info.get("username") not in self._users:
                continue
            key = (proc.pid, created)
            total = times.user + times.system
            seen[key] = total
            before = self._cpu_seen.get(key)
            if before is not None:
                used += max(0.0, total - before)
        elapsed = now - self._last_ts if self._last_ts is not None else 0.0
        self._cpu_seen, self._last_ts = seen, now
        cpu = 100.0 * used / (elapsed * self._cpus) if elapsed > 0 else 0.0
        gpu = self._gpu.outside_percent(fleet) if self._gpu is not None else None
        return Sample(cpu_percent=min(100.0, cpu), gpu_percent=gpu)

    def _fleet(self) -> set[int]:
        pids = {self._agent.pid, *self._fleet_pids()}
        try:
            pids.update(p.pid for p in self._agent.children(recursive=True))
        except psutil.Error:
            pass
        return pids


class BusyState:
    """The hysteresis of `when_busy`: busy after `busy_s` above the threshold, calm after `calm_s` at or below it."""

    def __init__(self, policy: WhenBusy) -> None:
        self.policy = policy
        self.busy = False
        self._since: float | None = None  # when the share first crossed to the other side, unbroken since
        #: the last sample's shares, for the reason the agent advertises
        self.last: Sample | None = None

    def update(self, sample: Sample, now: float) -> bool:
        """Feed one sample taken at `now` (monotonic seconds); whether the owner counts as busy now."""
        self.last = sample
        over = self._over(sample)
        if over == self.busy:
            self._since = None  # still on the same side: any crossing started again
            return self.busy
        if self._since is None:
            self._since = now
        wait = (self.policy.busy_s if not self.busy else self.policy.calm_s) or 0.0
        if now - self._since >= wait:
            self.busy, self._since = over, None
        return self.busy

    def _over(self, sample: Sample) -> bool:
        cpu, gpu = self.policy.cpu_percent, self.policy.gpu_percent
        return (cpu is not None and sample.cpu_percent > cpu) or (
            gpu is not None and sample.gpu_percent is not None and sample.gpu_percent > gpu)

    def reason(self) -> str:
        """`yielding: owner busy (CPU 62% > 50% outside the fleet)`."""
        sample, busy = self.last, self.policy
        if sample is None:
            return "yielding: owner busy"
        if busy.cpu_percent is not None and sample.cpu_percent > busy.cpu_percent:
            return f"yielding: owner busy (CPU {sample.cpu_percent:.0f}% > {busy.cpu_percent:g}% outside the fleet)"
        if busy.gpu_percent is not None and sample.gpu_percent is not None:
            return f"yielding: owner busy (GPU {sample.gpu_percent:.0f}% > {busy.gpu_percent:g}% outside the fleet)"
        return f"yielding: owner busy (calm for less than {busy.calm_s or 0:g} s)"


class _GpuUse:
    """The largest share of one GPU's time that processes outside the fleet used (NVML per-process utilisation)."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._last_seen: dict[int, int] = {}
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except Exception as e:  # no library, no driver, no device: CPU only
            logger.debug("when_busy: NVML unavailable (%s); the GPU share is not measured", e)

    def outside_percent(self, fleet: set[int]) -> float | None:
        if self._nvml is None or not self._handles:
            return None
        worst = 0.0
        for index, handle in enumerate(self._handles):
            try:
                samples = self._nvml.nvmlDeviceGetProcessUtilization(handle, self._last_seen.get(index, 0))
            except Exception:  # NVML_ERROR_NOT_FOUND: no process used the GPU since the last look
                continue
            share = sum(float(s.smUtil) for s in samples if s.pid not in fleet)
            if samples:
                self._last_seen[index] = max(int(s.timeStamp) for s in samples)
            worst = max(worst, min(100.0, share))
        return worst
