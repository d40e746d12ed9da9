"""CPU core counting from /proc/cpuinfo, and GPU detection that never needs TensorRT."""

from __future__ import annotations

import sys

import pytest

from engines import hardware
from engines.hardware import GpuInfo


def _cpuinfo(tmp_path, cores: int, threads: int):
    blocks = []
    for p in range(cores * threads):
        blocks.append(f"processor\t: {p}\nmodel name\t: Test CPU 9000\nphysical id\t: 0\ncore id\t\t: {p % cores}\n")
    path = tmp_path / "cpuinfo"
    path.write_text("\n".join(blocks))
    return path


@pytest.fixture(autouse=True)
def fresh_caches():
    hardware.physical_cores.cache_clear()
    hardware.cpu_model.cache_clear()
    hardware.detect_gpu.cache_clear()
    yield
    hardware.physical_cores.cache_clear()
    hardware.cpu_model.cache_clear()
    hardware.detect_gpu.cache_clear()


@pytest.mark.parametrize(("cores", "threads", "usable", "expected"), [(4, 2, 8, 4), (4, 2, 4, 2), (2, 1, 2, 2)])
def test_physical_cores_skip_hyperthreads_and_follow_affinity(tmp_path, monkeypatch, cores, threads, usable, expected):
    monkeypatch.setattr(hardware, "_CPUINFO", _cpuinfo(tmp_path, cores, threads))
    monkeypatch.setattr(hardware, "usable_cpus", lambda: usable)
    assert hardware.physical_cores() == expected
    assert hardware.cpu_model() == "Test CPU 9000"


def test_unreadable_cpuinfo_falls_back_to_usable_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "_CPUINFO", tmp_path / "absent")
    monkeypatch.setattr(hardware, "usable_cpus", lambda: 3)
    assert hardware.physical_cores() == 3


def test_no_gpu_without_torch_cuda_or_pycuda(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    assert hardware.detect_gpu() is None


def test_gpu_from_torch(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    monkeypatch.setattr("torch.cuda.get_device_name", lambda i: "NVIDIA L4")
    monkeypatch.setattr("torch.cuda.get_device_capability", lambda i: (8, 9))
    gpu = hardware.detect_gpu()
    assert gpu == GpuInfo("NVIDIA L4", (8, 9), 0) and gpu.sm == "sm89" and gpu.fast_fp16
