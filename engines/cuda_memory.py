"""Device buffers, pinned host buffers and a stream for the TensorRT runtime: pycuda, or torch's CUDA as a stand-in.

pycuda: the device's *primary* context is retained (the one the CUDA runtime, and so TensorRT and torch, use) and
pushed/popped around each use, so it works from any thread; ``pycuda.autoinit`` is never imported (it would create a
second, private context bound to the importing thread). pycuda's errors derive from ``pycuda.driver.Error``, not
RuntimeError, and are turned into BackendError here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from cascade.errors import BackendError


class PycudaMemory:
    name = "pycuda"

    def __init__(self, device_index: int = 0) -> None:
        import pycuda.driver as cuda

        self.cuda = cuda
        try:
            cuda.init()
            self.context = cuda.Device(device_index).retain_primary_context()
            with self.activate():
                self.stream = cuda.Stream()
        except cuda.Error as exc:
            raise BackendError(f"pycuda cannot open CUDA device {device_index}: {exc}") from exc

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        self.context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def host_buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self.cuda.pagelocked_empty(shape, dtype)

    def device_buffer(self, nbytes: int) -> Any:
        return self.cuda.mem_alloc(max(1, int(nbytes)))

    @staticmethod
    def address(buffer: Any) -> int:
        return int(buffer)

    def upload(self, dst: Any, src: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(dst, src, self.stream)

    def download(self, dst: np.ndarray, src: Any) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        return (self.cuda.Error,)


class TorchCudaMemory:
    """The same interface on torch's CUDA allocator, for hosts with a CUDA torch but no pycuda."""

    name = "torch-cuda"

    def __init__(self, device_index: int = 0) -> None:
        import torch

        if not torch.cuda.is_available():
            raise BackendError("torch sees no CUDA device, and pycuda is not installed")
        self.torch = torch
        self.device = torch.device("cuda", device_index)
        self.stream = torch.cuda.Stream(self.device)

    def activate(self) -> contextlib.AbstractContextManager:
        return self.torch.cuda.device(self.device)

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def host_buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        torch_dtype = self.torch.from_numpy(np.empty(0, dtype=dtype)).dtype
        return self.torch.empty(shape, dtype=torch_dtype, pin_memory=True).numpy()

    def device_buffer(self, nbytes: int) -> Any:
        return self.torch.empty(max(1, int(nbytes)), dtype=self.torch.uint8, device=self.device)

    @staticmethod
    def address(buffer: Any) -> int:
        return int(buffer.data_ptr())

    def _bytes(self, array: np.ndarray) -> Any:
        return self.torch.from_numpy(array.reshape(-1).view(np.uint8))

    def upload(self, dst: Any, src: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            dst[: src.nbytes].copy_(self._bytes(src), non_blocking=True)

    def download(self, dst: np.ndarray, src: Any) -> None:
        with self.torch.cuda.stream(self.stream):
            self._bytes(dst).copy_(src[: dst.nbytes], non_blocking=True)

    def synchronize(self) -> None:
        self.stream.synchronize()

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        return (RuntimeError,)


def open_cuda_memory(device_index: int = 0) -> PycudaMemory | TorchCudaMemory:
    """pycuda where it is installed, else torch's CUDA; BackendError when neither can reach the GPU."""
    try:
        import pycuda.driver  # noqa: F401
    except ImportError:
        return TorchCudaMemory(device_index)
    return PycudaMemory(device_index)
