"""ONNX export of a stage, with the exact fast-CAM output, stamped so a stale export is noticed and redone.

The file is ``<arch>.onnx`` in the model folder with jetson-inference's names: input ``input_0`` (N×3×R×R, dynamic
batch) and output ``output_0`` (softmax probabilities), so jetson-inference's imageNet loads it too. For a global
average pool + Linear head it has a second output ``cam_0`` (N×C×h×w, every class), computed in the same forward pass
by :class:`cascade.explain.CamModel` (Grad-CAM at the last post-activation feature map, up to a positive scale).

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

import numpy as np
import torch
from torch import nn

from cascade.checkpoint import StageSpec, load_stage
from cascade.errors import BackendError
from cascade.fastcam import CamModel, fast_cam_supported
from cascade.fileio import atomic_path, file_sha256
from engines.onnx_file import (
    CAMS_NAME,
    EXPORTER_KEY,
    INPUT_NAME,
    PROBS_NAME,
    OnnxInfo,
    check_matches_spec,
    find_onnx,
    read_onnx_info,
)

DEFAULT_OPSET = 17  # read by onnxruntime 1.31 and by TensorRT 10 and 11's ONNX parsers
EXPORTER = "knee-cascade engines.export"
#: bump when the exported graph changes, so that older exports count as stale and are redone
EXPORTER_VERSION = "1"
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


def _lock_for(path: Path) -> threading.Lock:
    with _path_locks_guard:
        return _path_locks.setdefault(path.resolve(), threading.Lock())


def export_module(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """What gets exported: CamModel (probabilities + CAMs) where the head allows it, else model + Softmax."""
    if fast_cam_supported(model):
        return CamModel(model).eval(), [PROBS_NAME, CAMS_NAME]
    return nn.Sequential(model, nn.Softmax(dim=1)).eval(), [PROBS_NAME]


def export_metadata(spec: StageSpec, source_sha256: str, opset: int, has_cams: bool) -> dict[str, str]:
    """The stamp written into ``metadata_props``: enough to tell whether the export still matches its checkpoint."""
    return {
        EXPORTER_KEY: EXPORTER,
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


def _torch_export(module: nn.Module, outputs: list[str], resolution: int, opset: int, dest: Path) -> None:
    dummy = torch.zeros(1, 3, resolution, resolution)
    dynamic = {name: {0: "N"} for name in [INPUT_NAME, *outputs]}
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


def _verify(module: nn.Module, path: Path, spec: StageSpec) -> float | None:
    """ONNX Runtime vs PyTorch on a random batch of two; None when onnxruntime is not installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    batch = np.random.default_rng(0).standard_normal((2, 3, spec.resolution, spec.resolution)).astype(np.float32)
    diff = parity(module, path, batch)
    if diff > PARITY_TOLERANCE:
        raise ExportError(
            f"the ONNX export of {spec.model_dir} differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE}); "
            "try another --opset"
        )
    return diff


def export_onnx(model_dir: str | os.PathLike, opset: int = DEFAULT_OPSET, verify: bool = True) -> ExportResult:
    """Export a model folder's checkpoint to ``<arch>.onnx`` beside it (atomically) and check the result.

    ``verify`` compares ONNX Runtime's outputs with PyTorch's on a random batch of two (which also exercises the
    dynamic batch) and refuses a file that differs by more than 1e-4.
    """
    start = time.perf_counter()
    spec, model = load_stage(model_dir)
    dest = spec.onnx_path
    module, outputs = export_module(model)
    meta = export_metadata(spec, file_sha256(spec.checkpoint_path), opset, CAMS_NAME in outputs)
    diff = None
    with _lock_for(dest):
        try:
            with atomic_path(dest) as tmp:
                _torch_export(module, outputs, spec.resolution, opset, tmp)
                _stamp(tmp, meta)
                if verify:
                    diff = _verify(module, tmp, spec)
        except ExportError:
            raise
        except OSError as exc:
            raise ExportError(f"cannot write {dest} ({exc.strerror or exc}); is the model folder writable?") from exc
        except Exception as exc:  # torch.onnx and onnx.checker raise many types; all mean "no usable export"
            raise ExportError(
                f"ONNX export of {spec.arch} in {spec.model_dir} failed: {type(exc).__name__}: {exc}"
            ) from exc
    return ExportResult(dest, CAMS_NAME in outputs, time.perf_counter() - start, diff)


def export_probabilities_only(
    model: nn.Module, resolution: int, dest: str | os.PathLike, opset: int = DEFAULT_OPSET
) -> Path:
    """A plain export as jetson-inference makes it (model + Softmax, no ``cam_0``): the benchmark's baseline."""
    out = Path(dest)
    try:
        _torch_export(nn.Sequential(model, nn.Softmax(dim=1)).eval(), [PROBS_NAME], resolution, opset, out)
    except Exception as exc:
        raise ExportError(f"plain ONNX export failed: {type(exc).__name__}: {exc}") from exc
    return out


def stale_reason(info: OnnxInfo, spec: StageSpec) -> str | None:
    """Why one of our exports no longer matches its folder (None: it does). jetson-inference files are never stale."""
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
    """The folder's ONNX file, exported first if missing or stale; and a note saying which happened.

    A file that cannot be parsed raises BackendError rather than being overwritten: it may be someone's only copy.
    """
    path = find_onnx(spec.model_dir, spec.arch)
    if path is None:
        if not spec.checkpoint_path.is_file():
            raise BackendError(f"'{spec.model_dir}' has no ONNX file and no checkpoint to export one from")
        export_onnx(spec.model_dir, opset)
        return read_onnx_info(spec.onnx_path), f"exported {spec.onnx_path.name} (there was none)"
    info = read_onnx_info(path)
    reason = stale_reason(info, spec)
    if reason is not None and spec.checkpoint_path.is_file():
        export_onnx(spec.model_dir, opset)
        return read_onnx_info(spec.onnx_path), f"re-exported {spec.onnx_path.name}: {reason}"
    check_matches_spec(info, spec)
    if reason is not None:
        return info, f"{path.name} used as it is ({reason}, and there is no checkpoint to export again)"
    if not info.ours:
        return info, f"{path.name} from jetson-inference, used as it is"
    return info, f"{path.name} up to date"
