"""``python -m engines``: every command that runs or builds the stage models.

``export`` / ``build`` make a model folder's ONNX file and TensorRT engine; ``predict`` classifies files and folders
into a CSV; ``evaluate`` scores the cascade and each stage on a labelled folder; ``precompute`` runs both stages over a
whole dataset on Ray into a Parquet table the dashboard reads. Exit codes: 0 done, 1 some input files
could not be read (each has its row and reason), 2 a bad command line, config, model folder or output (nothing
written).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from cascade.calibration import calibration_summary
from cascade.cli import SOME_FILES_FAILED, CliParser, positive_int, report_unreadable, run_cli
from cascade.config import DEFAULT_CONFIG
from cascade.dataset import iter_image_files
from cascade.errors import CascadeError
from cascade.fileio import check_output_path, write_atomic
from cascade.images import read_image
from cascade.metadata import metadata_lines
from cascade.predcache import iter_predictions
from engines.calibrate import add_parser as add_calibrate_parser
from engines.export import DEFAULT_OPSET, JETSON_OPSET, export_onnx
from engines.precompute import DEFAULT_OBJECT_STORE_MB, cmd_precompute
from engines.select import BACKEND_KINDS, open_cascade
from engines.trt_build import DEFAULT_MAX_BATCH, DEFAULT_WORKSPACE_MB, PRECISIONS


def cmd_export(args: argparse.Namespace) -> int:
    result = export_onnx(args.model_dir, opset=args.opset, verify=not args.no_verify, jetson=args.jetson)
    parity = "not checked" if result.max_abs_diff is None else f"max |Δ| vs PyTorch {result.max_abs_diff:.1e}"
    if args.jetson:
        outputs = "for jetson-inference's imageNet: input_0 1×3×R×R → output_0 softmax, batch 1"
    elif result.has_cams:
        outputs = "output_0 + cam_0 (fast CAM)"
    else:
        outputs = "output_0 only (no GAP+Linear head: no fast CAM)"
    print(f"wrote {result.path} ({outputs}; opset {result.opset}; {parity}; {result.seconds:.1f} s)")
    if args.jetson:
        folder = result.path.parent
        print(
            f"on the Jetson: imagenet --model={folder}/{result.path.name} --labels={folder}/labels.txt "
            "--input_blob=input_0 --output_blob=output_0 IMAGE"
        )
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from engines.trt_build import build_stage_engine

    def progress(message: str, fraction: float) -> None:
        print(f"[{100 * fraction:3.0f}%] {message}", file=sys.stderr)

    a = args
    result = build_stage_engine(a.model_dir, a.precision, progress, a.max_batch, a.workspace_mb, a.verbose)
    print(f"wrote {result.path} ({result.manifest['effective_precision']}, {result.seconds:.1f} s)")
    return 0


def _open(args: argparse.Namespace):
    cascade = open_cascade(args.config, args.backend)
    for stage in (1, 2):
        print(f"stage {stage}: {cascade.backend(stage).describe()} — {cascade.reasons[stage]}", file=sys.stderr)
    return cascade


def _fmt(x: float) -> str:
    return "" if np.isnan(x) else f"{x:.6f}"


def cmd_predict(args: argparse.Namespace) -> int:
    files = list(iter_image_files(args.paths))
    if not files:
        raise CascadeError(f"no image files found in {' '.join(args.paths)}")
    out = check_output_path(args.out, "the CSV file")
    cascade = _open(args)  # a bad config or model fails here, before anything is written
    classes = cascade.classes
    header = [
        "path",
        *(f"stage1_{c}" for c in classes),
        *(f"stage2_{c}" for c in classes),
        "gate_margin",
        "stage2_ran",
        "label",
        "decided_by",
        "error",
    ]
    rows: list[list] = [[] for _ in files]
    with tqdm(total=len(files), unit="img", disable=args.quiet) as bar:
        for batch in iter_predictions(cascade, files, read_image, args.batch_size, args.stage2_always):
            for i, why in batch.failed:
                rows[i] = [files[i], *[""] * (2 * len(classes) + 4), why]
            for i, a, b in zip(batch.ok, batch.p1, batch.p2, strict=True):
                d = cascade.decide(a, b)
                decision = [f"{d.margin:.6f}", int(d.stage2_ran), d.label, d.decided_by, ""]
                rows[i] = [files[i], *map(_fmt, a), *map(_fmt, b), *decision]
            bar.update(batch.done - bar.n)
    failed = sum(1 for r in rows if r[-1])
    buf = _csv_text([header, *rows])
    write_atomic(out, buf)
    print(f"wrote {len(files)} rows to {out} ({failed} failed)", file=sys.stderr)
    return SOME_FILES_FAILED if failed else 0


def _csv_text(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cascade.evaluate import evaluate_cascade

    if args.out:
        check_output_path(args.out, "the JSON file")  # before minutes of predictions, not after
    cascade = _open(args)
    with tqdm(unit="img", disable=args.quiet) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = evaluate_cascade(cascade, args.data, args.batch_size, progress, args.metadata)
    text = json.dumps(report, indent=2)
    if args.out:
        write_atomic(args.out, text + "\n")
    print(text)
    for name in ("stage1", "stage2", "cascade"):
        r = report[name]
        print(
            f"{name:8s} accuracy {r['accuracy']:.3f}  macro F1 {r['macro_f1']:.3f}  "
            f"abnormal sensitivity {r['abnormal_sensitivity']:.3f}",
            file=sys.stderr,
        )
    if report["calibration"] is not None:
        print(calibration_summary(report["calibration"]), file=sys.stderr)
    if report["metadata"] is not None:
        print(metadata_lines(report["metadata"]), file=sys.stderr)
    return report_unreadable([(row["path"], row["error"]) for row in report["unreadable"]], "scored")


def get_args_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="python -m engines", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "export", help="write <arch>.cascade.onnx (input_0 → output_0 [+ cam_0]), or with --jetson <arch>.onnx"
    )
    p.add_argument("model_dir", help="jetson-inference model folder with model_best.pth.tar and labels.txt")
    p.add_argument(
        "--jetson",
        action="store_true",
        help="write <arch>.onnx for jetson-inference's imageNet instead (batch 1, output_0 only, weights inside)",
    )
    p.add_argument(
        "--opset", type=int, default=None, help=f"ONNX opset (default: {DEFAULT_OPSET}; {JETSON_OPSET} with --jetson)"
    )
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch parity check")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("build", help="build a TensorRT engine for this GPU next to the ONNX file (GPU hosts)")
    p.add_argument("model_dir", help="model folder (its ONNX is exported first if missing or stale)")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="default: fp16 where the GPU has fast FP16")
    p.add_argument("--workspace-mb", type=positive_int, default=DEFAULT_WORKSPACE_MB, help="builder workspace (MiB)")
    p.add_argument("--max-batch", type=positive_int, default=DEFAULT_MAX_BATCH, help="largest batch of the profile")
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    p.set_defaults(func=cmd_build)

    def models(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=str(DEFAULT_CONFIG), help="cascade config (default: %(default)s)")
        p.add_argument("--backend", default="auto", choices=BACKEND_KINDS, help="inference backend")
        p.add_argument("--batch-size", type=positive_int, default=16)
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("predict", help="classify images or folders (recursive) and write a CSV")
    p.add_argument("paths", nargs="+", help="image files and/or folders")
    p.add_argument("--out", default="preds.csv", help="CSV to write (default: %(default)s)")
    p.add_argument("--stage2-always", action="store_true", help="run stage 2 on every image, not only routed ones")
    models(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="metrics of the cascade and of each stage on an ImageFolder folder")
    p.add_argument("data", help="ImageFolder folder, e.g. sample_images/test")
    p.add_argument("--out", default=None, help="also write the JSON report here")
    p.add_argument("--metadata", default=None, help="metadata CSV (default: the dataset's manifest.csv, if any)")
    models(p)
    p.set_defaults(func=cmd_evaluate)

    add_calibrate_parser(sub, models)

    p = sub.add_parser("precompute", help="both stages on every image of a dataset, on Ray, into a Parquet table")
    p.add_argument("data", help="dataset folder (ImageFolder tree, or any folder of images)")
    p.add_argument("--out", required=True, help="Parquet file to write (resumed if it exists), e.g. preds.parquet")
    p.add_argument("--ray-address", default=None, help="Ray cluster to run on (e.g. ray://head:10001); default: here")
    p.add_argument("--num-workers", type=positive_int, default=1, help="model actors, each with both stages")
    p.add_argument(
        "--object-store-mb", type=positive_int, default=DEFAULT_OBJECT_STORE_MB, help="a local Ray's object store (MiB)"
    )
    models(p)
    p.set_defaults(func=cmd_precompute)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    return run_cli(get_args_parser(), argv)
