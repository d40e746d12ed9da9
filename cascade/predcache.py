"""On-disk cache of both stages' predictions for a dataset split, so any gate can be evaluated without a model.

Stage 2 is run on every image (not only the routed ones), so moving the gate later never needs a forward pass. An entry
is keyed by what determines its content: the sha256 of both checkpoints, the backends that ran them (FP16 engines give
slightly different numbers), the classes and the split's file list (paths, sizes, mtimes). Any change gives a new key,
so a stale entry is never read. Entries are ``.npz`` files written atomically (a crash leaves no half file), read
without pickle, and validated on load (shapes, finite probabilities whose rows sum to 1, labels within range): an
entry that fails is discarded and recomputed, and the recomputed :class:`Predictions` carries a ``notice`` saying so.

Entries hold the *raw* probabilities; a cascade's calibration temperatures are applied on reading
(``Predictions.with_temperatures``), so switching calibration on or off, or refitting it, never runs a model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from cascade.calibration import apply_temperature
from cascade.dataset import DatasetIndex, Item, read_item
from cascade.errors import CascadeError
from cascade.fileio import file_sha256, write_atomic

DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "predictions"
_FORMAT = 1

ProgressFn = Callable[[int, int], None]
T = TypeVar("T")


class ClassMismatchError(CascadeError):
    """The dataset's class folders are not among the models' classes, so its labels cannot be scored."""


@dataclass(frozen=True)
class Predictions:
    """Both stages' probabilities for every readable image of a split, aligned with its labels and paths."""

    p1: np.ndarray  # N×C float32
    p2: np.ndarray  # N×C float32, stage 2 run on every image
    labels: np.ndarray  # N int64: index into classes
    rels: tuple[str, ...]  # paths relative to the dataset root
    classes: tuple[str, ...]
    split: str
    failed: tuple[tuple[str, str], ...] = ()  # (rel, reason) of images that could not be read
    key: str = ""
    notice: str = ""  # set when a cached entry was found invalid and these were recomputed in its place
    temperatures: tuple[float, float] = (1.0, 1.0)  # applied to p1, p2 (1, 1: raw, as stored on disk)

    def __len__(self) -> int:
        return len(self.rels)

    def with_temperatures(self, temperatures: Sequence[float]) -> Predictions:
        """The same predictions under other per-stage temperatures ((1, 1): raw), derived without a model.

        Temperatures compose by multiplication, so going from the applied T to a new T' applies T'/T.
        """
        new = (float(temperatures[0]), float(temperatures[1]))
        if new == self.temperatures:
            return self
        p1, p2 = (
            apply_temperature(p, t_new / t_old).astype(np.float32)
            for p, t_new, t_old in zip((self.p1, self.p2), new, self.temperatures, strict=True)
        )
        return dataclasses.replace(self, p1=p1, p2=p2, temperatures=new)


def label_indices(items: Sequence[Item], classes: Sequence[str]) -> np.ndarray:
    """Model class index of each item's folder label (case-insensitive: ``Normal`` is ``normal``)."""
    lower = [c.lower() for c in classes]
    unknown = sorted({it.label for it in items if it.label.lower() not in lower})
    if unknown:
        raise ClassMismatchError(
            f"the dataset's class folder(s) {unknown} are not among the models' classes {list(classes)}; "
            "rename the folders to the models' labels or choose a dataset with the same classes"
        )
    return np.array([lower.index(it.label.lower()) for it in items], dtype=np.int64)


def model_identity(backend) -> str:
    """Content hashes of the files a stage's answers come from: its checkpoint (where there is one) and the file the
    backend actually runs (``backend.model_file``: the ONNX file or TensorRT engine; absent for PyTorch).

    ``backend`` may also be a StageSpec (a prediction table is keyed before any backend is opened): then the checkpoint,
    or the ONNX file where there is no checkpoint.
    """
    spec = getattr(backend, "spec", backend)
    ran = getattr(backend, "model_file", None)
    if ran is None and not spec.checkpoint_path.is_file():
        ran = spec.onnx_path
    files = [p for p in (spec.checkpoint_path, ran) if p is not None and Path(p).is_file()]
    if not files:
        raise CascadeError(f"'{spec.model_dir}' holds neither {spec.checkpoint_path.name} nor a model file it runs")
    return "+".join(f"{Path(p).name}:{file_sha256(p)}" for p in files)


def cache_key(cascade, index: DatasetIndex, split: str) -> str:
    """Key of a split's predictions under a cascade: checkpoints, backends, classes and the split's file list."""
    parts = [
        f"format={_FORMAT}",
        f"split={split}",
        f"files={index.fingerprint(split)}",
        f"classes={','.join(cascade.classes)}",
    ]
    for stage in (1, 2):
        backend = cascade.backend(stage)
        parts.append(f"stage{stage}={model_identity(backend)}:{backend.name}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def cache_path(key: str, cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or DEFAULT_CACHE_DIR) / f"{key}.npz"


def save_predictions(preds: Predictions, path: str | os.PathLike) -> None:
    """Write an entry atomically: to a temporary file in the same folder, then renamed over the target."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    preds = preds.with_temperatures((1.0, 1.0))  # entries hold raw probabilities
    failed_rels = [r for r, _ in preds.failed]
    failed_why = [w for _, w in preds.failed]
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        format=np.array(_FORMAT),
        p1=preds.p1.astype(np.float32),
        p2=preds.p2.astype(np.float32),
        labels=preds.labels.astype(np.int64),
        rels=np.array(preds.rels, dtype=np.str_),
        classes=np.array(preds.classes, dtype=np.str_),
        split=np.array(preds.split),
        failed_rels=np.array(failed_rels, dtype=np.str_),
        failed_why=np.array(failed_why, dtype=np.str_),
        key=np.array(preds.key),
    )
    write_atomic(target, buf.getvalue())


#: How far a row of probabilities may sum from 1 (float32 softmax rows are within ~1e-6).
ROW_SUM_TOLERANCE = 1e-3


def validation_problem(preds: Predictions) -> str | None:
    """What is wrong with an entry's content, or None: the checks every entry passes before it is used."""
    n, c = len(preds.rels), len(preds.classes)
    if c < 2:
        return f"it lists {c} class(es)"
    for name in ("p1", "p2"):
        arr = getattr(preds, name)
        if arr.ndim != 2 or arr.shape != (n, c):
            return f"{name} has shape {arr.shape}, expected ({n}, {c})"
        if not np.issubdtype(arr.dtype, np.floating):
            return f"{name} holds {arr.dtype}, not probabilities"
        if not np.all(np.isfinite(arr)):
            return f"{name} holds non-finite values"
        if n and (arr.min() < -1e-6 or arr.max() > 1 + 1e-6):
            return f"{name} holds values outside [0, 1]"
        if n and np.abs(arr.sum(axis=1) - 1).max() > ROW_SUM_TOLERANCE:
            return f"{name} has rows that do not sum to 1"
    labels = preds.labels
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        return f"labels have shape {labels.shape} and type {labels.dtype}, expected {n} integers"
    if n and (labels.min() < 0 or labels.max() >= c):
        return f"labels lie outside 0..{c - 1}"
    return None


def inspect_entry(path: str | os.PathLike) -> tuple[Predictions | None, str]:
    """Read and validate an entry: ``(predictions, "")``, or ``(None, reason)`` ("" when there is no entry)."""
    p = Path(path)
    if not p.is_file():
        return None, ""
    try:
        with np.load(p, allow_pickle=False) as npz:
            if int(npz["format"]) != _FORMAT:
                return None, f"it has format {int(npz['format'])}, not {_FORMAT}"
            failed = tuple(zip(npz["failed_rels"].tolist(), npz["failed_why"].tolist(), strict=True))
            preds = Predictions(
                p1=npz["p1"],
                p2=npz["p2"],
                labels=npz["labels"],
                rels=tuple(npz["rels"].tolist()),
                classes=tuple(npz["classes"].tolist()),
                split=str(npz["split"]),
                failed=failed,
                key=str(npz["key"]),
            )
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile, EOFError) as exc:
        return None, f"it cannot be read ({type(exc).__name__}: {exc})"
    problem = validation_problem(preds)
    return (None, problem) if problem else (preds, "")


def load_predictions(path: str | os.PathLike) -> Predictions | None:
    """Read an entry; None when it is absent, unreadable, of another format or invalid (the caller recomputes)."""
    return inspect_entry(path)[0]


@dataclass(frozen=True)
class BatchResult:
    """One batch of :func:`iter_predictions`: which sources were read and their probabilities, and which failed."""

    done: int  # sources handled so far, this batch included
    ok: list[int]  # indices (into the sources) of the images read, aligned with the rows of p1 and p2
    p1: np.ndarray  # len(ok)×C
    p2: np.ndarray  # len(ok)×C; NaN rows where stage 2 did not run
    failed: list[tuple[int, str]]  # (index, reason) of the sources that could not be read


def failure_reason(exc: BaseException) -> str:
    """The message for a file that could not be read: ours as they are, anything else with its type."""
    return str(exc) if isinstance(exc, CascadeError) else f"{type(exc).__name__}: {exc}"


def iter_predictions(
    cascade,
    sources: Sequence[T],
    read: Callable[[T], np.ndarray],
    batch_size: int = 16,
    stage2_always: bool = True,
    calibrated: bool = True,
) -> Iterator[BatchResult]:
    """Read and run the cascade over ``sources`` batch by batch; a source that cannot be read is reported, not fatal.

    Any exception while reading one source (not only :class:`ImageReadError`: a decoder bug, a vanished file) fails
    that source alone, so one bad file never ends a run over thousands. Model failures are not per file and propagate.
    """
    c = len(cascade.classes)
    for start in range(0, len(sources), batch_size):
        chunk = range(start, min(start + batch_size, len(sources)))
        images, ok, failed = [], [], []
        for i in chunk:
            try:
                images.append(read(sources[i]))
            except Exception as exc:  # noqa: BLE001  (per-file: reported in its row, the run goes on)
                failed.append((i, failure_reason(exc)))
            else:
                ok.append(i)
        if images:
            p1, p2 = cascade.predict(images, stage2_always=stage2_always, calibrated=calibrated)
        else:
            p1 = p2 = np.zeros((0, c), np.float32)
        yield BatchResult(chunk.stop, ok, p1, p2, failed)


def compute_predictions(
    cascade,
    items: Sequence[Item],
    split: str,
    batch_size: int = 16,
    progress: ProgressFn | None = None,
) -> Predictions:
    """Raw probabilities of both stages on every item (stage 2 always); unreadable images are listed in ``failed``."""
    classes = tuple(cascade.classes)
    labels_all = label_indices(items, classes)
    p1s, p2s, keep, failed = [], [], [], []
    for batch in iter_predictions(cascade, items, read_item, batch_size, calibrated=False):
        p1s.append(batch.p1)
        p2s.append(batch.p2)
        keep.extend(batch.ok)
        failed.extend((items[i].rel, why) for i, why in batch.failed)
        if progress is not None:
            progress(batch.done, len(items))
    c = len(classes)
    return Predictions(
        p1=np.concatenate(p1s).astype(np.float32) if p1s else np.zeros((0, c), np.float32),
        p2=np.concatenate(p2s).astype(np.float32) if p2s else np.zeros((0, c), np.float32),
        labels=labels_all[keep],
        rels=tuple(items[i].rel for i in keep),
        classes=classes,
        split=split,
        failed=tuple(failed),
    )


def cached_predictions(
    cascade,
    index: DatasetIndex,
    split: str,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 16,
    progress: ProgressFn | None = None,
    key: str | None = None,
) -> Predictions:
    """A split's predictions under the cascade's temperatures: read from the cache when its key matches, else computed
    once and stored (raw).

    ``key``: the split's :func:`cache_key` when the caller already has it (it hashes both checkpoints).
    """
    key = key or cache_key(cascade, index, split)
    path = cache_path(key, cache_dir)
    found, problem = inspect_entry(path)
    if found is not None and found.key != key:
        found, problem = None, "it belongs to another key"
    elif found is not None and found.classes != tuple(cascade.classes):
        found, problem = None, f"its classes {list(found.classes)} are not the models' {list(cascade.classes)}"
    if found is not None:
        return found.with_temperatures(cascade.temperatures)
    preds = compute_predictions(cascade, index.select(split), split, batch_size, progress)
    notice = f"The cached predictions '{path.name}' were discarded and recomputed: {problem}." if problem else ""
    preds = Predictions(preds.p1, preds.p2, preds.labels, preds.rels, preds.classes, split, preds.failed, key, notice)
    save_predictions(preds, path)
    return preds.with_temperatures(cascade.temperatures)
