"""The exported ``cam_0`` is Grad-CAM: it matches pytorch-grad-cam's GradCAM at the same layer (correlation ≥ 0.999).

Both maps go through pytorch-grad-cam's own normalisation and upsampling (``scale_cam_image``: min-max per map, then
bilinear resize to the input size), so only the maps themselves are compared.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cascade.checkpoint import load_stage
from cascade.models import feature_layer
from engines.export import export_onnx
from tests.conftest import ROOT, make_model_dir
from tests.engines.conftest import input_batches

RESOLUTION = 96  # 3×3 feature maps: enough structure for a correlation to mean something, cheap backward passes


@pytest.fixture(scope="module")
def cam_models(tmp_path_factory):
    base = tmp_path_factory.mktemp("cam")
    folders = {
        arch: make_model_dir(base / arch, arch, resolution=RESOLUTION, seed=21 + i)
        for i, arch in enumerate(("resnet18", "densenet121"))
    }
    for folder in folders.values():
        export_onnx(folder, verify=False)
    return folders


def _grad_cam(model, batch: np.ndarray, class_index: int) -> np.ndarray:
    with GradCAM(model=model, target_layers=[feature_layer(model)]) as cam:
        return cam(input_tensor=torch.from_numpy(batch), targets=[ClassifierOutputTarget(class_index)] * len(batch))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def assert_onnx_cam_is_grad_cam(folder: Path, resolution: int) -> None:
    spec, model = load_stage(folder)
    session = ort.InferenceSession(str(spec.onnx_path), providers=["CPUExecutionProvider"])
    batch = np.concatenate(list(input_batches(resolution, seed=3, count=2).values()))
    probs, cams = session.run(["output_0", "cam_0"], {"input_0": batch})
    assert cams.shape[:2] == (len(batch), spec.num_classes) and cams.min() >= 0.0
    with torch.no_grad():
        assert np.abs(probs - torch.softmax(model(torch.from_numpy(batch)), 1).numpy()).max() <= 1e-4
    compared = 0
    for c in range(spec.num_classes):
        reference = _grad_cam(model, batch, c)
        ours = scale_cam_image(cams[:, c], (resolution, resolution))
        assert ours.shape == reference.shape == (len(batch), resolution, resolution)
        for i in range(len(batch)):
            if cams[i, c].max() <= 1e-6 * cams.max():  # ReLU left nothing: both maps must be empty
                assert reference[i].max() <= 1e-3
                continue
            assert _correlation(ours[i], reference[i]) >= 0.999, (spec.arch, i, c)
            compared += 1
    assert compared >= len(batch) * spec.num_classes // 2  # the comparison was not vacuous


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_onnx_cam_equals_pytorch_grad_cam(cam_models, arch):
    assert_onnx_cam_is_grad_cam(cam_models[arch], RESOLUTION)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_onnx_cam_equals_pytorch_grad_cam_on_the_demo_models(tmp_path, stage):
    demo = ROOT / "models" / "demo" / stage
    if not (demo / "model_best.pth.tar").is_file():
        pytest.skip("the demo models are not in this checkout")
    folder = tmp_path / stage
    folder.mkdir()
    for name in ("model_best.pth.tar", "labels.txt"):
        shutil.copy(demo / name, folder / name)
    export_onnx(folder, verify=False)
    assert_onnx_cam_is_grad_cam(folder, load_stage(folder)[0].resolution)
