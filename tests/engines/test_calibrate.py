"""``python -m engines calibrate``: fits both stages on a split, writes [calibration] keeping the config's comments,
and the CLIs then apply the temperatures (predict's probabilities, evaluate's calibration section)."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest

from cascade.calibration import apply_temperature
from cascade.config import load_config
from engines.cli import main

CLASSES = ("normal", "osteopenia", "osteoporosis")


@pytest.fixture()
def config_copy(tmp_path, tiny_config):
    path = tmp_path / "cascade.toml"
    shutil.copy(tiny_config, path)
    return path


def _stage1(csv_path) -> np.ndarray:
    rows = list(csv.DictReader(csv_path.open()))
    return np.array([[float(r[f"stage1_{c}"]) for c in CLASSES] for r in rows])


def test_calibrate_writes_the_config_and_predict_and_evaluate_apply_it(tmp_path, config_copy, tiny_dataset, capsys):
    common = ["--config", str(config_copy), "--backend", "torch", "--quiet"]
    raw_csv = tmp_path / "raw.csv"
    assert main(["predict", str(tiny_dataset / "test"), "--out", str(raw_csv), *common]) == 0
    report_path = tmp_path / "fit.json"
    code = main(
        [
            "calibrate",
            str(tiny_dataset),
            "--split",
            "val",
            "--cache-dir",
            str(tmp_path / "c"),
            "--out",
            str(report_path),
        ]
        + common
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "stage1: T = " in captured.err and "wrote [calibration]" in captured.out
    cfg = load_config(config_copy)
    t1, t2 = cfg.temperatures
    assert cfg.calibration.enabled and cfg.calibration.fitted_on.startswith("val split of")
    text = config_copy.read_text()
    assert "# my comment" in text and 'keep = "me"' in text
    report = json.loads(report_path.read_text())
    assert report["n"] == 12 and report["stage1"]["temperature"] == pytest.approx(t1, abs=1e-3)
    for stage in ("stage1", "stage2"):
        assert report[stage]["after"]["nll"] <= report[stage]["before"]["nll"] + 1e-9

    hot_csv = tmp_path / "hot.csv"
    assert main(["predict", str(tiny_dataset / "test"), "--out", str(hot_csv), *common]) == 0
    assert np.allclose(_stage1(hot_csv), apply_temperature(_stage1(raw_csv), t1), atol=1e-5)

    out = tmp_path / "eval.json"
    assert main(["evaluate", str(tiny_dataset / "test"), "--out", str(out), *common]) == 0
    section = json.loads(out.read_text())["calibration"]
    assert section["applied"] and section["temperatures"] == pytest.approx([t1, t2], abs=1e-4)
    assert set(section["stage1"]["ece_top_label"]) == {"equal_width", "equal_mass"}
    assert "calibration on" in capsys.readouterr().err


def test_dry_run_and_off_leave_probabilities_raw(tmp_path, config_copy, tiny_dataset, capsys):
    common = ["--config", str(config_copy), "--backend", "torch", "--quiet", "--cache-dir", str(tmp_path / "c")]
    before = config_copy.read_text()
    assert main(["calibrate", str(tiny_dataset), "--dry-run", *common]) == 0
    assert config_copy.read_text() == before
    assert main(["calibrate", str(tiny_dataset), "--off", *common]) == 0
    cfg = load_config(config_copy)
    assert not cfg.calibration.enabled and cfg.calibration.fitted and cfg.temperatures == (1.0, 1.0)


def test_a_missing_split_is_one_line(tmp_path, config_copy, tiny_dataset, capsys):
    code = main(["calibrate", str(tiny_dataset / "val"), "--config", str(config_copy), "--backend", "torch"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "has no 'val' split" in err and "Traceback" not in err
    assert main(["calibrate", str(tiny_dataset), "--bins", "0", "--config", str(config_copy)]) == 2


def test_evaluate_summarises_a_metadata_table_and_reports_a_bad_one(tmp_path, config_copy, tiny_dataset, capsys):
    data = tiny_dataset / "test"
    csv_path = tmp_path / "meta.csv"
    paths = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    csv_path.write_text("path,age\n" + "\n".join(f"{p},{40 + i}" for i, p in enumerate(paths)) + "\nnope.png,1\n")
    out = tmp_path / "eval.json"
    common = ["--config", str(config_copy), "--backend", "torch", "--quiet", "--out", str(out)]
    assert main(["evaluate", str(data), "--metadata", str(csv_path), *common]) == 0
    meta = json.loads(out.read_text())["metadata"]
    assert meta["images_with_a_row"] == 12 and "age" in meta["numeric"]
    assert any("nope.png" in w for w in meta["warnings"])
    assert "metadata:" in capsys.readouterr().err
    assert main(["evaluate", str(data), *common]) == 0
    assert json.loads(out.read_text())["metadata"] is None  # no manifest.csv there


def test_unreadable_files_are_named_and_exit_1_and_the_rest_is_fitted(tmp_path, config_copy, tiny_dataset, capsys):
    # calibrate fitted on what it could read and said nothing (exit 0) about a FIFO or a truncated file in the split
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    os.mkfifo(data / "val" / "normal" / "pipe.png")
    good = next((data / "val" / "normal").glob("*.png"))
    (data / "val" / "normal" / "half.png").write_bytes(good.read_bytes()[:100])
    common = ["--config", str(config_copy), "--backend", "torch", "--quiet", "--cache-dir", str(tmp_path / "c")]
    out = tmp_path / "fit.json"
    assert main(["calibrate", str(data), "--out", str(out), *common]) == 1
    err = capsys.readouterr().err
    assert "2 file(s) could not be read and are not used in the fit:" in err
    assert "normal/pipe.png: " in err and "FIFO" in err and "normal/half.png: " in err
    report = json.loads(out.read_text())
    assert report["failed"] == 2 and {r["path"] for r in report["unreadable"]} == {
        "val/normal/pipe.png",
        "val/normal/half.png",
    }
    assert load_config(config_copy).calibration.fitted  # written all the same, from the readable images
    assert main(["calibrate", str(data), "--dry-run", *common]) == 1
