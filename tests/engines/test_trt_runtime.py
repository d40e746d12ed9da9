"""The TensorRT backend and its selection: against the stand-in module here, against real TensorRT on a GPU host."""

from __future__ import annotations

import importlib.util
import shutil
import sys

import numpy as np
import onnxruntime as ort
import pytest

from cascade.checkpoint import load_stage
from cascade.errors import BackendError
from engines.engine_cache import EngineTarget
from engines.hardware import GpuInfo, detect_gpu
from engines.onnx_file import read_onnx_info
from engines.select import make_backend
from engines.trt_backend import TensorRTBackend
from engines.trt_build import build_engine
from tests.engines.conftest import input_batches
from tests.engines.fake_tensorrt import FakeCudaMemory, make_fake_tensorrt

GPU = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))


@pytest.fixture
def folder(tmp_path, exported_models):
    dest = tmp_path / "resnet18"
    shutil.copytree(exported_models["resnet18"], dest)
    return dest


@pytest.fixture
def fake_trt(monkeypatch):
    """Install the stand-in as ``tensorrt``, with a GPU present and host arrays as device memory."""
    trt, calls = make_fake_tensorrt("10.13.0.35")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr("engines.select.detect_gpu", lambda: GPU)
    monkeypatch.setattr("engines.trt_backend.open_cuda_memory", lambda index: FakeCudaMemory(trt))
    return trt, calls


def _ort(folder, batch):
    return ort.InferenceSession(str(folder / "resnet18.onnx")).run(None, {"input_0": batch})


def test_tensorrt_backend_binds_and_splits_batches(folder, fake_trt):
    trt, calls = fake_trt
    spec, _ = load_stage(folder)
    info = read_onnx_info(spec.onnx_path)
    built = build_engine(info.path, info, EngineTarget(trt.__version__, GPU, "fp16"), max_batch=16, trt=trt)
    backend = TensorRTBackend(spec, built.path, GPU, "fp16")
    assert backend.input_spec().shape == ("N", 3, 64, 64) and backend.input_spec().max_batch == 16
    assert backend.supports_cams
    batch = np.concatenate([input_batches(64, count=7)["random"]] * 3)  # 21 images: 16 + 5
    probs, cams = backend.predict_with_cams(batch)
    want_probs, want_cams = _ort(folder, batch)
    np.testing.assert_allclose(probs, want_probs, atol=1e-6)
    np.testing.assert_allclose(cams, want_cams, atol=1e-5)
    assert [n for n, _ in calls.executions] == [16, 5] and backend.calls == 1
    assert backend.predict(batch[:2]).shape == (2, 3)


def test_auto_picks_tensorrt_builds_once_then_uses_the_cache(folder, fake_trt):
    backend, reason = make_backend(folder, "auto")
    assert isinstance(backend, TensorRTBackend)
    assert reason.startswith("TensorRT on NVIDIA H100 80GB HBM3") and "built resnet18.onnx.trt10.13.0.35" in reason
    backend, reason = make_backend(folder, "auto")
    assert "cached engine" in reason and backend.precision == "fp16"
    probs = backend.predict(input_batches(64)["phantoms"])
    np.testing.assert_allclose(probs, _ort(folder, input_batches(64)["phantoms"])[0], atol=1e-6)


def test_engine_from_another_tensorrt_version_is_rebuilt(folder, fake_trt, monkeypatch):
    make_backend(folder, "tensorrt")
    newer, _ = make_fake_tensorrt("10.14.1.48")
    monkeypatch.setitem(sys.modules, "tensorrt", newer)
    monkeypatch.setattr("engines.trt_backend.open_cuda_memory", lambda index: FakeCudaMemory(newer))
    backend, reason = make_backend(folder, "tensorrt")
    assert "built resnet18.onnx.trt10.14.1.48" in reason
    assert len(list(folder.glob("*.engine"))) == 2  # each version keeps its own


def test_undeserializable_jetson_engine_falls_back_to_our_build(folder, fake_trt):
    from cascade.fileio import file_sha256

    onnx_file = folder / "resnet18.onnx"
    (folder / "resnet18.onnx.1.1.101300.GPU.FP16.engine").write_bytes(b"a plan for another GPU")
    (folder / "resnet18.onnx.sha256sum").write_text(file_sha256(onnx_file) + "\n")
    backend, reason = make_backend(folder, "tensorrt")
    assert isinstance(backend, TensorRTBackend) and "built resnet18.onnx.trt10.13.0.35" in reason


def test_no_gpu_means_tensorrt_is_never_touched(folder, monkeypatch):
    trt, _ = make_fake_tensorrt("10.13.0.35")

    def crash(logger):  # TensorRT's runtime segfaults without a GPU; here it would fail the test instead
        raise AssertionError("TensorRT runtime created on a machine without a GPU")

    trt.Runtime = crash
    trt.Builder = crash
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr("engines.select.detect_gpu", lambda: None)
    backend, reason = make_backend(folder, "auto")
    assert backend.name == "onnxruntime-cpu" and "TensorRT: no CUDA GPU found" in reason
    with pytest.raises(BackendError, match="no CUDA GPU found"):
        make_backend(folder, "tensorrt")


real_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None or detect_gpu() is None, reason="needs TensorRT and a CUDA GPU"
)


@pytest.mark.tensorrt
@pytest.mark.gpu
@real_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_tensorrt_engine_matches_onnx_runtime(folder, precision):
    backend, reason = make_backend(folder, "tensorrt", precision=precision)
    assert isinstance(backend, TensorRTBackend), reason
    batch = input_batches(64)["phantoms"]
    probs, cams = backend.predict_with_cams(batch)
    want_probs, want_cams = _ort(folder, batch)
    tolerance = 1e-3 if precision == "fp32" else 2e-2
    assert np.abs(probs - want_probs).max() <= tolerance
    for got, want in zip(cams.reshape(len(batch) * 3, -1), want_cams.reshape(len(batch) * 3, -1), strict=True):
        if want.max() > 1e-3:
            assert np.corrcoef(got, want)[0, 1] >= 0.99
    again, reason = make_backend(folder, "tensorrt", precision=precision)
    assert "cached engine" in reason
