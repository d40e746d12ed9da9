"""Gate sweeps: every metric of the cascade at many thresholds at once, from cached predictions.

With stage 2's probabilities cached for every image, the cascade at threshold t is fully determined: images whose gate
key is ≥ t are answered "normal" by stage 1, the rest take stage 2's top class. Sorting the images by that key once
turns "which images pass" into "a suffix of the sorted order", so the confusion matrix at every threshold is a
difference of cumulative counts: one sort and one cumulative sum for the whole sweep, no loop over thresholds or images
in Python.
That is what lets the dashboard redraw every curve on each slider move.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cascade.errors import CascadeError
from cascade.gate import GateRule, gate_key
from cascade.metrics import per_class_rates

#: The dashboard's threshold grid: 0.00, 0.01, …, 1.00.
DEFAULT_THRESHOLDS = np.round(np.linspace(0.0, 1.0, 101), 2)


class SweepError(CascadeError, ValueError):
    """The predictions handed to a sweep are inconsistent (shapes, labels, missing stage-2 rows)."""


def _check_inputs(p1: np.ndarray, p2: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p1 = np.asarray(p1, dtype=np.float64)
    p2 = np.asarray(p2, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if p1.ndim != 2 or p1.shape != p2.shape or y.shape != (len(p1),):
        raise SweepError(
            f"expected N×C stage-1 and stage-2 probabilities and N labels, got {p1.shape}, {p2.shape}, {y.shape}"
        )
    if not np.isfinite(p2).all():
        raise SweepError("stage-2 probabilities are missing for some images; a sweep needs stage 2 run on every image")
    if len(y) and (y.min() < 0 or y.max() >= p1.shape[1]):
        raise SweepError(f"labels must be class indices 0..{p1.shape[1] - 1}")
    return p1, p2, y


@dataclass(frozen=True)
class Sweep:
    """Confusion matrices of the whole cascade at each threshold, and the metrics derived from them."""

    thresholds: np.ndarray  # T
    confusion: np.ndarray  # T×C×C, rows = true class, columns = final class
    routed_share: np.ndarray  # T: share of images sent to stage 2 (the compute the gate does not save)
    normal_index: int
    rule: GateRule

    @property
    def n(self) -> int:
        return int(self.confusion[0].sum()) if len(self.confusion) else 0

    @property
    def num_classes(self) -> int:
        return self.confusion.shape[1]

    @property
    def accuracy(self) -> np.ndarray:
        """T: share of images whose final class is right (NaN on an empty set)."""
        return _ratio(np.trace(self.confusion, axis1=1, axis2=2), self.confusion.sum(axis=(1, 2)))

    @property
    def sensitivity(self) -> np.ndarray:
        """T×C: per-class recall (0 where a class has no images), as ``cascade.metrics.per_class_rates``."""
        return per_class_rates(self.confusion)["sensitivity"]

    @property
    def specificity(self) -> np.ndarray:
        """T×C: per-class specificity."""
        return per_class_rates(self.confusion)["specificity"]

    def _binary(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Abnormal-vs-normal counts: (abnormal caught, abnormal missed, normal kept, normal flagged)."""
        ni = self.normal_index
        cm = self.confusion
        said_normal = cm[:, :, ni]
        row = cm.sum(axis=2)
        abnormal_rows = np.ones(self.num_classes, dtype=bool)
        abnormal_rows[ni] = False
        missed = said_normal[:, abnormal_rows].sum(axis=1)
        caught = row[:, abnormal_rows].sum(axis=1) - missed
        kept = said_normal[:, ni]
        flagged = row[:, ni] - kept
        return caught, missed, kept, flagged

    @property
    def abnormal_sensitivity(self) -> np.ndarray:
        """T: share of abnormal knees (any class but normal) not called normal (NaN when there are none)."""
        caught, missed, _, _ = self._binary()
        return _ratio(caught, caught + missed)

    @property
    def normal_recall(self) -> np.ndarray:
        """T: share of normal knees called normal (recall of the normal class; the abnormal screen's specificity)."""
        _, _, kept, flagged = self._binary()
        return _ratio(kept, kept + flagged)

    @property
    def youden_j(self) -> np.ndarray:
        """T: Youden's J of the abnormal-vs-normal screen (abnormal sensitivity + normal recall − 1)."""
        return self.abnormal_sensitivity + self.normal_recall - 1.0

    def expected_cost(self, cost_ratio: float) -> np.ndarray:
        """T: mean cost per image when a missed abnormal knee costs ``cost_ratio`` false alarms."""
        if not cost_ratio > 0:
            raise SweepError(f"the cost ratio must be positive, got {cost_ratio}")
        _, missed, _, flagged = self._binary()
        return _ratio(cost_ratio * missed + flagged, np.full(len(missed), self.n))


def _ratio(num: np.ndarray, den: np.ndarray, empty: float = float("nan")) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, empty), where=den > 0)


def sweep(
    p1: np.ndarray,
    p2: np.ndarray,
    y: np.ndarray,
    normal_index: int,
    thresholds: np.ndarray | None = None,
    rule: GateRule | str = GateRule.P_NORMAL,
) -> Sweep:
    """The cascade's confusion matrix at every threshold (default: 0.00 … 1.00 by 0.01) in one vectorised pass.

    ``p2`` must hold stage 2's probabilities for every image (``Cascade.predict(..., stage2_always=True)``).
    """
    p1, p2, y = _check_inputs(p1, p2, y)
    rule = GateRule.parse(rule)
    t = DEFAULT_THRESHOLDS if thresholds is None else np.asarray(thresholds, dtype=np.float64).reshape(-1)
    n, c = p1.shape
    keys = gate_key(p1, normal_index, rule)
    order = np.argsort(keys, kind="stable")
    # Ascending keys: at threshold t the first `cut` images go to stage 2, the rest pass the gate.
    cut = np.searchsorted(keys[order], t, side="left")
    rows = np.arange(1, n + 1)
    routed_codes = (y * c + p2.argmax(axis=1))[order]
    passed_codes = (y * c + normal_index)[order]
    cum_routed = np.zeros((n + 1, c * c), dtype=np.int64)
    cum_passed = np.zeros((n + 1, c * c), dtype=np.int64)
    cum_routed[rows, routed_codes] = 1
    cum_passed[rows, passed_codes] = 1
    np.cumsum(cum_routed, axis=0, out=cum_routed)
    np.cumsum(cum_passed, axis=0, out=cum_passed)
    confusion = cum_routed[cut] + (cum_passed[n] - cum_passed[cut])
    share = cut / n if n else np.zeros(len(t))
    return Sweep(t, confusion.reshape(len(t), c, c), np.asarray(share, dtype=np.float64), normal_index, rule)


@dataclass(frozen=True)
class Suggestion:
    """A gate worth trying, with the sentence that says why."""

    key: str
    title: str
    threshold: float | None  # None: no threshold meets the criterion
    why: str


def _lowest_best(values: np.ndarray, thresholds: np.ndarray, maximise: bool) -> int | None:
    """Index of the best finite value; ties go to the lowest threshold (same quality, fewest images to stage 2)."""
    v = np.where(np.isfinite(values), values if maximise else -values, -np.inf)
    if not np.isfinite(v).any():
        return None
    best = v.max()
    tied = np.flatnonzero(v >= best - 1e-12)
    return int(tied[np.argmin(thresholds[tied])])


def suggest_gates(s: Sweep, target_sensitivity: float = 0.95, cost_ratio: float = 5.0) -> list[Suggestion]:
    """Suggested thresholds from a sweep: best accuracy, Youden's J, a sensitivity floor, least expected cost.

    Abnormal sensitivity can only grow with the threshold (a higher gate sends more knees to stage 2), so the gate for
    a sensitivity target is the *lowest* threshold that reaches it: the one that lets stage 1 settle the most images.
    """
    t = s.thresholds

    def pick(key: str, title: str, values: np.ndarray, maximise: bool, none_why: str, why) -> Suggestion:
        i = _lowest_best(values, t, maximise)
        return Suggestion(key, title, None if i is None else float(t[i]), none_why if i is None else why(i))

    out = [
        pick(
            "max_accuracy",
            "Maximum accuracy",
            s.accuracy,
            True,
            "no labelled images",
            lambda i: f"accuracy {s.accuracy[i]:.1%}, {s.routed_share[i]:.0%} to stage 2",
        ),
        pick(
            "youden",
            "Youden's J (normal vs abnormal)",
            s.youden_j,
            True,
            "needs both normal and abnormal images",
            lambda i: (
                f"J = {s.youden_j[i]:.3f} (abnormal sensitivity {s.abnormal_sensitivity[i]:.1%}, "
                f"normal recall {s.normal_recall[i]:.1%})"
            ),
        ),
    ]
    sens = s.abnormal_sensitivity
    ok = np.flatnonzero(np.isfinite(sens) & (sens >= target_sensitivity - 1e-12))
    if len(ok):
        i = int(ok[np.argmin(t[ok])])
        why = (
            f"lowest gate with abnormal sensitivity ≥ {target_sensitivity:.0%}: {sens[i]:.1%}, "
            f"{s.routed_share[i]:.0%} to stage 2"
        )
        out.append(Suggestion("sensitivity", f"Abnormal sensitivity ≥ {target_sensitivity:.0%}", float(t[i]), why))
    else:
        best = np.nanmax(sens) if np.isfinite(sens).any() else float("nan")
        why = (
            f"no threshold reaches it (best {best:.1%}: stage 2 itself misses more)"
            if np.isfinite(best)
            else ("no abnormal images in this split")
        )
        out.append(Suggestion("sensitivity", f"Abnormal sensitivity ≥ {target_sensitivity:.0%}", None, why))
    cost = s.expected_cost(cost_ratio)
    out.append(
        pick(
            "min_cost",
            f"Minimum expected cost (miss = {cost_ratio:g}× false alarm)",
            cost,
            False,
            "no labelled images",
            lambda i: f"cost {cost[i]:.3f} per image (in false-alarm units)",
        )
    )
    return out


def flow_counts(
    y: np.ndarray, routed: np.ndarray, final: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Counts for a true class → gate outcome → final class diagram.

    Returns ``(into_gate, out_of_gate)``: C×2 counts of true class × (settled by stage 1, sent to stage 2), and 2×C
    counts of gate outcome × final class.
    """
    y = np.asarray(y, dtype=np.int64)
    outcome = np.asarray(routed, dtype=np.int64)
    final = np.asarray(final, dtype=np.int64)
    into = np.bincount(y * 2 + outcome, minlength=num_classes * 2).reshape(num_classes, 2)
    out = np.bincount(outcome * num_classes + final, minlength=2 * num_classes).reshape(2, num_classes)
    return into, out
