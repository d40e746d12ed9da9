"""Engine names, manifests and staleness, and jetson-inference's engine files: no TensorRT needed."""

from __future__ import annotations

import json

import pytest

from cascade.fileio import file_sha256
from engines.engine_cache import (
    EngineTarget,
    engine_path,
    engine_problem,
    expected_identity,
    jetson_engines,
    manifest_path,
    parse_jetson_engine,
    plan_engine,
    read_manifest,
    slug,
    tensorrt_version_code,
    write_manifest,
)
from engines.hardware import GpuInfo
from engines.onnx_file import OnnxInfo, TensorInfo

H100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))
ORIN = GpuInfo("Orin (nvgpu)", (8, 7))


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "resnet18.onnx"
    path.write_bytes(b"pretend onnx v1")
    return path


def _fake_build(onnx_file, target: EngineTarget, content: bytes = b"plan") -> None:
    """What build_engine leaves behind, without TensorRT: the engine file and its manifest."""
    from engines.engine_cache import make_manifest

    engine = engine_path(onnx_file, target)
    engine.write_bytes(content)
    info = OnnxInfo(onnx_file, (TensorInfo("input_0", ("N", 3, 64, 64), 1),), (), {"source_sha256": "ab" * 32}, 17)
    write_manifest(engine, make_manifest(engine, onnx_file, info, target, 16, 1.5, target.precision))


def test_engine_name_says_version_gpu_and_precision(onnx_file):
    target = EngineTarget("10.13.0.35", H100, "fp16")
    assert engine_path(onnx_file, target).name == "resnet18.onnx.trt10.13.0.35.nvidia-h100-80gb-hbm3.sm90.fp16.engine"
    assert manifest_path(engine_path(onnx_file, target)).name.endswith(".fp16.engine.manifest.json")
    assert slug("Orin (nvgpu)") == "orin-nvgpu"
    assert engine_path(onnx_file, EngineTarget("10.13.0.35", ORIN, "fp16")) != engine_path(onnx_file, target)


def test_fresh_engine_is_used(onnx_file):
    target = EngineTarget("10.13.0.35", H100, "fp16")
    _fake_build(onnx_file, target)
    plan = plan_engine(onnx_file, target)
    assert not plan.build and plan.path == engine_path(onnx_file, target)
    manifest = read_manifest(plan.path)
    assert manifest["onnx_sha256"] == file_sha256(onnx_file) and manifest["source_checkpoint_sha256"] == "ab" * 32
    assert manifest["tensorrt"] == "10.13.0.35" and manifest["precision"] == "fp16" and "built_at" in manifest


def test_changed_onnx_makes_the_engine_stale(onnx_file):
    target = EngineTarget("10.13.0.35", H100, "fp16")
    _fake_build(onnx_file, target)
    onnx_file.write_bytes(b"pretend onnx v2")
    plan = plan_engine(onnx_file, target)
    assert plan.build and "the ONNX file changed" in plan.reason


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tensorrt", "10.3.0.26", "built for tensorrt '10.3.0.26'"),
        ("gpu", "Orin (nvgpu)", "built for gpu 'Orin (nvgpu)'"),
        ("compute_capability", "8.7", "built for compute_capability '8.7'"),
        ("precision", "fp32", "built for precision 'fp32'"),
    ],
)
def test_foreign_manifest_is_rebuilt(onnx_file, field, value, message):
    target = EngineTarget("10.13.0.35", H100, "fp16")
    _fake_build(onnx_file, target)
    engine = engine_path(onnx_file, target)
    manifest = json.loads(manifest_path(engine).read_text())
    manifest[field] = value
    manifest_path(engine).write_text(json.dumps(manifest))
    problem = engine_problem(engine, expected_identity(onnx_file, target))
    assert problem is not None and "foreign" in problem and message in problem


def test_engine_without_manifest_or_with_other_bytes_is_rebuilt(onnx_file):
    target = EngineTarget("10.13.0.35", H100, "fp16")
    _fake_build(onnx_file, target)
    engine = engine_path(onnx_file, target)
    engine.write_bytes(b"another plan copied in")
    assert "not the file its manifest describes" in engine_problem(engine, expected_identity(onnx_file, target))
    manifest_path(engine).unlink()
    assert "no readable manifest" in engine_problem(engine, expected_identity(onnx_file, target))
    assert plan_engine(onnx_file, target).build


def test_tensorrt_version_codes_match_jetson_inference():
    assert tensorrt_version_code("8.2.1.8") == 8201
    assert tensorrt_version_code("8.6.2") == 8602
    assert tensorrt_version_code("10.3.0.30") == 100300
    assert tensorrt_version_code("11.4.0.106") == 110400


def test_jetson_engine_names_are_recognised(onnx_file):
    parsed = parse_jetson_engine(onnx_file.with_name("resnet18.onnx.1.1.8201.GPU.FP16.engine"))
    assert parsed is not None
    assert (parsed.model, parsed.max_batch, parsed.version_code, parsed.device, parsed.precision) == (
        "resnet18.onnx",
        1,
        8201,
        "GPU",
        "fp16",
    )
    assert parse_jetson_engine(onnx_file.with_name("resnet18.onnx.trt10.nvidia.sm90.fp16.engine")) is None
    assert parse_jetson_engine(onnx_file.with_name("resnet18.onnx.1.1.8201.DLA_0.FP16.engine")).device == "DLA_0"


def _jetson_files(onnx_file, version_code: int, checksum: str | None) -> None:
    onnx_file.with_name(f"resnet18.onnx.1.1.{version_code}.GPU.FP16.engine").write_bytes(b"jetson plan")
    onnx_file.with_name(f"resnet18.onnx.1.1.{version_code}.DLA_0.FP16.engine").write_bytes(b"dla plan")
    if checksum is not None:
        onnx_file.with_name("resnet18.onnx.sha256sum").write_text(checksum + "\n")


def test_matching_jetson_engine_is_used(onnx_file):
    _jetson_files(onnx_file, 100300, file_sha256(onnx_file))
    assert len(jetson_engines(onnx_file)) == 2
    plan = plan_engine(onnx_file, EngineTarget("10.3.0.30", ORIN, "fp16"))
    assert not plan.build and plan.path.name == "resnet18.onnx.1.1.100300.GPU.FP16.engine"
    assert plan.reason.startswith("jetson-inference engine")


@pytest.mark.parametrize(
    ("version", "precision", "checksum", "message"),
    [
        ("10.13.0.35", "fp16", "ok", "built with TensorRT 100300, this is 101300"),
        ("10.3.0.30", "fp32", "ok", "is FP16, FP32 was asked for"),
        ("10.3.0.30", "fp16", None, "no resnet18.onnx.sha256sum"),
        ("10.3.0.30", "fp16", "0" * 64, "built from an older resnet18.onnx"),
    ],
)
def test_unusable_jetson_engine_is_rebuilt(onnx_file, version, precision, checksum, message):
    _jetson_files(onnx_file, 100300, file_sha256(onnx_file) if checksum == "ok" else checksum)
    plan = plan_engine(onnx_file, EngineTarget(version, ORIN, precision))
    assert plan.build and message in plan.reason and "built for DLA_0" in plan.reason
    assert plan.path == engine_path(onnx_file, EngineTarget(version, ORIN, precision))
