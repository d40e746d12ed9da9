"""Is this ONNX file the checkpoint's? Only then may a stage run it.

Our exports carry the checkpoint's sha256 in their stamp (``engines.export``), so the answer is a comparison.
jetson-inference's ``onnx_export.py`` stamps nothing: such a file is run once beside the checkpoint on a fixed probe
batch and accepted when every probability agrees within 1e-3 and every log-probability (above 1e-12) within 1e-2:
the probe's noise images drive the stages to near-certainty, where probabilities alone cannot tell a model from one
with scaled or shifted logits (a foreign export agreed within 1e-7), but their logarithms can. The verdict, either
way, is cached by both files' sha256 (``.cache/onnx-identity/``, never committed), so the probe runs once per pair of
files, not per start-up.
A file that fails is an :class:`OnnxIdentityError` naming it stale (older than the checkpoint) or foreign, with the
command that re-exports it; it is never used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from cascade.checkpoint import StageSpec, load_stage
from cascade.errors import BackendError
from cascade.fileio import file_sha256, write_atomic
from engines.onnx_file import OnnxInfo

IDENTITY_TOLERANCE = 1e-3
#: max |Δ log p| where p is clipped at LOG_FLOOR: the logits up to a constant, visible even when p saturates
LOG_TOLERANCE = 1e-2
LOG_FLOOR = 1e-12
PROBE_VERSION = "2"  # bump when the probe batch changes: older verdicts no longer apply
IDENTITY_CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "onnx-identity"


class OnnxIdentityError(BackendError):
    """A stage's ONNX file is not its checkpoint's export (stale or foreign); it must be re-exported, not used."""


def reexport_hint(spec: StageSpec) -> str:
    return (
        f"re-export it with `python -m engines export {spec.model_dir} --jetson` (or jetson-inference's "
        f"`python3 onnx_export.py --model-dir={spec.model_dir}`)"
    )


def _why(info: OnnxInfo, spec: StageSpec) -> str:
    older = info.path.stat().st_mtime < spec.checkpoint_path.stat().st_mtime
    return "stale (older than its checkpoint)" if older else "foreign (the export of another model)"


def probe_batch(resolution: int) -> np.ndarray:
    """The fixed inputs both files are run on: two normal-noise images (strong, varied activations)."""
    return np.random.default_rng(20240).standard_normal((2, 3, resolution, resolution)).astype(np.float32)


def probe_difference(info: OnnxInfo, spec: StageSpec) -> tuple[float, float]:
    """max |Δp| and max |Δ log p| between the ONNX file (ONNX Runtime, one image at a time: it may have a fixed batch
    of 1) and the checkpoint (PyTorch) on :func:`probe_batch`."""
    import onnxruntime as ort
    import torch

    x = probe_batch(spec.resolution)
    try:
        session = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
        got = np.concatenate([session.run([info.probs.name], {info.input.name: x[i : i + 1]})[0] for i in range(2)])
    except Exception as exc:  # onnxruntime raises its own types for graphs it cannot run
        raise OnnxIdentityError(f"'{info.path}' cannot be run to check it ({type(exc).__name__}: {exc})") from exc
    if not info.probs_from_softmax:
        got = np.exp(got - got.max(1, keepdims=True))
        got /= got.sum(1, keepdims=True)
    _, model = load_stage(spec.model_dir)
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    return float(np.abs(got - want).max()), log_difference(got, want)


def log_difference(p: np.ndarray, q: np.ndarray) -> float:
    """max |log p − log q| with both clipped at LOG_FLOOR (float32 noise in vanishing probabilities ignored)."""
    lp, lq = (np.log(np.clip(np.asarray(a, np.float64), LOG_FLOOR, 1.0)) for a in (p, q))
    return float(np.abs(lp - lq).max())


def _verdict_path(onnx_sha: str, ckpt_sha: str, cache_dir: Path) -> Path:
    key = hashlib.sha256(f"{onnx_sha}\n{ckpt_sha}\n{PROBE_VERSION}".encode()).hexdigest()[:32]
    return cache_dir / f"{key}.json"


def verified_difference(
    info: OnnxInfo, spec: StageSpec, cache_dir: Path | None = None
) -> tuple[tuple[float, float], bool]:
    """The probe's (max |Δp|, max |Δ log p|) for this pair of files, and whether it came from the cache."""
    cache_dir = IDENTITY_CACHE_DIR if cache_dir is None else cache_dir
    onnx_sha, ckpt_sha = file_sha256(info.path), file_sha256(spec.checkpoint_path)
    path = _verdict_path(onnx_sha, ckpt_sha, cache_dir)
    try:
        saved = json.loads(path.read_text())
        if saved.get("onnx_sha256") == onnx_sha and saved.get("checkpoint_sha256") == ckpt_sha:
            return (float(saved["max_abs_diff"]), float(saved["max_abs_log_diff"])), True
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no verdict yet, or an unreadable one: probe again
    diff = probe_difference(info, spec)
    record = {
        "onnx": str(info.path),
        "onnx_sha256": onnx_sha,
        "checkpoint_sha256": ckpt_sha,
        "max_abs_diff": diff[0],
        "max_abs_log_diff": diff[1],
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(record, indent=1) + "\n")
    except OSError:
        pass  # a read-only checkout: the probe simply runs again next time
    return diff, False


def confirm_identity(info: OnnxInfo, spec: StageSpec, stale: str | None, cache_dir: Path | None = None) -> str:
    """A note saying why ``info`` is this checkpoint's export, or OnnxIdentityError.

    ``stale`` is :func:`engines.export.stale_reason` for our own stamped files (None: the stamp matches).
    """
    if info.ours:
        if stale is not None:
            raise OnnxIdentityError(f"'{info.path}' is stale: {stale}. It is not used; {reexport_hint(spec)}")
        return f"{info.path.name} (exported here for jetson-inference) matches {spec.checkpoint_path.name}"
    (diff, log_diff), cached = verified_difference(info, spec, cache_dir)
    if diff > IDENTITY_TOLERANCE or log_diff > LOG_TOLERANCE:
        what = (
            f"its probabilities differ by {diff:.2g} (> {IDENTITY_TOLERANCE:g})"
            if diff > IDENTITY_TOLERANCE
            else f"its log-probabilities differ by {log_diff:.2g} (> {LOG_TOLERANCE:g})"
        )
        raise OnnxIdentityError(
            f"'{info.path}' is not {spec.checkpoint_path.name}'s export: on a probe batch {what}, "
            f"so it is {_why(info, spec)}. It is not used; {reexport_hint(spec)}"
        )
    how = "checked earlier" if cached else "checked now"
    return (
        f"{info.path.name} from jetson-inference, verified against {spec.checkpoint_path.name} "
        f"(max |Δp| {diff:.1e} on a probe batch, {how})"
    )
