"""Calibration of a stage's probabilities: reliability bins, ECE, Brier score, NLL, and temperature scaling.

A gate is a threshold on stage 1's P(normal); it means what it says only if, among images given P(normal) = 0.8, about
80 % are normal. This module measures that (reliability diagram, expected calibration error with equal-width and
equal-mass bins, Brier score, negative log-likelihood; top-label and one-vs-rest for P(normal)) and corrects it with one
temperature per stage: ``softmax(log p / T)``. The folders' ONNX files end in a softmax, so ``log p`` equals the logits
up to a per-row constant, which softmax ignores: T fitted on log-probabilities is T fitted on the logits.

The fitted temperatures live in the cascade config's ``[calibration]`` table (never in the checkpoint), written by
``cascade.config.save_calibration``:

    [calibration]
    enabled = true            # apply the temperatures everywhere probabilities are used
    stage1_temperature = 1.83
    stage2_temperature = 1.21
    fitted_on = "val split of /data/knee (120 images), 2026-12-02"

Pure NumPy: no torch, so the dashboard's first page can import it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cascade.errors import CascadeError, ConfigError

#: Probabilities are clipped to at least this before taking logs (a softmax output of exactly 0 has log −inf).
EPS = 1e-12
#: Bins of the reliability diagram and the ECE by default (15: Guo et al. 2017; small sets get fewer by equal mass).
DEFAULT_BINS = 15
BIN_STRATEGIES = ("equal-width", "equal-mass")
#: Search range of the temperature fit; a best T at either end is reported as such.
T_RANGE = (0.05, 20.0)
SECTION = "calibration"


class CalibrationError(CascadeError, ValueError):
    """Inputs a calibration measure or fit cannot use (shapes, labels, no images, a non-positive temperature)."""


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if p.ndim != 2 or y.shape != (len(p),):
        raise CalibrationError(f"expected N×C probabilities and N labels, got {p.shape} and {y.shape}")
    if len(y) == 0:
        raise CalibrationError("no images: calibration needs at least one labelled prediction")
    if not np.isfinite(p).all():
        raise CalibrationError("some probabilities are missing (NaN): calibration needs the stage run on every image")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise CalibrationError(f"labels must be class indices 0..{p.shape[1] - 1}")
    return p, y


# ---------------------------------------------------------------------------------------------------------------------
# Temperature


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise CalibrationError(f"a temperature must be a positive number, got {temperature}")
    return t


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row-wise, stably (p clipped to ``EPS``, max subtracted); NaN rows stay NaN.

    T > 1 softens over-confident probabilities, T < 1 sharpens; T = 1 returns the input. Applying T₁ then T₂ equals
    applying T₁·T₂, so calibrated probabilities can be re-derived from raw ones at any time.
    """
    t = _check_temperature(temperature)
    p = np.asarray(probs, dtype=np.float64)
    if t == 1.0:
        return p
    with np.errstate(invalid="ignore"):
        z = np.log(np.clip(p, EPS, 1.0)) / t
        z -= z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)


def _nll_at(logits: np.ndarray, y: np.ndarray, t: float) -> float:
    z = logits / t
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(y)), y]))


@dataclass(frozen=True)
class TemperatureFit:
    temperature: float
    nll_before: float  # at T = 1
    nll_after: float
    at_bound: bool  # the best T lies at the end of T_RANGE: the fit says "more than that", not "exactly that"
    n: int


def fit_temperature(
    probs: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = T_RANGE, tol: float = 1e-5
) -> TemperatureFit:
    """The T minimising the NLL of ``softmax(log p / T)``: golden-section search on log T (no SciPy needed).

    The NLL is convex in 1/T, hence unimodal in log T, so the bracketing search converges to the global minimum.
    """
    p, y = _check(probs, labels)
    logits = np.log(np.clip(p, EPS, 1.0))
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = _nll_at(logits, y, math.exp(c)), _nll_at(logits, y, math.exp(d))
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = _nll_at(logits, y, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = _nll_at(logits, y, math.exp(d))
    u = (a + b) / 2.0
    t = math.exp(u)
    after = _nll_at(logits, y, t)
    before = _nll_at(logits, y, 1.0)
    if before < after:  # only possible when T = 1 lies outside the bounds
        t, after = 1.0, before
    at_bound = min(u - lo, hi - u) < 10 * tol
    return TemperatureFit(float(t), before, after, at_bound, len(y))


# ---------------------------------------------------------------------------------------------------------------------
# Scores


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (natural log; p clipped to ``EPS``)."""
    p, y = _check(probs, labels)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0))))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of Σ_c (p_c − [y = c])², from 0 (perfect) to 2."""
    p, y = _check(probs, labels)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def binary_nll(p: np.ndarray, event: np.ndarray) -> float:
    """NLL of a yes/no probability (e.g. P(normal) against "is normal")."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    e = np.asarray(event, dtype=bool)
    return float(-np.mean(np.where(e, np.log(p), np.log1p(-p))))


def binary_brier(p: np.ndarray, event: np.ndarray) -> float:
    """Mean (p − [event])²: the Brier score of one probability, from 0 to 1."""
    return float(np.mean((np.asarray(p, dtype=np.float64) - np.asarray(event, dtype=np.float64)) ** 2))


@dataclass(frozen=True)
class ReliabilityBins:
    """A reliability diagram: per bin, how many images, their mean confidence, and how often the event happened.

    Bins are right-closed, ``(lo, hi]``, the first one also holding 0. Equal-width bins split [0, 1] evenly (empty ones
    have count 0 and NaN means); equal-mass bins hold (nearly) the same number of images each, their edges lying
    between neighbouring confidences.
    """

    lo: np.ndarray  # B
    hi: np.ndarray  # B
    count: np.ndarray  # B int
    confidence: np.ndarray  # B: mean predicted probability in the bin
    observed: np.ndarray  # B: share of the bin whose event happened (top-label: correct; P(normal): is normal)
    strategy: str

    @property
    def n(self) -> int:
        return int(self.count.sum())

    @property
    def ece(self) -> float:
        """Σ_b (n_b / N) · |observed_b − confidence_b| over non-empty bins."""
        full = self.count > 0
        if not full.any():
            return float("nan")
        w = self.count[full] / self.count.sum()
        return float(np.sum(w * np.abs(self.observed[full] - self.confidence[full])))


def reliability_bins(
    confidence: np.ndarray, event: np.ndarray, n_bins: int = DEFAULT_BINS, strategy: str = "equal-width"
) -> ReliabilityBins:
    """Bin predicted probabilities and compare each bin's mean with how often the event happened."""
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    e = np.asarray(event, dtype=np.float64).reshape(-1)
    if c.shape != e.shape or len(c) == 0:
        raise CalibrationError(f"expected as many events as confidences (at least one), got {c.shape}, {e.shape}")
    if n_bins < 1:
        raise CalibrationError(f"need at least one bin, got {n_bins}")
    if strategy == "equal-width":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        which = np.clip(np.searchsorted(edges[1:-1], c, side="left"), 0, n_bins - 1)
        count = np.bincount(which, minlength=n_bins)
        conf_sum = np.bincount(which, weights=c, minlength=n_bins)
        obs_sum = np.bincount(which, weights=e, minlength=n_bins)
        lo, hi = edges[:-1], edges[1:]
    elif strategy == "equal-mass":
        order = np.argsort(c, kind="stable")
        groups = [g for g in np.array_split(order, min(n_bins, len(c))) if len(g)]
        count = np.array([len(g) for g in groups])
        conf_sum = np.array([c[g].sum() for g in groups])
        obs_sum = np.array([e[g].sum() for g in groups])
        firsts = np.array([c[g[0]] for g in groups])
        lasts = np.array([c[g[-1]] for g in groups])
        inner = (lasts[:-1] + firsts[1:]) / 2.0
        lo = np.concatenate([[0.0], inner])
        hi = np.concatenate([inner, [1.0]])
    else:
        raise CalibrationError(f"unknown bin strategy '{strategy}'; expected one of {BIN_STRATEGIES}")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_c = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        mean_o = np.where(count > 0, obs_sum / np.maximum(count, 1), np.nan)
    return ReliabilityBins(lo, hi, count.astype(np.int64), mean_c, mean_o, strategy)


def top_label_bins(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS, strategy: str = "equal-width"
) -> ReliabilityBins:
    """Reliability of the top class: its probability against whether it was right."""
    p, y = _check(probs, labels)
    return reliability_bins(p.max(axis=1), p.argmax(axis=1) == y, n_bins, strategy)


def class_bins(
    probs: np.ndarray, labels: np.ndarray, index: int, n_bins: int = DEFAULT_BINS, strategy: str = "equal-width"
) -> ReliabilityBins:
    """One-vs-rest reliability of one class (e.g. P(normal), the gate's input) against "is that class"."""
    p, y = _check(probs, labels)
    return reliability_bins(p[:, index], y == index, n_bins, strategy)


def calibration_report(
    probs: np.ndarray, labels: np.ndarray, normal_index: int, n_bins: int = DEFAULT_BINS
) -> dict[str, object]:
    """JSON-ready calibration scores of one stage: top-label ECE (both bin kinds), Brier, NLL, and the same for
    P(normal) one-vs-rest (the probability the gate thresholds)."""
    p, y = _check(probs, labels)
    is_normal = y == normal_index

    def both(bins_of) -> dict[str, float]:
        return {s.replace("-", "_"): bins_of(s).ece for s in BIN_STRATEGIES}

    return {
        "n": int(len(y)),
        "bins": int(n_bins),
        "ece_top_label": both(lambda s: top_label_bins(p, y, n_bins, s)),
        "brier": brier(p, y),
        "nll": nll(p, y),
        "p_normal": {
            "ece": both(lambda s: class_bins(p, y, normal_index, n_bins, s)),
            "brier": binary_brier(p[:, normal_index], is_normal),
            "nll": binary_nll(p[:, normal_index], is_normal),
        },
    }


# ---------------------------------------------------------------------------------------------------------------------
# The [calibration] table of the cascade config


@dataclass(frozen=True)
class CalibrationSettings:
    """What the config says: the fitted temperatures, where they come from, and whether they are applied."""

    enabled: bool = False
    stage1_temperature: float = 1.0
    stage2_temperature: float = 1.0
    fitted_on: str = ""

    @property
    def fitted(self) -> bool:
        return bool(self.fitted_on) or (self.stage1_temperature, self.stage2_temperature) != (1.0, 1.0)

    @property
    def temperatures(self) -> tuple[float, float]:
        """The temperatures to apply: the fitted ones when switched on, (1, 1) (raw probabilities) when off."""
        return (self.stage1_temperature, self.stage2_temperature) if self.enabled else (1.0, 1.0)

    def table(self) -> dict[str, object]:
        """The ``[calibration]`` keys as written to the config (``cascade.config.save_calibration``)."""
        return {
            "enabled": bool(self.enabled),
            "stage1_temperature": round(_check_temperature(self.stage1_temperature), 4),
            "stage2_temperature": round(_check_temperature(self.stage2_temperature), 4),
            "fitted_on": str(self.fitted_on),
        }

    def describe(self) -> str:
        """One line for a sidebar or a log: on/off and the temperatures."""
        if not self.fitted:
            return "off (no temperatures fitted)"
        temps = f"T₁ = {self.stage1_temperature:.2f}, T₂ = {self.stage2_temperature:.2f}"
        return f"{'on' if self.enabled else 'off'} ({temps})"


def parse_calibration(section: Mapping | None, where: str | os.PathLike = "config") -> CalibrationSettings:
    """Validate a config's ``[calibration]`` table (absent: calibration off)."""
    if section is None:
        return CalibrationSettings()
    if not isinstance(section, Mapping):
        raise ConfigError(f"'{where}': [calibration] must be a table")
    enabled = section.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"'{where}' [calibration]: enabled must be true or false, got {enabled!r}")
    temps = []
    for key in ("stage1_temperature", "stage2_temperature"):
        raw = section.get(key, 1.0)
        try:
            temps.append(_check_temperature(raw))
        except (CalibrationError, TypeError, ValueError):
            raise ConfigError(f"'{where}' [calibration]: {key} must be a positive number, got {raw!r}") from None
    return CalibrationSettings(bool(enabled), temps[0], temps[1], str(section.get("fitted_on", "")))


def stage_calibration(
    labels: np.ndarray,
    p1: np.ndarray,
    p2: np.ndarray,
    normal_index: int,
    temperatures: tuple[float, float] = (1.0, 1.0),
    n_bins: int = DEFAULT_BINS,
) -> dict[str, object]:
    """Both stages' calibration scores for an evaluation report (of the probabilities as the cascade used them)."""
    return {
        "temperatures": [float(t) for t in temperatures],
        "applied": tuple(temperatures) != (1.0, 1.0),
        "stage1": calibration_report(p1, labels, normal_index, n_bins),
        "stage2": calibration_report(p2, labels, normal_index, n_bins),
    }


def calibration_summary(section: Mapping) -> str:
    """Two lines for a terminal: each stage's ECE (both bin kinds), Brier and NLL, and whether T was applied."""
    temps = section["temperatures"]
    lines = [f"calibration {'on' if section['applied'] else 'off'} (T = {temps[0]:.3g}, {temps[1]:.3g})"]
    for name in ("stage1", "stage2"):
        r = section[name]
        ece = r["ece_top_label"]
        lines.append(
            f"{name:8s} ECE {ece['equal_width']:.3f} (equal-width) / {ece['equal_mass']:.3f} (equal-mass), "
            f"{r['bins']} bins  Brier {r['brier']:.3f}  NLL {r['nll']:.3f}  "
            f"P(normal) ECE {r['p_normal']['ece']['equal_width']:.3f}"
        )
    return "\n".join(lines)
