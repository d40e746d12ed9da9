"""``python -m engines.bench``: every backend on this machine, per stage, and what heatmaps cost, in one run.

Measured for each backend and stage: latency at batch 1 (median, min–max) and throughput at batch 16. Then, for one
image through both stages, probabilities and CAMs three ways:

- plain: two ONNX Runtime forwards of plain exports (probabilities only, no ``cam_0``), as jetson-inference makes them;
- (a) fast CAM: the engine's own ``cam_0`` (every class) from the same forward pass as the probabilities;
- (b) PyTorch eager + pytorch-grad-cam GradCAM at the same layer (one forward and one backward per stage; the top
  class's map only, the cheapest thing such a tool can do).

Targets: (a) ≤ 1.3× plain, and (b) ≥ 4× (a). The three run in alternating blocks of consecutive calls, so background
load on a shared machine hits all three alike while no timed call follows another method's (whose idle threads may
still hold the cores). The report is a markdown table to paste into the README.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cascade.backend import Backend
from cascade.checkpoint import StageSpec, load_stage
from cascade.cli import CliParser, positive_int, run_cli
from cascade.config import DEFAULT_CONFIG, load_config
from cascade.errors import BackendError
from cascade.fileio import write_atomic
from cascade.preprocess import preprocess_batch
from engines.hardware import cpu_model, detect_gpu, physical_cores, usable_cpus
from engines.select import BACKEND_KINDS

PLAIN_TARGET = 1.3
GRADCAM_TARGET = 4.0


@dataclass(frozen=True)
class Timing:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        return cls(statistics.median(seconds), min(seconds), max(seconds))


@dataclass(frozen=True)
class StageRow:
    backend: str
    stage: str
    latency: Timing  # batch 1, seconds
    throughput: float  # images per second at the throughput batch


@dataclass(frozen=True)
class CamRow:
    backend: str
    fast_cam: Timing  # (a)
    plain: Timing  # two plain ONNX Runtime forwards
    grad_cam: Timing  # (b)

    @property
    def overhead(self) -> float:
        return self.fast_cam.median / self.plain.median

    @property
    def speedup(self) -> float:
        return self.grad_cam.median / self.fast_cam.median


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def time_blocks(calls: dict[str, Callable[[], object]], rounds: int, per_block: int) -> dict[str, list[float]]:
    """Per method, ``rounds × per_block`` timings taken in blocks; each block starts with one untimed call."""
    times: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, fn in calls.items():
            fn()
            times[key] += time_calls(fn, per_block, warmup=0)
    return times


def sample_image(size: int = 256) -> np.ndarray:
    """A knee phantom when sample_images' renderer is there, else a smooth synthetic radiograph-like image."""
    try:
        from sample_images.generate import render_knee

        return render_knee(np.random.default_rng(0), 0.6, size=size)
    except ImportError:
        yy, xx = np.mgrid[0:size, 0:size] / size
        return (80 + 120 * np.exp(-((xx - 0.5) ** 2) / 0.02) * (0.6 + 0.4 * yy)).astype(np.uint8)


def machine_description() -> str:
    import onnxruntime
    import torch

    gpu = detect_gpu()
    parts = [
        f"{cpu_model()}, {physical_cores()} physical cores ({usable_cpus()} usable)",
        f"torch {torch.__version__}",
        f"onnxruntime {onnxruntime.__version__}",
        f"GPU: {gpu.name} (sm {gpu.compute_capability[0]}.{gpu.compute_capability[1]})" if gpu else "no GPU",
    ]
    try:
        import tensorrt

        parts.append(f"TensorRT {tensorrt.__version__}")
    except (ImportError, OSError):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    parts.append(f"load average {load:.1f} at the start")
    return "; ".join(parts)


def open_backends(model_dir: Path, kinds: Sequence[str]) -> tuple[dict[str, Backend], list[str]]:
    from engines.select import make_backend

    backends, skipped = {}, []
    for kind in kinds:
        try:
            backend, _ = make_backend(model_dir, kind)
        except BackendError as exc:
            skipped.append(f"{kind}: {exc}")
            continue
        backends[backend.name] = backend
    return backends, skipped


def stage_rows(stage: str, backends: dict[str, Backend], images: list, repeats: int, batch: int) -> list[StageRow]:
    rows = []
    for name, backend in backends.items():
        one = preprocess_batch(images[:1], backend.spec.resolution, backend.spec.preprocess)
        many = preprocess_batch((images * batch)[:batch], backend.spec.resolution, backend.spec.preprocess)
        latency = Timing.of(time_calls(lambda b=backend, x=one: b.predict(x), repeats))
        per_batch = statistics.median(time_calls(lambda b=backend, x=many: b.predict(x), max(1, repeats // 6), 1))
        rows.append(StageRow(name, stage, latency, batch / per_batch))
    return rows


class GradCamStage:
    """(b): PyTorch eager + pytorch-grad-cam GradCAM at the layer fast CAM uses, top class, probabilities too."""

    def __init__(self, spec: StageSpec, model, device: str) -> None:
        import torch
        from pytorch_grad_cam import GradCAM

        from cascade.models import feature_layer

        self.torch = torch
        self.device = device
        self.model = model.to(device).eval()
        self.cam = GradCAM(model=self.model, target_layers=[feature_layer(self.model)])

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps = self.cam(input_tensor=self.torch.from_numpy(batch).to(self.device), targets=None)
        probs = self.torch.softmax(self.cam.outputs.detach(), dim=1).cpu().numpy()
        return probs, maps


def cam_rows(model_dirs: Sequence[Path], backends: list[dict[str, Backend]], repeats: int) -> list[CamRow]:
    """(a) vs plain vs (b) for one image through every stage, for each backend that returns CAMs."""
    import torch

    from engines.export import export_probabilities_only
    from engines.onnx_file import read_onnx_info
    from engines.ort_backend import OnnxRuntimeBackend

    image = sample_image()
    device = "cuda" if detect_gpu() is not None and torch.cuda.is_available() else "cpu"
    plain, grad, inputs = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-plain-") as scratch:
        for i, folder in enumerate(model_dirs):
            spec, model = load_stage(folder)
            path = export_probabilities_only(model, spec.resolution, Path(scratch) / f"stage{i + 1}.onnx")
            plain.append(OnnxRuntimeBackend(spec, read_onnx_info(path)))
            grad.append(GradCamStage(spec, model, device))
            inputs.append(preprocess_batch([image], spec.resolution, spec.preprocess))
        names = [n for n in backends[0] if all(n in b and b[n].supports_cams for b in backends)]
        rows = []
        for name in names:
            stages = [b[name] for b in backends]
            calls = {
                "fast": lambda s=stages: [b.predict_with_cams(x) for b, x in zip(s, inputs, strict=True)],
                "plain": lambda: [p.predict(x) for p, x in zip(plain, inputs, strict=True)],
                "grad": lambda: [g(x) for g, x in zip(grad, inputs, strict=True)],
            }
            for fn in calls.values():  # warm-up: first calls allocate and pick kernels
                fn()
            times = time_blocks(calls, rounds=3, per_block=max(1, repeats // 3))
            rows.append(CamRow(name, Timing.of(times["fast"]), Timing.of(times["plain"]), Timing.of(times["grad"])))
    return rows


def _ms(t: Timing) -> str:
    return f"{t.median * 1e3:.1f} ({t.low * 1e3:.1f}–{t.high * 1e3:.1f})"


def render_report(
    machine: str, models: str, rows: list[StageRow], cams: list[CamRow], skipped: list[str], batch: int = 16
) -> str:
    lines = [
        "### Inference benchmark (`python -m engines.bench`)",
        "",
        f"Machine: {machine}.  ",
        f"Models: {models}.",
        "",
        f"| backend | stage | batch 1 latency, ms: median (min–max) | batch {batch} throughput, images/s |",
        "|---|---|---|---|",
        *(f"| {r.backend} | {r.stage} | {_ms(r.latency)} | {r.throughput:.0f} |" for r in rows),
        "",
        "One image through both stages, probabilities and CAMs (ms: median (min–max)):",
        "",
        "| backend | plain ORT forwards, no CAMs | (a) fast CAM, all classes | (b) PyTorch + GradCAM, top class "
        "| (a) / plain | (b) / (a) |",
        "|---|---|---|---|---|---|",
    ]
    for c in cams:
        overhead, speedup = f"{c.overhead:.2f}×", f"{c.speedup:.1f}×"
        if not c.backend.startswith("torch"):  # the targets are the engines' (torch's CamModel row is for reference)
            overhead += f" {'✓' if c.overhead <= PLAIN_TARGET else '✗'} (target ≤ {PLAIN_TARGET}×)"
            speedup += f" {'✓' if c.speedup >= GRADCAM_TARGET else '✗'} (target ≥ {GRADCAM_TARGET:.0f}×)"
        lines.append(
            f"| {c.backend} | {_ms(c.plain)} | {_ms(c.fast_cam)} | {_ms(c.grad_cam)} | {overhead} | {speedup} |"
        )
    if skipped:
        lines += ["", "Backends not available here: " + "; ".join(skipped) + "."]
    return "\n".join(lines) + "\n"


def run_bench(model_dirs: Sequence[Path], kinds: Sequence[str], repeats: int = 30, batch: int = 16) -> str:
    """Benchmark the model folders (stage order) with each backend kind available; returns the markdown report."""
    machine = machine_description()
    images = [sample_image(), *(sample_image(200 + 8 * i) for i in range(3))]
    rows: list[StageRow] = []
    per_stage: list[dict[str, Backend]] = []
    skipped: list[str] = []
    for i, folder in enumerate(model_dirs):
        backends, missing = open_backends(folder, kinds)
        if not backends:
            raise BackendError(f"no backend could run {folder}: {'; '.join(missing)}")
        skipped += [m for m in missing if m not in skipped]
        per_stage.append(backends)
        spec = next(iter(backends.values())).spec
        rows += stage_rows(f"{i + 1} {spec.arch} {spec.resolution}px", backends, images, repeats, batch)
    cams = cam_rows(model_dirs, per_stage, repeats)
    models = ", ".join(f"stage {i + 1} {folder}" for i, folder in enumerate(model_dirs))
    return render_report(machine, models, rows, cams, skipped, batch)


def get_args_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="python -m engines.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="cascade config whose stages to benchmark")
    parser.add_argument("--models", nargs="+", default=None, help="model folders instead of the config's stages")
    kinds = [k for k in BACKEND_KINDS if k != "auto"]  # each backend by name: "auto" would time one of them twice
    parser.add_argument("--backends", nargs="+", choices=kinds, default=kinds)
    parser.add_argument("--repeats", type=positive_int, default=30, help="timed calls per measurement")
    parser.add_argument("--batch", type=positive_int, default=16, help="throughput batch size (default: %(default)s)")
    parser.add_argument("--out", default=None, help="also write the markdown report to this file")
    return parser


def cmd_bench(args: argparse.Namespace) -> int:
    if args.models:
        dirs = [Path(m) for m in args.models]
    else:
        cfg = load_config(args.config)
        dirs = [cfg.stage1_dir, cfg.stage2_dir]
    report = run_bench(dirs, args.backends, args.repeats, args.batch)
    print(report, end="")
    if args.out:
        write_atomic(args.out, report)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    parser.set_defaults(func=cmd_bench)
    return run_cli(parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
