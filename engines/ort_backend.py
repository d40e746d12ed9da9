"""ONNX Runtime backend: the CPU default, on the same ONNX files TensorRT builds its engines from.

One session per backend, created once and reused; ``InferenceSession.run`` may be called from several threads at
once (ONNX Runtime documents it as thread-safe), so Streamlit sessions can share a backend.
"""

from __future__ import annotations

import numpy as np

from cascade.backend import Backend, InputSpec
from cascade.checkpoint import StageSpec
from cascade.errors import BackendError
from engines.hardware import physical_cores
from engines.onnx_file import OnnxInfo, check_matches_spec


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def session_options(threads: int | None = None):
    """Session options chosen for small-batch CNN inference on a few cores.

    - intra-op threads = physical cores: one convolution is split across them; hyper-threads share a core's vector
      units and only add contention, and more threads than cores thrash when several processes share the machine.
    - sequential execution, one inter-op thread: these CNNs are a chain of layers (DenseNet's concats are still one
      path), so running independent nodes in parallel gains nothing and would oversubscribe the same cores.
    - workers stop spinning when ``run`` returns (``session.force_spinning_stop``). Each session has its own thread
      pool, and the cascade runs two sessions back to back: by default the first session's idle workers keep spinning
      on the cores the second one needs. Measured on 2 cores (resnet18 then densenet121, 128 px, one image): 24 ms
      with ONNX Runtime's default, 10 ms with this; each session alone is as fast as before (spinning *during* a run
      is kept), whereas disabling spinning altogether costs densenet121 up to 2x.
    - all graph optimisations (constant folding, Conv+BN+ReLU fusion, layout transforms): the fastest graph, once,
      at session creation.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


class OnnxRuntimeBackend(Backend):
    """Runs a stage's ONNX file; CUDA execution provider where onnxruntime-gpu has one, else the CPU."""

    def __init__(
        self,
        spec: StageSpec,
        info: OnnxInfo,
        threads: int | None = None,
        providers: list[str] | None = None,
    ) -> None:
        super().__init__(spec)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError(f"onnxruntime cannot be imported ({exc}); pip install onnxruntime") from exc
        check_matches_spec(info, spec)
        self.info = info
        self.model_file = info.path  # the file this backend's answers come from (prediction cache keys)
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.threads = threads or physical_cores()
        try:
            self.session = ort.InferenceSession(str(info.path), session_options(self.threads), providers=providers)
        except Exception as exc:  # onnxruntime's own exception types (InvalidGraph, Fail, …) share no useful base
            raise BackendError(
                f"ONNX Runtime cannot load '{info.path}': {exc}; delete it and re-export with "
                f"`python -m engines export {spec.model_dir}`"
            ) from exc
        self.provider = self.session.get_providers()[0]
        self.name = "onnxruntime-cuda" if self.provider == "CUDAExecutionProvider" else "onnxruntime-cpu"
        self._input = info.input.name
        self._probs = info.probs.name
        self._cams = info.cams.name if info.cams is not None else None
        self._needs_softmax = not info.probs_from_softmax

    @property
    def supports_cams(self) -> bool:
        return self._cams is not None

    def input_spec(self) -> InputSpec:
        shape = tuple("N" if isinstance(d, str) else d for d in self.info.input.shape)
        return InputSpec(self._input, shape)

    def _run(self, batch: np.ndarray, with_cams: bool) -> tuple[np.ndarray, np.ndarray | None]:
        names = [self._probs, self._cams] if with_cams and self._cams else [self._probs]
        try:
            out = self.session.run(names, {self._input: batch})
        except Exception as exc:
            raise BackendError(f"{self.name} failed on a batch of {len(batch)} ({self.info.path.name}): {exc}") from exc
        probs = out[0].astype(np.float32, copy=False)
        if self._needs_softmax:
            probs = _softmax(probs)
        return probs, (out[1].astype(np.float32, copy=False) if len(out) > 1 else None)

    def describe(self) -> str:
        where = "CUDA" if self.provider == "CUDAExecutionProvider" else f"CPU, {self.threads} threads"
        return f"{self.name} ({self.spec.arch}, {self.spec.resolution}px, {where}, {self.info.path.name})"
