"""``python -m cascade predict|evaluate``: the cascade over files and folders, from the command line.

Expected failures (an unreadable image, a bad config or model folder) print one line, never a traceback. ``predict``
writes a row for every file, failed ones with their message, and exits 1 when any file failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cascade.calibration import calibration_summary, stage_calibration
from cascade.config import DEFAULT_CONFIG
from cascade.dataset import index_dataset
from cascade.errors import CascadeError, run_cli_command
from cascade.images import is_image_file, read_image
from cascade.metrics import classification_report


def iter_inputs(paths: Sequence[str]) -> Iterator[Path]:
    """Files as given, and image files under folders (recursive, sorted)."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f))
        else:
            yield p


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _fmt(x: float) -> str:
    return "" if np.isnan(x) else f"{x:.6f}"


def cmd_predict(args: argparse.Namespace) -> int:
    from engines.select import open_cascade

    cascade = open_cascade(args.config, args.backend)
    print(f"stage 1: {cascade.backend1.describe()} — {cascade.reasons[1]}", file=sys.stderr)
    print(f"stage 2: {cascade.backend2.describe()} — {cascade.reasons[2]}", file=sys.stderr)
    files = list(iter_inputs(args.paths))
    if not files:
        raise CascadeError(f"no image files found in {args.paths}")
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
    failed = 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        out.open("w", newline="", encoding="utf-8") as fh,
        tqdm(total=len(files), unit="img", disable=args.quiet) as bar,
    ):
        writer = csv.writer(fh)
        writer.writerow(header)
        for chunk in _batches(files, args.batch_size):
            images, ok_paths = [], []
            for path in chunk:
                try:
                    images.append(read_image(path))
                    ok_paths.append(path)
                except CascadeError as exc:
                    failed += 1
                    writer.writerow([path, *[""] * (2 * len(classes) + 4), str(exc)])
            if images:
                p1, p2 = cascade.predict(images, stage2_always=args.stage2_always)
                for path, a, b in zip(ok_paths, p1, p2, strict=True):
                    d = cascade.decide(a, b)
                    writer.writerow(
                        [
                            path,
                            *map(_fmt, a),
                            *map(_fmt, b),
                            f"{d.margin:.6f}",
                            int(d.stage2_ran),
                            d.label,
                            d.decided_by,
                            "",
                        ]
                    )
            bar.update(len(chunk))
    print(f"wrote {len(files)} rows to {out} ({failed} failed)", file=sys.stderr)
    return 1 if failed else 0


def evaluate_cascade(cascade, data: str | Path, batch_size: int = 16, progress: bool = True) -> dict:
    """Metrics for the whole cascade at its gate and for each stage alone, on an ImageFolder folder."""
    index = index_dataset(data)
    lower = [c.lower() for c in cascade.classes]
    unknown = sorted({it.label for it in index.items if it.label.lower() not in lower})
    if unknown:
        raise CascadeError(f"dataset classes {unknown} are not among the models' classes {list(cascade.classes)}")
    y, p1s, p2s = [], [], []
    items = list(index.items)
    for chunk in tqdm(list(_batches(items, batch_size)), unit="batch", disable=not progress):
        p1, p2 = cascade.predict([read_image(it.path) for it in chunk], stage2_always=True)
        p1s.append(p1)
        p2s.append(p2)
        y.extend(lower.index(it.label.lower()) for it in chunk)
    from cascade.gate import decide_batch

    y_arr, p1, p2 = np.array(y), np.concatenate(p1s), np.concatenate(p2s)
    dec = decide_batch(p1, p2, cascade.normal_index, cascade.threshold, cascade.rule)
    classes, ni = cascade.classes, cascade.normal_index
    cascade_report = classification_report(y_arr, dec.final, classes, dec.scores, ni)
    cascade_report["share_to_stage2"] = float(dec.routed.mean())
    cascade_report["stage2_said_normal"] = int(((dec.final == ni) & dec.routed).sum())
    return {
        "data": str(index.root),
        "gate": {"threshold": cascade.threshold, "rule": cascade.rule.value},
        "cascade": cascade_report,
        "stage1": classification_report(y_arr, p1.argmax(1), classes, p1, ni),
        "stage2": classification_report(y_arr, p2.argmax(1), classes, p2, ni),
        "calibration": stage_calibration(y_arr, p1, p2, ni, cascade.temperatures),
    }


def cmd_evaluate(args: argparse.Namespace) -> int:
    from engines.select import open_cascade

    cascade = open_cascade(args.config, args.backend)
    report = evaluate_cascade(cascade, args.data, args.batch_size, progress=not args.quiet)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    for name in ("stage1", "stage2", "cascade"):
        r = report[name]
        print(
            f"{name:8s} accuracy {r['accuracy']:.3f}  macro F1 {r['macro_f1']:.3f}  "
            f"abnormal sensitivity {r['abnormal_sensitivity']:.3f}",
            file=sys.stderr,
        )
    print(calibration_summary(report["calibration"]), file=sys.stderr)
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    from engines.select import BACKEND_KINDS

    parser = argparse.ArgumentParser(prog="python -m cascade", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=str(DEFAULT_CONFIG), help="cascade config (default: %(default)s)")
        p.add_argument("--backend", default="auto", choices=BACKEND_KINDS, help="inference backend")
        p.add_argument("--batch-size", type=int, default=16)
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("predict", help="classify images or folders (recursive) and write a CSV")
    p.add_argument("paths", nargs="+", help="image files and/or folders")
    p.add_argument("--out", default="preds.csv", help="CSV to write (default: %(default)s)")
    p.add_argument("--stage2-always", action="store_true", help="run stage 2 on every image, not only routed ones")
    common(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="metrics of the cascade and of each stage on an ImageFolder folder")
    p.add_argument("data", help="ImageFolder folder, e.g. sample_images/test")
    p.add_argument("--out", default=None, help="also write the JSON report here")
    common(p)
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    return run_cli_command(args.func, args)
