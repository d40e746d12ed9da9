import csv
import json

import pytest

from cascade.cli import main
from tests.conftest import REALDATA


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
