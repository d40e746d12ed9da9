"""The prediction table: both stages' probabilities for every file of a dataset, as one Parquet file.

``python -m engines precompute`` writes it (on this machine or a Ray cluster); the dashboard's Gate tuning and Dataset
pages read it in place of their own cache, so a table computed on a cluster is tuned on a laptop. Each row carries
what makes it valid: the file's identity when it was read (size, mtime_ns, inode) and the models' identity (the
content hashes of both stages' model files), so a reader can tell a row that still describes the file on disk from
a stale one, and a rerun knows which rows it can keep.

Only pandas/pyarrow here: reading a table never needs Ray or a model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cascade.checkpoint import StageSpec
from cascade.dataset import Item
from cascade.errors import CascadeError
from cascade.fileio import atomic_path
from cascade.predcache import Predictions, label_indices, model_identity

FORMAT = "knee-cascade-predictions/1"
_META_KEY = b"knee_cascade"
STATUS_OK = "ok"
STATUS_UNREADABLE = "unreadable"  # the file itself is bad: kept on a rerun while the file is unchanged
STATUS_FAILED = "failed"  # the run failed (a model or worker error): retried on a rerun
STATUSES = (STATUS_OK, STATUS_UNREADABLE, STATUS_FAILED)
IDENTITY = ("size", "mtime_ns", "inode")
_SUM_TOLERANCE = 1e-3


class PredictionTableError(CascadeError):
    """A prediction table cannot be read or does not belong to these models or this dataset."""


def file_identity(path: str | os.PathLike) -> tuple[int, int, int]:
    """(size, mtime_ns, inode) of a file as it is now: any overwrite, replacement or touch changes one of them."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


def models_identity(spec1: StageSpec, spec2: StageSpec) -> str:
    """Identity of a cascade's two models: the content hashes of the files they run from, their inputs (resolution and
    preprocessing mode, which a ``preprocess.txt`` beside a checkpoint can change) and their classes.

    The backend is not part of it (a row records which backend produced it): a table computed with TensorRT on a
    cluster is valid for the same checkpoints opened with ONNX Runtime on a laptop.
    """
    stages = [f"stage{i}={model_identity(s)}:{s.resolution}:{s.preprocess}" for i, s in ((1, spec1), (2, spec2))]
    text = "\n".join([*stages, f"classes={','.join(spec1.classes)}"])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class PredictionTable:
    """A prediction table in memory, column by column (row i of every array is one file)."""

    classes: tuple[str, ...]
    models: str  # models_identity() of the models every row was computed with
    rel: np.ndarray  # N object: path relative to the dataset root, forward slashes
    label: np.ndarray  # N object: the file's class folder, or None
    size: np.ndarray  # N int64
    mtime_ns: np.ndarray  # N int64
    inode: np.ndarray  # N int64
    p1: np.ndarray  # N×C float32; NaN rows where status is not ok
    p2: np.ndarray  # N×C float32, stage 2 run on every image
    status: np.ndarray  # N object: one of STATUSES
    error: np.ndarray  # N object: the reason, "" when ok
    backend: np.ndarray  # N object: the backends that ran the row ("onnxruntime-cpu/onnxruntime-cpu")

    def __len__(self) -> int:
        return len(self.rel)

    @staticmethod
    def empty(classes: Sequence[str], models: str) -> PredictionTable:
        c = len(classes)
        obj = np.array([], dtype=object)
        i64 = np.array([], dtype=np.int64)
        probs = np.zeros((0, c), np.float32)
        return PredictionTable(tuple(classes), models, obj, obj, i64, i64, i64, probs, probs, obj, obj, obj)

    def take(self, rows: np.ndarray) -> PredictionTable:
        """The table restricted to ``rows`` (indices or a boolean mask), in that order."""
        cols = {name: getattr(self, name)[rows] for name in _ROW_FIELDS}
        return PredictionTable(self.classes, self.models, **cols)

    @staticmethod
    def concat(tables: Sequence[PredictionTable]) -> PredictionTable:
        """Rows of several tables of the same models, in order."""
        first = tables[0]
        if any(t.models != first.models or t.classes != first.classes for t in tables):
            raise PredictionTableError("cannot join prediction tables of different models or classes")
        cols = {name: np.concatenate([getattr(t, name) for t in tables]) for name in _ROW_FIELDS}
        return PredictionTable(first.classes, first.models, **cols)


_ROW_FIELDS = ("rel", "label", "size", "mtime_ns", "inode", "p1", "p2", "status", "error", "backend")


def to_arrow(table: PredictionTable):
    """The table as a pyarrow Table with the classes and models in its schema metadata."""
    import pyarrow as pa

    c = len(table.classes)

    def probs(a: np.ndarray):
        flat = pa.array(np.ascontiguousarray(a, dtype=np.float32).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, c)

    meta = {"format": FORMAT, "classes": list(table.classes), "models": table.models}
    return pa.table(
        {
            "rel": pa.array(table.rel.tolist(), pa.string()),
            "label": pa.array(table.label.tolist(), pa.string()),
            "size": pa.array(table.size, pa.int64()),
            "mtime_ns": pa.array(table.mtime_ns, pa.int64()),
            "inode": pa.array(table.inode, pa.int64()),
            "p1": probs(table.p1),
            "p2": probs(table.p2),
            "status": pa.array(table.status.tolist(), pa.string()),
            "error": pa.array(table.error.tolist(), pa.string()),
            "backend": pa.array(table.backend.tolist(), pa.string()),
            "models": pa.array([table.models] * len(table), pa.dictionary(pa.int8(), pa.string())),
        },
        metadata={_META_KEY: json.dumps(meta).encode()},
    )


def write_table(table: PredictionTable, path: str | os.PathLike) -> None:
    """Write a table as Parquet, atomically (a killed writer leaves the old file or none, never half of one)."""
    import pyarrow.parquet as pq

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        pq.write_table(to_arrow(table), tmp, compression="zstd")


def _strings(column) -> np.ndarray:
    return np.array(column.to_pylist(), dtype=object)


def _probs(column, c: int, name: str, where: Path) -> np.ndarray:
    import pyarrow as pa

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_fixed_size_list(column.type) or column.type.list_size != c or column.null_count:
        raise PredictionTableError(f"'{where}': column {name} must hold {c} probabilities per row, got {column.type}")
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, c)


def read_table(path: str | os.PathLike) -> PredictionTable:
    """Read and validate a prediction table; PredictionTableError says what is wrong and what to do."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = Path(path).expanduser()
    redo = "rerun `python -m engines precompute` to write it again"
    if not where.is_file():
        raise PredictionTableError(f"prediction table '{where}' does not exist (or is not a file)")
    try:
        arrow = pq.read_table(where)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise PredictionTableError(f"'{where}' is not a readable Parquet file ({exc}); {redo}") from exc
    raw_meta = (arrow.schema.metadata or {}).get(_META_KEY)
    try:
        meta = json.loads(raw_meta) if raw_meta else {}
    except ValueError:
        meta = {}
    if meta.get("format") != FORMAT:
        raise PredictionTableError(
            f"'{where}' is a Parquet file but not a knee-cascade prediction table (format {meta.get('format')!r}, "
            f"expected {FORMAT!r}); {redo}"
        )
    missing = [name for name in (*_ROW_FIELDS, "models") if name not in arrow.column_names]
    if missing:
        raise PredictionTableError(f"'{where}' lacks the column(s) {missing}; {redo}")
    classes = tuple(str(c) for c in meta.get("classes", ()))
    models = str(meta.get("models", ""))
    if not classes or not models:
        raise PredictionTableError(f"'{where}' does not say which classes and models it holds; {redo}")
    try:
        cols = {name: _strings(arrow[name]) for name in ("rel", "label", "status", "error", "backend")}
        for name in IDENTITY:
            cols[name] = arrow[name].to_numpy().astype(np.int64)
        row_models = set(arrow["models"].to_pylist())
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise PredictionTableError(f"'{where}' has a column of the wrong type ({exc}); {redo}") from exc
    c = len(classes)
    table = PredictionTable(
        classes,
        models,
        p1=_probs(arrow["p1"], c, "p1", where),
        p2=_probs(arrow["p2"], c, "p2", where),
        **cols,
    )
    _validate(table, row_models, where, redo)
    return table


def _validate(table: PredictionTable, row_models: set, where: Path, redo: str) -> None:
    if row_models - {table.models}:
        raise PredictionTableError(f"'{where}' mixes rows of several models; {redo}")
    if any(r is None or r == "" for r in table.rel) or len(set(table.rel)) != len(table.rel):
        raise PredictionTableError(f"'{where}' has rows without a path or the same path twice; {redo}")
    bad_status = set(table.status) - set(STATUSES)
    if bad_status:
        raise PredictionTableError(f"'{where}' has unknown row status(es) {sorted(map(str, bad_status))}; {redo}")
    ok = table.status == STATUS_OK
    for name in ("p1", "p2"):
        p = getattr(table, name)[ok]
        if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
            raise PredictionTableError(f"'{where}': column {name} holds values that are not probabilities; {redo}")
        if len(p) and np.abs(p.sum(axis=1) - 1).max() > _SUM_TOLERANCE:
            raise PredictionTableError(f"'{where}': the rows of {name} do not sum to 1; {redo}")


def split_predictions(
    table: PredictionTable, items: Sequence[Item], split: str, models: str, check_files: bool = True
) -> Predictions:
    """The rows of ``items`` (one split of a dataset index) as :class:`Predictions`, like the dashboard's own cache.

    The table must be of the same models (``models``: :func:`models_identity` of the open cascade). An item without a
    row, with a failed row, or whose file changed since its row was computed (``check_files``: its size, mtime or
    inode differ now) gets no probabilities and is listed in ``failed`` with the reason.
    """
    if table.models != models:
        raise PredictionTableError(
            "the prediction table was computed with other models than the ones open (their checkpoints' hashes "
            "differ); rerun `python -m engines precompute` with this config, or clear the prediction table field"
        )
    import pandas as pd

    rels = [it.rel for it in items]
    rows = pd.Index(table.rel).get_indexer(rels)
    failed: list[tuple[str, str]] = []
    keep_items: list[int] = []
    keep_rows: list[int] = []
    for i, (it, row) in enumerate(zip(items, rows, strict=True)):
        if row < 0:
            failed.append((it.rel, "not in the prediction table; rerun `python -m engines precompute` to add it"))
        elif table.status[row] != STATUS_OK:
            failed.append((it.rel, str(table.error[row])))
        elif check_files and not _same_file(it.path, table, row):
            failed.append((it.rel, "changed since the prediction table was computed; rerun precompute to update it"))
        else:
            keep_items.append(i)
            keep_rows.append(row)
    if items and not keep_rows and all(r < 0 for r in rows):
        raise PredictionTableError(
            f"none of the {len(items)} images of '{split}' is in the prediction table: it was computed for another "
            "dataset folder (paths are relative to the folder given to precompute)"
        )
    idx = np.asarray(keep_rows, dtype=np.int64)
    classes = table.classes
    return Predictions(
        p1=table.p1[idx],
        p2=table.p2[idx],
        labels=label_indices([items[i] for i in keep_items], classes),
        rels=tuple(rels[i] for i in keep_items),
        classes=classes,
        split=split,
        failed=tuple(failed),
        key=f"table:{table.models}",
    )


def _same_file(path: Path, table: PredictionTable, row: int) -> bool:
    try:
        now = file_identity(path)
    except OSError:
        return False
    return now == (int(table.size[row]), int(table.mtime_ns[row]), int(table.inode[row]))
