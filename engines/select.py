"""Choosing a backend for a stage, and opening a whole cascade from its config, with the reason for each choice."""

from __future__ import annotations

import os
from pathlib import Path

from cascade.checkpoint import load_stage
from cascade.config import CascadeConfig, load_config
from cascade.pipeline import Cascade
from engines.backend import Backend, BackendError, TorchBackend

BACKEND_KINDS = ("auto", "tensorrt", "onnx", "torch")


def make_backend(model_dir: str | os.PathLike, kind: str = "auto") -> tuple[Backend, str]:
    """A backend for one model folder and a sentence saying why it was chosen."""
    if kind not in BACKEND_KINDS:
        raise BackendError(f"unknown backend '{kind}'; choose one of {', '.join(BACKEND_KINDS)}")
    if kind in ("tensorrt", "onnx"):
        raise BackendError(f"the {kind} backend is not available in this build yet")
    spec, model = load_stage(Path(model_dir))
    reason = "requested" if kind == "torch" else "PyTorch eager on the CPU (the only backend available)"
    return TorchBackend(spec, model), reason


def open_cascade(config: CascadeConfig | str | os.PathLike | None = None, backend: str = "auto") -> Cascade:
    """Load both stages of a cascade config with the chosen backend kind."""
    cfg = config if isinstance(config, CascadeConfig) else load_config(config)
    b1, why1 = make_backend(cfg.stage1_dir, backend)
    b2, why2 = make_backend(cfg.stage2_dir, backend)
    return Cascade(b1, b2, cfg.threshold, cfg.rule, cfg.normal_label, reasons={1: why1, 2: why2})
