"""``python -m engines export|build``: one line on success, one line (no traceback) on an expected failure."""

from __future__ import annotations

import sys

from engines.cli import main
from engines.onnx_file import read_onnx_info
from tests.conftest import make_model_dir


def test_export_command(tmp_path, capsys):
    folder = make_model_dir(tmp_path / "m", "resnet18", seed=51)
    assert main(["export", str(folder), "--opset", "17"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {folder / 'resnet18.onnx'} (output_0 + cam_0 (fast CAM); opset 17; max |Δ|")
    assert read_onnx_info(folder / "resnet18.onnx").opset == 17


def test_export_of_a_missing_folder_fails_cleanly(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and "does not exist" in err and "Traceback" not in err


def test_build_without_tensorrt_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["build", str(tmp_path), "--precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err and "requirements-tensorrt.txt" in err


def test_build_prints_progress_and_the_engine(tmp_path, capsys, monkeypatch, exported_models):
    import shutil

    from engines.hardware import GpuInfo
    from tests.engines.fake_tensorrt import make_fake_tensorrt

    folder = tmp_path / "resnet18"
    shutil.copytree(exported_models["resnet18"], folder)
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.13.0.35")[0])
    monkeypatch.setattr("engines.trt_build.detect_gpu", lambda: GpuInfo("NVIDIA L4", (8, 9)))
    assert main(["build", str(folder), "--precision", "fp32", "--max-batch", "4"]) == 0
    captured = capsys.readouterr()
    assert "[ 15%] building resnet18.onnx.trt10.13.0.35.nvidia-l4.sm89.fp32.engine" in captured.err
    assert "[100%] wrote" in captured.err
    assert captured.out.startswith(f"wrote {folder / 'resnet18.onnx.trt10.13.0.35.nvidia-l4.sm89.fp32.engine'} (fp32,")
