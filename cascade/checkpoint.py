"""Model folders in jetson-inference's layout, read and written unchanged.

A folder holds ``model_best.pth.tar`` (a dict: epoch, arch, resolution, classes, num_classes, multi_label, state_dict,
accuracy, loss, optimizer), ``labels.txt`` (one label per line, sorted folder order) and, once exported,
``<arch>.onnx`` (jetson-inference's export) and/or ``<arch>.cascade.onnx`` (this project's, with CAMs). How inputs are
resized (``cascade.preprocess``) is the checkpoint's extra ``preprocess`` key (jetson's tools ignore extra keys), else
a one-line ``preprocess.txt`` beside it, else ``"jetson"`` (jetson-inference's own folders). The checkpoint carries
its model arguments (as nanoGPT's does), so a folder alone rebuilds its model.
Checkpoints are only ever read with ``weights_only=True``: one that needs code to unpickle is refused, and nothing in it
runs.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cascade.errors import CheckpointError
from cascade.fileio import atomic_path
from cascade.preprocess import DEFAULT_MODE, DEFAULT_RESOLUTION, PREPROCESS_MODES

CHECKPOINT_NAME = "checkpoint.pth.tar"
BEST_NAME = "model_best.pth.tar"
LABELS_NAME = "labels.txt"
PREPROCESS_NAME = "preprocess.txt"
_REQUIRED_KEYS = ("arch", "state_dict")
#: The input sizes a checkpoint may declare: below 16 no backbone has a feature map left, above 2048 a batch of a few
#: images no longer fits in memory.
MIN_RESOLUTION, MAX_RESOLUTION = 16, 2048
_MAX_LABELS_BYTES = 1 << 20

if TYPE_CHECKING:  # torch is imported where a checkpoint is read or written, not by whoever needs a StageSpec
    from torch import nn


@dataclass(frozen=True)
class StageSpec:
    """What a stage is, independent of how it runs: architecture, classes, input size and where it lives."""

    arch: str
    classes: tuple[str, ...]
    resolution: int
    model_dir: Path
    preprocess: str = DEFAULT_MODE  # how inputs are resized: "jetson" or "area" (cascade.preprocess)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_index(self, label: str) -> int:
        """Index of ``label``, case-insensitive (jetson folders are often ``Normal``, configs say ``normal``)."""
        wanted = label.strip().lower()
        for i, name in enumerate(self.classes):
            if name.lower() == wanted:
                return i
        raise CheckpointError(
            f"label '{label}' is not one of this stage's classes {list(self.classes)} ({self.model_dir})"
        )

    @property
    def checkpoint_path(self) -> Path:
        return self.model_dir / BEST_NAME

    @property
    def onnx_path(self) -> Path:
        """This project's export (dynamic batch, ``cam_0``): its own name, so it never stands in for jetson's."""
        return self.model_dir / f"{self.arch}.cascade.onnx"

    @property
    def jetson_onnx_path(self) -> Path:
        """The name jetson-inference's ``onnx_export.py`` writes and its imageNet loads (``--model=<arch>.onnx``)."""
        return self.model_dir / f"{self.arch}.onnx"


def check_labels(labels: tuple[str, ...], source: str) -> tuple[str, ...]:
    """At least two labels, no two equal ignoring case (labels are matched case-insensitively)."""
    if len(labels) < 2:
        raise CheckpointError(f"'{source}' lists {len(labels)} label(s); a classifier needs at least 2")
    seen: dict[str, str] = {}
    for label in labels:
        if label.lower() in seen:
            raise CheckpointError(
                f"'{source}' lists the label '{label}' twice (as '{seen[label.lower()]}' and '{label}', labels are "
                "matched ignoring case); give each class one distinct line"
            )
        seen[label.lower()] = label
    return labels


def read_labels(path: str | os.PathLike) -> tuple[str, ...]:
    """Labels from ``labels.txt``: one per line, blank lines ignored; UTF-8 with or without a BOM, LF or CRLF."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:  # the folder was checked to hold a regular labels.txt before this is called
            raw = fh.read(_MAX_LABELS_BYTES + 1)
    except OSError as exc:
        raise CheckpointError(f"cannot read labels file '{p}': {exc.strerror or exc}") from exc
    if len(raw) > _MAX_LABELS_BYTES:
        raise CheckpointError(f"'{p}' is larger than {_MAX_LABELS_BYTES >> 20} MiB: not a labels file")
    try:
        text = raw.decode("utf-8-sig")  # a BOM (Windows editors write one) is not part of the first label
    except UnicodeDecodeError as exc:
        raise CheckpointError(
            f"'{p}' is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8, one label per line"
        ) from exc
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    return check_labels(labels, str(p))


def checkpoint_int(ckpt: dict, key: str, default: int, source: str, low: int = 1, high: int | None = None) -> int:
    """An integer field of a checkpoint dict, range-checked; anything else is a one-line error naming the fix."""
    value = ckpt.get(key, default)
    torch = sys.modules.get("torch")  # a tensor can only come from torch already imported: not imported here for it
    if torch is not None and isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(
            f"'{source}': '{key}' must be an integer, got {value!r} ({type(value).__name__}); "
            f"re-save the checkpoint with an integer '{key}'"
        )
    if value < low or (high is not None and value > high):
        span = f"{low}..{high}" if high is not None else f"at least {low}"
        raise CheckpointError(
            f"'{source}': '{key}' is {value}, outside {span}; re-save the checkpoint with a sane '{key}'"
        )
    return value


def write_labels(path: str | os.PathLike, classes: tuple[str, ...] | list[str]) -> None:
    Path(path).write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint dict safely (tensors and plain containers only)."""
    import torch

    p = Path(path)
    if p.exists() and not p.is_file():  # a FIFO or device would block torch.load: never opened
        raise CheckpointError(f"checkpoint '{p}' is not a regular file; put the model_best.pth.tar file there")
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{p}' does not exist")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc)
        if "GLOBAL" not in detail:  # not a code reference: the bytes are simply not a checkpoint
            raise CheckpointError(f"'{p}' is not a readable PyTorch checkpoint (corrupt or another format)") from exc
        found = re.search(r"GLOBAL (\S+)", detail)
        raise CheckpointError(
            f"refused to load '{p}': it needs arbitrary code to unpickle ({found.group(1) if found else 'a global'}). "
            "Nothing in it was run. Only checkpoints of tensors and plain containers are accepted (jetson-inference's "
            "dict with a state_dict); re-save it from trusted code as such a dict"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"'{p}' is not a readable PyTorch checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"'{p}' holds a {type(ckpt).__name__}, not a checkpoint dict")
    if "state_dict" not in ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f"'{p}' is a bare state_dict; wrap it as {{'arch': ..., 'state_dict': ...}}")
    missing = [k for k in _REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"'{p}' lacks the key(s) {missing} of a jetson-inference checkpoint")
    return ckpt


def stage_spec_from(model_dir: str | os.PathLike, ckpt: dict | None = None) -> StageSpec:
    """Read a folder's spec: labels.txt names the classes; the checkpoint gives arch and resolution."""
    folder = Path(model_dir)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise CheckpointError(f"model folder '{folder}' {what}; model_dir names the stage's folder")
    ckpt = load_checkpoint(folder / BEST_NAME) if ckpt is None else ckpt
    source = str(folder / BEST_NAME)
    labels_path = folder / LABELS_NAME
    if labels_path.exists() and not labels_path.is_file():
        raise CheckpointError(f"'{labels_path}' is not a regular file; replace it with a text file, one label per line")
    if labels_path.exists():
        classes = read_labels(labels_path)
    else:
        stored = ckpt.get("classes") or ()
        if not isinstance(stored, list | tuple) or not all(isinstance(c, str) for c in stored):
            raise CheckpointError(f"'{source}': 'classes' must be a list of strings; add a labels.txt beside it")
        classes = tuple(c.strip() for c in stored if c.strip())
        if not classes:
            raise CheckpointError(f"'{folder}' has no labels.txt and its checkpoint lists no classes")
        check_labels(classes, source)
    num = checkpoint_int(ckpt, "num_classes", len(classes), source, low=2)
    if num != len(classes):
        raise CheckpointError(
            f"'{folder}': labels.txt has {len(classes)} labels but the checkpoint {num} classes; "
            "make labels.txt list exactly the classes the model was trained on"
        )
    resolution = checkpoint_int(ckpt, "resolution", DEFAULT_RESOLUTION, source, MIN_RESOLUTION, MAX_RESOLUTION)
    return StageSpec(str(ckpt["arch"]), classes, resolution, folder, read_preprocess(folder, ckpt))


def read_preprocess(model_dir: str | os.PathLike, ckpt: dict | None = None) -> str:
    """A folder's resize mode: the checkpoint's ``preprocess`` key, else ``preprocess.txt``, else ``"jetson"``."""
    folder = Path(model_dir)
    side = folder / PREPROCESS_NAME
    found = {}
    if ckpt is not None and ckpt.get("preprocess") is not None:
        found[f"the 'preprocess' key of '{folder / BEST_NAME}'"] = str(ckpt["preprocess"])
    if side.is_file():
        try:
            found[f"'{side}'"] = side.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"cannot read '{side}' ({exc}); it should hold one word: jetson or area") from exc
    for where, mode in found.items():
        if mode not in PREPROCESS_MODES:
            raise CheckpointError(f"{where} says preprocess {mode!r}; it must be one of {', '.join(PREPROCESS_MODES)}")
    if len(set(found.values())) > 1:
        raise CheckpointError(f"{' but '.join(f'{w} says {m!r}' for w, m in found.items())}; keep one")
    return next(iter(found.values()), DEFAULT_MODE)


def load_stage(model_dir: str | os.PathLike) -> tuple[StageSpec, nn.Module]:
    """Rebuild a folder's model in eval mode on the CPU; the spec says how to feed it."""
    from cascade.models import create_model, load_state_dict

    folder = Path(model_dir)
    ckpt = load_checkpoint(folder / BEST_NAME)
    spec = stage_spec_from(folder, ckpt)
    model = create_model(spec.arch, spec.num_classes)
    load_state_dict(model, ckpt["state_dict"], spec.arch)
    return spec, model.eval()


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    arch: str,
    classes: tuple[str, ...] | list[str],
    resolution: int,
    epoch: int,
    accuracy: float,
    loss: float,
    optimizer: dict | None = None,
    preprocess: str | None = None,
) -> None:
    """Write a jetson-inference checkpoint dict (loadable by its onnx_export.py and by :func:`load_stage`).

    ``epoch`` is upstream's: the 0-based index of the last epoch trained (its ``--resume`` starts at ``epoch + 1``).
    ``preprocess`` (the resize mode trained with) is stored as an extra key when given.
    """
    state = {
        "epoch": int(epoch),
        "arch": arch,
        "resolution": int(resolution),
        "classes": list(classes),
        "num_classes": len(classes),
        "multi_label": False,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "accuracy": float(accuracy),
        "loss": float(loss),
        "optimizer": optimizer,
    }
    if preprocess is not None:
        state["preprocess"] = preprocess
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)
