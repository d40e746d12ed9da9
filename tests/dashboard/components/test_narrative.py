"""The decision told in words must match what the gate decided."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.gate import GateRule, decide
from dashboard.components.narrative import decision_steps, flip_sentence, pct, threshold_text, would_have_said

CLASSES = ("normal", "osteopenia", "osteoporosis")


def test_routed_to_stage_two_reads_like_the_issue():
    p1, p2 = np.array([0.42, 0.38, 0.20]), np.array([0.09, 0.20, 0.71])
    d = decide(p1, p2, CLASSES, 0, 0.6)
    assert decision_steps(d, CLASSES, 0) == [
        "Stage 1 is 42 % sure this knee is normal; the gate asks 60 %.",
        "So stage 2 runs.",
        "Stage 2 says osteoporosis, 71 %.",
    ]


def test_settled_by_the_gate_and_what_stage_two_would_have_said():
    p1, p2 = np.array([0.8, 0.1, 0.1]), np.array([0.3, 0.6, 0.1])
    d = decide(p1, p2, CLASSES, 0, 0.6)
    steps = decision_steps(d, CLASSES, 0)
    assert steps[-1] == "So the cascade answers normal without running stage 2."
    assert would_have_said(p2, CLASSES) == "What stage 2 would have said: osteopenia, 60 %."


def test_stage_two_saying_normal_is_called_out():
    d = decide(np.array([0.5, 0.3, 0.2]), np.array([0.7, 0.2, 0.1]), CLASSES, 0, 0.6)
    assert "normal after all" in decision_steps(d, CLASSES, 0)[-1]


def test_top1_rule_explains_the_top_class():
    d = decide(np.array([0.4, 0.45, 0.15]), np.array([0.1, 0.8, 0.1]), CLASSES, 0, 0.3, GateRule.TOP1)
    first = decision_steps(d, CLASSES, 0)[0]
    assert "top class is osteopenia (45 %)" in first and "top-1 rule" in first


@pytest.mark.parametrize(
    ("p1", "p2", "rule", "expected"),
    [
        ([0.42, 0.38, 0.2], [0.1, 0.2, 0.7], "p_normal", "flips from normal to osteoporosis just above 0.42"),
        ([0.42, 0.38, 0.2], [0.8, 0.1, 0.1], "p_normal", "the answer is normal at every threshold"),
        ([0.3, 0.5, 0.2], [0.1, 0.8, 0.1], "top1", "no threshold lets this image pass"),
    ],
)
def test_flip_sentence(p1, p2, rule, expected):
    assert expected in flip_sentence(np.array(p1), np.array(p2), CLASSES, 0, rule)


def test_flip_sentence_agrees_with_the_gate():
    p1, p2 = np.array([0.42, 0.38, 0.2]), np.array([0.1, 0.2, 0.7])
    assert decide(p1, p2, CLASSES, 0, 0.42).label == "normal"
    assert decide(p1, p2, CLASSES, 0, 0.43).label == "osteoporosis"
    assert "up to 0.42" in flip_sentence(p1, p2, CLASSES, 0, "p_normal")


def test_pct():
    assert pct(0.424) == "42 %" and pct(1.0) == "100 %"


def test_thresholds_near_the_ends_keep_their_digits():
    p2 = np.array([0.1, 0.8, 0.1])
    assert "up to 0.9996" in flip_sentence(np.array([0.9996, 0.0003, 0.0001]), p2, CLASSES, 0, "p_normal")
    assert "every threshold" in flip_sentence(np.array([1.0, 0.0, 0.0]), p2, CLASSES, 0, "p_normal")
    assert threshold_text(0.6) == "0.60" and threshold_text(0.0004) == "0.0004"
