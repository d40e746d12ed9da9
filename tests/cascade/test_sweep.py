"""The vectorised sweep must equal deciding every threshold one by one with the gate and metrics modules."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.gate import GateRule, decide_batch, gate_key
from cascade.metrics import abnormal_sensitivity, confusion_matrix, per_class_rates
from cascade.sweep import (
    DEFAULT_THRESHOLDS,
    SweepError,
    suggest_gates,
    sweep,
)

NI = 0


def _random_preds(n: int, seed: int, c: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p1 = rng.dirichlet(np.ones(c), n)
    p2 = rng.dirichlet(np.ones(c), n)
    y = rng.integers(0, c, n)
    # exact threshold values and ties exercise the ≥ boundary
    p1[:5, NI] = [0.6, 0.6, 0.25, 0.5, 1.0]
    return p1, p2, y


@pytest.mark.parametrize("rule", list(GateRule))
def test_sweep_matches_decide_batch_at_every_threshold(rule):
    p1, p2, y = _random_preds(400, seed=3)
    thresholds = np.concatenate([DEFAULT_THRESHOLDS, [0.6, 0.25, 0.333]])
    s = sweep(p1, p2, y, NI, thresholds, rule)
    for i, t in enumerate(thresholds):
        dec = decide_batch(p1, p2, NI, t, rule)
        cm = confusion_matrix(y, dec.final, 3)
        np.testing.assert_array_equal(s.confusion[i], cm)
        rates = per_class_rates(cm)
        np.testing.assert_allclose(s.sensitivity[i], rates["sensitivity"])
        np.testing.assert_allclose(s.specificity[i], rates["specificity"])
        assert s.accuracy[i] == pytest.approx((dec.final == y).mean())
        assert s.abnormal_sensitivity[i] == pytest.approx(abnormal_sensitivity(y, dec.final, NI))
        assert s.routed_share[i] == pytest.approx(dec.routed.mean())
        normal = y == NI
        assert s.normal_recall[i] == pytest.approx((dec.final[normal] == NI).mean())


def test_rules_differ_below_one_half():
    p1 = np.array([[0.4, 0.5, 0.1], [0.45, 0.3, 0.25]])
    p2 = np.array([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    y = np.array([1, 0])
    keys = gate_key(p1, NI, GateRule.TOP1)
    assert keys[0] == -np.inf and keys[1] == pytest.approx(0.45)
    a = sweep(p1, p2, y, NI, [0.3], GateRule.P_NORMAL)
    b = sweep(p1, p2, y, NI, [0.3], GateRule.TOP1)
    assert a.routed_share[0] == 0.0  # both pass P(normal) ≥ 0.3
    assert b.routed_share[0] == 0.5  # the first is not top-1 normal


def test_abnormal_sensitivity_never_falls_as_the_gate_rises():
    p1, p2, y = _random_preds(300, seed=5)
    sens = sweep(p1, p2, y, NI).abnormal_sensitivity
    assert np.all(np.diff(sens) >= -1e-12)


def test_suggestions_agree_with_brute_force():
    p1, p2, y = _random_preds(500, seed=7)
    s = sweep(p1, p2, y, NI)
    got = {g.key: g for g in suggest_gates(s, target_sensitivity=0.8, cost_ratio=4.0)}
    t = DEFAULT_THRESHOLDS
    acc = [(decide_batch(p1, p2, NI, x).final == y).mean() for x in t]
    best = max(acc)
    assert got["max_accuracy"].threshold == min(x for x, a in zip(t, acc, strict=True) if a >= best - 1e-12)
    sens = s.abnormal_sensitivity
    feasible = [x for x, v in zip(t, sens, strict=True) if v >= 0.8]
    assert got["sensitivity"].threshold == (min(feasible) if feasible else None)
    costs = []
    for x in t:
        final = decide_batch(p1, p2, NI, x).final
        missed = ((y != NI) & (final == NI)).sum()
        flagged = ((y == NI) & (final != NI)).sum()
        costs.append((4.0 * missed + flagged) / len(y))
    assert got["min_cost"].threshold == min(x for x, c in zip(t, costs, strict=True) if c <= min(costs) + 1e-12)
    j = s.youden_j
    assert j[list(t).index(got["youden"].threshold)] == pytest.approx(np.nanmax(j))


def test_unreachable_sensitivity_target_suggests_nothing():
    p1 = np.array([[0.9, 0.05, 0.05], [0.2, 0.4, 0.4]])
    p2 = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05]])  # stage 2 calls everything normal
    y = np.array([1, 2])
    got = {g.key: g for g in suggest_gates(sweep(p1, p2, y, NI), target_sensitivity=0.9)}
    assert got["sensitivity"].threshold is None
    assert "no threshold" in got["sensitivity"].why


def test_bad_inputs_raise_clear_errors():
    p1, p2, y = _random_preds(10, seed=1)
    p2[3] = np.nan
    with pytest.raises(SweepError, match="stage 2 run on every image"):
        sweep(p1, p2, y, NI)
    with pytest.raises(SweepError, match="labels"):
        sweep(p1, np.nan_to_num(p2), y + 5, NI)
    with pytest.raises(SweepError, match="N×C"):
        sweep(p1, p2[:5], y, NI)
    with pytest.raises(SweepError, match="cost ratio"):
        sweep(p1, np.nan_to_num(p2), y, NI).expected_cost(0)


def test_empty_set_gives_nan_not_errors():
    s = sweep(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, int), NI)
    assert s.n == 0 and np.isnan(s.accuracy).all()
    assert all(g.threshold is None for g in suggest_gates(s))
