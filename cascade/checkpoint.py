"""Model folders in jetson-inference's layout, read and written unchanged.

A folder holds ``model_best.pth.tar`` (a dict: epoch, arch, resolution, classes, num_classes, multi_label, state_dict,
accuracy, loss, optimizer), ``labels.txt`` (one label per line, sorted folder order) and, once exported,
``<arch>.onnx``. The checkpoint carries its model arguments (as nanoGPT's does), so a folder alone rebuilds its model.
Checkpoints are only ever read with ``weights_only=True``: one that needs code to unpickle is refused, and nothing in it
runs.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cascade.errors import CheckpointError
from cascade.fileio import atomic_path
from cascade.models import create_model, load_state_dict
from cascade.preprocess import DEFAULT_RESOLUTION

CHECKPOINT_NAME = "checkpoint.pth.tar"
BEST_NAME = "model_best.pth.tar"
LABELS_NAME = "labels.txt"
_REQUIRED_KEYS = ("arch", "state_dict")


@dataclass(frozen=True)
class StageSpec:
    """What a stage is, independent of how it runs: architecture, classes, input size and where it lives."""

    arch: str
    classes: tuple[str, ...]
    resolution: int
    model_dir: Path

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
        return self.model_dir / f"{self.arch}.onnx"


def read_labels(path: str | os.PathLike) -> tuple[str, ...]:
    """Labels from ``labels.txt``: one per line, blank lines ignored."""
    p = Path(path)
    try:
        labels = tuple(line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip())
    except OSError as exc:
        raise CheckpointError(f"cannot read labels file '{p}': {exc.strerror or exc}") from exc
    if len(labels) < 2:
        raise CheckpointError(f"'{p}' lists {len(labels)} label(s); a classifier needs at least 2")
    return labels


def write_labels(path: str | os.PathLike, classes: tuple[str, ...] | list[str]) -> None:
    Path(path).write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint dict safely (tensors and plain containers only)."""
    p = Path(path)
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
        raise CheckpointError(f"model folder '{folder}' does not exist")
    ckpt = load_checkpoint(folder / BEST_NAME) if ckpt is None else ckpt
    labels_path = folder / LABELS_NAME
    classes = read_labels(labels_path) if labels_path.exists() else tuple(ckpt.get("classes") or ())
    if not classes:
        raise CheckpointError(f"'{folder}' has no labels.txt and its checkpoint lists no classes")
    num = int(ckpt.get("num_classes", len(classes)))
    if num != len(classes):
        raise CheckpointError(f"'{folder}': labels.txt has {len(classes)} labels but the checkpoint {num} classes")
    return StageSpec(str(ckpt["arch"]), classes, int(ckpt.get("resolution", DEFAULT_RESOLUTION)), folder)


def load_stage(model_dir: str | os.PathLike) -> tuple[StageSpec, nn.Module]:
    """Rebuild a folder's model in eval mode on the CPU; the spec says how to feed it."""
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
) -> None:
    """Write a jetson-inference checkpoint dict (loadable by its onnx_export.py and by :func:`load_stage`)."""
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
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
