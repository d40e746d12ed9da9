"""The metadata scatter: one trace per true class, wrong answers crossed, the gate line; the overlap sentence."""

from __future__ import annotations

import numpy as np

from dashboard.components.metadata_charts import Y_FINAL, metadata_scatter, overlap_sentence

CLASSES = ("normal", "osteopenia", "osteoporosis")


def test_scatter_by_true_class_with_the_gate():
    x = np.array([1.0, 0.9, np.nan, 0.5, 0.4])
    p = np.array([0.8, 0.3, 0.5, 0.2, 0.7])
    labels = np.array([0, 0, 1, 2, 2])
    final = np.array([0, 1, 1, 2, 0])
    fig = metadata_scatter(x, p, labels, final, CLASSES, "density", 0.6)
    assert [d.name for d in fig.data] == ["true normal", "true osteoporosis"]  # the NaN osteopenia image is left out
    assert list(fig.data[0].y) == [0.8, 0.3] and list(fig.data[0].marker.symbol) == ["circle", "x"]
    assert list(fig.data[1].marker.symbol) == ["circle", "x"]
    assert any(s.y0 == 0.6 for s in fig.layout.shapes)
    final_fig = metadata_scatter(x, p, labels, final, CLASSES, "density", 0.6, Y_FINAL)
    assert not final_fig.layout.shapes and np.allclose(np.round(final_fig.data[1].y), [2, 0])


def test_overlap_sentence():
    x = np.array([1.0, 0.9, 0.8, 0.85, 0.5])
    y = np.array([0, 0, 1, 1, 2])
    text = overlap_sentence(x, y, CLASSES, "density")
    assert "normal and osteopenia overlap" not in text  # 0.9–1.0 against 0.8–0.85: apart
    assert "do not overlap" in text
    text = overlap_sentence(np.array([1.0, 0.7, 0.8, 0.9]), np.array([0, 0, 1, 1]), CLASSES, "density")
    assert "normal and osteopenia overlap" in text and "no gate" in text
