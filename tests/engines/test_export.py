"""ONNX export: names, dynamic batch, stamp, parity with PyTorch, staleness and automatic re-export."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cascade.checkpoint import load_stage, write_labels
from cascade.errors import BackendError
from engines.export import (
    EXPORTER,
    ExportError,
    ensure_onnx,
    export_module,
    export_onnx,
    stale_reason,
)
from engines.onnx_file import read_onnx_info
from engines.select import make_backend
from tests.conftest import make_model_dir
from tests.engines.conftest import input_batches


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_export_names_shapes_and_stamp(exported_models, arch):
    spec, _ = load_stage(exported_models[arch])
    model = onnx.load(str(spec.onnx_path))
    onnx.checker.check_model(model)
    info = read_onnx_info(spec.onnx_path)
    assert [t.name for t in info.inputs] == ["input_0"]
    assert [t.name for t in info.outputs] == ["output_0", "cam_0"]
    assert info.input.shape == ("N", 3, 64, 64)
    assert info.probs.shape == ("N", 3)
    assert info.cams.shape[:2] == ("N", 3)
    assert info.probs_from_softmax
    meta = info.metadata
    assert meta["exporter"] == EXPORTER and meta["arch"] == arch and meta["resolution"] == "64"
    assert meta["classes"].split("\n") == list(spec.classes)
    assert meta["opset"] == str(info.opset) == "17"
    assert len(meta["source_sha256"]) == 64
    assert stale_reason(info, spec) is None


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_onnx_runtime_matches_pytorch(exported_models, arch):
    """max |Δp| ≤ 1e-4 on random, phantom and (when present) real inputs, at batch 1 and 3 (dynamic batch)."""
    spec, model = load_stage(exported_models[arch])
    module, _ = export_module(model)
    session = ort.InferenceSession(str(spec.onnx_path), providers=["CPUExecutionProvider"])
    batches = input_batches(spec.resolution)
    cases = [("random, batch 1", batches["random"][:1]), *batches.items()]
    for name, part in cases:
        probs, cams = session.run(None, {"input_0": part})
        with torch.no_grad():
            want_probs, want_cams = module(torch.from_numpy(part))
        assert probs.shape == (len(part), 3)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        assert np.abs(probs - want_probs.numpy()).max() <= 1e-4, name
        scale = float(np.abs(want_cams.numpy()).max()) or 1.0
        assert np.abs(cams - want_cams.numpy()).max() <= 1e-4 * max(1.0, scale), name


def test_head_without_gap_linear_exports_probabilities_only(tmp_path):
    folder = make_model_dir(tmp_path / "m", "mobilenet_v3_small", seed=5)  # Linear-Hardswish-Linear head
    result = export_onnx(folder)
    assert not result.has_cams and result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    info = read_onnx_info(result.path)
    assert [t.name for t in info.outputs] == ["output_0"] and info.cams is None
    assert info.metadata["cam_output"] == ""
    batch = input_batches(64)["phantoms"]
    for kind in ("onnx", "torch"):  # CAMs for such heads come from pytorch-grad-cam, not from the backend
        backend, _ = make_backend(folder, kind)
        probs, cams = backend.predict_with_cams(batch)
        assert not backend.supports_cams and cams is None and probs.shape == (3, 3)


def test_changed_checkpoint_is_stale_and_reexported(tmp_path, exported_models):
    folder = tmp_path / "r"
    shutil.copytree(exported_models["resnet18"], folder)
    spec, _ = load_stage(folder)
    info, note = ensure_onnx(spec)
    assert "up to date" in note
    make_model_dir(folder, "resnet18", seed=99)  # new weights, same folder
    assert "model_best.pth.tar changed" in stale_reason(read_onnx_info(spec.onnx_path), spec)
    info, note = ensure_onnx(spec)
    assert note.startswith("re-exported")
    assert stale_reason(info, spec) is None
    _, model = load_stage(folder)
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    got = ort.InferenceSession(str(info.path)).run(["output_0"], {"input_0": x})[0]
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    assert np.abs(got - want).max() <= 1e-4  # the new weights, not the old ones


def test_changed_labels_are_stale(tmp_path, exported_models):
    folder = tmp_path / "r"
    shutil.copytree(exported_models["resnet18"], folder)
    write_labels(folder / "labels.txt", ["normal", "osteopenia", "severe"])
    spec, _ = load_stage(folder)
    assert stale_reason(read_onnx_info(spec.onnx_path), spec) == "labels.txt changed since it was exported"


def test_missing_onnx_is_exported_on_first_use(tmp_path):
    folder = make_model_dir(tmp_path / "m", "resnet18", seed=6)
    spec, _ = load_stage(folder)
    info, note = ensure_onnx(spec)
    assert note == "exported resnet18.cascade.onnx (there was none)" and info.cams is not None
    assert not spec.jetson_onnx_path.exists()  # automatic exports never take jetson-inference's file name


def test_broken_onnx_raises_clear_error_and_is_kept(tmp_path):
    folder = make_model_dir(tmp_path / "m", "resnet18", seed=7)
    spec, _ = load_stage(folder)
    spec.onnx_path.write_bytes(b"not an onnx file")
    with pytest.raises(BackendError, match="not a readable ONNX model"):
        ensure_onnx(spec)
    assert spec.onnx_path.read_bytes() == b"not an onnx file"


def test_failed_export_leaves_no_file(tmp_path, monkeypatch):
    folder = make_model_dir(tmp_path / "m", "resnet18", seed=8)

    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr("engines.export._torch_export", broken)
    with pytest.raises(ExportError, match="exporter exploded"):
        export_onnx(folder)
    assert not list(folder.glob("*.onnx")) and not list(folder.glob(".*tmp"))


def test_export_from_an_older_exporter_is_stale(exported_models):
    spec, _ = load_stage(exported_models["resnet18"])
    info = read_onnx_info(spec.onnx_path)
    older = dataclasses.replace(info, metadata={**info.metadata, "exporter_version": "0"})
    assert stale_reason(older, spec) == "it was written by exporter version '0', this is '2'"
