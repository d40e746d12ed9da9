"""TensorRT engine builds from a stage's ONNX file, for TensorRT 10 and 11, in the style of NVIDIA's Python samples.

TensorRT 10 builds FP16 engines from the FP32 ONNX with ``BuilderFlag.FP16`` (where the platform has fast FP16).
TensorRT 11 has no precision flags: every network is strongly typed, so the precision must be in the ONNX itself;
for FP16 the ONNX is first converted to mixed precision (``engines.fp16``). Which path applies is decided by what the
installed ``tensorrt`` module offers, so a test can pass a stand-in module for either version.

``tensorrt`` is imported lazily, and only when a build is asked for.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from cascade.errors import BackendError
from cascade.fileio import write_atomic
from engines.engine_cache import EngineTarget, engine_path, make_manifest, timing_cache_path, write_manifest
from engines.fp16 import to_mixed_fp16
from engines.hardware import GpuInfo
from engines.onnx_file import OnnxInfo

log = logging.getLogger("engines.build")

PRECISIONS = ("fp32", "fp16")
DEFAULT_MAX_BATCH = 16
DEFAULT_WORKSPACE_MB = 1024


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


def trt_major(trt: ModuleType) -> int:
    return int(str(trt.__version__).split(".")[0])


def strongly_typed_only(trt: ModuleType) -> bool:
    """TensorRT 11 and later: no precision builder flags; the network's types decide the precision."""
    return trt_major(trt) >= 11 or not hasattr(trt.BuilderFlag, "FP16")


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


class EngineBuilder:
    """Parses an ONNX graph and builds a serialized TensorRT engine from it."""

    def __init__(
        self, trt: ModuleType | None = None, workspace_mb: int = DEFAULT_WORKSPACE_MB, verbose: bool = False
    ) -> None:
        self.trt = trt if trt is not None else import_tensorrt()
        self.logger = self.trt.Logger(self.trt.Logger.VERBOSE if verbose else self.trt.Logger.WARNING)
        if hasattr(self.trt, "init_libnvinfer_plugins"):
            self.trt.init_libnvinfer_plugins(self.logger, namespace="")
        self.builder = self.trt.Builder(self.logger)
        self.config = self.builder.create_builder_config()
        self.config.set_memory_pool_limit(self.trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        self.network = None
        self.parser = None
        self.max_batch = 0

    @property
    def strongly_typed(self) -> bool:
        return strongly_typed_only(self.trt)

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
        if precision == "fp32" or self.strongly_typed:
            return precision  # strongly typed: the (converted) ONNX already says FP16 or FP32
        if not getattr(self.builder, "platform_has_fast_fp16", True):
            log.warning("This GPU has no fast FP16; building an FP32 engine instead")
            return "fp32"
        self.config.set_flag(self.trt.BuilderFlag.FP16)
        return "fp16"

    def create_engine(
        self, engine: str | os.PathLike, precision: str = "fp16", timing_cache: str | os.PathLike | None = None
    ) -> str:
        """Build and write the engine (atomically); returns the precision it was built with."""
        if self.network is None:
            raise EngineBuildError("create_network() must be called before create_engine()")
        effective = self._set_precision(precision)
        cache_file = Path(timing_cache) if timing_cache else None
        cache_bytes = cache_file.read_bytes() if cache_file and cache_file.is_file() else b""
        cache = self.config.create_timing_cache(cache_bytes)
        self.config.set_timing_cache(cache, ignore_mismatch=False)
        log.info("Building %s engine %s (timing cache: %s)", effective.upper(), Path(engine).name, cache_file)
        plan = self.builder.build_serialized_network(self.network, self.config)
        if plan is None:
            raise EngineBuildError(f"TensorRT failed to build {Path(engine).name}; its log above says why")
        out = Path(engine)
        write_atomic(out, memoryview(plan))
        if cache_file is not None:
            cache_file.write_bytes(bytes(memoryview(self.config.get_timing_cache().serialize())))
        return effective


def build_engine(
    onnx_path: str | os.PathLike,
    info: OnnxInfo,
    target: EngineTarget,
    max_batch: int = DEFAULT_MAX_BATCH,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    trt: ModuleType | None = None,
    verbose: bool = False,
) -> BuildResult:
    """Build the engine for ``target`` next to ``onnx_path`` and write its manifest."""
    start = time.perf_counter()
    onnx_path = Path(onnx_path)
    out = engine_path(onnx_path, target)
    builder = EngineBuilder(trt, workspace_mb, verbose)
    with tempfile.TemporaryDirectory(prefix="trt-build-") as scratch:
        source = onnx_path
        if target.precision == "fp16" and builder.strongly_typed:
            log.info(
                "TensorRT %s is strongly typed: converting %s to mixed FP16 first",
                builder.trt.__version__,
                onnx_path.name,
            )
            source = to_mixed_fp16(onnx_path, Path(scratch) / f"{onnx_path.stem}.fp16.onnx")
        builder.create_network(source, max_batch)
        effective = builder.create_engine(out, target.precision, timing_cache_path(onnx_path, target))
    seconds = time.perf_counter() - start
    manifest = make_manifest(out, onnx_path, info, target, builder.max_batch, seconds, effective)
    write_manifest(out, manifest)
    log.info("Wrote %s in %.1f s", out.name, seconds)
    return BuildResult(out, manifest, seconds)
