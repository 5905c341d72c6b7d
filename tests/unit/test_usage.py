"""UsageMeter over real processes: the tree's memory is summed at each sample and its peak kept; CPU
is the larger of the sampled and the kernel's account; GPU memory comes from the probe when it has one."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from mqfleet.agent.usage import UsageMeter

MIB = 1024 * 1024
HOLD = "import sys, time; b = bytearray({mib} * 1024 * 1024); b[::4096] = b'1' * len(b[::4096]); print('ready', flush=True); time.sleep(30)"


class FixedGpu:
    """A GPU probe that reports a fixed amount for any process it is asked about."""

    def __init__(self, per_process: int | None) -> None:
        self.per_process = per_process

    def used_bytes(self, pids: set[int]) -> int | None:
        return None if self.per_process is None else self.per_process * len(pids)


def _hold(mib: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(mib=mib)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_two_processes_holding_memory_at_once_count_as_their_sum() -> None:
    procs = [_hold(40), _hold(40)]
    try:
        meter = UsageMeter(gpu=FixedGpu(None))
        meter.sample([psutil.Process(p.pid) for p in procs])
        usage = meter.result(wall_s=1.0)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert 80 * MIB <= usage.max_rss_bytes <= 120 * MIB, usage
    assert usage.gpu_mem_max_bytes is None


def test_gpu_memory_is_the_peak_the_probe_reported() -> None:
    meter = UsageMeter(gpu=FixedGpu(3 << 30))
    me = psutil.Process(os.getpid())
    meter.sample([me])
    assert meter.result(wall_s=0.5).gpu_mem_max_bytes == 3 << 30


def test_cpu_of_a_reaped_tree_comes_from_the_kernels_account() -> None:
    meter = UsageMeter(gpu=None)
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass"])
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    meter.add_reaped(rusage)
    usage = meter.result(wall_s=time.time() - start)
    assert 0.4 <= usage.cpu_s <= 1.5, usage
    assert usage.max_rss_bytes > 5 * MIB and usage.gpu_mem_max_bytes is None
