"""Metrics of a whole cascade at its gate, and of each stage alone, on a labelled ImageFolder folder.

Built on the prediction loop the dashboard's cache uses (:func:`cascade.predcache.compute_predictions`): stage 2 runs on
every image, so the cascade's figures at the gate and each stage's figures come from one pass, and an unreadable image
is counted and named in the report rather than ending the evaluation.
"""

from __future__ import annotations

import os

from cascade.calibration import stage_calibration
from cascade.dataset import index_dataset
from cascade.gate import decide_batch
from cascade.metadata import load_metadata, metadata_summary
from cascade.metrics import classification_report
from cascade.pipeline import Cascade
from cascade.predcache import ProgressFn, compute_predictions


def evaluate_cascade(
    cascade: Cascade,
    data: str | os.PathLike,
    batch_size: int = 16,
    progress: ProgressFn | None = None,
    metadata: str | os.PathLike | None = None,
) -> dict:
    """Report of the cascade at its gate and of each stage alone, with the files that could not be read."""
    index = index_dataset(data)
    preds = compute_predictions(cascade, index.items, "all", batch_size, progress).with_temperatures(
        cascade.temperatures
    )
    y, p1, p2 = preds.labels, preds.p1, preds.p2
    classes, ni = cascade.classes, cascade.normal_index
    dec = decide_batch(p1, p2, ni, cascade.threshold, cascade.rule)
    report = classification_report(y, dec.final, classes, dec.scores, ni)
    report["share_to_stage2"] = float(dec.routed.mean()) if len(y) else float("nan")
    report["stage2_said_normal"] = int(((dec.final == ni) & dec.routed).sum())
    return {
        "data": str(index.root),
        "images": len(y),
        "unreadable": [{"path": rel, "error": why} for rel, why in preds.failed],
        "gate": {"threshold": cascade.threshold, "rule": cascade.rule.value},
        "cascade": report,
        "stage1": classification_report(y, p1.argmax(1), classes, p1, ni),
        "stage2": classification_report(y, p2.argmax(1), classes, p2, ni),
        "calibration": stage_calibration(y, p1, p2, ni, cascade.temperatures) if len(y) else None,
        "metadata": _metadata(index, metadata, preds.rels, y, dec.final == y, classes),
    }


def _metadata(index, path, rels, y, correct, classes) -> dict | None:
    """The metadata table's summary (``path``, else the dataset's manifest.csv), None when there is none."""
    meta = load_metadata(index, path)
    if meta.source is None:
        return None
    return metadata_summary(meta, rels, y, correct, classes)
