"""TensorRT engine builds from a stage's ONNX file, for TensorRT 10 and 11, in the style of NVIDIA's Python samples.

TensorRT 10 builds FP16 engines from the FP32 ONNX with ``BuilderFlag.FP16`` (where the platform has fast FP16).
TensorRT 11 has no precision flags: every network is strongly typed, so the precision must be in the ONNX itself;
for FP16 the ONNX is first converted to mixed precision (``engines.fp16``). Which path applies is decided by what the
installed ``tensorrt`` module offers, so a test can pass a stand-in module for either version. FP32 builds clear
``BuilderFlag.TF32`` (on by default, so an "fp32" engine would compute convolutions in TF32 on Ampere and later).

Builds take minutes, so they only ever run when asked for: ``python -m engines build`` or the dashboard's build
button, both through :func:`build_stage_engine`. ``tensorrt`` is imported lazily.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from cascade.errors import BackendError
from cascade.fileio import write_atomic
from engines.engine_cache import EngineTarget, engine_path, make_manifest, timing_cache_path, write_manifest
from engines.fp16 import to_mixed_fp16
from engines.hardware import GpuInfo, detect_gpu
from engines.onnx_file import OnnxInfo

log = logging.getLogger("engines.build")

PRECISIONS = ("fp32", "fp16")
DEFAULT_MAX_BATCH = 16
DEFAULT_WORKSPACE_MB = 1024

#: ``progress(message, fraction)`` with fraction in [0, 1]: what a build reports while it runs
Progress = Callable[[str, float], None]


class EngineBuildError(BackendError):
    """TensorRT could not parse the ONNX file or build an engine from it."""


@dataclass(frozen=True)
class BuildResult:
    path: Path
    manifest: dict
    seconds: float


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or a BackendError saying how to install it."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but its CUDA libraries are not
        raise BackendError(
            f"TensorRT is not installed ({exc}); on a GPU host: pip install -r requirements-tensorrt.txt"
        ) from exc
    return tensorrt


@functools.cache
def trt_logger(trt: ModuleType) -> Any:
    """The process's one ``trt.Logger`` (TensorRT warns when a builder or runtime gets a different one)."""
    logger = trt.Logger(trt.Logger.WARNING)
    if hasattr(trt, "init_libnvinfer_plugins"):
        trt.init_libnvinfer_plugins(logger, "")
    return logger


def strongly_typed_only(trt: ModuleType) -> bool:
    """TensorRT 11 and later: no precision builder flags; the network's types decide the precision."""
    return int(str(trt.__version__).split(".")[0]) >= 11 or not hasattr(trt.BuilderFlag, "FP16")


def default_precision(gpu: GpuInfo) -> str:
    return "fp16" if gpu.fast_fp16 else "fp32"


def batch_profile(shape: tuple[int, ...], max_batch: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes: a dynamic batch spans 1..max_batch, tuned for 1 (one image at a time in the
    dashboard); a fixed batch (jetson-inference's exports) stays as it is."""
    rest = tuple(int(d) for d in shape[1:])
    if any(d < 0 for d in rest):
        raise EngineBuildError(f"only the batch dimension may be dynamic, got input shape {tuple(shape)}")
    first = int(shape[0])
    if first > 0:
        fixed = (first, *rest)
        return fixed, fixed, fixed
    return (1, *rest), (1, *rest), (max_batch, *rest)


def _progress_monitor(trt: ModuleType, progress: Progress, start: float, span: float) -> Any:
    """A ``trt.IProgressMonitor`` that maps the top-level build phase's steps onto [start, start + span]."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}
            self.top: str | None = None
            self.fraction = start

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name] = max(1, int(num_steps))
            if parent_phase is None and self.top is None:
                self.top = phase_name

        def step_complete(self, phase_name: str, step: int) -> bool:
            done = (step + 1) / self.steps.get(phase_name, 1)
            if phase_name == self.top:
                self.fraction = start + span * min(1.0, done)
            try:
                progress(f"TensorRT: {phase_name} ({step + 1}/{self.steps.get(phase_name, 1)})", self.fraction)
            except Exception:  # noqa: BLE001  (an exception must not cross into TensorRT's C++ caller)
                log.exception("progress callback failed")
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            self.steps.pop(phase_name, None)

    return Monitor()


class EngineBuilder:
    """Parses an ONNX graph and builds a serialized TensorRT engine from it."""

    def __init__(
        self, trt: ModuleType | None = None, workspace_mb: int = DEFAULT_WORKSPACE_MB, verbose: bool = False
    ) -> None:
        self.trt = trt if trt is not None else import_tensorrt()
        self.logger = trt_logger(self.trt)
        self.verbose = verbose
        self.builder = self.trt.Builder(self.logger)
        self.config = self.builder.create_builder_config()
        self.config.set_memory_pool_limit(self.trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        self.network = None
        self.parser = None
        self.max_batch = 0

    def create_network(self, onnx_path: str | os.PathLike, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        """Parse the ONNX file, log every input and output, and add the batch optimisation profile."""
        self.network = self.builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
        self.parser = self.trt.OnnxParser(self.network, self.logger)
        if not self.parser.parse_from_file(str(onnx_path)):
            errors = [str(self.parser.get_error(i)) for i in range(self.parser.num_errors)]
            raise EngineBuildError(
                f"TensorRT {self.trt.__version__}'s ONNX parser rejected {onnx_path}:\n  " + "\n  ".join(errors)
            )
        inputs = [self.network.get_input(i) for i in range(self.network.num_inputs)]
        outputs = [self.network.get_output(i) for i in range(self.network.num_outputs)]
        log.info("Network description (TensorRT %s, %s)", self.trt.__version__, Path(onnx_path).name)
        for tensor in inputs:
            log.info("Input '%s' with shape %s and dtype %s", tensor.name, tuple(tensor.shape), tensor.dtype)
        for tensor in outputs:
            log.info("Output '%s' with shape %s and dtype %s", tensor.name, tuple(tensor.shape), tensor.dtype)
        profile = self.builder.create_optimization_profile()
        for tensor in inputs:
            lo, opt, hi = batch_profile(tuple(tensor.shape), max_batch)
            profile.set_shape(tensor.name, lo, opt, hi)
            log.info("Profile for '%s': min %s, opt %s, max %s", tensor.name, lo, opt, hi)
            self.max_batch = hi[0]
        self.config.add_optimization_profile(profile)

    def _set_precision(self, precision: str) -> str:
        """Apply the precision; returns what the engine will really use."""
        if precision not in PRECISIONS:
            raise EngineBuildError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
        if precision == "fp16" and not strongly_typed_only(self.trt):
            if getattr(self.builder, "platform_has_fast_fp16", True):
                self.config.set_flag(self.trt.BuilderFlag.FP16)
                return "fp16"
            log.warning("This GPU has no fast FP16; building an FP32 engine instead")
            precision = "fp32"
        if precision == "fp32" and hasattr(self.trt.BuilderFlag, "TF32"):
            self.config.clear_flag(self.trt.BuilderFlag.TF32)  # on by default: FP32 means FP32 (≤ 1e-3 parity)
        return precision  # strongly typed FP16: the converted ONNX already says FP16

    def _set_timing_cache(self, cache_file: Path) -> None:
        """Start from the saved timing cache; an unreadable or mismatched one is replaced by an empty cache."""
        saved = cache_file.read_bytes() if cache_file.is_file() else b""
        for data in dict.fromkeys((saved, b"")):  # the saved cache, then (if that was refused) an empty one
            cache = self.config.create_timing_cache(data)
            if cache is not None and self.config.set_timing_cache(cache, ignore_mismatch=False):
                return
            if data:
                log.warning("TensorRT rejected the timing cache %s; starting an empty one", cache_file)
        raise EngineBuildError(f"TensorRT {self.trt.__version__} rejected an empty timing cache (set_timing_cache)")

    def create_engine(self, engine: Path, precision: str, timing_cache: Path, monitor: Any = None) -> str:
        """Build and write the engine (atomically); returns the precision it was built with."""
        effective = self._set_precision(precision)
        self._set_timing_cache(timing_cache)
        if monitor is not None:
            self.config.progress_monitor = monitor
        log.info("Building %s engine %s (timing cache: %s)", effective.upper(), Path(engine).name, timing_cache)
        severity = self.logger.min_severity
        if self.verbose:
            self.logger.min_severity = self.trt.Logger.VERBOSE
        try:
            plan = self.builder.build_serialized_network(self.network, self.config)
        finally:
            self.logger.min_severity = severity
        if plan is None:
            raise EngineBuildError(f"TensorRT failed to build {Path(engine).name}; its log above says why")
        write_atomic(engine, memoryview(plan))
        write_atomic(timing_cache, bytes(memoryview(self.config.get_timing_cache().serialize())))
        return effective


def build_engine(
    onnx_path: str | os.PathLike,
    info: OnnxInfo,
    target: EngineTarget,
    max_batch: int = DEFAULT_MAX_BATCH,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    trt: ModuleType | None = None,
    verbose: bool = False,
    progress: Progress | None = None,
) -> BuildResult:
    """Build the engine for ``target`` next to ``onnx_path`` and write its manifest."""
    start = time.perf_counter()
    report = progress or (lambda message, fraction: None)
    onnx_path = Path(onnx_path)
    out = engine_path(onnx_path, target)
    builder = EngineBuilder(trt, workspace_mb, verbose)
    with tempfile.TemporaryDirectory(prefix="trt-build-") as scratch:
        source = onnx_path
        if target.precision == "fp16" and strongly_typed_only(builder.trt):
            report(f"converting {onnx_path.name} to mixed FP16 (TensorRT {builder.trt.__version__})", 0.05)
            source = to_mixed_fp16(onnx_path, Path(scratch) / f"{onnx_path.stem}.fp16.onnx")
        report(f"parsing {source.name}", 0.1)
        builder.create_network(source, max_batch)
        report(f"building {out.name} (minutes)", 0.15)
        has_monitor = hasattr(builder.trt, "IProgressMonitor")  # TensorRT 10 and 11 have it
        monitor = _progress_monitor(builder.trt, report, 0.15, 0.8) if has_monitor else None
        effective = builder.create_engine(out, target.precision, timing_cache_path(onnx_path, target), monitor)
    seconds = time.perf_counter() - start
    manifest = make_manifest(out, onnx_path, info, target, builder.max_batch, seconds, effective)
    write_manifest(out, manifest)
    report(f"wrote {out.name} ({effective}, {seconds:.0f} s)", 1.0)
    log.info("Wrote %s in %.1f s", out.name, seconds)
    return BuildResult(out, manifest, seconds)


def build_stage_engine(
    model_dir: str | os.PathLike,
    precision: str | None = None,
    progress: Progress | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    verbose: bool = False,
) -> BuildResult:
    """Build the TensorRT engine of one model folder for this GPU: what ``python -m engines build`` and the
    dashboard's build button run (nothing else builds). Exports the ONNX first if it is missing or stale.

    ``progress(message, fraction)`` is called at each step (TensorRT's own phases where it has ``IProgressMonitor``).
    Raises BackendError (no TensorRT, no GPU) or EngineBuildError.
    """
    from engines.export import ensure_onnx
    from engines.onnx_file import folder_spec

    report = progress or (lambda message, fraction: None)
    trt = import_tensorrt()
    gpu = detect_gpu()  # checked before TensorRT's runtime is touched: it crashes where there is no GPU
    if gpu is None:
        raise BackendError("no CUDA GPU found: TensorRT engines can only be built on the GPU that will run them")
    report("checking the ONNX file", 0.0)
    info, note = ensure_onnx(folder_spec(model_dir))
    log.info("%s", note)
    target = EngineTarget(str(trt.__version__), gpu, precision or default_precision(gpu))
    return build_engine(info.path, info, target, max_batch, workspace_mb, trt, verbose, report)
