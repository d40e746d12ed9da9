"""On-disk cache of both stages' predictions for a dataset split, so any gate can be evaluated without a model.

Stage 2 is run on every image (not only the routed ones), so moving the gate later never needs a forward pass. An entry
is keyed by what determines its content: the sha256 of both checkpoints, the backends that ran them (FP16 engines give
slightly different numbers), the classes and the split's file list (paths, sizes, mtimes). Any change gives a new key,
so a stale entry is never read. Entries are ``.npz`` files written atomically (a crash leaves no half file), read
without pickle.

Entries hold the *raw* probabilities; a cascade's calibration temperatures are applied on reading
(``Predictions.with_temperatures``), so switching calibration on or off, or refitting it, never runs a model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cascade.calibration import apply_temperature
from cascade.checkpoint import file_sha256
from cascade.dataset import DatasetIndex, Item
from cascade.errors import CascadeError, ImageReadError
from cascade.fileio import write_atomic
from cascade.images import read_image

DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "predictions"
_FORMAT = 1

ProgressFn = Callable[[int, int], None]


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
    """Content hash of the file a stage runs from: its checkpoint, or its ONNX file where there is no checkpoint."""
    spec = backend.spec
    for path in (spec.checkpoint_path, spec.onnx_path):
        if path.is_file():
            return f"{path.name}:{file_sha256(path)}"
    raise CascadeError(f"'{spec.model_dir}' holds neither {spec.checkpoint_path.name} nor {spec.onnx_path.name}")


def cache_key(cascade, index: DatasetIndex, split: str) -> str:
    """Key of a split's predictions under a cascade: checkpoints, backends, classes and the split's file list."""
    parts = [
        f"format={_FORMAT}",
        f"split={split}",
        f"files={index.fingerprint(split)}",
        f"classes={','.join(cascade.classes)}",
    ]
    for stage, backend in ((1, cascade.backend1), (2, cascade.backend2)):
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


def load_predictions(path: str | os.PathLike) -> Predictions | None:
    """Read an entry; None when it is absent, unreadable or of another format (the caller recomputes)."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        with np.load(p, allow_pickle=False) as npz:
            if int(npz["format"]) != _FORMAT:
                return None
            failed = tuple(zip(npz["failed_rels"].tolist(), npz["failed_why"].tolist(), strict=True))
            return Predictions(
                p1=npz["p1"],
                p2=npz["p2"],
                labels=npz["labels"],
                rels=tuple(npz["rels"].tolist()),
                classes=tuple(npz["classes"].tolist()),
                split=str(npz["split"]),
                failed=failed,
                key=str(npz["key"]),
            )
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None


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
    total = len(items)
    for start in range(0, total, batch_size):
        chunk = range(start, min(start + batch_size, total))
        images = []
        for i in chunk:
            try:
                images.append(read_image(items[i].path))
                keep.append(i)
            except ImageReadError as exc:
                failed.append((items[i].rel, str(exc)))
        if images:
            p1, p2 = cascade.predict(images, stage2_always=True, calibrated=False)
            p1s.append(p1)
            p2s.append(p2)
        if progress is not None:
            progress(chunk.stop, total)
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
) -> Predictions:
    """A split's predictions under the cascade's temperatures: read from the cache when its key matches, else computed
    once and stored (raw)."""
    key = cache_key(cascade, index, split)
    path = cache_path(key, cache_dir)
    found = load_predictions(path)
    if found is not None and found.key == key:
        return found.with_temperatures(cascade.temperatures)
    preds = compute_predictions(cascade, index.select(split), split, batch_size, progress)
    preds = Predictions(preds.p1, preds.p2, preds.labels, preds.rels, preds.classes, split, preds.failed, key)
    save_predictions(preds, path)
    return preds.with_temperatures(cascade.temperatures)


def peek_predictions(
    cascade, index: DatasetIndex, split: str, cache_dir: str | os.PathLike | None = None
) -> Predictions | None:
    """The cached entry for a split (under the cascade's temperatures) if one exists, without computing anything."""
    key = cache_key(cascade, index, split)
    found = load_predictions(cache_path(key, cache_dir))
    return found.with_temperatures(cascade.temperatures) if found is not None and found.key == key else None
