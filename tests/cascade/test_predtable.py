"""The prediction table: Parquet round trip, validation with clear messages, and matching rows to a dataset split."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cascade.dataset import index_dataset
from cascade.predtable import (
    STATUS_OK,
    STATUS_UNREADABLE,
    PredictionTable,
    PredictionTableError,
    file_identity,
    read_table,
    split_predictions,
    write_table,
)
from tests.conftest import CLASSES

MODELS = "m" * 32


def make_table(index, seed: int = 0, models: str = MODELS) -> PredictionTable:
    """A valid table for every file of ``index`` (random probabilities; the last file's row is an unreadable one)."""
    rng = np.random.default_rng(seed)
    n, c = len(index.items), len(CLASSES)
    ident = np.array([file_identity(it.path) for it in index.items], dtype=np.int64)
    p1 = rng.dirichlet(np.ones(c), n).astype(np.float32)
    p2 = rng.dirichlet(np.ones(c), n).astype(np.float32)
    status = np.array([STATUS_OK] * n, dtype=object)
    error = np.array([""] * n, dtype=object)
    status[-1], error[-1] = STATUS_UNREADABLE, "'x' is corrupt"
    p1[-1] = p2[-1] = np.nan
    return PredictionTable(
        CLASSES,
        models,
        rel=np.array([it.rel for it in index.items], dtype=object),
        label=np.array([it.label for it in index.items], dtype=object),
        size=ident[:, 0],
        mtime_ns=ident[:, 1],
        inode=ident[:, 2],
        p1=p1,
        p2=p2,
        status=status,
        error=error,
        backend=np.array(["onnxruntime-cpu/onnxruntime-cpu"] * n, dtype=object),
    )


@pytest.fixture()
def index(tmp_path, tiny_dataset):
    import shutil

    shutil.copytree(tiny_dataset, tmp_path / "data")
    return index_dataset(tmp_path / "data")


def test_round_trip(tmp_path, index):
    table = make_table(index)
    write_table(table, tmp_path / "p.parquet")
    back = read_table(tmp_path / "p.parquet")
    assert back.classes == CLASSES and back.models == MODELS
    assert list(back.rel) == list(table.rel) and list(back.status) == list(table.status)
    np.testing.assert_array_equal(back.p1, table.p1)
    np.testing.assert_array_equal(back.p2, table.p2)
    np.testing.assert_array_equal(back.inode, table.inode)


def _corrupt_variants(path, good: bytes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    yield "garbage", b"PAR1 this is not parquet at all", "not a readable Parquet file"
    yield "truncated", good[: len(good) // 2], "not a readable Parquet file"
    yield "empty", b"", "not a readable Parquet file"
    other = path.with_name("plain.parquet")
    pq.write_table(pa.table({"a": [1, 2]}), other)
    yield "foreign", other.read_bytes(), "not a knee-cascade prediction table"


def test_corrupted_parquet_gives_a_message(tmp_path, index):
    path = tmp_path / "p.parquet"
    write_table(make_table(index), path)
    good = path.read_bytes()
    for name, data, message in _corrupt_variants(path, good):
        bad = tmp_path / f"{name}.parquet"
        bad.write_bytes(data)
        with pytest.raises(PredictionTableError, match=message) as err:
            read_table(bad)
        assert str(bad) in str(err.value) and "precompute" in str(err.value)
    with pytest.raises(PredictionTableError, match="does not exist"):
        read_table(tmp_path / "nowhere.parquet")


def test_values_that_are_not_probabilities_are_refused(tmp_path, index):
    table = make_table(index)
    table.p2[0] = [0.5, 0.5, 0.5]
    write_table(table, tmp_path / "p.parquet")
    with pytest.raises(PredictionTableError, match="do not sum to 1"):
        read_table(tmp_path / "p.parquet")
    table = make_table(index)
    table.p1[1, 0] = np.nan
    write_table(table, tmp_path / "p.parquet")
    with pytest.raises(PredictionTableError, match="not probabilities"):
        read_table(tmp_path / "p.parquet")


def test_split_rows_match_the_dataset_and_changed_files_are_not_used(tmp_path, index):
    table = make_table(index)
    write_table(table, tmp_path / "p.parquet")
    table = read_table(tmp_path / "p.parquet")
    items = index.select("test")
    changed = items[0]
    before = changed.path.stat().st_mtime_ns
    changed.path.write_bytes(changed.path.read_bytes())  # same bytes, new mtime: the row no longer vouches for it
    os.utime(changed.path, ns=(before + 10**9, before + 10**9))  # whatever mtime the copied file came with
    preds = split_predictions(table, items, "test", MODELS)
    failed = dict(preds.failed)
    assert "changed since" in failed[changed.rel]
    assert failed[items[-1].rel] == "'x' is corrupt"  # the table's last row is the test split's last file
    assert len(preds) == len(items) - 2 and changed.rel not in preds.rels
    row = {r: i for i, r in enumerate(table.rel)}
    for k, rel in enumerate(preds.rels):
        np.testing.assert_array_equal(preds.p1[k], table.p1[row[rel]])
        np.testing.assert_array_equal(preds.p2[k], table.p2[row[rel]])
        assert CLASSES[preds.labels[k]] == table.label[row[rel]]


def test_rows_missing_other_models_and_other_datasets(tmp_path, index):
    table = make_table(index)
    items = index.select("val")
    partial = table.take(np.array([r != items[0].rel for r in table.rel]))
    preds = split_predictions(partial, items, "val", MODELS)
    assert "not in the prediction table" in dict(preds.failed)[items[0].rel]
    with pytest.raises(PredictionTableError, match="other models"):
        split_predictions(table, items, "val", "x" * 32)
    elsewhere = table.take(np.arange(len(table)))
    elsewhere = PredictionTable(**{**elsewhere.__dict__, "rel": np.array([f"other/{r}" for r in table.rel], object)})
    with pytest.raises(PredictionTableError, match="another dataset folder"):
        split_predictions(elsewhere, items, "val", MODELS)
