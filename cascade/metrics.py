"""Classification metrics in NumPy, shared by training, ``cascade evaluate`` and the dashboard's gate sweeps.

No scikit-learn at run time (the tests check these against it). In screening, a missed abnormal knee costs more than a
false alarm, so per-class sensitivity/specificity, abnormal-vs-normal sensitivity and F2 stand beside accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """C×C counts, rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class_rates(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity (recall), specificity, precision, F1 and F2 per class from a C×C confusion matrix.

    A stack of matrices (…×C×C, e.g. one per gate threshold) gives …×C rates, so a sweep shares these definitions.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    fn = cm.sum(axis=-1) - tp
    fp = cm.sum(axis=-2) - tp
    tn = cm.sum(axis=(-2, -1))[..., None] - tp - fn - fp
    sens = _safe_div(tp, tp + fn)
    prec = _safe_div(tp, tp + fp)
    return {
        "sensitivity": sens,
        "specificity": _safe_div(tn, tn + fp),
        "precision": prec,
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
        "f2": _safe_div(5 * tp, 5 * tp + 4 * fn + fp),
    }


def roc_auc_binary(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN when one class is absent."""
    y = np.asarray(y, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    ranks = np.empty(len(score), dtype=np.float64)
    # average ranks over ties
    _, start_idx, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = start_idx + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_ovr(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per class from N×C scores."""
    y_true = np.asarray(y_true)
    return np.array([roc_auc_binary(y_true == c, scores[:, c]) for c in range(scores.shape[1])])


def classification_report(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: Sequence[str],
    scores: np.ndarray | None = None,
    normal_index: int | None = None,
) -> dict:
    """JSON-ready metrics: accuracy, per-class sensitivity/specificity, macro F1/F2, OvR AUC, confusion matrix."""
    classes = list(classes)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = confusion_matrix(y_true, y_pred, len(classes))
    rates = per_class_rates(cm)
    report: dict = {
        "n": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else float("nan"),
        "sensitivity": dict(zip(classes, rates["sensitivity"].tolist(), strict=True)),
        "specificity": dict(zip(classes, rates["specificity"].tolist(), strict=True)),
        "macro_f1": float(rates["f1"].mean()),
        "macro_f2": float(rates["f2"].mean()),
        "confusion_matrix": cm.tolist(),
        "classes": classes,
    }
    if scores is not None:
        auc = roc_auc_ovr(y_true, np.asarray(scores))
        report["roc_auc_ovr"] = dict(zip(classes, [None if np.isnan(a) else float(a) for a in auc], strict=True))
        report["macro_roc_auc"] = None if np.all(np.isnan(auc)) else float(np.nanmean(auc))
    if normal_index is not None:
        report["abnormal_sensitivity"] = abnormal_sensitivity(y_true, y_pred, normal_index)
    return report


def abnormal_sensitivity(y_true: np.ndarray, y_pred: np.ndarray, normal_index: int) -> float:
    """Share of abnormal knees (any class but normal) not called normal: the screening miss rate's complement."""
    y_true = np.asarray(y_true)
    abnormal = y_true != normal_index
    if not abnormal.any():
        return float("nan")
    return float((np.asarray(y_pred)[abnormal] != normal_index).mean())
