"""The decision told in words must match what the gate decided, to the last digit shown."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.gate import GateRule, decide
from dashboard.components.narrative import (
    answer_line,
    decision_steps,
    flip_sentence,
    pct,
    rule_outcomes,
    shown_percent,
    would_have_said,
)

CLASSES = ("normal", "osteopenia", "osteoporosis")


def test_routed_to_stage_two_reads_like_the_issue():
    p1, p2 = np.array([0.42, 0.38, 0.20]), np.array([0.09, 0.20, 0.71])
    d = decide(p1, p2, CLASSES, 0, 0.6)
    assert decision_steps(d, CLASSES, 0) == [
        "Stage 1 gives P(normal) 42 % < 60 %, the gate's threshold (0.600).",
        "So stage 2 runs.",
        "Stage 2 says osteoporosis: P(osteoporosis) = 71 %.",
    ]
    assert answer_line(d, CLASSES) == "osteoporosis · P(osteoporosis) 71 % (stage 2)"


def test_settled_by_the_gate_and_what_stage_two_would_have_said():
    p1, p2 = np.array([0.8, 0.1, 0.1]), np.array([0.3, 0.6, 0.1])
    d = decide(p1, p2, CLASSES, 0, 0.6)
    steps = decision_steps(d, CLASSES, 0)
    assert steps[-1] == "So the cascade answers normal without running stage 2."
    assert would_have_said(p2, CLASSES) == "What stage 2 would have said: osteopenia, P(osteopenia) = 60 %."
    assert answer_line(d, CLASSES) == "normal · P(normal) 80 % (stage 1)"


def test_steps_and_flip_box_agree_near_a_tie():
    # The issue's case: slider 0.46, P(normal) 0.4566. Steps used to say "46 % sure; gate asks 46 %, so stage 2 runs"
    # while the flip box said stage 1 settles it up to 0.46.
    p1, p2 = np.array([0.4566, 0.3, 0.2434]), np.array([0.1, 0.7, 0.2])
    d = decide(p1, p2, CLASSES, 0, 0.46)
    assert d.stage2_ran
    first = decision_steps(d, CLASSES, 0)[0]
    assert "45.7 % < 46 %" in first
    flip = flip_sentence(p1, p2, CLASSES, 0, "p_normal")
    assert "up to 0.456" in flip and "from 0.457 on stage 2 decides" in flip
    assert decide(p1, p2, CLASSES, 0, 0.456).decided_by == 1 and decide(p1, p2, CLASSES, 0, 0.457).decided_by == 2


def test_passing_on_p_normal_although_normal_is_not_the_top_class_is_said_plainly():
    # The issue's case: rule p_normal, gate 0.44, stage 1's top class osteopenia 55 %, P(normal) 44 %.
    p1, p2 = np.array([0.44, 0.55, 0.01]), np.array([0.2, 0.7, 0.1])
    d = decide(p1, p2, CLASSES, 0, 0.44)
    assert d.decided_by == 1 and d.label == "normal"
    steps = " ".join(decision_steps(d, CLASSES, 0))
    assert "top class is osteopenia (55 %), not normal" in steps
    assert "passes although normal is not stage 1's top class" in steps
    line = answer_line(d, CLASSES)
    assert line == "normal · P(normal) 44 % (stage 1), although stage 1's top class is osteopenia"
    assert "confidence" not in line


def test_stage_two_saying_normal_is_called_out():
    d = decide(np.array([0.5, 0.3, 0.2]), np.array([0.7, 0.2, 0.1]), CLASSES, 0, 0.6)
    assert "normal after all" in decision_steps(d, CLASSES, 0)[-1]


def test_top1_rule_explains_the_top_class():
    d = decide(np.array([0.4, 0.45, 0.15]), np.array([0.1, 0.8, 0.1]), CLASSES, 0, 0.3, GateRule.TOP1)
    first = decision_steps(d, CLASSES, 0)[0]
    assert "top class is osteopenia (45 %)" in first and "top-1 rule" in first


def test_percentages_in_the_words_are_the_bars_percentages():
    p = np.array([0.335, 0.335, 0.33])  # bars: 34 / 33 / 33 (largest remainder), not 34 / 34 / 33
    assert [shown_percent(p, i) for i in range(3)] == ["34 %", "33 %", "33 %"]
    d = decide(np.array([0.2, 0.3, 0.5]), p, CLASSES, 0, 0.6)
    assert "Stage 2 says normal: P(normal) = 34 %." in decision_steps(d, CLASSES, 0)


@pytest.mark.parametrize(
    ("p1", "p2", "rule", "expected"),
    [
        ([0.42, 0.38, 0.2], [0.1, 0.2, 0.7], "p_normal", "flips from normal to osteoporosis at 0.421"),
        ([0.42, 0.38, 0.2], [0.8, 0.1, 0.1], "p_normal", "the answer is normal at every gate"),
        ([0.3, 0.5, 0.2], [0.1, 0.8, 0.1], "top1", "no gate lets this image pass"),
    ],
)
def test_flip_sentence(p1, p2, rule, expected):
    assert expected in flip_sentence(np.array(p1), np.array(p2), CLASSES, 0, rule)


def test_flip_sentence_agrees_with_the_gate():
    p1, p2 = np.array([0.42, 0.38, 0.2]), np.array([0.1, 0.2, 0.7])
    assert decide(p1, p2, CLASSES, 0, 0.42).label == "normal"
    assert decide(p1, p2, CLASSES, 0, 0.421).label == "osteoporosis"
    assert "up to 0.420" in flip_sentence(p1, p2, CLASSES, 0, "p_normal")


def test_pct():
    assert pct(0.424) == "42 %" and pct(1.0) == "100 %" and pct(0.4566, 2) == "45.66 %"


def test_thresholds_near_the_ends_keep_their_digits():
    p2 = np.array([0.1, 0.8, 0.1])
    assert "up to 0.999" in flip_sentence(np.array([0.9996, 0.0003, 0.0001]), p2, CLASSES, 0, "p_normal")
    assert "every gate" in flip_sentence(np.array([1.0, 0.0, 0.0]), p2, CLASSES, 0, "p_normal")
    assert "Only at gate 0.000" in flip_sentence(np.array([0.0004, 0.5, 0.4996]), p2, CLASSES, 0, "p_normal")


def test_both_rules_side_by_side():
    p1, p2 = np.array([0.44, 0.55, 0.01]), np.array([0.2, 0.7, 0.1])
    by_rule = {o.rule: o for o in rule_outcomes(p1, p2, CLASSES, 0, 0.44)}
    assert by_rule[GateRule.P_NORMAL].passes and by_rule[GateRule.P_NORMAL].answer == "normal"
    assert not by_rule[GateRule.TOP1].passes and by_rule[GateRule.TOP1].answer == "osteopenia"
    assert by_rule[GateRule.P_NORMAL].settles_up_to == "gates ≤ 0.440"
    assert by_rule[GateRule.TOP1].settles_up_to == "never"
    same = rule_outcomes(np.array([0.8, 0.1, 0.1]), p2, CLASSES, 0, 0.6)
    assert same[0].answer == same[1].answer == "normal"  # above 0.5 the rules agree
