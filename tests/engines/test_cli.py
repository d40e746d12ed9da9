"""``python -m engines``: one line on success, one line (no traceback) on an expected failure, a row for every file."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys

import pytest

from engines.cli import main
from engines.onnx_file import read_onnx_info
from tests.conftest import REALDATA, make_model_dir


def test_export_command(tmp_path, capsys):
    folder = make_model_dir(tmp_path / "m", "resnet18", seed=51)
    assert main(["export", str(folder), "--opset", "17"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {folder / 'resnet18.cascade.onnx'} (output_0 + cam_0 (fast CAM); opset 17; max |Δ|")
    assert read_onnx_info(folder / "resnet18.cascade.onnx").opset == 17


def test_export_of_a_missing_folder_fails_cleanly(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and "does not exist" in err and "Traceback" not in err


def test_build_without_tensorrt_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["build", str(tmp_path), "--precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err and "requirements-tensorrt.txt" in err


@pytest.fixture()
def folder_with_bad_file(tmp_path, tiny_dataset):
    import shutil

    shutil.copytree(tiny_dataset / "test", tmp_path / "imgs")
    (tmp_path / "imgs" / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "imgs" / "osteopenia" / "empty.jpg").write_bytes(b"")
    (tmp_path / "imgs" / "notes.txt").write_text("ignored: not an image suffix")
    return tmp_path / "imgs"


def test_predict_folder_with_bad_files(tmp_path, tiny_config, folder_with_bad_file, capsys):
    out = tmp_path / "preds.csv"
    code = main(
        [
            "predict",
            str(folder_with_bad_file),
            "--config",
            str(tiny_config),
            "--out",
            str(out),
            "--quiet",
            "--backend",
            "torch",
            "--batch-size",
            "5",
        ]
    )
    assert code == 1  # some files failed
    err = capsys.readouterr().err
    assert "Traceback" not in err and "2 failed" in err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 14
    bad = {r["path"].split("/")[-1]: r["error"] for r in rows if r["error"]}
    assert set(bad) == {"broken.png", "empty.jpg"} and "empty" in bad["empty.jpg"]
    good = [r for r in rows if not r["error"]]
    for r in good:
        p1 = [float(r[f"stage1_{c}"]) for c in ("normal", "osteopenia", "osteoporosis")]
        assert sum(p1) == pytest.approx(1, abs=1e-4)
        assert r["label"] in ("normal", "osteopenia", "osteoporosis")
        ran = r["stage2_ran"] == "1"
        assert ran == (float(r["gate_margin"]) < 0) == (r["stage2_normal"] != "")
        assert r["decided_by"] == ("2" if ran else "1")


def test_predict_all_good_exits_zero_and_stage2_always(tmp_path, tiny_config, tiny_dataset):
    out = tmp_path / "p.csv"
    code = main(
        [
            "predict",
            str(tiny_dataset / "val" / "normal"),
            "--config",
            str(tiny_config),
            "--out",
            str(out),
            "--quiet",
            "--stage2-always",
        ]
    )
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and all(r["stage2_normal"] != "" for r in rows)


def test_bad_config_is_one_line_not_a_traceback(tmp_path, capsys):
    code = main(["predict", str(tmp_path), "--config", str(tmp_path / "missing.toml"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err


def test_evaluate_reports_cascade_and_stages(tmp_path, tiny_config, tiny_dataset, capsys):
    out = tmp_path / "r.json"
    code = main(["evaluate", str(tiny_dataset / "test"), "--config", str(tiny_config), "--out", str(out), "--quiet"])
    assert code == 0
    report = json.loads(out.read_text())
    for name in ("cascade", "stage1", "stage2"):
        r = report[name]
        assert r["n"] == 12 and 0 <= r["accuracy"] <= 1
        assert sum(map(sum, r["confusion_matrix"])) == 12
    assert 0 <= report["cascade"]["share_to_stage2"] <= 1


@pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata-dev is absent")
def test_predict_reads_every_real_radiograph(tmp_path, tiny_config):
    out = tmp_path / "real.csv"
    code = main(["predict", str(REALDATA), "--config", str(tiny_config), "--out", str(out), "--quiet"])
    rows = list(csv.DictReader(out.open()))
    expected = [p for p in REALDATA.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")]
    assert code == 0 and len(rows) == len(expected) >= 3
    assert all(r["error"] == "" and r["label"] for r in rows)


def test_a_reader_crash_of_any_type_fails_that_file_only(tmp_path, tiny_config, tiny_dataset, monkeypatch, capsys):
    import engines.cli as cli

    real = cli.read_image

    def flaky(path):
        if path.name == "normal_1.png":
            raise RuntimeError("decoder blew up")
        return real(path)

    monkeypatch.setattr(cli, "read_image", flaky)
    out = tmp_path / "p.csv"
    code = main(["predict", str(tiny_dataset / "val"), "--config", str(tiny_config), "--out", str(out), "--quiet"])
    rows = {r["path"].split("/")[-1]: r for r in csv.DictReader(out.open())}
    assert code == 1 and len(rows) == 12
    assert rows["normal_1.png"]["error"] == "RuntimeError: decoder blew up"
    assert sum(1 for r in rows.values() if r["error"]) == 1 and "Traceback" not in capsys.readouterr().err


def test_evaluate_counts_unreadable_files_and_scores_the_rest(tmp_path, tiny_config, folder_with_bad_file, capsys):
    out = tmp_path / "r.json"
    code = main(["evaluate", str(folder_with_bad_file), "--config", str(tiny_config), "--out", str(out), "--quiet"])
    report = json.loads(out.read_text())
    assert code == 1 and report["images"] == 12 and report["cascade"]["n"] == 12
    assert sorted(r["path"].split("/")[-1] for r in report["unreadable"]) == ["broken.png", "empty.jpg"]
    assert "2 file(s) could not be read" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, says",
    [
        (["predict"], "the following arguments are required: paths"),
        (["predict", ".", "--batch-size", "0"], "must be at least 1"),
        (["evaluate", ".", "--no-such-option"], "unrecognized arguments"),
        (["build", ".", "--max-batch", "x"], "expected a whole number"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_command_lines_are_one_error_line(argv, says, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and err.count("\n") == 1


def test_unwritable_output_is_an_error_line_and_nothing_is_written(tmp_path, tiny_config, tiny_dataset, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")  # unwritable even for root
    out = blocker / "p.csv"
    code = main(["predict", str(tiny_dataset / "val"), "--config", str(tiny_config), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines()[-1].startswith("error: ") and "not-a-folder" in err
    assert blocker.read_text().startswith("a file")


def test_predict_into_a_folder_is_refused_before_any_model_runs(tmp_path, tiny_config, tiny_dataset, capsys):
    code = main(["predict", str(tiny_dataset / "val"), "--config", str(tiny_config), "--out", str(tmp_path), "--quiet"])
    assert code == 2 and "is a folder" in capsys.readouterr().err


def test_python_m_cascade_points_at_engines():
    proc = subprocess.run([sys.executable, "-m", "cascade", "predict", "x"], capture_output=True, text=True)
    assert proc.returncode == 2 and "python -m engines predict" in proc.stderr


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
    assert "[ 15%] building resnet18.cascade.onnx.trt10.13.0.35.nvidia-l4.sm89.fp32.engine" in captured.err
    assert "[100%] wrote" in captured.err
    engine = folder / "resnet18.cascade.onnx.trt10.13.0.35.nvidia-l4.sm89.fp32.engine"
    assert captured.out.startswith(f"wrote {engine} (fp32,")


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_output_to_a_device_or_folder_is_refused_before_any_model_runs(
    command, tmp_path, tiny_config, tiny_dataset, capsys, monkeypatch
):
    # evaluate wrote its JSON only after every prediction (then: "[Errno 21] Is a directory: '.ro.<uuid>.tmp'"),
    # and predict --out /dev/full replaced the device node with a CSV
    import engines.cli as cli

    monkeypatch.setattr(cli, "open_cascade", lambda *a, **k: pytest.fail("a model was opened"))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for out, says in ((tmp_path, "is a folder"), (fifo, "not a regular file")):
        code = main([command, str(tiny_dataset / "val"), "--config", str(tiny_config), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and says in err
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
