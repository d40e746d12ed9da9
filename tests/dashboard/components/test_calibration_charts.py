"""Reliability figures carry the bins they are given; the gate-move table lines up raw and calibrated suggestions."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.calibration import calibration_report, reliability_bins
from cascade.sweep import Suggestion
from dashboard.components.calibration_charts import gate_moves, reliability_figure, scores_table


def test_reliability_figure_plots_the_non_empty_bins_and_their_counts():
    before = reliability_bins([0.05, 0.15, 0.95, 0.92], [0, 1, 1, 0], 10, "equal-width")
    after = reliability_bins([0.3, 0.4, 0.7, 0.6], [0, 1, 1, 0], 10, "equal-mass")
    fig = reliability_figure(before, after, "t", gate=0.6)
    lines = [d for d in fig.data if d.type == "scatter"]
    bars = [d for d in fig.data if d.type == "bar"]
    assert [d.name.split(" (")[0] for d in lines] == ["calibrated ideal", "raw", "temperature-scaled"]
    assert list(lines[1].x) == pytest.approx([0.05, 0.15, 0.935])  # three non-empty bins of ten
    assert list(lines[1].y) == pytest.approx([0.0, 1.0, 0.5])
    assert f"ECE {before.ece:.3f}" in lines[1].name
    assert sum(bars[0].y) == 4 and len(bars[1].y) == 4  # equal-mass: one bin per image here
    assert any(s.x0 == 0.6 for s in fig.layout.shapes)
    assert len(reliability_figure(before, None, "raw only").data) == 3


def test_gate_moves_and_scores_tables():
    raw = [Suggestion("a", "A", 0.4, "x"), Suggestion("b", "B", None, "none")]
    cal = [Suggestion("a", "A", 0.55, "y"), Suggestion("b", "B", 0.3, "z")]
    t = gate_moves(raw, cal)
    assert t["move"].iloc[0] == pytest.approx(0.15) and t["move"].isna().iloc[1]
    p = np.array([[0.7, 0.3], [0.4, 0.6]])
    r = calibration_report(p, np.array([0, 0]), 0, 2)
    s = scores_table(r, r)
    assert (s["raw"] == s["calibrated"]).all() and len(s) == 8
