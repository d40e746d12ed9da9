"""The TensorRT backend and its selection: against the stand-in modules here, against real TensorRT on a GPU host."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import threading

import numpy as np
import onnxruntime as ort
import pytest

from cascade.checkpoint import load_stage
from cascade.errors import BackendError
from cascade.fileio import file_sha256
from engines import select
from engines.cuda_memory import PycudaMemory, TorchCudaMemory
from engines.engine_cache import EngineTarget
from engines.hardware import GpuInfo, detect_gpu
from engines.onnx_file import read_onnx_info
from engines.select import make_backend
from engines.trt_backend import TensorRTBackend
from engines.trt_build import build_engine, build_stage_engine
from tests.engines.conftest import input_batches
from tests.engines.fake_tensorrt import FakeCudaMemory, make_fake_pycuda, make_fake_tensorrt, make_fake_torch_cuda

GPU = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))


@pytest.fixture
def folder(tmp_path, exported_models):
    dest = tmp_path / "resnet18"
    shutil.copytree(exported_models["resnet18"], dest)
    return dest


def _install(monkeypatch, trt, memory=True):
    """The stand-in as ``tensorrt``, a GPU present, and (``memory``) host arrays as device memory."""
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr("engines.select.detect_gpu", lambda: GPU)
    monkeypatch.setattr("engines.trt_build.detect_gpu", lambda: GPU)
    if memory:
        monkeypatch.setattr("engines.trt_backend.open_cuda_memory", lambda index: FakeCudaMemory(trt))


@pytest.fixture(autouse=True)
def no_remembered_failures(monkeypatch):
    monkeypatch.setattr(select, "_trt_failures", {})


@pytest.fixture
def fake_trt(monkeypatch):
    trt, calls = make_fake_tensorrt("10.13.0.35")
    _install(monkeypatch, trt)
    return trt, calls


def _ort(folder, batch):
    return ort.InferenceSession(str(folder / "resnet18.cascade.onnx")).run(None, {"input_0": batch})


def _engine(folder, trt, precision="fp16", max_batch=16) -> TensorRTBackend:
    spec, _ = load_stage(folder)
    info = read_onnx_info(spec.onnx_path)
    built = build_engine(info.path, info, EngineTarget(trt.__version__, GPU, precision), max_batch=max_batch, trt=trt)
    return TensorRTBackend(spec, built.path, GPU, precision)


def test_tensorrt_backend_binds_and_splits_batches(folder, fake_trt):
    trt, calls = fake_trt
    backend = _engine(folder, trt)
    assert backend.input_spec().shape == ("N", 3, 64, 64) and backend.input_spec().max_batch == 16
    assert backend.supports_cams
    batch = np.concatenate([input_batches(64, count=7)["random"]] * 3)  # 21 images: 16 + 5
    probs, cams = backend.predict_with_cams(batch)
    want_probs, want_cams = _ort(folder, batch)
    np.testing.assert_allclose(probs, want_probs, atol=1e-6)
    np.testing.assert_allclose(cams, want_cams, atol=1e-5)
    assert [n for n, _ in calls.executions] == [16, 5] and backend.calls == 1
    assert backend.predict(batch[:2]).shape == (2, 3)


def test_buffers_are_sized_from_the_contexts_shapes_at_the_profile_maximum(folder, fake_trt):
    backend = _engine(folder, fake_trt[0], max_batch=4)
    _, cams = _ort(folder, np.zeros((1, 3, 64, 64), np.float32))
    assert backend._host["input_0"].size == 4 * 3 * 64 * 64
    assert backend._host["output_0"].size == 4 * 3
    assert backend._host["cam_0"].size == 4 * cams[0].size


def test_refused_input_shape_names_the_tensor_and_the_profile(folder, fake_trt):
    backend = _engine(folder, fake_trt[0], max_batch=4)
    with pytest.raises(BackendError, match=r"profile 0\).*set_input_shape\('input_0', \(5, 3, 64, 64\)\)"):
        backend._run(np.zeros((5, 3, 64, 64), np.float32), with_cams=False)  # _forward would split it: 4 + 1
    assert backend.predict(np.zeros((5, 3, 64, 64), np.float32)).shape == (5, 3)


def test_refused_tensor_address_names_the_tensor(folder, monkeypatch):
    trt, _ = make_fake_tensorrt("10.13.0.35", refused_addresses=("cam_0",))
    _install(monkeypatch, trt)
    with pytest.raises(BackendError, match=r"set_tensor_address\('cam_0'\) was refused"):
        _engine(folder, trt)


def test_tensorrt11_engine_from_a_converted_onnx_runs(folder, monkeypatch):
    pytest.importorskip("onnxconverter_common")
    trt, _ = make_fake_tensorrt("11.4.0.106")
    _install(monkeypatch, trt)
    backend = _engine(folder, trt, "fp16")  # the FP16 ONNX it was built from lived in a deleted temporary folder
    batch = input_batches(64)["phantoms"]
    assert np.abs(backend.predict(batch) - _ort(folder, batch)[0]).max() < 2e-2


def test_auto_never_builds_and_uses_an_engine_once_built(folder, fake_trt):
    backend, reason = make_backend(folder, "auto")
    assert backend.name == "onnxruntime-cpu" and not list(folder.glob("*.engine"))
    assert "TensorRT: no engine for this GPU" in reason and "python -m engines build" in reason
    with pytest.raises(BackendError, match="python -m engines build"):
        make_backend(folder, "tensorrt")
    steps = []
    built = build_stage_engine(folder, progress=lambda message, fraction: steps.append(fraction))
    assert steps[-1] == 1.0 and built.manifest["effective_precision"] == "fp16"
    backend, reason = make_backend(folder, "auto")
    assert isinstance(backend, TensorRTBackend) and "cached engine" in reason and backend.precision == "fp16"
    assert reason.startswith("TensorRT on NVIDIA H100 80GB HBM3")
    batch = input_batches(64)["phantoms"]
    np.testing.assert_allclose(backend.predict(batch), _ort(folder, batch)[0], atol=1e-6)


def test_engine_of_another_tensorrt_version_is_not_used(folder, fake_trt, monkeypatch):
    build_stage_engine(folder)
    newer, _ = make_fake_tensorrt("10.14.1.48")
    _install(monkeypatch, newer)
    backend, reason = make_backend(folder, "auto")
    assert backend.name == "onnxruntime-cpu" and "no engine resnet18.cascade.onnx.trt10.14.1.48" in reason
    build_stage_engine(folder)
    assert isinstance(make_backend(folder, "tensorrt")[0], TensorRTBackend)
    assert len(list(folder.glob("*.engine"))) == 2  # each version keeps its own


def test_undeserializable_jetson_engine_falls_back_and_is_remembered(folder, fake_trt, monkeypatch):
    from engines.export import export_onnx

    (folder / "resnet18.cascade.onnx").unlink()  # a folder as jetson-inference leaves it: its <arch>.onnx only
    export_onnx(folder, jetson=True)
    (folder / "resnet18.onnx.1.1.101300.GPU.FP16.engine").write_bytes(b"a plan for another GPU")
    (folder / "resnet18.onnx.sha256sum").write_text(file_sha256(folder / "resnet18.onnx") + "\n")
    backend, reason = make_backend(folder, "auto")
    assert backend.name == "onnxruntime-cpu" and "could not deserialize resnet18.onnx.1.1.101300" in reason
    loads = []
    monkeypatch.setattr(fake_trt[0].Runtime, "deserialize_cuda_engine", lambda self, data: loads.append(1))
    backend, reason = make_backend(folder, "auto")
    assert "remembered" in reason and loads == []  # not retried on every request
    with pytest.raises(BackendError, match="could not deserialize"):
        make_backend(folder, "tensorrt")


class _Broken(FakeCudaMemory):
    """Device memory whose first upload fails the way a real GPU host might."""

    error: BaseException = RuntimeError("CUDA error: an illegal memory access was encountered")

    def upload(self, dst, src):
        raise self.error


@pytest.mark.parametrize(
    "error",
    [RuntimeError("illegal memory access"), TypeError("bad argument"), make_fake_pycuda({})[1].LogicError("ctx")],
    ids=["RuntimeError", "TypeError", "pycuda.LogicError"],
)
def test_any_failure_of_the_first_batch_falls_back_with_the_reason(folder, monkeypatch, error):
    trt, _ = make_fake_tensorrt("10.13.0.35")
    _install(monkeypatch, trt, memory=False)
    freed = []

    class Broken(_Broken):
        def close(self):
            freed.append(self)
            super().close()

    Broken.error = error
    monkeypatch.setattr("engines.trt_backend.open_cuda_memory", lambda index: Broken(trt))
    build_stage_engine(folder)
    backend, reason = make_backend(folder, "auto")
    assert backend.name == "onnxruntime-cpu" and f"{type(error).__name__}: {error}" in reason
    assert len(freed) == 1 and not trt.heap  # the engine that failed gave its GPU memory back
    with pytest.raises(BackendError, match=type(error).__name__):
        make_backend(folder, "tensorrt")


def test_bf16_output_is_refused_by_nptype_and_auto_falls_back(folder, monkeypatch):
    trt, _ = make_fake_tensorrt("10.13.0.35", tensor_dtypes={"output_0": "BF16"})
    _install(monkeypatch, trt)
    with pytest.raises(TypeError, match="equivalent numpy datatype"):
        trt.nptype(trt.DataType.BF16)
    assert trt.nptype(trt.DataType.HALF) is np.float16 and trt.nptype(trt.DataType.INT8) is np.int8
    build_stage_engine(folder)
    backend, reason = make_backend(folder, "auto")
    assert backend.name == "onnxruntime-cpu" and "TypeError: Could not resolve TensorRT datatype" in reason


def test_close_frees_the_buffers_and_ends_the_backend(folder, fake_trt):
    backend = _engine(folder, fake_trt[0])
    memory = backend.memory
    assert len(fake_trt[0].heap) == 3
    backend.close()
    assert memory.closed and not fake_trt[0].heap
    with pytest.raises(BackendError, match="closed"):
        backend.predict(np.zeros((1, 3, 64, 64), np.float32))
    backend.close()  # twice is harmless


def test_pycuda_buffers_are_freed_inside_the_context_from_another_thread(folder, monkeypatch):
    trt, _ = make_fake_tensorrt("10.13.0.35")
    _install(monkeypatch, trt, memory=False)
    package, cuda, ledger = make_fake_pycuda(trt.heap)
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    backend = _engine(folder, trt)
    assert isinstance(backend.memory, PycudaMemory)
    batch = input_batches(64)["random"]
    np.testing.assert_allclose(backend.predict(batch), _ort(folder, batch)[0], atol=1e-6)
    assert len(ledger.allocated) == 3 and ledger.pinned == 3 and ledger.streams == 1 and ledger.retained == 1
    evict = threading.Thread(target=backend.close)  # as a Streamlit cache eviction would, from another thread
    evict.start()
    evict.join()
    assert ledger.allocated == {} and ledger.pinned == 0 and ledger.streams == 0
    assert ledger.outside_context == [] and ledger.pushes == ledger.pops and ledger.released == 1
    assert not trt.heap


def test_torch_cuda_buffers_when_pycuda_cannot_open_the_device(folder, monkeypatch, caplog):
    trt, _ = make_fake_tensorrt("10.13.0.35")
    _install(monkeypatch, trt, memory=False)
    package, cuda, ledger = make_fake_pycuda(trt.heap, fail_open=True)
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    fake_torch, allocated = make_fake_torch_cuda(trt.heap)
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    backend = _engine(folder, trt)
    assert isinstance(backend.memory, TorchCudaMemory) and "using torch's CUDA buffers" in caplog.text
    batch = input_batches(64)["phantoms"]
    probs, cams = backend.predict_with_cams(batch)
    want_probs, want_cams = _ort(folder, batch)
    np.testing.assert_allclose(probs, want_probs, atol=1e-6)
    np.testing.assert_allclose(cams, want_cams, atol=1e-5)
    assert len(allocated) == 3 and ledger.retained == 0
    stream = backend.memory.stream
    backend.close()
    assert stream.synchronized >= 2 and backend.memory is None


def test_no_cuda_buffers_at_all_is_a_backend_error(folder, monkeypatch):
    trt, _ = make_fake_tensorrt("10.13.0.35")
    _install(monkeypatch, trt, memory=False)
    package, cuda, _ = make_fake_pycuda(trt.heap, fail_open=True)
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(BackendError, match="pycuda cannot open CUDA device 0.*torch sees no CUDA device"):
        _engine(folder, trt)


def test_no_gpu_means_tensorrt_is_never_touched(folder, monkeypatch):
    trt, _ = make_fake_tensorrt("10.13.0.35")

    def crash(logger):  # TensorRT's runtime segfaults without a GPU; here it would fail the test instead
        raise AssertionError("TensorRT runtime created on a machine without a GPU")

    trt.Runtime = crash
    trt.Builder = crash
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr("engines.select.detect_gpu", lambda: None)
    monkeypatch.setattr("engines.trt_build.detect_gpu", lambda: None)
    backend, reason = make_backend(folder, "auto")
    assert backend.name == "onnxruntime-cpu" and "TensorRT: no CUDA GPU found" in reason
    with pytest.raises(BackendError, match="no CUDA GPU found"):
        make_backend(folder, "tensorrt")
    with pytest.raises(BackendError, match="no CUDA GPU found"):
        build_stage_engine(folder)


real_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None or detect_gpu() is None, reason="needs TensorRT and a CUDA GPU"
)


@pytest.mark.tensorrt
@pytest.mark.gpu
@real_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_tensorrt_engine_matches_onnx_runtime(folder, precision):
    built = build_stage_engine(folder, precision, progress=lambda message, fraction: print(f"{fraction:.2f} {message}"))
    assert built.manifest["effective_precision"] == precision or precision == "fp16"
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
    backend.close()
    again, reason = make_backend(folder, "tensorrt", precision=precision)
    assert "cached engine" in reason
    again.close()
    assert os.path.getsize(built.path) > 0
