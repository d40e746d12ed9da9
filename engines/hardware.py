"""What the machine offers: physical CPU cores, the CPU's name, and a CUDA GPU (found without touching TensorRT).

TensorRT's runtime crashes the process when it deserializes an engine on a machine without a GPU, so the GPU check
here only ever asks torch or pycuda, each of which reports "no GPU" safely.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

_CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]
    index: int = 0

    @property
    def sm(self) -> str:
        """``sm90`` for compute capability 9.0: the short form used in engine file names."""
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"

    @property
    def fast_fp16(self) -> bool:
        """Native FP16 arithmetic: Pascal P100/Jetson (5.3, 6.0, 6.2) and every GPU from Volta (7.0) on."""
        return self.compute_capability >= (7, 0) or self.compute_capability in ((5, 3), (6, 0), (6, 2))


def _cpuinfo_blocks() -> list[dict[str, str]]:
    try:
        text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    blocks = []
    for chunk in text.strip().split("\n\n"):
        fields = {}
        for line in chunk.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        blocks.append(fields)
    return blocks


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@functools.cache
def physical_cores() -> int:
    """Physical cores this process may use: hyper-threads share one core's arithmetic units, so they do not count."""
    blocks = _cpuinfo_blocks()
    cores = {(b.get("physical id", "0"), b.get("core id", b.get("processor"))) for b in blocks if "processor" in b}
    logical = sum(1 for b in blocks if "processor" in b)
    usable = usable_cpus()
    if not cores or not logical:
        return max(1, usable)
    threads_per_core = max(1, logical // len(cores))
    return max(1, min(len(cores), usable // threads_per_core or 1))


@functools.cache
def cpu_model() -> str:
    """The CPU's marketing name (``model name`` in /proc/cpuinfo), for benchmark reports."""
    for block in _cpuinfo_blocks():
        if block.get("model name"):
            return block["model name"]
    return platform.processor() or platform.machine() or "unknown CPU"


def _gpu_from_torch(index: int) -> GpuInfo | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available() or torch.cuda.device_count() <= index:
        return None
    return GpuInfo(torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index)), index)


def _gpu_from_pycuda(index: int) -> GpuInfo | None:
    try:
        import pycuda.driver as cuda
    except ImportError:  # not installed, or no libcuda on this machine
        return None
    try:
        cuda.init()
        if cuda.Device.count() <= index:
            return None
        dev = cuda.Device(index)
        return GpuInfo(dev.name(), tuple(dev.compute_capability()), index)
    except cuda.Error:  # no driver, no device: pycuda's errors are not RuntimeErrors
        return None


@functools.cache
def detect_gpu(index: int = 0) -> GpuInfo | None:
    """The CUDA GPU at ``index``, or None. Never imports TensorRT."""
    return _gpu_from_torch(index) or _gpu_from_pycuda(index)
