"""GPU facts of this machine through NVML (the library behind nvidia-smi), read with ctypes.

No Python NVML package is needed: `libnvidia-ml.so.1` ships with the NVIDIA driver. Where it is
absent (no NVIDIA GPU, macOS, a CPU-only container) the machine simply has no GPU facts.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

from events.records import GpuFact

log = logging.getLogger(__name__)

_LIBRARIES = ("libnvidia-ml.so.1", "libnvidia-ml.so", "nvml.dll")


class _Memory(ctypes.Structure):
    _fields_ = [
        ("total", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    ]


def _load() -> Any:
    for name in _LIBRARIES:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def gpu_facts() -> tuple[GpuFact, ...]:
    """Every GPU NVML sees, with its memory now; empty where there is no NVML."""
    nvml = _load()
    if nvml is None:
        return ()
    if nvml.nvmlInit_v2() != 0:
        log.warning("NVML is present but did not initialise; no GPU facts")
        return ()
    try:
        count = ctypes.c_uint()
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return ()
        out = []
        for i in range(count.value):
            handle = ctypes.c_void_p()
            if nvml.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)) != 0:
                continue
            name = ctypes.create_string_buffer(96)
            nvml.nvmlDeviceGetName(handle, name, ctypes.c_uint(96))
            memory = _Memory()
            if nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) != 0:
                continue
            out.append(
                GpuFact(
                    index=i,
                    name=name.value.decode(errors="replace"),
                    memory_total_mib=memory.total // 2**20,
                    memory_free_mib=memory.free // 2**20,
                )
            )
        return tuple(out)
    finally:
        nvml.nvmlShutdown()
