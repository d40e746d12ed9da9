"""``python -m engines export|build MODEL_DIR``: ONNX exports and TensorRT engines for jetson-inference model folders.

Expected failures (a bad folder, no TensorRT, no GPU, a parser error) print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cascade.errors import CascadeError, run_cli_command
from engines.calibrate import add_parser as add_calibrate_parser
from engines.export import DEFAULT_OPSET, export_onnx
from engines.trt_build import DEFAULT_MAX_BATCH, DEFAULT_WORKSPACE_MB, PRECISIONS


def cmd_export(args: argparse.Namespace) -> int:
    result = export_onnx(args.model_dir, opset=args.opset, verify=not args.no_verify)
    outputs = "output_0 + cam_0 (fast CAM)" if result.has_cams else "output_0 only (no GAP+Linear head: no fast CAM)"
    parity = "not checked" if result.max_abs_diff is None else f"max |Δ| vs PyTorch {result.max_abs_diff:.1e}"
    print(f"wrote {result.path} ({outputs}; opset {args.opset}; {parity}; {result.seconds:.1f} s)")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from engines.engine_cache import EngineTarget
    from engines.export import ensure_onnx
    from engines.hardware import detect_gpu
    from engines.onnx_file import folder_spec
    from engines.trt_build import build_engine, default_precision, import_tensorrt

    trt = import_tensorrt()
    gpu = detect_gpu()  # checked before TensorRT's runtime is touched: it crashes where there is no GPU
    if gpu is None:
        raise CascadeError("no CUDA GPU found: TensorRT engines can only be built on the GPU that will run them")
    info, note = ensure_onnx(folder_spec(args.model_dir))
    print(note, file=sys.stderr)
    target = EngineTarget(str(trt.__version__), gpu, args.precision or default_precision(gpu))
    result = build_engine(info.path, info, target, args.max_batch, args.workspace_mb, trt, args.verbose)
    print(f"wrote {result.path} ({result.manifest['effective_precision']}, {result.seconds:.1f} s)")
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engines", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="write <arch>.onnx (input_0 → output_0 [+ cam_0]) into the model folder")
    p.add_argument("model_dir", help="jetson-inference model folder with model_best.pth.tar and labels.txt")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch parity check")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("build", help="build a TensorRT engine for this GPU next to the ONNX file (GPU hosts)")
    p.add_argument("model_dir", help="model folder (its ONNX is exported first if missing or stale)")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="default: fp16 where the GPU has fast FP16")
    p.add_argument("--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB, help="builder workspace (MiB)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="largest batch of the profile")
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    p.set_defaults(func=cmd_build)

    add_calibrate_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if min(getattr(args, name, 1) for name in ("max_batch", "workspace_mb", "batch_size", "bins")) < 1:
        print("error: --max-batch, --workspace-mb, --batch-size and --bins must be at least 1", file=sys.stderr)
        return 2
    return run_cli_command(args.func, args)
