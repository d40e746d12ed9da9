"""ONNX exports of a stage, stamped with the checkpoint's sha256 so a stale export is noticed.

Two exports, under two names (``engines.onnx_file``):

- ``<arch>.cascade.onnx``, this project's: input ``input_0`` (N×3×R×R, dynamic batch), output ``output_0`` (softmax
  probabilities) and, for a global average pool + Linear head, ``cam_0`` (N×C×h×w, every class), computed in the same
  forward pass by :class:`cascade.fastcam.CamModel` (Grad-CAM at the last post-activation feature map, up to a
  positive scale). Exported automatically when missing and re-exported when stale.
- ``<arch>.onnx`` with ``--jetson``: what jetson-inference's imageNet loads, as its ``onnx_export.py`` writes it:
  model + Softmax, fixed batch 1, ``input_0`` 1×3×R×R → ``output_0`` 1×C, weights inside the file. Written only
  when asked: a folder's jetson file is never replaced behind its owner's back.

We use the TorchScript ("legacy", ``dynamo=False``) exporter: for these CNNs it gives a clean graph (Conv/Relu/Pool,
one Einsum for the CAMs) with a symbolic batch dimension, in a second or two, and needs no onnxscript package, which
the torch.export-based exporter does.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cascade.checkpoint import StageSpec, load_stage
from cascade.errors import BackendError
from cascade.fileio import atomic_path, file_sha256
from engines.onnx_file import (
    CAMS_NAME,
    CASCADE_FORMAT,
    EXPORTER_KEY,
    FORMAT_KEY,
    INPUT_NAME,
    JETSON_FORMAT,
    PROBS_NAME,
    OnnxInfo,
    check_matches_spec,
    onnx_files,
    read_onnx_info,
)

if TYPE_CHECKING:  # torch is imported by the functions that export, not by those that read a stamp
    from torch import nn

DEFAULT_OPSET = 17  # read by onnxruntime 1.31 and by TensorRT 10 and 11's ONNX parsers
#: --jetson: an opset every JetPack's TensorRT (7.1 and later) parses; these CNNs need nothing newer
JETSON_OPSET = 11
EXPORTER = "knee-cascade engines.export"
#: bump when the exported graph changes, so that older exports count as stale and are redone
EXPORTER_VERSION = "2"  # 2: own file name (.cascade.onnx) and a format key
PARITY_TOLERANCE = 1e-4

_path_locks: dict[Path, threading.Lock] = {}
_path_locks_guard = threading.Lock()


class ExportError(BackendError):
    """The model could not be exported to ONNX, or the export does not reproduce PyTorch's outputs."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    has_cams: bool
    seconds: float
    max_abs_diff: float | None  # against PyTorch in ONNX Runtime; None when onnxruntime is not installed
    opset: int = DEFAULT_OPSET


def _lock_for(path: Path) -> threading.Lock:
    with _path_locks_guard:
        return _path_locks.setdefault(path.resolve(), threading.Lock())


def with_softmax(model: nn.Module) -> nn.Module:
    """Model + Softmax, as jetson-inference's ``onnx_export.py`` exports it: probabilities, no CAMs."""
    from torch import nn

    return nn.Sequential(model, nn.Softmax(dim=1)).eval()


def export_module(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """What gets exported: CamModel (probabilities + CAMs) where the head allows it, else model + Softmax."""
    from cascade.fastcam import CamModel, fast_cam_supported

    if fast_cam_supported(model):
        return CamModel(model).eval(), [PROBS_NAME, CAMS_NAME]
    return with_softmax(model), [PROBS_NAME]


def export_metadata(
    spec: StageSpec, source_sha256: str, opset: int, has_cams: bool, fmt: str = CASCADE_FORMAT
) -> dict[str, str]:
    """The stamp written into ``metadata_props``: enough to tell whether the export still matches its checkpoint."""
    import torch

    return {
        EXPORTER_KEY: EXPORTER,
        FORMAT_KEY: fmt,
        "preprocess": spec.preprocess,
        "exporter_version": EXPORTER_VERSION,
        "torch_version": torch.__version__,
        "source_checkpoint": spec.checkpoint_path.name,
        "source_sha256": source_sha256,
        "arch": spec.arch,
        "resolution": str(spec.resolution),
        "classes": "\n".join(spec.classes),
        "opset": str(opset),
        "cam_output": CAMS_NAME if has_cams else "",
    }


def _torch_export(
    module: nn.Module, outputs: list[str], resolution: int, opset: int, dest: Path, dynamic_batch: bool = True
) -> None:
    import torch

    dummy = torch.zeros(1, 3, resolution, resolution)
    dynamic = {name: {0: "N"} for name in [INPUT_NAME, *outputs]} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # "legacy exporter": chosen on purpose
        torch.onnx.export(
            module,
            (dummy,),
            str(dest),
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _stamp(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = EXPORTER
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def parity(module: nn.Module, path: Path, batch: np.ndarray) -> float:
    """Largest |Δ| between PyTorch and ONNX Runtime over every output (CAMs relative to their peak)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: batch})
    with torch.no_grad():
        want = module(torch.from_numpy(batch))
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        w = w.numpy()
        scale = max(1.0, float(np.abs(w).max()))
        worst = max(worst, float(np.abs(g - w).max()) / scale)
    return worst


def _verify(module: nn.Module, path: Path, spec: StageSpec, batch_size: int = 2) -> float | None:
    """ONNX Runtime vs PyTorch on two random images (a batch of two, or two of one); None without onnxruntime."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    batch = np.random.default_rng(0).standard_normal((2, 3, spec.resolution, spec.resolution)).astype(np.float32)
    diff = max(parity(module, path, batch[i : i + batch_size]) for i in range(0, 2, batch_size))
    if diff > PARITY_TOLERANCE:
        raise ExportError(
            f"the ONNX export of {spec.model_dir} differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE}); "
            "try another --opset"
        )
    return diff


def export_onnx(
    model_dir: str | os.PathLike, opset: int | None = None, verify: bool = True, jetson: bool = False
) -> ExportResult:
    """Export a model folder's checkpoint beside it (atomically) and check the result.

    ``jetson``: jetson-inference's ``<arch>.onnx`` (fixed batch 1, probabilities only, opset 11 by default), else
    this project's ``<arch>.cascade.onnx`` (dynamic batch, ``cam_0`` where the head allows it, opset 17).
    ``verify`` compares ONNX Runtime's outputs with PyTorch's on two random images (as a batch of two for the dynamic
    export) and refuses a file that differs by more than 1e-4.
    """
    start = time.perf_counter()
    spec, model = load_stage(model_dir)
    if jetson:
        dest, opset = spec.jetson_onnx_path, opset or JETSON_OPSET
        module, outputs = with_softmax(model), [PROBS_NAME]
    else:
        dest, opset = spec.onnx_path, opset or DEFAULT_OPSET
        module, outputs = export_module(model)
    fmt = JETSON_FORMAT if jetson else CASCADE_FORMAT
    meta = export_metadata(spec, file_sha256(spec.checkpoint_path), opset, CAMS_NAME in outputs, fmt)
    diff = None
    with _lock_for(dest):
        try:
            with atomic_path(dest) as tmp:
                _torch_export(module, outputs, spec.resolution, opset, tmp, dynamic_batch=not jetson)
                _stamp(tmp, meta)
                if verify:
                    diff = _verify(module, tmp, spec, batch_size=1 if jetson else 2)
        except ExportError:
            raise
        except OSError as exc:
            raise ExportError(f"cannot write {dest} ({exc.strerror or exc}); is the model folder writable?") from exc
        except Exception as exc:  # torch.onnx and onnx.checker raise many types; all mean "no usable export"
            raise ExportError(
                f"ONNX export of {spec.arch} in {spec.model_dir} failed: {type(exc).__name__}: {exc}"
            ) from exc
    return ExportResult(dest, CAMS_NAME in outputs, time.perf_counter() - start, diff, opset)


def export_probabilities_only(
    model: nn.Module, resolution: int, dest: str | os.PathLike, opset: int = DEFAULT_OPSET
) -> Path:
    """A plain export as jetson-inference makes it (model + Softmax, no ``cam_0``): the benchmark's baseline."""
    out = Path(dest)
    try:
        _torch_export(with_softmax(model), [PROBS_NAME], resolution, opset, out)
    except Exception as exc:
        raise ExportError(f"plain ONNX export failed: {type(exc).__name__}: {exc}") from exc
    return out


def stale_reason(info: OnnxInfo, spec: StageSpec) -> str | None:
    """Why one of our exports no longer matches its folder (None: it does).

    Only our stamped files can be judged so; jetson-inference's unstamped ones are probed (``engines.identity``).
    """
    if not info.ours:
        return None
    meta = info.metadata
    if meta.get("exporter_version") != EXPORTER_VERSION:
        return f"it was written by exporter version {meta.get('exporter_version')!r}, this is {EXPORTER_VERSION!r}"
    if spec.checkpoint_path.is_file() and meta.get("source_sha256") != file_sha256(spec.checkpoint_path):
        return f"{spec.checkpoint_path.name} changed since it was exported"
    if meta.get("arch") != spec.arch or meta.get("resolution") != str(spec.resolution):
        return f"it was exported for {meta.get('arch')} at {meta.get('resolution')}px"
    if meta.get("classes", "").split("\n") != list(spec.classes):
        return "labels.txt changed since it was exported"
    return None


def ensure_onnx(spec: StageSpec, opset: int = DEFAULT_OPSET) -> tuple[OnnxInfo, str]:
    """The ONNX file a stage runs, known to be its checkpoint's; and a note saying how that is known.

    Ours (``<arch>.cascade.onnx``) first: exported when missing, re-exported when stale. Else the folder's
    jetson-inference file, used only when its stamp matches or (unstamped) it passes the probe against the checkpoint
    (``engines.identity``); a mismatch raises OnnxIdentityError, and jetson's file is never rewritten here. A file
    that cannot be parsed raises BackendError rather than being overwritten: it may be someone's only copy.
    """
    from engines.identity import OnnxIdentityError, confirm_identity

    ours, jetson = onnx_files(spec.model_dir, spec.arch)
    has_checkpoint = spec.checkpoint_path.is_file()
    if ours is not None:
        info = read_onnx_info(ours)
        reason = stale_reason(info, spec)
        if reason is not None and has_checkpoint:
            export_onnx(spec.model_dir, opset)
            return read_onnx_info(spec.onnx_path), f"re-exported {spec.onnx_path.name}: {reason}"
        check_matches_spec(info, spec)
        if reason is not None:
            return info, f"{ours.name} used as it is ({reason}, and there is no checkpoint to export again)"
        return info, f"{ours.name} up to date"
    older = ""
    if jetson is not None:
        info = read_onnx_info(jetson)
        if info.jetson_layout:
            try:
                check_matches_spec(info, spec)
            except BackendError as exc:
                if not has_checkpoint:
                    raise
                # beside a checkpoint it cannot be that checkpoint's export: no backend may run around it (auto)
                raise OnnxIdentityError(f"{exc}; it is not this checkpoint's export, so it is not used") from None
            if not has_checkpoint:
                return info, f"{jetson.name} used as it is (the folder has no checkpoint to check it against)"
            return info, confirm_identity(info, spec, stale_reason(info, spec))
        older = f"; {jetson.name}, an older export of this project, left as it is"
    if not has_checkpoint:
        raise BackendError(f"'{spec.model_dir}' has no ONNX file and no checkpoint to export one from")
    export_onnx(spec.model_dir, opset)
    return read_onnx_info(spec.onnx_path), f"exported {spec.onnx_path.name} (there was none){older}"
