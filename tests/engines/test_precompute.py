"""``python -m engines precompute`` through Ray on this machine: the same numbers as ``predict``, a resumed run that
computes only what is missing, and clear messages for what cannot work."""

from __future__ import annotations

import csv
import shutil
import sys

import numpy as np
import pytest

from cascade.errors import CascadeError
from cascade.predtable import STATUS_OK, STATUS_UNREADABLE, PredictionTable, read_table, write_table
from engines.cli import main
from engines.precompute import _import_ray, parts_dir, precompute

CLASS_NAMES = ("normal", "osteopenia", "osteoporosis")


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for the module (2 CPUs, a 100 MB object store); precompute uses it and leaves it running."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024, logging_level="warning")
    yield ray
    ray.shutdown()


@pytest.fixture()
def dataset(tmp_path, tiny_dataset):
    """The tiny dataset's test split, a file that is not an image and a FIFO (never opened) in class folders."""
    import os

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset / "test", root)
    (root / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    os.mkfifo(root / "osteopenia" / "pipe.png")
    return root


def _run(dataset, out, tiny_config, **kw):
    return precompute(dataset, out, tiny_config, "onnx", num_workers=1, batch_size=5, progress=False, **kw)


@pytest.mark.slow
def test_precompute_equals_predict_row_by_row(local_ray, tmp_path, dataset, tiny_config):
    out = tmp_path / "p.parquet"
    result = _run(dataset, out, tiny_config)
    assert (result.total, result.computed, result.reused, result.failed) == (14, 14, 0, 2)
    assert not parts_dir(out).exists()  # merged into the one file
    table = read_table(out)
    csv_path = tmp_path / "predict.csv"
    args = ["predict", str(dataset), "--out", str(csv_path), "--stage2-always", "--backend", "onnx", "--quiet"]
    assert main([*args, "--config", str(tiny_config), "--batch-size", "4"]) == 1  # the broken file and the FIFO
    rows = {str(r["path"]): r for r in csv.DictReader(csv_path.open())}
    assert len(rows) == len(table) == 14
    for i, rel in enumerate(table.rel):
        row = rows[str(dataset / rel)]
        assert table.label[i] == rel.split("/")[0]
        if row["error"]:
            assert table.status[i] == STATUS_UNREADABLE
            # The same reason; the file named by its path in the dataset or on the command line.
            assert table.error[i].split("' ", 1)[1] == row["error"].split("' ", 1)[1]
            continue
        assert table.status[i] == STATUS_OK and table.backend[i] == "onnxruntime-cpu/onnxruntime-cpu"
        p1 = [float(row[f"stage1_{c}"]) for c in CLASS_NAMES]
        p2 = [float(row[f"stage2_{c}"]) for c in CLASS_NAMES]
        np.testing.assert_allclose(table.p1[i], p1, atol=2e-6)  # the CSV holds 6 decimals
        np.testing.assert_allclose(table.p2[i], p2, atol=2e-6)


@pytest.mark.slow
def test_resume_after_a_killed_run_computes_only_the_rest(local_ray, tmp_path, dataset, tiny_config):
    out = tmp_path / "p.parquet"
    full = (_run(dataset, out, tiny_config), read_table(out))[1]
    # What a run killed midway leaves: part files with some rows, no merged output.
    done = np.arange(len(full)) < 7
    write_table(full.take(done), parts_dir(out) / "part-killed-00000.parquet")
    out.unlink()
    changed = dataset / full.rel[0]  # among the finished rows, but rewritten since: computed again
    changed.write_bytes(changed.read_bytes())
    result = _run(dataset, out, tiny_config)
    assert (result.reused, result.computed, result.total) == (6, 8, 14)
    again = read_table(out)
    assert list(again.rel) == list(full.rel) and not parts_dir(out).exists()
    np.testing.assert_allclose(again.p1, full.p1, atol=1e-6)  # NaN rows (the broken file) compare equal
    np.testing.assert_allclose(again.p2, full.p2, atol=1e-6)
    assert again.mtime_ns[0] == changed.stat().st_mtime_ns != full.mtime_ns[0]
    # A complete table and unchanged files: nothing to compute, Ray is not even needed.
    result = _run(dataset, out, tiny_config)
    assert (result.reused, result.computed) == (14, 0)


@pytest.mark.slow
def test_rows_that_failed_in_the_run_are_retried(local_ray, tmp_path, dataset, tiny_config):
    out = tmp_path / "p.parquet"
    _run(dataset, out, tiny_config)
    table = read_table(out)
    status = table.status.copy()
    status[1] = "failed"  # e.g. a worker's model error: not the file's fault
    cols = {**table.__dict__, "status": status, "error": np.where(status == "failed", "model failed: x", table.error)}
    p1 = table.p1.copy()
    p1[1] = np.nan
    write_table(PredictionTable(**{**cols, "p1": p1}), out)
    result = _run(dataset, out, tiny_config)
    assert (result.reused, result.computed) == (13, 1)
    assert read_table(out).status[1] == STATUS_OK


def test_an_output_that_is_not_a_table_is_not_overwritten(tmp_path, dataset, tiny_config, capsys):
    out = tmp_path / "notes.parquet"
    out.write_text("my notes")
    code = main(["precompute", str(dataset), "--out", str(out), "--config", str(tiny_config), "--quiet"])
    assert code == 2 and out.read_text() == "my notes"
    err = capsys.readouterr().err
    assert "error:" in err and "not a readable prediction table" in err and "Traceback" not in err


def test_a_missing_dataset_is_one_line(tmp_path, tiny_config, capsys):
    code = main(["precompute", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p.parquet")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_without_ray_the_message_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(CascadeError, match="requirements-scale.txt"):
        _import_ray()


def test_the_dashboard_side_never_imports_ray():
    import subprocess

    code = (
        "import sys, cascade.predtable, dashboard.prediction_table, dashboard.widgets; "
        "sys.exit(int(any(m == 'ray' or m.startswith('ray.') for m in sys.modules)))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
