"""What an ONNX file in a model folder says about itself: inputs, outputs, our export stamp, and the stage it serves.

Both our exports and jetson-inference's are read here. Ours carry ``metadata_props`` (see ``engines.export``); a
jetson-inference file carries none: ``input_0`` N×3×R×R (often a fixed batch of 1) and ``output_0`` softmax
probabilities, with no ``cam_0``; it is used only once verified against the checkpoint (``engines.identity``).

File names keep the two apart: ``<arch>.onnx`` is jetson-inference's (written by its ``onnx_export.py`` or by
``python -m engines export --jetson``), ``<arch>.cascade.onnx`` this project's own (dynamic batch, ``cam_0``), which
automatic exports write, so they never overwrite or stand in for a file a Jetson loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cascade.checkpoint import (
    BEST_NAME,
    LABELS_NAME,
    PREPROCESS_NAME,
    StageSpec,
    read_labels,
    read_preprocess,
    stage_spec_from,
)
from cascade.errors import BackendError
from cascade.preprocess import DEFAULT_MODE, check_mode

INPUT_NAME = "input_0"
PROBS_NAME = "output_0"
CAMS_NAME = "cam_0"
#: metadata_props key that marks a file as exported by this project
EXPORTER_KEY = "exporter"
#: metadata_props key saying which of our two exports a file is
FORMAT_KEY = "format"
CASCADE_FORMAT, JETSON_FORMAT = "cascade", "jetson"
CASCADE_SUFFIX = ".cascade.onnx"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | str, ...]  # symbolic dimensions by name ("N"), fixed ones as ints
    elem_type: int  # onnx.TensorProto data type (1 = float32)


@dataclass(frozen=True)
class OnnxInfo:
    path: Path
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    opset: int = 0
    probs_from_softmax: bool = True  # False: output_0 is logits (an old export), so the backend applies softmax

    @property
    def ours(self) -> bool:
        """Exported by ``engines.export`` (so it can be checked for staleness), rather than by jetson-inference."""
        return EXPORTER_KEY in self.metadata

    @property
    def jetson_layout(self) -> bool:
        """A file for jetson-inference's imageNet: its own export, or ours made with ``--jetson``."""
        return not self.ours or self.metadata.get(FORMAT_KEY) == JETSON_FORMAT

    @property
    def input(self) -> TensorInfo:
        return next((t for t in self.inputs if t.name == INPUT_NAME), self.inputs[0])

    @property
    def probs(self) -> TensorInfo:
        return next((t for t in self.outputs if t.name == PROBS_NAME), self.outputs[0])

    @property
    def cams(self) -> TensorInfo | None:
        return next((t for t in self.outputs if t.name == CAMS_NAME), None)

    @property
    def resolution(self) -> int | None:
        shape = self.input.shape
        return shape[-1] if len(shape) == 4 and isinstance(shape[-1], int) else None

    @property
    def fixed_batch(self) -> int | None:
        first = self.input.shape[0] if self.input.shape else None
        return first if isinstance(first, int) and first > 0 else None


def _tensor_info(value) -> TensorInfo:
    dims = value.type.tensor_type.shape.dim
    shape = tuple(d.dim_param if d.dim_param else (d.dim_value if d.dim_value > 0 else "?") for d in dims)
    return TensorInfo(value.name, shape, value.type.tensor_type.elem_type)


def read_onnx_info(path: str | os.PathLike) -> OnnxInfo:
    """Parse an ONNX file's interface and stamp (nothing is run); BackendError if it is missing or unreadable."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise BackendError(f"ONNX file '{p}' does not exist; run `python -m engines export {p.parent}`")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError… for a damaged file
        raise BackendError(
            f"'{p}' is not a readable ONNX model ({type(exc).__name__}: {exc}); delete it and re-export with "
            f"`python -m engines export {p.parent}`"
        ) from exc
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = tuple(_tensor_info(v) for v in graph.input if v.name not in initializers)
    outputs = tuple(_tensor_info(v) for v in graph.output)
    if not inputs or not outputs:
        raise BackendError(f"'{p}' has no graph inputs or outputs; it is not a classifier export")
    probs_name = next((o.name for o in outputs if o.name == PROBS_NAME), outputs[0].name)
    producer = next((n for n in graph.node if probs_name in n.output), None)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxInfo(
        path=p,
        inputs=inputs,
        outputs=outputs,
        metadata={prop.key: prop.value for prop in model.metadata_props},
        opset=int(opset),
        probs_from_softmax=producer is not None and producer.op_type == "Softmax",
    )


def onnx_files(model_dir: str | os.PathLike, arch: str | None = None) -> tuple[Path | None, Path | None]:
    """(this project's ``<arch>.cascade.onnx``, jetson-inference's ``<arch>.onnx``) where present.

    Without ``<arch>`` names, the folder's only file of each kind counts (an engine-only folder, or jetson's file
    saved under another name).
    """
    folder = Path(model_dir)
    visible = sorted(p for p in folder.glob("*.onnx") if not p.name.startswith(".") and p.is_file())
    ours_all = [p for p in visible if p.name.endswith(CASCADE_SUFFIX)]
    jetson_all = [p for p in visible if not p.name.endswith(CASCADE_SUFFIX)]

    def pick(named: Path | None, found: list[Path]) -> Path | None:
        if named is not None and named.is_file():
            return named
        return found[0] if len(found) == 1 else None

    ours = pick(folder / f"{arch}{CASCADE_SUFFIX}" if arch else None, ours_all)
    jetson = pick(folder / f"{arch}.onnx" if arch else None, jetson_all)
    return ours, jetson


def find_onnx(model_dir: str | os.PathLike, arch: str | None = None) -> Path | None:
    """The ONNX file a stage runs: ours (``.cascade.onnx``) where present, else jetson-inference's, else None."""
    ours, jetson = onnx_files(model_dir, arch)
    return ours or jetson


def folder_spec(model_dir: str | os.PathLike) -> StageSpec:
    """The stage spec of a folder: from its checkpoint, or (an engine-only folder) from its ONNX and labels.txt."""
    folder = Path(model_dir)
    if (folder / BEST_NAME).is_file() or not folder.is_dir():
        return stage_spec_from(folder)  # raises CheckpointError with the usual messages
    onnx_path = find_onnx(folder)
    if onnx_path is None:
        raise BackendError(f"'{folder}' has neither {BEST_NAME} nor exactly one .onnx file; it is not a model folder")
    info = read_onnx_info(onnx_path)
    if not (folder / LABELS_NAME).is_file():
        raise BackendError(f"'{folder}' has {onnx_path.name} but no {LABELS_NAME} to name its classes")
    classes = read_labels(folder / LABELS_NAME)
    if info.resolution is None:
        raise BackendError(f"'{onnx_path}' has no fixed input resolution ({info.input.shape}); cannot feed it")
    arch = info.metadata.get("arch") or onnx_path.name.removesuffix(CASCADE_SUFFIX).removesuffix(".onnx")
    preprocess = read_preprocess(folder) if (folder / PREPROCESS_NAME).is_file() else info.metadata.get("preprocess")
    return StageSpec(arch, classes, int(info.resolution), folder, check_mode(preprocess or DEFAULT_MODE))


def check_matches_spec(info: OnnxInfo, spec: StageSpec) -> None:
    """Refuse an ONNX file that does not fit the stage (other resolution or class count): its answers would be wrong."""
    if info.resolution is not None and info.resolution != spec.resolution:
        raise BackendError(
            f"'{info.path}' takes {info.resolution}px input but the checkpoint says {spec.resolution}px; "
            f"re-export it with `python -m engines export {spec.model_dir}`"
        )
    classes = info.probs.shape[-1] if info.probs.shape else None
    if isinstance(classes, int) and classes != spec.num_classes:
        jetson = " --jetson" if info.jetson_layout else ""
        raise BackendError(
            f"'{info.path}' outputs {classes} classes but labels.txt lists {spec.num_classes}; "
            f"re-export it with `python -m engines export {spec.model_dir}{jetson}`"
        )
