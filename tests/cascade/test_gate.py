import numpy as np
import pytest

from cascade.gate import GateRule, decide, decide_batch, flip_threshold, gate_margin, passes_gate

CLASSES = ("normal", "osteopenia", "osteoporosis")


def test_p_normal_rule_passes_at_threshold_and_stage2_not_needed():
    d = decide([0.6, 0.3, 0.1], None, CLASSES, 0, 0.6)
    assert d.label == "normal" and d.decided_by == 1 and not d.stage2_ran and d.p2 is None
    assert d.margin == pytest.approx(0.0)


def test_below_gate_stage2_decides_and_may_say_normal():
    d = decide([0.42, 0.38, 0.2], [0.1, 0.19, 0.71], CLASSES, 0, 0.6)
    assert d.stage2_ran and d.decided_by == 2 and d.label == "osteoporosis"
    assert d.margin == pytest.approx(0.42 - 0.6) and d.confidence == pytest.approx(0.71)
    d2 = decide([0.42, 0.38, 0.2], [0.8, 0.1, 0.1], CLASSES, 0, 0.6)
    assert d2.label == "normal" and d2.stage2_said_normal


def test_routed_without_stage2_probabilities_is_an_error():
    with pytest.raises(ValueError, match="stage-2"):
        decide([0.2, 0.5, 0.3], None, CLASSES, 0, 0.6)


def test_rules_differ_below_one_half():
    p1 = [0.45, 0.5, 0.05]  # normal is not top-1 but passes a 0.4 gate on p_normal
    assert passes_gate(p1, 0, 0.4, GateRule.P_NORMAL)
    assert not passes_gate(p1, 0, 0.4, GateRule.TOP1)
    p1b = [0.45, 0.3, 0.25]  # normal top-1: both rules agree
    assert passes_gate(p1b, 0, 0.4, "top1") and passes_gate(p1b, 0, 0.4, "p_normal")
    # at or above 0.5 the rules agree on a grid of random vectors
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=500)
    for t in (0.5, 0.6, 0.9):
        np.testing.assert_array_equal(passes_gate(p, 0, t, "top1"), passes_gate(p, 0, t, "p_normal"))
    assert (passes_gate(p, 0, 0.2, "top1") != passes_gate(p, 0, 0.2, "p_normal")).any()


def test_margin_sign_matches_gate_for_both_rules():
    rng = np.random.default_rng(1)
    p = rng.dirichlet([1, 1, 1], size=1000)
    for rule in GateRule:
        for t in (0.1, 0.3, 0.6):
            m = gate_margin(p, 0, t, rule)
            np.testing.assert_array_equal(m >= 0, passes_gate(p, 0, t, rule))


def test_flip_threshold():
    assert flip_threshold([0.42, 0.38, 0.2], 0) == pytest.approx(0.42)
    assert flip_threshold([0.3, 0.5, 0.2], 0, "top1") is None
    t = flip_threshold([0.42, 0.38, 0.2], 0, "top1")
    assert decide([0.42, 0.38, 0.2], [0, 1, 0], CLASSES, 0, t, "top1").decided_by == 1
    assert decide([0.42, 0.38, 0.2], [0, 1, 0], CLASSES, 0, t + 1e-6, "top1").decided_by == 2


def test_batch_matches_scalar():
    rng = np.random.default_rng(2)
    p1, p2 = rng.dirichlet([1, 1, 1], size=200), rng.dirichlet([1, 1, 1], size=200)
    for rule in GateRule:
        b = decide_batch(p1, p2, 0, 0.55, rule)
        for i in range(200):
            d = decide(p1[i], p2[i], CLASSES, 0, 0.55, rule)
            assert d.label_index == b.final[i] and d.stage2_ran == b.routed[i]
            assert d.margin == pytest.approx(b.margin[i])


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_bad_threshold(bad):
    with pytest.raises(ValueError, match="threshold"):
        passes_gate([0.5, 0.3, 0.2], 0, bad)


def test_unknown_rule():
    with pytest.raises(ValueError, match="rule"):
        GateRule.parse("majority")
