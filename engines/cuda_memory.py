"""Device buffers, pinned host buffers and a stream for the TensorRT runtime: pycuda, or torch's CUDA as a stand-in.

pycuda: the device's *primary* context is retained (the one the CUDA runtime, and so TensorRT and torch, use) and
pushed/popped around each use, so it works from any thread; ``pycuda.autoinit`` is never imported (it would create a
second, private context bound to the importing thread). pycuda frees an allocation in the context that made it and
refuses to push that context from another thread, so a buffer dropped by a garbage collection in another thread (a
Streamlit cache eviction) would leak with a warning; :meth:`PycudaMemory.close` frees everything inside the pushed
context instead. pycuda's errors derive from ``pycuda.driver.Error``, not RuntimeError.

Where pycuda is missing or cannot open the device, torch's CUDA allocator provides the same interface.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from cascade.errors import BackendError

log = logging.getLogger("engines.cuda")


class PycudaMemory:
    name = "pycuda"

    def __init__(self, device_index: int = 0) -> None:
        import pycuda.driver as cuda

        self.cuda = cuda
        self.errors: tuple[type[BaseException], ...] = (cuda.Error,)
        self._device: list[Any] = []
        self._host: list[np.ndarray] = []
        self.context = None
        try:
            cuda.init()
            self.context = cuda.Device(device_index).retain_primary_context()
            with self.activate():
                self.stream = cuda.Stream()
        except cuda.Error as exc:
            if self.context is not None:
                self.context.detach()
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
        self._host.append(self.cuda.pagelocked_empty(shape, dtype))
        return self._host[-1]

    def device_buffer(self, nbytes: int) -> Any:
        self._device.append(self.cuda.mem_alloc(max(1, int(nbytes))))
        return self._device[-1]

    @staticmethod
    def address(buffer: Any) -> int:
        return int(buffer)

    def upload(self, dst: Any, src: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(dst, src, self.stream)

    def download(self, dst: np.ndarray, src: Any) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        """Free every buffer and the stream inside the pushed context, then release the primary context."""
        if self.context is None:
            return
        with self.activate():
            for buffer in self._device:
                buffer.free()
            for array in self._host:
                array.base.free()  # pagelocked_empty's array is a view of a PagelockedHostAllocation
            self._device.clear()
            self._host.clear()
            self.stream = None  # the last reference: destroyed here, in the context
        self.context.detach()
        self.context = None


class TorchCudaMemory:
    """The same interface on torch's CUDA allocator, for hosts with a CUDA torch but no usable pycuda."""

    name = "torch-cuda"
    errors: tuple[type[BaseException], ...] = (RuntimeError,)

    def __init__(self, device_index: int = 0) -> None:
        import torch

        if not torch.cuda.is_available():
            raise BackendError("torch sees no CUDA device")
        self.torch = torch
        self.device = torch.device("cuda", device_index)
        self.stream = torch.cuda.Stream(self.device)
        self._buffers: list[Any] = []  # tensors whose memory is bound to the engine: kept alive until close()

    def activate(self) -> contextlib.AbstractContextManager:
        return self.torch.cuda.device(self.device)

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def host_buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        torch_dtype = self.torch.from_numpy(np.empty(0, dtype=dtype)).dtype
        self._buffers.append(self.torch.empty(shape, dtype=torch_dtype, pin_memory=True))
        return self._buffers[-1].numpy()

    def device_buffer(self, nbytes: int) -> Any:
        self._buffers.append(self.torch.empty(max(1, int(nbytes)), dtype=self.torch.uint8, device=self.device))
        return self._buffers[-1]

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

    def close(self) -> None:
        """Wait for the stream, then hand the buffers back to torch's caching allocator."""
        if self.stream is not None:
            self.stream.synchronize()
        self._buffers.clear()
        self.stream = None


def open_cuda_memory(device_index: int = 0) -> PycudaMemory | TorchCudaMemory:
    """pycuda where it is installed and opens the device, else torch's CUDA; BackendError when neither can."""
    try:
        import pycuda.driver  # noqa: F401
    except ImportError as exc:  # not installed, or no libcuda
        pycuda_problem = f"pycuda cannot be imported ({exc})"
    else:
        try:
            return PycudaMemory(device_index)
        except BackendError as exc:
            pycuda_problem = str(exc)
            log.warning("%s; using torch's CUDA buffers instead", pycuda_problem)
    try:
        return TorchCudaMemory(device_index)
    except (BackendError, ImportError, RuntimeError) as exc:
        raise BackendError(f"no CUDA buffers for TensorRT: {pycuda_problem}, and {exc}") from exc
