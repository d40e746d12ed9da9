"""Choosing a backend for a stage, and opening a whole cascade from its config, with the reason for each choice.

``auto`` takes the fastest backend that works here: TensorRT when it is installed, a GPU is present and an engine for
this GPU exists, loads and runs a first batch; else ONNX Runtime (the CPU default) on the folder's ONNX file, exported
or re-exported first when missing or stale; else PyTorch eager. Every backend that was passed over is named in the
reason, with why. Engines are never built here: a build takes minutes (``engines.trt_build.build_stage_engine``).
"""

from __future__ import annotations

import logging
import os
import threading
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
from engines.identity import OnnxIdentityError
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


#: TensorRT failures per (model folder, engine target): the engine file's stamp when it failed, and why. A failed
#: engine is not tried again on every request; a rebuilt one (another stamp) is.
_trt_failures: dict[tuple[str, EngineTarget], tuple[str, str]] = {}
_trt_failures_lock = threading.Lock()


def _stamp(path: Path) -> str:
    info = path.stat()
    return f"{path}:{info.st_mtime_ns}:{info.st_size}"


def _tensorrt_backend(spec: StageSpec, precision: str | None) -> tuple[Backend, str]:
    """An existing engine for this GPU, loaded and run once; never a build (``python -m engines build`` or the
    dashboard's build button do that)."""
    from engines.trt_backend import TensorRTBackend
    from engines.trt_build import default_precision, import_tensorrt

    trt = import_tensorrt()
    gpu = detect_gpu()  # before anything touches TensorRT's runtime, which crashes without a GPU
    if gpu is None:
        raise BackendError("no CUDA GPU found")
    info, note = ensure_onnx(spec)
    target = EngineTarget(str(trt.__version__), gpu, precision or default_precision(gpu))
    plan = plan_engine(info.path, target)
    if plan.build:
        raise BackendError(f"{plan.reason}; build it with `python -m engines build {spec.model_dir}` or Home's button")
    key, stamp = (str(Path(spec.model_dir).resolve()), target), _stamp(plan.path)
    with _trt_failures_lock:
        failed = _trt_failures.get(key)
    if failed is not None and failed[0] == stamp:
        raise BackendError(f"{failed[1]} (remembered: not retried until the engine is rebuilt)")
    try:
        backend = TensorRTBackend(spec, plan.path, gpu, target.precision)
        try:
            backend.warm_up()
        except BaseException:
            backend.close()
            raise
    except Exception as exc:  # noqa: BLE001  (TypeError from trt.nptype, pycuda's LogicError, RuntimeError, …)
        why = str(exc) if isinstance(exc, BackendError) else f"{plan.path.name} failed: {type(exc).__name__}: {exc}"
        with _trt_failures_lock:
            _trt_failures[key] = (stamp, why)
        raise BackendError(why) from exc
    return backend, f"{note}; {plan.reason}"


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
        except OnnxIdentityError:
            raise  # the folder's ONNX is not its checkpoint's: an error to fix, not a reason to try another backend
        except Exception as exc:  # noqa: BLE001  (auto falls back on any failure, saying why)
            if kind == "tensorrt":
                if isinstance(exc, BackendError):
                    raise
                raise BackendError(f"TensorRT failed: {type(exc).__name__}: {exc}") from exc
            passed_over.append(f"TensorRT: {exc}")
            log.info("TensorRT not used for %s: %s", spec.model_dir, exc)
    if kind in ("auto", "onnx"):
        try:
            backend, note = _onnx_backend(spec)
        except OnnxIdentityError:
            raise
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
