"""Figures carry the numbers they are given: the gate on the normal bar, flows that add up, counts in the cells."""

from __future__ import annotations

import numpy as np

from cascade.gate import decide_batch
from cascade.sweep import flow_counts, sweep
from dashboard.components.charts import (
    class_curves,
    confusion_heatmap,
    flow_sankey,
    headline_curves,
    probability_bars,
)

CLASSES = ("normal", "osteopenia", "osteoporosis")


def test_gate_is_drawn_on_the_normal_bar_only():
    fig = probability_bars([0.42, 0.38, 0.2], CLASSES, "Stage 1", gate=0.6, normal_index=0)
    (line,) = [s for s in fig.layout.shapes if s.type == "line"]
    assert line.x0 == line.x1 == 0.6
    assert line.y0 < 0 < line.y1 < 1  # spans bar 0 (normal), not its neighbours
    assert list(fig.data[0].text) == ["42 %", "38 %", "20 %"]
    assert not probability_bars([0.2, 0.3, 0.5], CLASSES, "Stage 2").layout.shapes


def test_curves_plot_the_sweep():
    rng = np.random.default_rng(0)
    p1, p2, y = rng.dirichlet(np.ones(3), 50), rng.dirichlet(np.ones(3), 50), rng.integers(0, 3, 50)
    s = sweep(p1, p2, y, 0)
    fig = headline_curves(s, current=0.5, saved=0.6)
    accuracy = next(t for t in fig.data if t.name == "accuracy")
    np.testing.assert_allclose(accuracy.y, s.accuracy)
    assert {v.x0 for v in fig.layout.shapes} == {0.5, 0.6}
    assert len(headline_curves(s, current=0.6, saved=0.6).layout.shapes) == 1  # one line when they coincide
    assert len(class_curves(s, CLASSES, 0.5).data) == 6


def test_sankey_flows_add_up_and_confusion_shows_counts():
    rng = np.random.default_rng(1)
    p1, p2, y = rng.dirichlet(np.ones(3), 40), rng.dirichlet(np.ones(3), 40), rng.integers(0, 3, 40)
    d = decide_batch(p1, p2, 0, 0.4)
    into, out = flow_counts(y, d.routed, d.final, 3)
    link = flow_sankey(into, out, CLASSES).data[0].link
    values, sources = np.array(link.value), np.array(link.source)
    assert values[sources < 3].sum() == values[sources >= 3].sum() == 40
    cm = np.array([[3, 1, 0], [0, 2, 2], [1, 0, 5]])
    heat = confusion_heatmap(cm, CLASSES).data[0]
    assert heat.text[1][2].startswith("2<br>50 %")
