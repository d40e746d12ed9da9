"""Backend selection: what ``auto`` picks here and why, fallbacks, errors, and backends shared by threads."""

from __future__ import annotations

import shutil
import sys
import threading

import numpy as np
import pytest

from cascade.errors import BackendError, CheckpointError
from engines.ort_backend import OnnxRuntimeBackend
from engines.select import make_backend, open_cascade
from engines.torch_backend import TorchBackend
from tests.conftest import make_knee_like
from tests.engines.conftest import input_batches


@pytest.fixture
def folder(tmp_path, exported_models):
    dest = tmp_path / "resnet18"
    shutil.copytree(exported_models["resnet18"], dest)
    return dest


def test_auto_picks_onnx_runtime_and_says_why(folder):
    backend, reason = make_backend(folder, "auto")
    assert isinstance(backend, OnnxRuntimeBackend) and backend.supports_cams
    assert reason.startswith("ONNX Runtime on the CPU")
    assert "TensorRT" in reason  # why the faster backend was passed over
    assert backend.input_spec().shape == ("N", 3, 64, 64) and backend.input_spec().max_batch is None


def test_torch_fallback_when_onnxruntime_cannot_be_imported(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    backend, reason = make_backend(folder, "auto")
    assert isinstance(backend, TorchBackend)
    assert "last resort" in reason and "onnxruntime cannot be imported" in reason
    with pytest.raises(BackendError, match="onnxruntime cannot be imported"):
        make_backend(folder, "onnx")


def test_torch_fallback_when_onnx_is_broken(folder):
    (folder / "resnet18.cascade.onnx").write_bytes(b"\x08\x07garbage")
    backend, reason = make_backend(folder, "auto")
    assert isinstance(backend, TorchBackend)
    assert "not a readable ONNX model" in reason
    with pytest.raises(BackendError, match="not a readable ONNX model"):
        make_backend(folder, "onnx")


def test_torch_fallback_when_export_fails(tmp_path, monkeypatch):
    from tests.conftest import make_model_dir

    folder = make_model_dir(tmp_path / "fresh", "resnet18", seed=41)  # no ONNX yet: needs an export

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr("engines.export._torch_export", broken)
    backend, reason = make_backend(folder, "auto")
    assert isinstance(backend, TorchBackend)
    assert "ONNX export of resnet18" in reason and "unsupported operator" in reason


def test_requested_kinds(folder):
    backend, reason = make_backend(folder, "torch")
    assert isinstance(backend, TorchBackend) and reason == "PyTorch eager on CPU (requested)"
    backend, reason = make_backend(folder, "onnx")
    assert isinstance(backend, OnnxRuntimeBackend) and reason.endswith("requested")
    with pytest.raises(BackendError, match="TensorRT"):
        make_backend(folder, "tensorrt")  # not installed here: said plainly, no fallback when asked for
    with pytest.raises(BackendError, match="unknown backend"):
        make_backend(folder, "tflite")
    with pytest.raises(CheckpointError):
        make_backend(folder / "missing", "auto")


def test_torch_and_onnx_backends_agree(folder):
    batch = input_batches(64)["phantoms"]
    torch_probs, torch_cams = make_backend(folder, "torch")[0].predict_with_cams(batch)
    ort_probs, ort_cams = make_backend(folder, "onnx")[0].predict_with_cams(batch)
    assert np.abs(torch_probs - ort_probs).max() <= 1e-4
    assert np.abs(torch_cams - ort_cams).max() <= 1e-4 * max(1.0, float(torch_cams.max()))


@pytest.mark.parametrize("kind", ["onnx", "torch"])
def test_backend_is_thread_safe(folder, kind):
    backend, _ = make_backend(folder, kind)
    batches = [np.random.default_rng(i).standard_normal((2, 3, 64, 64)).astype(np.float32) for i in range(6)]
    expected = [backend.predict_with_cams(b) for b in batches]
    results: dict[int, tuple] = {}

    def work(i: int) -> None:
        results[i] = backend.predict_with_cams(batches[i % 6])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert backend.calls == 6 + 12
    for i, (probs, cams) in results.items():
        np.testing.assert_allclose(probs, expected[i % 6][0], atol=1e-6)
        np.testing.assert_allclose(cams, expected[i % 6][1], atol=1e-5)


def test_open_cascade_reports_reasons(tmp_path, exported_models):
    config = tmp_path / "cascade.toml"
    s1, s2 = exported_models["resnet18"], exported_models["densenet121"]
    config.write_text(f'[stage1]\nmodel_dir = "{s1}"\n[stage2]\nmodel_dir = "{s2}"\n[gate]\nthreshold = 0.6\n')
    cascade = open_cascade(config, "auto")
    assert set(cascade.reasons) == {1, 2}
    assert all(r.startswith("ONNX Runtime") for r in cascade.reasons.values())
    p1, p2 = cascade.predict([make_knee_like(1), make_knee_like(2)], stage2_always=True)
    assert p1.shape == p2.shape == (2, 3) and not np.isnan(p2).any()
    run = cascade.run_stage(2, [make_knee_like(3)], with_cams=True)
    assert run.cams is not None and run.cams.shape[:2] == (1, 3)
