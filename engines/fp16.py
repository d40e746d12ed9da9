"""Mixed-precision ONNX for TensorRT 11, which has no FP16 builder flag: the graph itself must say FP16.

onnxconverter-common's converter casts weights and activations to float16 and keeps the model's inputs and outputs
float32 (``keep_io_types``), so callers feed and read the same arrays as before. Its default block list keeps the
numerically fragile ops in float32. Softmax is deliberately not added to that list: with ``keep_io_types`` a blocked
op that feeds a graph output gets its output cast back to float16 (onnxconverter-common 1.16 behaviour), which would
change the engine's output dtype.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from cascade.errors import BackendError


def to_mixed_fp16(onnx_path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Write a float16 copy of ``onnx_path`` with float32 inputs/outputs to ``dest``."""
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise BackendError(
            "FP16 engines on TensorRT 11 need the ONNX converted to mixed precision first, which needs "
            "onnxconverter-common (pip install -r requirements-tensorrt.txt); or build with --precision fp32"
        ) from exc
    import onnx

    model = onnx.load(str(onnx_path))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will be truncated to.*")  # tiny weights rounded to fp16
            converted = float16.convert_float_to_float16(model, keep_io_types=True)
        onnx.checker.check_model(converted)
    except Exception as exc:  # noqa: BLE001  (onnx.checker.ValidationError, or the converter's own failures)
        raise BackendError(
            f"the mixed-FP16 conversion of {Path(onnx_path).name} failed ({type(exc).__name__}: {exc}); "
            "build with --precision fp32"
        ) from exc
    out = Path(dest)
    onnx.save(converted, str(out))
    return out
