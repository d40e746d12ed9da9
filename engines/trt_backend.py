"""TensorRT backend: a deserialized engine run with ``set_tensor_address`` + ``execute_async_v3``.

The engine is deserialized once; buffers for the largest batch of its optimisation profile are allocated once and
their addresses bound once. One execution context and one set of buffers means one call at a time, so calls from
several threads (Streamlit sessions) take a lock. Never construct this on a machine without a GPU: TensorRT's
runtime crashes the process there, so ``engines.select`` checks ``engines.hardware.detect_gpu`` first.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from cascade.backend import Backend, InputSpec
from cascade.checkpoint import StageSpec
from cascade.errors import BackendError
from engines.cuda_memory import open_cuda_memory
from engines.hardware import GpuInfo
from engines.onnx_file import CAMS_NAME, INPUT_NAME, PROBS_NAME
from engines.trt_build import import_tensorrt


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, spec: StageSpec, engine_path: str | os.PathLike, gpu: GpuInfo, precision: str = "") -> None:
        super().__init__(spec)
        self.engine_path = Path(engine_path)
        self.gpu = gpu
        self.precision = precision
        self._lock = threading.Lock()
        trt = import_tensorrt()
        self._trt = trt
        self.memory = open_cuda_memory(gpu.index)
        self.logger = trt.Logger(trt.Logger.WARNING)
        try:
            with self.memory.activate():
                self._load(trt)
        except self.memory.errors as exc:
            raise BackendError(f"CUDA error while loading {self.engine_path.name}: {exc}") from exc

    def _load(self, trt) -> None:
        self.runtime = trt.Runtime(self.logger)
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
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        self.input_shape = tuple(int(d) for d in self.engine.get_tensor_shape(self.input_name))
        if self.input_shape[-1] != self.spec.resolution:
            raise BackendError(
                f"{self.engine_path.name} takes {self.input_shape[-1]}px input but the stage is "
                f"{self.spec.resolution}px; delete it and run `python -m engines build {self.spec.model_dir}`"
            )
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, object] = {}
        for name in names:
            shape = tuple(self.max_batch if d < 0 else int(d) for d in self.engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self._host[name] = self.memory.host_buffer(shape, dtype)
            self._device[name] = self.memory.device_buffer(self._host[name].nbytes)
            self.context.set_tensor_address(name, self.memory.address(self._device[name]))

    @property
    def supports_cams(self) -> bool:
        return self.cams_name is not None

    def input_spec(self) -> InputSpec:
        first = self.input_shape[0]
        shape = ("N" if first < 0 else first, *self.input_shape[1:])
        return InputSpec(self.input_name or INPUT_NAME, shape, batch_limit=self.max_batch)

    def _run(self, batch: np.ndarray, with_cams: bool) -> tuple[np.ndarray, np.ndarray | None]:
        n = len(batch)
        wanted = [self.probs_name] + ([self.cams_name] if with_cams and self.cams_name else [])
        with self._lock:
            try:
                with self.memory.activate():
                    host_in = self._host[self.input_name][:n]
                    np.copyto(host_in, batch, casting="same_kind")
                    self.context.set_input_shape(self.input_name, tuple(batch.shape))
                    self.memory.upload(self._device[self.input_name], host_in)
                    if not self.context.execute_async_v3(self.memory.stream_handle):
                        raise BackendError(f"TensorRT failed to enqueue {self.engine_path.name}")
                    views = {}
                    for name in wanted:
                        rows = int(self.context.get_tensor_shape(name)[0])
                        views[name] = self._host[name][:rows]
                        self.memory.download(views[name], self._device[name])
                    self.memory.synchronize()
            except self.memory.errors as exc:
                raise BackendError(f"CUDA error while running {self.engine_path.name}: {exc}") from exc
            out = {name: view.astype(np.float32, copy=True) for name, view in views.items()}
        return out[self.probs_name], out.get(self.cams_name or "")

    def describe(self) -> str:
        precision = f", {self.precision.upper()}" if self.precision else ""
        spec = f"{self.spec.arch}, {self.spec.resolution}px"
        return f"{self.name} ({spec}, {self.gpu.name}{precision}, batch ≤ {self.max_batch})"
