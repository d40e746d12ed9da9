"""Where TensorRT engines live and when one may be used.

A serialized engine only runs on the GPU model and TensorRT version that built it, so each is cached next to its ONNX
file under a name that says both, plus the precision::

    resnet18.onnx.trt10.13.0.35.nvidia-h100-80gb-hbm3.sm90.fp16.engine
    resnet18.onnx.trt10.13.0.35.nvidia-h100-80gb-hbm3.sm90.fp16.engine.manifest.json

The manifest records what the engine was built from (checkpoint and ONNX sha256, opset), how (precision, TensorRT
version, GPU), and when. An engine whose manifest is missing or disagrees with the present ONNX file, TensorRT
version, GPU or precision is stale or foreign: never used (``python -m engines build`` replaces it).

jetson-inference caches its engines as ``<model>.onnx.<maxBatch>.<gpuFallback>.<NV_TENSORRT_VERSION>.<device>.
<precision>.engine`` with a ``<model>.onnx.sha256sum`` beside it. Such a file is recognised and used only when its
TensorRT version number and precision match, it was built for the GPU (not a DLA core), and the checksum file proves
it was built from the present ONNX; TensorRT's own check at deserialization then rejects one from another GPU.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cascade.fileio import file_sha256, write_atomic
from engines.hardware import GpuInfo
from engines.onnx_file import OnnxInfo

MANIFEST_FORMAT = 2  # 2: "fp32" engines are built with TF32 off; format-1 ones were TF32 and are not used
MANIFEST_SUFFIX = ".manifest.json"
#: manifest fields that must equal the present situation for an engine to be used
IDENTITY_KEYS = ("onnx_sha256", "tensorrt", "gpu", "compute_capability", "precision")
_JETSON_ENGINE = re.compile(
    r"^(?P<model>.+\.onnx)\.(?P<max_batch>\d+)\.(?P<gpu_fallback>[01])\.(?P<version>\d+)\."
    r"(?P<device>GPU|DLA_0|DLA_1|DLA)\.(?P<precision>FP32|FP16|INT8|FASTEST)\.engine$"
)


@dataclass(frozen=True)
class EngineTarget:
    """What an engine must have been built for to run here."""

    tensorrt: str  # tensorrt.__version__, e.g. "10.13.0.35"
    gpu: GpuInfo
    precision: str  # "fp32" or "fp16"

    @property
    def compute_capability(self) -> str:
        return "{}.{}".format(*self.gpu.compute_capability)


@dataclass(frozen=True)
class EnginePlan:
    path: Path
    build: bool  # True: no usable engine exists; ``python -m engines build`` would write one at ``path``
    reason: str


@dataclass(frozen=True)
class JetsonEngine:
    path: Path
    model: str
    max_batch: int
    version_code: int
    device: str
    precision: str


def slug(text: str) -> str:
    """``NVIDIA H100 80GB HBM3`` → ``nvidia-h100-80gb-hbm3``: safe in a file name on every filesystem."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def engine_path(onnx_path: str | os.PathLike, target: EngineTarget) -> Path:
    p = Path(onnx_path)
    gpu = f"{slug(target.gpu.name)}.{target.gpu.sm}"
    return p.with_name(f"{p.name}.trt{target.tensorrt}.{gpu}.{target.precision}.engine")


def manifest_path(engine: str | os.PathLike) -> Path:
    e = Path(engine)
    return e.with_name(e.name + MANIFEST_SUFFIX)


def timing_cache_path(onnx_path: str | os.PathLike, target: EngineTarget) -> Path:
    """One timing cache per folder, TensorRT version and GPU, so a rebuild (a new checkpoint) reuses tactic timings."""
    p = Path(onnx_path)
    return p.with_name(f"trt{target.tensorrt}.{slug(target.gpu.name)}.{target.gpu.sm}.timing.cache")


def expected_identity(onnx_path: str | os.PathLike, target: EngineTarget) -> dict[str, str]:
    return {
        "onnx_sha256": file_sha256(onnx_path),
        "tensorrt": target.tensorrt,
        "gpu": target.gpu.name,
        "compute_capability": target.compute_capability,
        "precision": target.precision,
    }


def make_manifest(
    engine: Path,
    onnx_path: Path,
    info: OnnxInfo,
    target: EngineTarget,
    max_batch: int,
    build_seconds: float,
    effective_precision: str,
) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "engine": engine.name,
        "engine_sha256": file_sha256(engine),
        "onnx": onnx_path.name,
        **expected_identity(onnx_path, target),
        "source_checkpoint_sha256": info.metadata.get("source_sha256", ""),
        "opset": info.opset,
        "effective_precision": effective_precision,
        "max_batch": max_batch,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(build_seconds, 2),
    }


def write_manifest(engine: Path, manifest: dict) -> Path:
    path = manifest_path(engine)
    write_atomic(path, json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(engine: str | os.PathLike) -> dict | None:
    try:
        data = json.loads(manifest_path(engine).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def engine_problem(engine: str | os.PathLike, expected: dict[str, str]) -> str | None:
    """Why ``engine`` must not be used (None: it may). ``expected`` comes from :func:`expected_identity`."""
    e = Path(engine)
    if not e.is_file():
        return f"no engine {e.name} yet"
    manifest = read_manifest(e)
    if manifest is None:
        return f"{e.name} has no readable manifest (foreign or interrupted build)"
    if manifest.get("format") != MANIFEST_FORMAT:
        return f"{e.name}'s manifest has format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}"
    for key in IDENTITY_KEYS:
        have, want = manifest.get(key), expected[key]
        if have == want:
            continue
        if key == "onnx_sha256":
            return f"{e.name} is stale: the ONNX file changed since it was built"
        return f"{e.name} is foreign: built for {key} {have!r}, this is {want!r}"
    if manifest.get("engine_sha256") != file_sha256(e):
        return f"{e.name} is not the file its manifest describes"
    return None


def tensorrt_version_code(version: str) -> int:
    """jetson-inference's NV_TENSORRT_VERSION: major·1000+minor·100+patch before TensorRT 10, major·10000+… since."""
    parts = [int(x) for x in re.findall(r"\d+", version)[:3]] + [0, 0, 0]
    major, minor, patch = parts[:3]
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def parse_jetson_engine(path: str | os.PathLike) -> JetsonEngine | None:
    p = Path(path)
    m = _JETSON_ENGINE.match(p.name)
    if m is None:
        return None
    return JetsonEngine(p, m["model"], int(m["max_batch"]), int(m["version"]), m["device"], m["precision"].lower())


def jetson_engines(onnx_path: str | os.PathLike) -> list[JetsonEngine]:
    p = Path(onnx_path)
    found = (parse_jetson_engine(e) for e in sorted(p.parent.glob(f"{p.name}.*.engine")))
    return [j for j in found if j is not None and j.model == p.name]


def jetson_engine_problem(engine: JetsonEngine, onnx_path: str | os.PathLike, target: EngineTarget) -> str | None:
    """Why a jetson-inference engine must not be used here (None: try it)."""
    name = engine.path.name
    if engine.device != "GPU":
        return f"{name} was built for {engine.device}"
    ours = tensorrt_version_code(target.tensorrt)
    if engine.version_code != ours:
        return f"{name} was built with TensorRT {engine.version_code}, this is {ours}"
    if engine.precision != target.precision:
        return f"{name} is {engine.precision.upper()}, {target.precision.upper()} was asked for"
    checksum = Path(f"{onnx_path}.sha256sum")
    try:
        recorded = checksum.read_text(encoding="utf-8").split()[0].strip()
    except (OSError, IndexError):
        return f"{name} has no {checksum.name} to show which ONNX it was built from"
    if recorded != file_sha256(onnx_path):
        return f"{name} was built from an older {Path(onnx_path).name}"
    return None


def plan_engine(onnx_path: str | os.PathLike, target: EngineTarget) -> EnginePlan:
    """Our cached engine if it matches, else a matching jetson-inference engine, else where to build one."""
    ours = engine_path(onnx_path, target)
    problem = engine_problem(ours, expected_identity(onnx_path, target))
    if problem is None:
        return EnginePlan(ours, False, f"cached engine {ours.name}")
    rejected = []
    for jetson in jetson_engines(onnx_path):
        why_not = jetson_engine_problem(jetson, onnx_path, target)
        if why_not is None:
            return EnginePlan(jetson.path, False, f"jetson-inference engine {jetson.path.name}")
        rejected.append(why_not)
    notes = "; ".join([problem, *rejected])
    return EnginePlan(ours, True, f"no engine for this GPU and precision ({notes})")
