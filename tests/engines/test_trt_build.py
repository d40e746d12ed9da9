"""Engine builds for TensorRT 10 and 11, against a stand-in ``tensorrt`` module (TensorRT cannot be installed here)."""

from __future__ import annotations

import base64
import json
import shutil
import sys

import onnx
import pytest

from cascade.errors import BackendError
from engines.engine_cache import EngineTarget, engine_path, plan_engine, read_manifest, timing_cache_path
from engines.hardware import GpuInfo
from engines.onnx_file import read_onnx_info
from engines.trt_build import (
    EngineBuildError,
    batch_profile,
    build_engine,
    default_precision,
    strongly_typed_only,
)
from tests.engines.fake_tensorrt import CACHE_MAGIC, make_fake_tensorrt

GPU = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))
FLOAT16 = onnx.TensorProto.FLOAT16


@pytest.fixture
def onnx_file(tmp_path, exported_models):
    dest = tmp_path / "resnet18"
    shutil.copytree(exported_models["resnet18"], dest)
    return dest / "resnet18.cascade.onnx"


def _build(onnx_file, version, precision, **fake):
    trt, calls = make_fake_tensorrt(version, **fake)
    target = EngineTarget(version, GPU, precision)
    result = build_engine(onnx_file, read_onnx_info(onnx_file), target, max_batch=16, workspace_mb=256, trt=trt)
    return result, calls


def _has_fp16_weights(model: onnx.ModelProto) -> bool:
    return any(init.data_type == FLOAT16 for init in model.graph.initializer)


def test_version_detection():
    assert not strongly_typed_only(make_fake_tensorrt("10.13.0.35")[0])
    assert strongly_typed_only(make_fake_tensorrt("11.4.0.106")[0])


def test_tensorrt10_fp16_sets_the_builder_flag(onnx_file):
    result, calls = _build(onnx_file, "10.13.0.35", "fp16")
    assert [f.name for f in calls.flags] == ["FP16", "TF32"]  # TF32 stays on for the layers left in FP32
    assert len(calls.parsed) == 1 and not _has_fp16_weights(calls.parsed[0])  # the FP32 ONNX as exported
    assert calls.profiles == [("input_0", (1, 3, 64, 64), (1, 3, 64, 64), (16, 3, 64, 64))]
    assert calls.workspace[0][1] == 256 << 20
    assert result.path == engine_path(onnx_file, EngineTarget("10.13.0.35", GPU, "fp16"))
    plan = json.loads(result.path.read_bytes())
    assert plan["version"] == "10.13.0.35" and plan["flags"] == ["FP16", "TF32"]
    assert base64.b64decode(plan["onnx"]) == onnx_file.read_bytes() and plan["profile"][2] == [16, 3, 64, 64]
    assert result.manifest["effective_precision"] == "fp16"


@pytest.mark.parametrize("version", ["10.13.0.35", "11.4.0.106"])
def test_fp32_builds_clear_tf32(onnx_file, version):
    result, calls = _build(onnx_file, version, "fp32")
    assert calls.flags == []  # TF32 is on by default in TensorRT: an FP32 build must switch it off
    assert json.loads(result.path.read_bytes())["flags"] == []
    assert result.manifest["effective_precision"] == "fp32" and result.manifest["precision"] == "fp32"


def test_tensorrt10_without_fast_fp16_builds_fp32(onnx_file):
    result, calls = _build(onnx_file, "10.13.0.35", "fp16", fast_fp16=False)
    assert calls.flags == [] and result.manifest["effective_precision"] == "fp32"


def test_tensorrt11_fp16_converts_the_onnx_first(onnx_file):
    pytest.importorskip("onnxconverter_common")
    result, calls = _build(onnx_file, "11.4.0.106", "fp16")
    assert [f.name for f in calls.flags] == ["TF32"]  # no precision flags exist in TensorRT 11
    parsed = calls.parsed[0]
    assert _has_fp16_weights(parsed)
    io_types = {v.name: v.type.tensor_type.elem_type for v in [*parsed.graph.input, *parsed.graph.output]}
    assert io_types == {"input_0": onnx.TensorProto.FLOAT, "output_0": onnx.TensorProto.FLOAT, "cam_0": 1}
    assert result.manifest["effective_precision"] == "fp16" and result.manifest["tensorrt"] == "11.4.0.106"
    assert not _has_fp16_weights(onnx.load(str(onnx_file)))  # the folder's ONNX is left FP32


def test_tensorrt11_fp16_without_converter_says_how_to_fix(onnx_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)
    with pytest.raises(Exception, match="onnxconverter-common"):
        _build(onnx_file, "11.4.0.106", "fp16")


def test_tensorrt11_fp32_parses_the_onnx_unchanged(onnx_file):
    result, calls = _build(onnx_file, "11.4.0.106", "fp32")
    assert not _has_fp16_weights(calls.parsed[0])
    assert result.manifest["effective_precision"] == "fp32"


def test_parser_errors_are_reported(onnx_file):
    with pytest.raises(EngineBuildError, match="Unsupported operator Einsum"):
        _build(onnx_file, "10.13.0.35", "fp32", parse_errors=("Unsupported operator Einsum",))
    assert not list(onnx_file.parent.glob("*.engine"))


def test_failed_build_is_reported(onnx_file):
    with pytest.raises(EngineBuildError, match="failed to build"):
        _build(onnx_file, "10.13.0.35", "fp32", build_fails=True)
    assert not list(onnx_file.parent.glob("*.engine"))


def test_timing_cache_is_saved_and_reused(onnx_file):
    target = EngineTarget("10.13.0.35", GPU, "fp16")
    _, first = _build(onnx_file, "10.13.0.35", "fp16")
    assert first.timing_cache_in == [b""]
    cache = timing_cache_path(onnx_file, target)
    saved = cache.read_bytes()
    assert saved == CACHE_MAGIC + b"+timings"
    assert not list(onnx_file.parent.glob(".*.tmp"))  # written through write_atomic
    _, second = _build(onnx_file, "10.13.0.35", "fp16")
    assert second.timing_cache_in == [saved]


def test_rejected_timing_cache_is_replaced_by_an_empty_one(onnx_file, caplog):
    cache = timing_cache_path(onnx_file, EngineTarget("10.13.0.35", GPU, "fp16"))
    cache.write_bytes(b"half a cache from an interrupted write")
    _, calls = _build(onnx_file, "10.13.0.35", "fp16")
    assert calls.timing_cache_in == [b"half a cache from an interrupted write", b""]
    assert "rejected the timing cache" in caplog.text
    assert cache.read_bytes().startswith(CACHE_MAGIC)


def test_build_reports_progress_through_tensorrts_monitor(onnx_file):
    trt, calls = make_fake_tensorrt("10.13.0.35")
    seen: list[tuple[str, float]] = []
    target = EngineTarget("10.13.0.35", GPU, "fp16")
    build_engine(onnx_file, read_onnx_info(onnx_file), target, trt=trt, progress=lambda m, f: seen.append((m, f)))
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[0] < 0.2 and fractions[-1] == 1.0
    assert any("Tactic selection (3/3)" in m for m, _ in seen) and "wrote" in seen[-1][0]
    assert [keep for *_, keep in calls.phases] == [True] * 5  # the monitor never cancels the build


def test_one_logger_for_builds_and_runtimes(onnx_file):
    trt, calls = make_fake_tensorrt("10.13.0.35")
    target = EngineTarget("10.13.0.35", GPU, "fp16")
    for _ in range(2):
        build_engine(onnx_file, read_onnx_info(onnx_file), target, trt=trt)
    assert len({id(logger) for logger in calls.loggers}) == 1


def test_built_engine_is_then_used_from_cache(onnx_file):
    target = EngineTarget("10.13.0.35", GPU, "fp16")
    assert plan_engine(onnx_file, target).build
    result, _ = _build(onnx_file, "10.13.0.35", "fp16")
    plan = plan_engine(onnx_file, target)
    assert not plan.build and plan.path == result.path
    manifest = read_manifest(result.path)
    assert manifest["gpu"] == GPU.name and manifest["compute_capability"] == "9.0"
    assert manifest["source_checkpoint_sha256"] == read_onnx_info(onnx_file).metadata["source_sha256"]
    assert manifest["opset"] == 17 and manifest["max_batch"] == 16


def test_batch_profiles():
    assert batch_profile((-1, 3, 128, 128), 16) == ((1, 3, 128, 128), (1, 3, 128, 128), (16, 3, 128, 128))
    assert batch_profile((1, 3, 224, 224), 16) == ((1, 3, 224, 224),) * 3  # jetson-inference's fixed batch
    with pytest.raises(EngineBuildError, match="only the batch dimension"):
        batch_profile((-1, 3, -1, -1), 16)


def test_default_precision_follows_the_gpu():
    assert default_precision(GPU) == "fp16"
    assert default_precision(GpuInfo("Jetson Nano", (5, 3))) == "fp16"
    assert default_precision(GpuInfo("GTX 1080", (6, 1))) == "fp32"


def test_invalid_fp16_conversion_is_a_backend_error(onnx_file, monkeypatch):
    pytest.importorskip("onnxconverter_common")

    def invalid(model):
        raise onnx.checker.ValidationError("Field 'type' of 'value_info' is required but missing.")

    monkeypatch.setattr("onnx.checker.check_model", invalid)
    with pytest.raises(BackendError, match="mixed-FP16 conversion of resnet18.cascade.onnx failed .ValidationError"):
        _build(onnx_file, "11.4.0.106", "fp16")
    assert not list(onnx_file.parent.glob("*.engine"))
