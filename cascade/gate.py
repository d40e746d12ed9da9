"""The gate: stage 1 answers "normal" alone when it is confident enough, otherwise stage 2 decides.

Pure functions, no models: a decision is a function of the two probability vectors, the threshold and the rule, so the
dashboard can re-decide thousands of cached predictions per slider move without running anything.

Two rules:
- ``p_normal`` (default): pass when P(normal) ≥ t.
- ``top1`` (the original project's): pass when normal is stage 1's top class *and* its probability ≥ t.
They agree for t ≥ 0.5 (P(normal) ≥ 0.5 makes normal the top class, ties aside) and differ below it.

The gate margin is how far the image is from flipping: ≥ 0 passes the gate, < 0 goes to stage 2. For ``p_normal`` it is
P(normal) − t; for ``top1`` it is P(normal) − max(t, highest other probability).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


class GateRule(str, Enum):
    P_NORMAL = "p_normal"
    TOP1 = "top1"

    @classmethod
    def parse(cls, value: str | GateRule) -> GateRule:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown gate rule '{value}'; expected one of {[r.value for r in cls]}") from None


@dataclass(frozen=True)
class Decision:
    """Everything the cascade did for one image, enough to tell the decision in words."""

    p1: tuple[float, ...]
    p2: tuple[float, ...] | None
    threshold: float
    rule: GateRule
    margin: float
    stage2_ran: bool
    label: str
    label_index: int
    decided_by: int  # 1 or 2
    stage2_said_normal: bool

    @property
    def confidence(self) -> float:
        """Probability of the final label in the deciding stage."""
        probs = self.p1 if self.decided_by == 1 else self.p2
        return float(probs[self.label_index])  # type: ignore[index]


#: The original project's gate: stage 1 settles an image as normal when it is at least 60 % sure.
DEFAULT_THRESHOLD = 0.6


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"gate threshold must lie in [0, 1], got {threshold}")
    return t


def _p_normal_and_lead(p1: np.ndarray, normal_index: int, rule: GateRule) -> tuple[np.ndarray, np.ndarray]:
    """The two things a rule looks at: P(normal), and how far normal leads every other class (+inf: not looked at)."""
    p_normal = p1[..., normal_index]
    if rule is GateRule.P_NORMAL:
        return p_normal, np.full_like(p_normal, np.inf)
    return p_normal, p_normal - np.delete(p1, normal_index, axis=-1).max(axis=-1)


def gate_key(p1: np.ndarray, normal_index: int, rule: GateRule | str = GateRule.P_NORMAL) -> np.ndarray:
    """The one definition of each rule: an image passes the gate at t exactly when ``gate_key >= t``.

    ``p_normal``: the key is P(normal). ``top1``: the same where normal is stage 1's top class (ties count as top),
    −inf elsewhere (such an image never passes, whatever the threshold). Works on a C vector or an N×C array.
    """
    p_normal, lead = _p_normal_and_lead(np.asarray(p1, dtype=np.float64), normal_index, GateRule.parse(rule))
    return np.where(lead >= 0, p_normal, -np.inf)


def gate_margin(
    p1: np.ndarray, normal_index: int, threshold: float, rule: GateRule | str = GateRule.P_NORMAL
) -> np.ndarray:
    """How far each image is from flipping: ≥ 0 passes the gate (``gate_key >= t``), < 0 goes to stage 2.

    ``p_normal``: P(normal) − t. ``top1``: P(normal) − max(t, highest other probability), finite even where the key is
    −inf, so images can be sorted by how close they came.
    """
    p_normal, lead = _p_normal_and_lead(np.asarray(p1, dtype=np.float64), normal_index, GateRule.parse(rule))
    return np.minimum(p_normal - _check_threshold(threshold), lead)


def passes_gate(
    p1: np.ndarray, normal_index: int, threshold: float, rule: GateRule | str = GateRule.P_NORMAL
) -> np.ndarray:
    """Boolean (array): does stage 1 settle the image as normal?"""
    return gate_key(p1, normal_index, rule) >= _check_threshold(threshold)


def flip_threshold(p1: np.ndarray, normal_index: int, rule: GateRule | str = GateRule.P_NORMAL) -> float | None:
    """The threshold at and below which this image passes the gate; None when no threshold lets it pass."""
    key = float(gate_key(p1, normal_index, rule))
    return key if np.isfinite(key) else None


def decide(
    p1: np.ndarray,
    p2: np.ndarray | None,
    classes: tuple[str, ...],
    normal_index: int,
    threshold: float,
    rule: GateRule | str = GateRule.P_NORMAL,
) -> Decision:
    """One image's decision record. ``p2`` may be None when stage 2 was not run (the gate did not need it)."""
    rule = GateRule.parse(rule)
    p1 = np.asarray(p1, dtype=np.float64)
    margin = float(gate_margin(p1, normal_index, threshold, rule))
    passed = bool(passes_gate(p1, normal_index, threshold, rule))
    p2_tuple = None if p2 is None else tuple(float(x) for x in np.asarray(p2, dtype=np.float64))
    if passed:
        idx, by = normal_index, 1
    else:
        if p2_tuple is None:
            raise ValueError("the gate routes this image to stage 2, but no stage-2 probabilities were given")
        idx, by = int(np.argmax(p2_tuple)), 2
    return Decision(
        p1=tuple(float(x) for x in p1),
        p2=p2_tuple,
        threshold=float(threshold),
        rule=rule,
        margin=margin,
        stage2_ran=not passed,
        label=classes[idx],
        label_index=idx,
        decided_by=by,
        stage2_said_normal=(not passed) and idx == normal_index,
    )


@dataclass(frozen=True)
class BatchDecision:
    """Vectorised decisions for N cached predictions (all arrays of length N)."""

    routed: np.ndarray  # bool: went to stage 2
    final: np.ndarray  # int: final class index
    margin: np.ndarray  # float
    scores: np.ndarray  # N×C: probabilities of the deciding stage (for ROC AUC of the whole cascade)


def decide_batch(
    p1: np.ndarray,
    p2: np.ndarray,
    normal_index: int,
    threshold: float,
    rule: GateRule | str = GateRule.P_NORMAL,
) -> BatchDecision:
    """Decide N images at once from cached N×C stage-1 and stage-2 probabilities (stage 2 run on all of them)."""
    p1 = np.asarray(p1, dtype=np.float64)
    p2 = np.asarray(p2, dtype=np.float64)
    if p1.shape != p2.shape or p1.ndim != 2:
        raise ValueError(f"expected two N×C arrays of the same shape, got {p1.shape} and {p2.shape}")
    passed = passes_gate(p1, normal_index, threshold, rule)
    final = np.where(passed, normal_index, p2.argmax(axis=1))
    scores = np.where(passed[:, None], p1, p2)
    return BatchDecision(~passed, final, gate_margin(p1, normal_index, threshold, rule), scores)
