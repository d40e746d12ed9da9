"""The cascade's decision for one image told in words, step by step, and where that decision would flip.

Built from :class:`cascade.gate.Decision` and :func:`cascade.gate.decide` only, so the words always match what the gate
computes. Every probability is named (P(normal), P(osteopenia) …) and written as its bar shows it (largest-remainder
percentages); a comparison with the gate gets the digits it needs to read the way the gate decided.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cascade.gate import Decision, GateRule, decide, flip_threshold
from dashboard.components.numbers import (
    GATE_STEP,
    compare_text,
    gate_text,
    largest_remainder,
    last_passing_gate,
    pct,
    quantize_gate,
)

__all__ = [
    "RULE_NAMES",
    "RuleOutcome",
    "answer_line",
    "decision_steps",
    "flip_sentence",
    "pct",
    "rule_outcomes",
    "shown_percent",
    "would_have_said",
]

RULE_NAMES = {GateRule.P_NORMAL: "P(normal) rule", GateRule.TOP1: "top-1 rule"}


def shown_percent(probs: Sequence[float], i: int) -> str:
    """Class ``i`` of one probability vector as its bar writes it (the vector's percentages add up to 100)."""
    return f"{largest_remainder(probs)[i]:.0f} %"


def _vs_gate(probs: Sequence[float], normal_index: int, t: float) -> tuple[str, str]:
    """P(normal) and the comparison with the gate, as the gate made it: ``("45.7 %", "45.7 % < 46 %")``.

    P(normal) is written as its bar writes it unless that would hide the comparison; then with the digits it needs.
    """
    shown = float(largest_remainder(probs)[normal_index])
    p, op, gate = compare_text(probs[normal_index], t, first=shown)
    return p, f"{p} {op} {gate}"


def decision_steps(decision: Decision, classes: Sequence[str], normal_index: int) -> list[str]:
    """Sentences in order: what stage 1 says, what the gate asks, which stage answers and with what."""
    p1 = decision.p1
    normal = classes[normal_index]
    top = int(np.argmax(p1))
    t = decision.threshold
    _, vs = _vs_gate(p1, normal_index, t)
    threshold = f"the gate's threshold ({gate_text(t)})"
    top_text = f"Stage 1's top class is {classes[top]} ({shown_percent(p1, top)})"
    if decision.rule is GateRule.TOP1:
        if top != normal_index:
            steps = [
                f"{top_text}, not {normal} (P({normal}) = {shown_percent(p1, normal_index)}); the gate (top-1 rule) "
                f"needs {normal} on top and P({normal}) at or above {threshold}."
            ]
        else:
            steps = [
                f"Stage 1's top class is {normal}; the top-1 rule also compares P({normal}) with {threshold}: {vs}."
            ]
    else:
        steps = [f"Stage 1 gives P({normal}) {vs}, {threshold}."]
        if top != normal_index:
            steps[0] = f"{top_text}, not {normal}. " + steps[0]
    if decision.stage2_ran:
        steps.append("So stage 2 runs.")
        p2 = decision.p2 or ()
        steps.append(f"Stage 2 says {decision.label}: P({decision.label}) = {shown_percent(p2, decision.label_index)}.")
        if decision.stage2_said_normal:
            steps.append(f"Stage 2 overrules the doubt: the answer is {normal} after all.")
    elif top != normal_index:
        steps.append(
            f"So the gate passes although {normal} is not stage 1's top class: the P({normal}) rule looks at "
            f"P({normal}) only. The cascade answers {normal} without running stage 2 (the top-1 rule would have sent "
            "this image to stage 2)."
        )
    else:
        steps.append(f"So the cascade answers {normal} without running stage 2.")
    return steps


def answer_line(decision: Decision, classes: Sequence[str]) -> str:
    """The headline: the answer, the named probability behind it, and the stage that gave it."""
    probs = decision.p1 if decision.decided_by == 1 else (decision.p2 or ())
    label = decision.label
    line = f"{label} · P({label}) {shown_percent(probs, decision.label_index)} (stage {decision.decided_by})"
    top = int(np.argmax(decision.p1))
    if decision.decided_by == 1 and top != decision.label_index:
        line += f", although stage 1's top class is {classes[top]}"
    return line


def would_have_said(p2: Sequence[float], classes: Sequence[str]) -> str:
    """Stage 2's answer for an image the gate settled (it ran anyway, for this page only)."""
    i = int(np.argmax(p2))
    return f"What stage 2 would have said: {classes[i]}, P({classes[i]}) = {shown_percent(p2, i)}."


def flip_sentence(
    p1: Sequence[float],
    p2: Sequence[float],
    classes: Sequence[str],
    normal_index: int,
    rule: GateRule | str,
) -> str:
    """At which gate this image's route, and possibly its answer, changes (gates as the slider has them)."""
    rule = GateRule.parse(rule)
    normal = classes[normal_index]
    at = flip_threshold(np.asarray(p1), normal_index, rule)
    s2 = int(np.argmax(p2))
    if at is None:
        return (
            f"Under the top-1 rule no gate lets this image pass: stage 1's top class is not {normal}, so stage 2 "
            f"always decides ({classes[s2]})."
        )
    last = last_passing_gate(at)
    if last >= 1.0:
        return f"Stage 1 is certain: it settles this image as {normal} at every gate, {gate_text(1.0)} included."
    nxt = gate_text(quantize_gate(last + GATE_STEP))
    if last <= 0.0:
        route = f"Only at gate {gate_text(0.0)} stage 1 settles this image as {normal}; from {nxt} on stage 2 decides."
    else:
        route = (
            f"At any gate up to {gate_text(last)} stage 1 settles this image as {normal}; "
            f"from {nxt} on stage 2 decides."
        )
    if s2 == normal_index:
        return route + f" Stage 2 also says {normal}, so the answer is {normal} at every gate."
    return route + f" So the answer flips from {normal} to {classes[s2]} at {nxt}."


@dataclass(frozen=True)
class RuleOutcome:
    """What one gate rule does with this image at this gate."""

    rule: GateRule
    question: str
    passes: bool
    answer: str
    stage: int
    settles_up_to: str  # the gates at which stage 1 settles the image under this rule, in words


def rule_outcomes(
    p1: Sequence[float], p2: Sequence[float], classes: Sequence[str], normal_index: int, t: float
) -> list[RuleOutcome]:
    """Both gate rules on the same image and gate, side by side (they differ only below 0.5)."""
    normal = classes[normal_index]
    out = []
    for rule in GateRule:
        d = decide(np.asarray(p1), np.asarray(p2), tuple(classes), normal_index, t, rule)
        at = flip_threshold(np.asarray(p1), normal_index, rule)
        if at is None:
            upto = "never"
        elif last_passing_gate(at) >= 1.0:
            upto = "every gate"
        else:
            upto = f"gates ≤ {gate_text(last_passing_gate(at))}"
        question = (
            f"P({normal}) ≥ {gate_text(t)}"
            if rule is GateRule.P_NORMAL
            else (f"{normal} on top and P({normal}) ≥ {gate_text(t)}")
        )
        out.append(RuleOutcome(rule, question, not d.stage2_ran, d.label, d.decided_by, upto))
    return out
