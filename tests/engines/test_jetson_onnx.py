"""A folder exported by jetson-inference (fixed batch 1, Softmax appended, no cam_0, no stamp) runs as it is."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from cascade.checkpoint import BEST_NAME, load_stage
from engines.select import make_backend
from tests.conftest import make_model_dir
from tests.engines.conftest import input_batches


def jetson_export(folder, arch: str) -> None:
    """What jetson-inference's onnx_export.py writes: model + Softmax, fixed batch 1, input_0 → output_0."""
    spec, model = load_stage(folder)
    dummy = torch.zeros(1, 3, spec.resolution, spec.resolution)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # jetson's script uses this exporter
        torch.onnx.export(
            nn.Sequential(model, nn.Softmax(1)).eval(),
            (dummy,),
            str(folder / f"{arch}.onnx"),
            input_names=["input_0"],
            output_names=["output_0"],
            opset_version=17,
            dynamo=False,
        )


@pytest.fixture(scope="module")
def jetson_folder(tmp_path_factory):
    folder = make_model_dir(tmp_path_factory.mktemp("jetson") / "resnet18", "resnet18", seed=31)
    jetson_export(folder, "resnet18")
    return folder


def test_jetson_onnx_used_as_it_is(jetson_folder):
    onnx_file = jetson_folder / "resnet18.onnx"
    before = onnx_file.read_bytes()
    backend, reason = make_backend(jetson_folder, "onnx")
    assert "from jetson-inference, used as it is" in reason
    assert onnx_file.read_bytes() == before  # not re-exported: no stamp means "not ours to judge"
    assert backend.input_spec().shape == (1, 3, 64, 64) and backend.input_spec().max_batch == 1
    assert not backend.supports_cams

    batch = input_batches(64)["phantoms"]
    probs, cams = backend.predict_with_cams(batch)  # three images through a batch-1 model
    assert cams is None and probs.shape == (3, 3)
    _, model = load_stage(jetson_folder)
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(batch)), 1).numpy()
    assert np.abs(probs - want).max() <= 1e-4
    assert backend.calls == 1


def test_engine_only_folder_without_checkpoint(tmp_path, jetson_folder):
    folder = tmp_path / "deployed"
    folder.mkdir()
    for name in ("resnet18.onnx", "labels.txt"):
        (folder / name).write_bytes((jetson_folder / name).read_bytes())
    assert not (folder / BEST_NAME).exists()
    backend, reason = make_backend(folder, "auto")
    assert backend.name == "onnxruntime-cpu" and "used as it is" in reason
    assert backend.spec.arch == "resnet18" and backend.spec.resolution == 64
    assert backend.spec.classes == ("normal", "osteopenia", "osteoporosis")
    assert backend.predict(input_batches(64)["random"]).shape == (3, 3)


def test_wrong_resolution_refused(tmp_path, jetson_folder):
    folder = make_model_dir(tmp_path / "m", "resnet18", resolution=96, seed=32)
    (folder / "resnet18.onnx").write_bytes((jetson_folder / "resnet18.onnx").read_bytes())  # a 64 px export
    with pytest.raises(Exception, match="takes 64px input but the checkpoint says 96px"):
        make_backend(folder, "onnx")


def test_engine_only_folder_without_onnxruntime_has_no_backend(tmp_path, jetson_folder, monkeypatch):
    import sys

    from cascade.errors import BackendError

    folder = tmp_path / "deployed"
    folder.mkdir()
    for name in ("resnet18.onnx", "labels.txt"):
        (folder / name).write_bytes((jetson_folder / name).read_bytes())
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendError, match="no backend can run") as err:
        make_backend(folder, "auto")
    assert "onnxruntime cannot be imported" in str(err.value) and "PyTorch needs model_best.pth.tar" in str(err.value)
