"""A Windows Job Object that caps the memory of a trainer and everything it starts (ctypes; Windows only).

The trainer is assigned right after its creation; the processes it creates later join the job by
themselves. Past `JobMemoryLimit` the system refuses the job's allocations (the trainer fails with an
out-of-memory error); `peak_bytes()` then tells how far it got, which agent/limits.py compares with the limit.
"""

from __future__ import annotations

import ctypes
import sys
from ctypes import wintypes

_JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS = 9
_JOB_OBJECT_LIMIT_JOB_MEMORY = 0x00000200
_PROCESS_SET_QUOTA = 0x0100
_PROCESS_TERMINATE = 0x0001


class _IoCounters(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in (
        "ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
        "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]


class _BasicLimits(ctypes.Structure):
    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_longlong),
        ("PerJobUserTimeLimit", ctypes.c_longlong),
        ("LimitFlags", wintypes.DWORD),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", wintypes.DWORD),
        ("Affinity", ctypes.c_size_t),
        ("PriorityClass", wintypes.DWORD),
        ("SchedulingClass", wintypes.DWORD),
    ]


class _ExtendedLimits(ctypes.Structure):
    _fields_ = [
        ("BasicLimitInformation", _BasicLimits),
        ("IoInfo", _IoCounters),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


def _kernel32() -> ctypes.WinDLL:  # type: ignore[name-defined]
    if sys.platform != "win32":
        raise OSError("Job Objects exist on Windows only")
    return ctypes.WinDLL("kernel32", use_last_error=True)


class JobObject:
    """A Job Object holding one trainer's tree under a memory limit."""

    def __init__(self, handle: int) -> None:
        self._handle = handle

    @classmethod
    def limit_memory(cls, pid: int, limit_bytes: int) -> JobObject:
        """A new job limited to `limit_bytes` with the process `pid` in it; OSError when Windows refuses."""
        k32 = _kernel32()
        handle = k32.CreateJobObjectW(None, None)
        if not handle:
            raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
        job = cls(handle)
        info = _ExtendedLimits()
        info.BasicLimitInformation.LimitFlags = _JOB_OBJECT_LIMIT_JOB_MEMORY
        info.JobMemoryLimit = limit_bytes
        process = k32.OpenProcess(_PROCESS_SET_QUOTA | _PROCESS_TERMINATE, False, pid)
        try:
            if not process or not k32.SetInformationJobObject(
                    handle, _JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS, ctypes.byref(info), ctypes.sizeof(info)) \
                    or not k32.AssignProcessToJobObject(handle, process):
                error = ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
                job.close()
                raise error
        finally:
            if process:
                k32.CloseHandle(process)
        return job

    def peak_bytes(self) -> int:
        """The most memory the job's processes held at once."""
        info = _ExtendedLimits()
        if not _kernel32().QueryInformationJobObject(self._handle, _JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS,
                                                     ctypes.byref(info), ctypes.sizeof(info), None):
            return 0
        return int(info.PeakJobMemoryUsed)

    def close(self) -> None:
        if self._handle:
            _kernel32().CloseHandle(self._handle)
            self._handle = 0
