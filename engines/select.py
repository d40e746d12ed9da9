"""Choosing a backend for a stage, and opening a whole cascade from its config, with the reason for each choice.

``auto`` takes the fastest backend that works here: TensorRT when it is installed, a GPU is present and an engine
exists or can be built; else ONNX Runtime (the CPU default) on the folder's ONNX file, exported or re-exported first
when missing or stale; else PyTorch eager. Every backend that was passed over is named in the reason, with why.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch

from cascade.backend import Backend
from cascade.checkpoint import StageSpec, load_stage
from cascade.config import CascadeConfig, load_config
from cascade.errors import BackendError
from cascade.pipeline import Cascade
from engines.engine_cache import EngineTarget, plan_engine
from engines.export import ensure_onnx
from engines.hardware import detect_gpu
from engines.onnx_file import folder_spec
from engines.torch_backend import TorchBackend

BACKEND_KINDS = ("auto", "tensorrt", "onnx", "torch")

log = logging.getLogger("engines.select")


def _torch_backend(spec: StageSpec) -> TorchBackend:
    if not spec.checkpoint_path.is_file():
        raise BackendError(f"PyTorch needs {spec.checkpoint_path.name}, and '{spec.model_dir}' has none")
    _, model = load_stage(spec.model_dir)
    return TorchBackend(spec, model, "cuda" if torch.cuda.is_available() else "cpu")


def _onnx_backend(spec: StageSpec) -> tuple[Backend, str]:
    try:
        import onnxruntime  # noqa: F401  (fail fast, before any export work)
    except ImportError as exc:
        raise BackendError(f"onnxruntime cannot be imported ({exc})") from exc
    from engines.ort_backend import OnnxRuntimeBackend

    info, note = ensure_onnx(spec)
    backend = OnnxRuntimeBackend(spec, info)
    return backend, note


def _tensorrt_backend(spec: StageSpec, precision: str | None) -> tuple[Backend, str]:
    if importlib.util.find_spec("tensorrt") is None:
        raise BackendError("TensorRT is not installed")
    gpu = detect_gpu()  # before anything touches TensorRT's runtime, which crashes without a GPU
    if gpu is None:
        raise BackendError("no CUDA GPU found")
    from engines.trt_backend import TensorRTBackend
    from engines.trt_build import build_engine, default_precision, import_tensorrt

    trt = import_tensorrt()
    info, note = ensure_onnx(spec)
    target = EngineTarget(str(trt.__version__), gpu, precision or default_precision(gpu))
    plan = plan_engine(info.path, target)
    if not plan.build:
        try:
            return TensorRTBackend(spec, plan.path, gpu, target.precision), f"{note}; {plan.reason}"
        except BackendError as exc:  # e.g. a jetson-inference engine from another device: build our own
            log.warning("%s; building a new engine", exc)
    log.info("%s", plan.reason)
    built = build_engine(info.path, info, target)
    return TensorRTBackend(spec, built.path, gpu, target.precision), f"{note}; built {built.path.name}"


def make_backend(model_dir: str | os.PathLike, kind: str = "auto", precision: str | None = None) -> tuple[Backend, str]:
    """A backend for one model folder and a sentence saying why it was chosen.

    ``precision`` (TensorRT only): "fp16" or "fp32"; default FP16 where the GPU has fast FP16.
    """
    if kind not in BACKEND_KINDS:
        raise BackendError(f"unknown backend '{kind}'; choose one of {', '.join(BACKEND_KINDS)}")
    spec = folder_spec(Path(model_dir))
    if kind == "torch":
        backend = _torch_backend(spec)
        return backend, f"PyTorch eager on {backend.device.type.upper()} (requested)"
    passed_over: list[str] = []
    if kind in ("auto", "tensorrt"):
        try:
            backend, note = _tensorrt_backend(spec, precision)
            return backend, f"TensorRT on {backend.gpu.name} ({note})"
        except BackendError as exc:
            if kind == "tensorrt":
                raise
            passed_over.append(f"TensorRT: {exc}")
    if kind in ("auto", "onnx"):
        try:
            backend, note = _onnx_backend(spec)
        except BackendError as exc:
            if kind == "onnx":
                raise
            passed_over.append(f"ONNX Runtime: {exc}")
        else:
            where = "CUDA" if backend.name.endswith("cuda") else f"the CPU, {backend.threads} threads"
            why = "requested" if kind == "onnx" else "not used: " + "; ".join(passed_over)
            return backend, f"ONNX Runtime on {where} ({note}); {why}"
    try:
        backend = _torch_backend(spec)
    except BackendError as exc:
        raise BackendError(f"no backend can run '{spec.model_dir}': " + "; ".join([*passed_over, str(exc)])) from exc
    not_used = "; ".join(passed_over)
    return backend, f"PyTorch eager on {backend.device.type.upper()}, the last resort; not used: {not_used}"


def open_cascade(
    config: CascadeConfig | str | os.PathLike | None = None, backend: str = "auto", precision: str | None = None
) -> Cascade:
    """Load both stages of a cascade config with the chosen backend kind."""
    cfg = config if isinstance(config, CascadeConfig) else load_config(config)
    b1, why1 = make_backend(cfg.stage1_dir, backend, precision)
    b2, why2 = make_backend(cfg.stage2_dir, backend, precision)
    reasons = {1: why1, 2: why2}
    return Cascade(b1, b2, cfg.threshold, cfg.rule, cfg.normal_label, reasons, temperatures=cfg.temperatures)
