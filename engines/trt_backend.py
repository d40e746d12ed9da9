"""TensorRT backend: a deserialized engine run with ``set_tensor_address`` + ``execute_async_v3``.

The engine is deserialized once. Buffers are sized as NVIDIA's samples (``common.allocate_buffers``) size them: the
input at its optimisation profile's largest shape, each output at the shape the context reports for that input;
their addresses are bound once. One execution context and one set of buffers means one call at a time, so calls
from several threads (Streamlit sessions) take a lock, and so does :meth:`close`, which frees the GPU memory inside
the CUDA context (the dashboard's model cache calls it on eviction). Never construct this on a machine without a GPU:
TensorRT's runtime crashes the process there, so ``engines.select`` checks ``engines.hardware.detect_gpu`` first.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import numpy as np

from cascade.backend import Backend, InputSpec
from cascade.checkpoint import StageSpec
from cascade.errors import BackendError
from engines.cuda_memory import open_cuda_memory
from engines.hardware import GpuInfo
from engines.onnx_file import CAMS_NAME, PROBS_NAME
from engines.trt_build import import_tensorrt, trt_logger

PROFILE = 0  # engines built here have one optimisation profile; jetson-inference's too


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, spec: StageSpec, engine_path: str | os.PathLike, gpu: GpuInfo, precision: str = "") -> None:
        super().__init__(spec)
        self.engine_path = Path(engine_path)
        self.model_file = self.engine_path  # the file this backend's answers come from (prediction cache keys)
        self.gpu = gpu
        self.precision = precision
        self._lock = threading.Lock()
        self.memory = None
        trt = import_tensorrt()
        self.memory = open_cuda_memory(gpu.index)
        try:
            with self.memory.activate():
                self._load(trt)
        except self.memory.errors as exc:
            self.close()
            raise BackendError(f"CUDA error while loading {self.engine_path.name}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def _fail(self, what: str) -> BackendError:
        return BackendError(f"{self.engine_path.name} (profile {PROFILE}): {what}")

    def _load(self, trt) -> None:
        self.runtime = trt.Runtime(trt_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise BackendError(
                f"TensorRT {trt.__version__} could not deserialize {self.engine_path.name}: it was built for "
                "another GPU or TensorRT version; delete it and run `python -m engines build`"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not self.outputs:
            raise BackendError(
                f"{self.engine_path.name} has inputs {inputs} and outputs {self.outputs}; not a stage classifier"
            )
        self.input_name = inputs[0]
        self.probs_name = PROBS_NAME if PROBS_NAME in self.outputs else self.outputs[0]
        self.cams_name = CAMS_NAME if CAMS_NAME in self.outputs else None
        self.input_shape = tuple(int(d) for d in self.engine.get_tensor_shape(self.input_name))
        if self.input_shape[-1] != self.spec.resolution:
            raise BackendError(
                f"{self.engine_path.name} takes {self.input_shape[-1]}px input but the stage is "
                f"{self.spec.resolution}px; delete it and run `python -m engines build {self.spec.model_dir}`"
            )
        largest = self.input_shape
        if any(d < 0 for d in largest):
            largest = tuple(int(d) for d in self.engine.get_tensor_profile_shape(self.input_name, PROFILE)[2])
        self.max_batch = largest[0]
        self._set_input_shape(largest)
        self._host: dict[str, np.ndarray] = {}  # flat, pinned; viewed at each call's shapes
        self._device: dict[str, object] = {}
        for name in names:
            shape = largest if name == self.input_name else tuple(int(d) for d in self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise self._fail(f"output '{name}' has a data-dependent shape {shape}; not a stage classifier")
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))  # TypeError for BF16/FP8: no numpy type
            self._host[name] = self.memory.host_buffer((int(np.prod(shape)),), dtype)
            self._device[name] = self.memory.device_buffer(self._host[name].nbytes)
            if not self.context.set_tensor_address(name, self.memory.address(self._device[name])):
                raise self._fail(f"set_tensor_address('{name}') was refused")

    def _set_input_shape(self, shape: tuple[int, ...]) -> None:
        if not self.context.set_input_shape(self.input_name, shape):
            raise self._fail(f"set_input_shape('{self.input_name}', {shape}) was refused: outside the profile")

    @property
    def supports_cams(self) -> bool:
        return self.cams_name is not None

    def input_spec(self) -> InputSpec:
        first = self.input_shape[0]
        shape = ("N" if first < 0 else first, *self.input_shape[1:])
        return InputSpec(self.input_name, shape, batch_limit=self.max_batch)

    def _view(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        return self._host[name][: int(np.prod(shape))].reshape(shape)

    def _run(self, batch: np.ndarray, with_cams: bool) -> tuple[np.ndarray, np.ndarray | None]:
        wanted = [self.probs_name] + ([self.cams_name] if with_cams and self.cams_name else [])
        with self._lock:
            if self.memory is None:
                raise BackendError(f"{self.engine_path.name}: this TensorRT backend was closed")
            try:
                with self.memory.activate():
                    self._set_input_shape(tuple(batch.shape))
                    host_in = self._view(self.input_name, batch.shape)
                    np.copyto(host_in, batch, casting="same_kind")
                    self.memory.upload(self._device[self.input_name], host_in)
                    if not self.context.execute_async_v3(self.memory.stream_handle):
                        raise self._fail("execute_async_v3 failed to enqueue")
                    views = {}
                    for name in wanted:
                        views[name] = self._view(name, tuple(int(d) for d in self.context.get_tensor_shape(name)))
                        self.memory.download(views[name], self._device[name])
                    self.memory.synchronize()
            except self.memory.errors as exc:
                raise BackendError(f"CUDA error while running {self.engine_path.name}: {exc}") from exc
            out = {name: view.astype(np.float32, copy=True) for name, view in views.items()}
        return out[self.probs_name], out.get(self.cams_name or "")

    def warm_up(self) -> None:
        """Run one batch of zeros (not counted in ``calls``): TensorRT's first run is slow, and one that fails
        should fail while a fallback can still be chosen, not on a user's image."""
        r = self.spec.resolution
        first = self.input_shape[0]
        self._run(np.zeros((first if first > 0 else 1, 3, r, r), np.float32), with_cams=self.supports_cams)

    def close(self) -> None:
        """Free the engine, its context and every buffer inside the CUDA context; the backend is unusable after."""
        with self._lock:
            memory, self.memory = self.memory, None
            if memory is None:
                return
            with memory.activate():
                self.context = self.engine = self.runtime = None  # TensorRT frees its device memory here
                self._host, self._device = {}, {}
            memory.close()

    def __del__(self) -> None:  # a backend dropped without close(), e.g. by a cache: free in the context anyway
        if getattr(self, "_lock", None) is not None and getattr(self, "memory", None) is not None:
            with contextlib.suppress(Exception):  # at interpreter exit the CUDA driver may be gone already
                self.close()

    def describe(self) -> str:
        precision = f", {self.precision.upper()}" if self.precision else ""
        spec = f"{self.spec.arch}, {self.spec.resolution}px"
        return f"{self.name} ({spec}, {self.gpu.name}{precision}, batch ≤ {self.max_batch})"
