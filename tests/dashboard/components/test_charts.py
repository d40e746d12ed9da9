"""Figures carry the numbers they are given: the gate on the normal bar, flows that add up, counts in the cells."""

from __future__ import annotations

import numpy as np

from cascade.gate import decide_batch
from cascade.sweep import sweep
from dashboard.components.charts import (
    CLASS_COLOURS,
    _rgba,
    class_curves,
    confusion_heatmap,
    flow_diagram,
    flow_links,
    headline_curves,
    p_normal_strip,
    probability_bars,
    rule_curves,
)

CLASSES = ("normal", "osteopenia", "osteoporosis")


def test_gate_is_drawn_on_the_normal_bar_only():
    fig = probability_bars([0.42, 0.38, 0.2], CLASSES, "Stage 1", gate=0.6, normal_index=0)
    (line,) = [s for s in fig.layout.shapes if s.type == "line"]
    assert line.x0 == line.x1 == 0.6
    assert line.y0 < 0 < line.y1 < 1  # spans bar 0 (normal), not its neighbours
    assert list(fig.data[0].text) == ["42 %", "38 %", "20 %"]
    assert not probability_bars([0.2, 0.3, 0.5], CLASSES, "Stage 2").layout.shapes


def _random(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(3), n), rng.dirichlet(np.ones(3), n), rng.integers(0, 3, n)


def test_curves_plot_the_sweep():
    p1, p2, y = _random(50, 0)
    s = sweep(p1, p2, y, 0)
    fig = headline_curves(s, CLASSES, current=0.5, saved=0.6)
    accuracy = next(t for t in fig.data if t.name == "accuracy")
    np.testing.assert_allclose(accuracy.y, s.accuracy)
    assert {v.x0 for v in fig.layout.shapes} == {0.5, 0.6}
    assert len(headline_curves(s, CLASSES, current=0.6, saved=0.6).layout.shapes) == 1  # one line when they coincide
    # Per class: three recalls and the two abnormal classes' specificities (normal's is the abnormal sensitivity).
    names = [t.name for t in class_curves(s, CLASSES, 0.5).data]
    assert names[:3] == ["normal recall", "osteopenia recall", "osteoporosis recall"]
    assert names[3:] == ["osteopenia specificity", "osteoporosis specificity"]


def test_one_word_one_meaning_across_the_charts():
    """'normal specificity' used to name two different numbers; now each name is one number, defined on hover."""
    p1, p2, y = _random(60, 3)
    s = sweep(p1, p2, y, 0)
    traces = [*headline_curves(s, CLASSES, 0.5).data, *class_curves(s, CLASSES, 0.5).data]
    by_name: dict[str, np.ndarray] = {}
    for tr in traces:
        assert "<i>" in tr.hovertemplate  # a one-line definition on hover
        if tr.name in by_name:
            np.testing.assert_allclose(tr.y, by_name[tr.name])
        by_name[tr.name] = np.asarray(tr.y)
    assert "normal specificity" not in by_name
    np.testing.assert_allclose(by_name["normal recall"], s.normal_recall)
    np.testing.assert_allclose(by_name["normal recall"], s.sensitivity[:, 0])


def test_rule_curves_show_both_rules():
    p1, p2, y = _random(40, 4)
    sweeps = {r: sweep(p1, p2, y, 0, None, r) for r in ("p_normal", "top1")}
    fig = rule_curves(sweeps, {"p_normal": "P(normal) ≥ t", "top1": "top1"}, 0.5)
    assert len(fig.data) == 6
    top1_sent = next(t for t in fig.data if t.name == "sent to stage 2 · top1")
    np.testing.assert_allclose(top1_sent.y, sweeps["top1"].routed_share)
    assert {t.line.dash for t in fig.data} == {"solid", "dash"}


def test_p_normal_strip_has_every_image_and_the_gate():
    p1, _, y = _random(30, 5)
    rels = [f"test/x/{i}.png" for i in range(30)]
    fig = p_normal_strip(p1[:, 0], y, CLASSES, rels, 0.4, 0.6)
    xs = np.concatenate([np.asarray(t.x) for t in fig.data])
    assert sorted(xs) == sorted(p1[:, 0])
    assert sorted(np.concatenate([list(t.customdata) for t in fig.data])) == sorted(rels)
    assert {v.x0 for v in fig.layout.shapes if v.type == "line"} == {0.4, 0.6}
    shade = next(v for v in fig.layout.shapes if v.type == "rect")
    assert shade.x0 == 0.4  # right of the gate: stage 1 answers normal
    moved = p_normal_strip(p1[:, 0], y, CLASSES, rels, 0.7)
    assert {v.x0 for v in moved.layout.shapes if v.type == "line"} == {0.7}
    texts = np.concatenate([list(t.text) for t in moved.data])
    assert (np.asarray(texts) == "stage 1 answers normal").sum() == int((p1[:, 0] >= 0.7).sum())


def test_flows_keep_the_true_class_and_show_every_count():
    p1, p2, y = _random(40, 1)
    d = decide_batch(p1, p2, 0, 0.4)
    links = flow_links(y, d.routed, d.final, 3)
    first = [k for k in links if k.step == 0]
    second = [k for k in links if k.step == 1]
    assert sum(k.count for k in first) == sum(k.count for k in second) == 40
    for k in second:  # the true class survives the second step
        assert k.count == int(((y == k.true) & (d.routed == k.routed) & (d.final == k.final)).sum())
    fig = flow_diagram(y, d.routed, d.final, CLASSES)
    counts = fig.data[-1]
    assert list(counts.text) == [str(k.count) for k in links]  # a count on every band
    assert [list(c) for c in counts.customdata] == [
        [k.true, int(k.routed), -1 if k.final is None else k.final] for k in links
    ]
    bands = [sh for sh in fig.layout.shapes if sh.type == "path"]
    assert [b.fillcolor for b in bands] == [_rgba(CLASS_COLOURS[k.true], 0.45) for k in links]
    routed_true = {k.true for k in second if k.routed}
    assert len(routed_true) > 1  # bands after "sent to stage 2" still carry several true classes' colours


def test_confusion_shows_counts():
    cm = np.array([[3, 1, 0], [0, 2, 2], [1, 0, 5]])
    heat = confusion_heatmap(cm, CLASSES).data[0]
    assert heat.text[1][2].startswith("2<br>50 %")
