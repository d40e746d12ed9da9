"""``python -m engines calibrate DATA --split val``: fit one temperature per stage and store it in the cascade config.

Both stages' raw probabilities for the split come from the prediction cache (computed once, stage 2 on every image,
shared with the dashboard), so refitting or switching calibration on and off never runs a model twice. Stage 2 is
fitted on every image of the split, not only those the gate routes to it: the fit then does not depend on the gate.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
from pathlib import Path

from cascade.calibration import (
    CalibrationSettings,
    calibration_report,
    fit_temperature,
)
from cascade.cli import report_unreadable
from cascade.config import load_config, save_calibration
from cascade.dataset import index_dataset
from cascade.errors import ConfigError
from cascade.fileio import check_output_path, write_atomic
from cascade.predcache import DEFAULT_CACHE_DIR, cached_predictions


def calibrate(
    data: str | Path,
    split: str = "val",
    config: str | Path | None = None,
    backend: str = "auto",
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
    n_bins: int = 15,
    progress: bool = False,
) -> tuple[CalibrationSettings, dict]:
    """Fit both stages' temperatures on a split; returns the settings to store and a JSON-ready report."""
    from engines.select import open_cascade

    cfg = load_config(config)
    index = index_dataset(data)
    if split not in index.splits:
        raise ConfigError(f"'{index.root}' has no '{split}' split (it has: {', '.join(index.splits)})")
    cascade = open_cascade(dataclasses.replace(cfg, calibration=CalibrationSettings()), backend)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(index.select(split)), unit="img", file=sys.stderr)

    def tick(done: int, total: int) -> None:
        if bar is not None:
            bar.n = done
            bar.refresh()

    preds = cached_predictions(cascade, index, split, cache_dir or DEFAULT_CACHE_DIR, batch_size, tick)
    if bar is not None:
        bar.close()
    if len(preds) == 0:
        raise ConfigError(f"no readable image in the '{split}' split of '{index.root}'")
    ni = cascade.normal_index
    report: dict = {"data": str(index.root), "split": split, "n": len(preds), "failed": len(preds.failed)}
    report["unreadable"] = [{"path": rel, "error": why} for rel, why in preds.failed]
    temps = []
    for stage, p in ((1, preds.p1), (2, preds.p2)):
        fit = fit_temperature(p, preds.labels)
        calibrated = preds.with_temperatures((fit.temperature, 1.0) if stage == 1 else (1.0, fit.temperature))
        report[f"stage{stage}"] = {
            "temperature": fit.temperature,
            "at_search_bound": fit.at_bound,
            "before": calibration_report(p, preds.labels, ni, n_bins),
            "after": calibration_report(calibrated.p1 if stage == 1 else calibrated.p2, preds.labels, ni, n_bins),
        }
        temps.append(fit.temperature)
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    fitted_on = f"{split} split of {index.root} ({len(preds)} images), {today}"
    return CalibrationSettings(True, temps[0], temps[1], fitted_on), report


def summary_lines(report: dict) -> list[str]:
    """Per stage: the temperature and ECE / Brier / NLL before → after."""
    lines = [f"fitted on {report['n']} images of '{report['split']}' ({report['data']})"]
    for name in ("stage1", "stage2"):
        r = report[name]
        b, a = r["before"], r["after"]
        bound = " (at the search bound)" if r["at_search_bound"] else ""
        lines.append(
            f"{name}: T = {r['temperature']:.3f}{bound}  "
            f"ECE {b['ece_top_label']['equal_mass']:.3f} → {a['ece_top_label']['equal_mass']:.3f} (equal-mass, "
            f"{b['bins']} bins)  Brier {b['brier']:.3f} → {a['brier']:.3f}  NLL {b['nll']:.3f} → {a['nll']:.3f}"
        )
    return lines


def cmd_calibrate(args: argparse.Namespace) -> int:
    if args.out:
        check_output_path(args.out, "the JSON file")  # before the predictions, not after
    settings, report = calibrate(
        args.data,
        args.split,
        args.config,
        args.backend,
        args.cache_dir,
        args.batch_size,
        args.bins,
        progress=not args.quiet,
    )
    settings = dataclasses.replace(settings, enabled=not args.off)
    if args.out:
        write_atomic(args.out, json.dumps(report, indent=2) + "\n")
    for line in summary_lines(report):
        print(line, file=sys.stderr)
    if args.dry_run:
        print("dry run: the config was not changed", file=sys.stderr)
    else:
        save_calibration(args.config, settings)
        print(f"wrote [calibration] to {args.config} ({settings.describe()})")
    failed = [(row["path"], row["error"]) for row in report["unreadable"]]
    return report_unreadable(failed, "used in the fit")  # 1: fitted on the rest, as evaluate scores the rest


def add_parser(sub, models) -> None:
    """The ``calibrate`` subcommand; ``models`` adds the shared --config/--backend/--batch-size/--quiet options."""
    from cascade.cli import positive_int

    p = sub.add_parser("calibrate", help="fit per-stage temperatures on a split and store them in the cascade config")
    p.add_argument("data", help="ImageFolder dataset with split folders, e.g. sample_images")
    p.add_argument("--split", default="val", help="split to fit on (default: %(default)s; never the test split)")
    p.add_argument("--bins", type=positive_int, default=15, help="reliability bins for the ECE (default: %(default)s)")
    p.add_argument("--cache-dir", default=None, help=f"prediction cache (default: {DEFAULT_CACHE_DIR})")
    p.add_argument("--out", default=None, help="also write the JSON report here")
    p.add_argument("--off", action="store_true", help="store the temperatures but leave calibration switched off")
    p.add_argument("--dry-run", action="store_true", help="fit and report only; do not write the config")
    models(p)
    p.set_defaults(func=cmd_calibrate)
