"""How the dashboard writes numbers: one gate precision, percentages that add up, enough digits near a tie.

One rule for all pages: a gate threshold has at most ``GATE_DECIMALS`` decimals everywhere (slider step, typed value,
URL, text), so the value shown is the value decided on. Percentages of one probability vector are rounded by largest
remainder so that they add up to exactly 100. Comparing a probability with the gate shows as many digits as it takes
for the written numbers to say what the gate computed ("45.66 % < 46 %", never "46 % < 46 %").
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

GATE_DECIMALS = 3
GATE_STEP = 10.0**-GATE_DECIMALS
_GATE_SYNTAX = re.compile(r"^\s*(0|1)?(\.\d*)?\s*$")


class GateValueError(ValueError):
    """A gate value that is not a number in [0, 1] with at most ``GATE_DECIMALS`` decimals."""


def quantize_gate(t: float) -> float:
    """``t`` clipped to [0, 1] and rounded to the gate's precision (the value every page decides on)."""
    return round(min(max(float(t), 0.0), 1.0), GATE_DECIMALS)


def is_on_gate_grid(t: float) -> bool:
    """True when ``t`` already has the gate's precision (no more than ``GATE_DECIMALS`` decimals)."""
    return 0.0 <= t <= 1.0 and abs(quantize_gate(t) - t) < 1e-12


def parse_gate(text: str) -> float:
    """A gate typed or given in a link, checked: a number in [0, 1] with at most ``GATE_DECIMALS`` decimals."""
    raw = str(text).strip()
    try:
        value = float(raw)
    except ValueError:
        raise GateValueError(f"'{raw}' is not a number") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise GateValueError(f"{raw} is outside 0 … 1")
    if not is_on_gate_grid(value):
        raise GateValueError(
            f"{raw} has more than {GATE_DECIMALS} decimals (the gate moves in steps of {gate_text(GATE_STEP)})"
        )
    return quantize_gate(value)


def gate_text(t: float) -> str:
    """A threshold as every page (and the slider, and the URL) writes it: ``GATE_DECIMALS`` decimals, ``0.600``."""
    return f"{float(t):.{GATE_DECIMALS}f}"


def pct(p: float, decimals: int = 0) -> str:
    """A probability as a percentage: ``42 %``."""
    return f"{100 * float(p):.{decimals}f} %"


def largest_remainder(probs: Sequence[float], decimals: int = 0) -> np.ndarray:
    """Percentages of one probability vector, rounded so that they add up to exactly 100.

    Each share is rounded down to ``decimals``; the units still missing go to the largest remainders (ties: the earlier
    class). The vector is normalised first, so rows that sum to 1 up to float error work as they should.
    """
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if p.size == 0:
        return p
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"not a probability vector: {p.tolist()}")
    unit = 10**decimals
    scaled = p / p.sum() * 100 * unit
    floor = np.floor(scaled + 1e-9)  # a share that is a whole number up to float error is not rounded down
    missing = int(round(100 * unit - floor.sum()))
    order = sorted(range(p.size), key=lambda i: (-(scaled[i] - floor[i]), i))
    for i in order[:missing]:
        floor[i] += 1
    return floor / unit


def percent_labels(probs: Sequence[float], decimals: int = 0) -> list[str]:
    """Labels for one probability vector's bars: largest-remainder percentages (they add up to 100 %)."""
    return [f"{v:.{decimals}f} %" for v in largest_remainder(probs, decimals)]


def compare_text(p: float, t: float, first: float | None = None, max_decimals: int = 6) -> tuple[str, str, str]:
    """``p`` against the gate ``t`` as the gate compares them (``p ≥ t``): ``("45.66 %", "<", "46 %")``.

    ``t`` is written at its own precision; ``p`` with the fewest decimals (0 or more) whose rounding neither equals
    ``t`` nor crosses it, so the written comparison is always the computed one. ``first`` is how ``p`` is shown
    elsewhere in whole percent (its bar's largest-remainder label): used when it already reads right.
    """
    p, t = float(p), float(t)
    t_dec = max(0, GATE_DECIMALS - 2)
    while t_dec > 0 and round(100 * t, t_dec - 1) == round(100 * t, t_dec):
        t_dec -= 1
    t_text = pct(t, t_dec)
    op = "≥" if p >= t else "<"
    if p == t:
        return t_text, "=", t_text
    for d in range(0, max_decimals + 1):
        shown = first if (d == 0 and first is not None) else round(100 * p, d)
        if shown != round(100 * t, max(d, t_dec)) and (shown >= 100 * t) == (p >= t):
            return f"{shown:.{d}f} %", op, t_text
    return pct(p, max_decimals), op, t_text


def last_passing_gate(p_normal: float) -> float:
    """The highest gate on the gate's grid at which ``P(normal) ≥ gate`` holds (the gate's own float comparison)."""
    k = int(math.floor(float(p_normal) * 10**GATE_DECIMALS + 1e-9))
    k = min(max(k, 0), 10**GATE_DECIMALS)
    while k > 0 and not float(p_normal) >= round(k / 10**GATE_DECIMALS, GATE_DECIMALS):
        k -= 1
    return round(k / 10**GATE_DECIMALS, GATE_DECIMALS)
