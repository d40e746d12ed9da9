"""The benchmark runs end to end on tiny models and reports every backend, the CAM comparison and the machine."""

from __future__ import annotations

import re

from engines.bench import CamRow, Timing, main, render_report


def test_bench_runs_on_tiny_models(exported_models, capsys, tmp_path):
    folder = exported_models["resnet18"]
    out = tmp_path / "bench.md"
    argv = ["--models", str(folder), str(folder), "--backends", "onnx", "torch", "--repeats", "1", "--batch", "4"]
    assert main([*argv, "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert out.read_text() == report
    assert "physical cores" in report and "onnxruntime 1." in report and "batch 4 throughput" in report
    for backend in ("onnxruntime-cpu", "torch-cpu"):
        assert len(re.findall(rf"^\| {backend} \| [12] resnet18 64px \|", report, re.M)) == 2
    cam_line = next(line for line in report.splitlines() if line.startswith("| onnxruntime-cpu |") and "target" in line)
    ratios = [float(x) for x in re.findall(r"\| ([0-9.]+)×", cam_line)]
    assert len(ratios) == 2 and all(r > 0 for r in ratios)


def test_report_judges_engines_against_the_targets():
    t = Timing.of
    rows = [
        CamRow("onnxruntime-cpu", t([0.012]), t([0.010]), t([0.100])),
        CamRow("tensorrt", t([0.020]), t([0.010]), t([0.060])),
        CamRow("torch-cpu", t([0.050]), t([0.010]), t([0.100])),
    ]
    report = render_report("test machine", "m", [], rows, ["tensorrt: not installed"])
    lines = {line.split(" |")[0]: line for line in report.splitlines() if line.startswith("| ")}
    assert "1.20× ✓" in lines["| onnxruntime-cpu"] and "8.3× ✓" in lines["| onnxruntime-cpu"]
    assert "2.00× ✗" in lines["| tensorrt"] and "3.0× ✗" in lines["| tensorrt"]
    assert "target" not in lines["| torch-cpu"]
    assert "Backends not available here: tensorrt: not installed." in report


def test_bench_argument_errors_are_one_line(capsys):
    assert main(["--repeats", "0"]) == 2
    assert main(["--backends", "auto"]) == 2  # each backend by name
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
