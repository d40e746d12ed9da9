"""The cascade's decision for one image told in words, step by step, and where that decision would flip.

Built from :class:`cascade.gate.Decision` and :func:`cascade.gate.flip_threshold` only, so the words always match what
the gate computes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cascade.gate import Decision, GateRule, flip_threshold


def pct(p: float) -> str:
    """A probability as the pages write it: ``42 %``."""
    return f"{100 * float(p):.0f} %"


def decision_steps(decision: Decision, classes: Sequence[str], normal_index: int) -> list[str]:
    """Sentences in order: what stage 1 says, what the gate asks, which stage answers and with what."""
    p1 = decision.p1
    normal = classes[normal_index]
    p_normal = p1[normal_index]
    t = decision.threshold
    steps = [f"Stage 1 is {pct(p_normal)} sure this knee is {normal}; the gate asks {pct(t)}."]
    if decision.rule is GateRule.TOP1:
        top = int(np.argmax(p1))
        if top != normal_index:
            steps[0] = (
                f"Stage 1's top class is {classes[top]} ({pct(p1[top])}), not {normal} ({pct(p_normal)}); "
                f"the gate (top-1 rule) needs {normal} on top and at least {pct(t)}."
            )
        else:
            steps[0] = f"Stage 1's top class is {normal}, {pct(p_normal)} sure; the gate (top-1 rule) asks {pct(t)}."
    if decision.stage2_ran:
        steps.append("So stage 2 runs.")
        p2 = decision.p2 or ()
        steps.append(f"Stage 2 says {decision.label}, {pct(p2[decision.label_index])}.")
        if decision.stage2_said_normal:
            steps.append(f"Stage 2 overrules the doubt: the answer is {normal} after all.")
    else:
        steps.append(f"So the cascade answers {normal} without running stage 2.")
    return steps


def threshold_text(t: float) -> str:
    """A threshold with two decimals, or more where two would round it onto 0 or 1 and hide that it lies between."""
    text = f"{t:.2f}"
    if 0.0 < t < 1.0 and text in ("0.00", "1.00"):
        text = f"{t:.4f}"
    return text


def would_have_said(p2: Sequence[float], classes: Sequence[str]) -> str:
    """Stage 2's answer for an image the gate settled (it ran anyway, for this page only)."""
    i = int(np.argmax(p2))
    return f"What stage 2 would have said: {classes[i]}, {pct(p2[i])}."


def flip_sentence(
    p1: Sequence[float],
    p2: Sequence[float],
    classes: Sequence[str],
    normal_index: int,
    rule: GateRule | str,
) -> str:
    """At which threshold this image's route, and possibly its answer, changes."""
    rule = GateRule.parse(rule)
    normal = classes[normal_index]
    at = flip_threshold(np.asarray(p1), normal_index, rule)
    s2 = int(np.argmax(p2))
    if at is None:
        return (
            f"Under the top-1 rule no threshold lets this image pass: stage 1's top class is not {normal}, so stage 2 "
            f"always decides ({classes[s2]})."
        )
    if at >= 1.0:
        return f"Stage 1 is certain: it settles this image as {normal} at every threshold."
    t = threshold_text(at)
    route = f"At any threshold up to {t} stage 1 settles this image as {normal}; above {t} stage 2 decides."
    if s2 == normal_index:
        return route + f" Stage 2 also says {normal}, so the answer is {normal} at every threshold."
    return route + f" So the answer flips from {normal} to {classes[s2]} just above {t}."
