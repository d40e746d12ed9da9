"""What each image is known to be besides its folder: a metadata table (CSV) joined to a dataset by relative path.

A dataset may carry ``manifest.csv`` in its root (the phantom generator writes one with the bone density each image was
drawn with), or any CSV can be named. One column holds the image's path (``file``, ``path``, ``rel``, ``image``, …);
every other column is metadata: numeric when its values are numbers (density, T-score, age), categorical otherwise
(sex, site). Paths may be relative to the dataset root (``test/normal/x.png``), to a split (``normal/x.png``), to the
folder above the root (when a split folder itself is opened as the dataset, its parent's manifest is used), or bare file
names when those are unique. Each row is matched by the first of these that names exactly one image.

A bad table never stops anything: rows without a path, rows naming no image, duplicate rows, non-numbers in a numeric
column, a missing path column or an unreadable file each become a sentence in ``Metadata.warnings``, and whatever could
be joined is kept.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from cascade.dataset import SPLITS, DatasetIndex

MANIFEST_NAME = "manifest.csv"
#: Column names taken as the image path, case-insensitive, first match wins.
PATH_COLUMNS = ("rel", "path", "file", "filename", "file_name", "image", "image_path", "relpath", "filepath")
#: A column is numeric when at least this share of its non-empty cells are numbers (the rest are reported).
NUMERIC_SHARE = 0.8
_EXAMPLES = 3
MAX_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class Metadata:
    """Metadata rows indexed by the dataset's relative paths, the kind of each column, and what went wrong."""

    table: pd.DataFrame  # index: Item.rel; columns: metadata columns (numeric ones as float, others as str)
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    source: Path | None = None
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())  # not problems: e.g. rows of other splits in a parent's manifest

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)

    def __len__(self) -> int:
        return len(self.table)

    def row(self, rel: str) -> dict[str, object]:
        """One image's metadata (empty when it has no row); missing numeric values are left out."""
        if rel not in self.table.index:
            return {}
        values = self.table.loc[rel]
        return {c: values[c] for c in self.columns if not (pd.isna(values[c]) or values[c] == "")}


def empty_metadata(source: Path | None = None, warnings: tuple[str, ...] = ()) -> Metadata:
    return Metadata(pd.DataFrame(index=pd.Index([], name="rel")), source=source, warnings=warnings)


def find_manifest(root: str | os.PathLike) -> Path | None:
    """``manifest.csv`` in the dataset root, else in the folder above it (a split folder opened on its own)."""
    base = Path(root)
    for folder in (base, base.parent):
        candidate = folder / MANIFEST_NAME
        if candidate.is_file():
            return candidate
    return None


def _examples(values) -> str:
    values = list(values)
    shown = ", ".join(f"'{v}'" for v in values[:_EXAMPLES])
    return shown + (", …" if len(values) > _EXAMPLES else "")


def _normalise(path: str) -> str:
    p = path.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p.strip("/")


def _matchers(index: DatasetIndex) -> list[dict[str, set[str]]]:
    """Lookup tables from a spelling of a path to the items it may mean, most specific first."""
    by_rel: dict[str, set[str]] = defaultdict(set)
    by_parent: dict[str, set[str]] = defaultdict(set)
    by_split: dict[str, set[str]] = defaultdict(set)
    by_name: dict[str, set[str]] = defaultdict(set)
    for it in index.items:
        by_rel[it.rel].add(it.rel)
        by_parent[f"{index.root.name}/{it.rel}"].add(it.rel)
        if it.split in SPLITS:
            by_split[it.rel.split("/", 1)[1]].add(it.rel)
        by_name[PurePosixPath(it.rel).name].add(it.rel)
    return [by_rel, by_parent, by_split, by_name]


def _match(path: str, matchers: list[dict[str, set[str]]]) -> str | None:
    for table in matchers:
        hits = table.get(path)
        if hits is not None and len(hits) == 1:
            return next(iter(hits))
    return None


def _read(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    try:
        if path.stat().st_size > MAX_BYTES:
            return None, f"'{path}' is larger than {MAX_BYTES // 2**20} MiB; not read"
        with warnings.catch_warnings():  # a row longer than the header: an error, not silently shifted columns
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                encoding="utf-8-sig",
                skipinitialspace=True,
                index_col=False,
                on_bad_lines="error",
            )
    except FileNotFoundError:
        return None, f"metadata table '{path}' does not exist"
    except (
        OSError,
        UnicodeDecodeError,
        pd.errors.ParserError,
        pd.errors.ParserWarning,
        pd.errors.EmptyDataError,
        csv.Error,
    ) as exc:
        return None, f"metadata table '{path}' cannot be read as CSV ({type(exc).__name__}: {exc})"
    if frame.empty and not len(frame.columns):
        return None, f"metadata table '{path}' is empty"
    return frame, None


def _typed_columns(frame: pd.DataFrame, problems: list[str]) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Numeric columns as floats (non-numbers become NaN, reported), the others as stripped strings."""
    out = pd.DataFrame(index=frame.index)
    numeric, categorical = [], []
    for col in frame.columns:
        text = frame[col].astype(str).str.strip()
        filled = text != ""
        values = pd.to_numeric(text.where(filled), errors="coerce")
        good = values.notna() & filled
        if filled.any() and good.sum() >= NUMERIC_SHARE * filled.sum():
            bad = text[filled & ~good]
            if len(bad):
                problems.append(
                    f"column '{col}': {len(bad)} value(s) are not numbers ({_examples(bad.unique())}); "
                    "treated as missing"
                )
            out[col] = values.astype(float)
            numeric.append(col)
        else:
            out[col] = text
            categorical.append(col)
    return out, numeric, categorical


def load_metadata(index: DatasetIndex, path: str | os.PathLike | None = None) -> Metadata:
    """Join a metadata CSV (default: the dataset's ``manifest.csv``) to ``index``; problems become warnings."""
    source = Path(path).expanduser() if path else find_manifest(index.root)
    if source is None:
        return empty_metadata()
    frame, problem = _read(source)
    if frame is None:
        return empty_metadata(source, (problem,) if problem else ())
    lower = {str(c).strip().lower(): c for c in frame.columns}
    path_col = next((lower[name] for name in PATH_COLUMNS if name in lower), None)
    if path_col is None:
        msg = (
            f"'{source.name}' has no path column (expected one of {', '.join(PATH_COLUMNS)}; "
            f"it has {', '.join(map(str, frame.columns))}); no metadata joined"
        )
        return empty_metadata(source, (msg,))
    problems: list[str] = []
    notes: list[str] = []
    paths = frame[path_col].astype(str).map(_normalise)
    no_path = paths == ""
    if no_path.any():
        problems.append(f"{int(no_path.sum())} row(s) have no path in column '{path_col}'; ignored")
    matchers = _matchers(index)
    rels = paths.map(lambda p: _match(p, matchers) if p else None)
    unmatched = paths[~no_path & rels.isna()]
    if len(unmatched):
        in_parent = source.parent == index.root.parent and source.parent != index.root
        elsewhere = unmatched[~unmatched.str.startswith(f"{index.root.name}/")] if in_parent else unmatched[:0]
        if len(elsewhere):
            notes.append(
                f"{len(elsewhere)} row(s) of '{source}' describe images outside '{index.root.name}/'; not used here"
            )
        missing = unmatched.drop(elsewhere.index)
        if len(missing):
            problems.append(
                f"{len(missing)} row(s) name no image of this dataset ({_examples(missing)}); "
                f"paths should be relative to '{index.root}' or to a split folder"
            )
    keep = rels.notna()
    dup = rels[keep].duplicated(keep="first")
    if dup.any():
        names = rels[keep][dup].unique()
        problems.append(f"{len(names)} image(s) have more than one row ({_examples(names)}); the first row is used")
    chosen = keep.copy()
    chosen[keep] = ~dup.to_numpy()
    typed, numeric, categorical = _typed_columns(frame.drop(columns=[path_col]), problems)  # kinds: whole column
    typed = typed.loc[chosen]
    typed.index = pd.Index(rels[chosen].to_list(), name="rel")
    if len(typed) == 0:
        problems.append(f"no row of '{source.name}' matches an image of '{index.root}'")
    elif len(typed) < len(index.items):
        missing_rows = [it.rel for it in index.items if it.rel not in typed.index]
        problems.append(
            f"{len(missing_rows)} of {len(index.items)} images have no metadata row ({_examples(missing_rows)})"
        )
    label_col = next((c for c in categorical if c.strip().lower() == "label"), None)
    if label_col is not None and len(typed):
        folder = pd.Series({it.rel: it.label.lower() for it in index.items})
        stated = typed[label_col].str.lower()
        differ = stated[(stated != "") & (stated != folder.reindex(typed.index))]
        if len(differ):
            problems.append(
                f"{len(differ)} image(s) have a '{label_col}' that differs from their class folder "
                f"({_examples(differ.index)}); the folder is the true class"
            )
    return Metadata(typed, tuple(numeric), tuple(categorical), source, tuple(problems), tuple(notes))


def metadata_summary(
    meta: Metadata,
    rels: Sequence[str],
    labels: np.ndarray,
    correct: np.ndarray,
    classes: Sequence[str],
    n_bins: int = 4,
) -> dict[str, object]:
    """JSON-ready: per numeric column, its spread within each true class and the accuracy in equal-mass bins of it.

    Overlapping class ranges say that the column alone cannot separate the classes; an accuracy that falls in some bins
    says where along it the cascade struggles.
    """
    labels = np.asarray(labels, dtype=np.int64)
    correct = np.asarray(correct, dtype=bool)
    out: dict[str, object] = {
        "source": None if meta.source is None else str(meta.source),
        "images_with_a_row": int(sum(r in meta.table.index for r in rels)),
        "warnings": list(meta.warnings),
        "numeric": {},
    }
    for col in meta.numeric:
        x = meta.table[col].reindex(list(rels)).to_numpy(dtype=np.float64)
        has = np.isfinite(x)
        by_class = {}
        for c, name in enumerate(classes):
            v = x[has & (labels == c)]
            if len(v):
                p5, p95 = np.percentile(v, [5, 95])
                by_class[name] = {"n": int(len(v)), "mean": float(v.mean()), "p5": float(p5), "p95": float(p95)}
        bins = []
        order = np.flatnonzero(has)[np.argsort(x[has], kind="stable")]
        for group in np.array_split(order, min(n_bins, len(order))) if len(order) else []:
            bins.append(
                {
                    "lo": float(x[group[0]]),
                    "hi": float(x[group[-1]]),
                    "n": int(len(group)),
                    "accuracy": float(correct[group].mean()),
                }
            )
        out["numeric"][col] = {"by_true_class": by_class, "accuracy_by_bin": bins}  # type: ignore[index]
    return out


def metadata_lines(summary: Mapping) -> str:
    """For a terminal: the table's warnings, then per numeric column each class's 5th–95th percentile range."""
    lines = [f"metadata: {summary['source']} ({summary['images_with_a_row']} images with a row)"]
    lines += [f"  warning: {w}" for w in summary["warnings"]]
    for col, info in summary["numeric"].items():
        spans = ", ".join(f"{c} {v['p5']:.3g}–{v['p95']:.3g}" for c, v in info["by_true_class"].items())
        acc = ", ".join(f"{b['accuracy']:.0%}" for b in info["accuracy_by_bin"])
        lines.append(f"  {col}: by true class {spans}; cascade accuracy by rising {col} (equal-mass bins) {acc}")
    return "\n".join(lines)
