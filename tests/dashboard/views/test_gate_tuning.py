"""Gate tuning in AppTest: metric names with definitions, deltas only for changes, the views a teacher asked for."""

from __future__ import annotations

import numpy as np

from cascade.config import load_config
from cascade.dataset import index_dataset
from cascade.gate import decide_batch
from cascade.predcache import cached_predictions
from cascade.sweep import DEFAULT_THRESHOLDS, sweep
from dashboard.components.browse import CHOSEN_KEY
from dashboard.components.numbers import gate_text
from tests.dashboard.conftest import assert_clean, ensure_predictions, open_app, widget


def _tuning(app_env):
    return ensure_predictions(open_app("views/gate_tuning.py"))


def _preds(app_env, tiny_dataset):
    from dashboard.resources import open_cascade_cached

    cascade = open_cascade_cached(load_config(app_env), "auto")
    preds = cached_predictions(cascade, index_dataset(tiny_dataset), "test", app_env.parent / "predictions")
    return cascade, preds


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def _set_gate(at, value: float):
    widget(at.sidebar.slider, "Gate threshold").set_value(value)
    return at.run()


def test_metrics_are_named_once_and_defined_on_hover(app_env):
    at = _tuning(app_env)
    assert_clean(at)
    labels = [m.label for m in at.metric]
    assert labels[:4] == ["Accuracy", "Abnormal sensitivity", "Normal recall", "Sent to stage 2"]
    assert all(m.help and m.help.endswith(".") for m in at.metric[:4])
    assert not any("specificity" in m.label.lower() for m in at.metric)


def test_no_delta_when_a_metric_did_not_change(app_env, tiny_dataset):
    at = _tuning(app_env)
    _, preds = _preds(app_env, tiny_dataset)
    s = sweep(preds.p1, preds.p2, preds.labels, 0, DEFAULT_THRESHOLDS)
    saved = int(np.argmin(np.abs(DEFAULT_THRESHOLDS - 0.6)))
    same = [i for i in range(len(DEFAULT_THRESHOLDS)) if i != saved and s.accuracy[i] == s.accuracy[saved]]
    assert same, "no other gate with the saved gate's accuracy on the tiny split"
    _set_gate(at, float(DEFAULT_THRESHOLDS[same[0]]))
    accuracy = widget(at.metric, "Accuracy")
    assert not accuracy.delta  # was "↑ +0.0 pts vs saved"
    changed = [i for i in range(len(DEFAULT_THRESHOLDS)) if s.routed_share[i] != s.routed_share[saved]]
    _set_gate(at, float(DEFAULT_THRESHOLDS[changed[0]]))
    assert widget(at.metric, "Sent to stage 2").delta.endswith("pts vs saved")
    assert_clean(at)


def test_stage_comparison_follows_the_gate(app_env, tiny_dataset):
    at = _tuning(app_env)
    _, preds = _preds(app_env, tiny_dataset)
    for t in (0.0, 1.0):
        _set_gate(at, t)
        table = next(d.value for d in at.dataframe if "what it means" in d.value.columns)
        column = f"cascade at gate {gate_text(t)}"
        d = decide_batch(preds.p1, preds.p2, 0, t)
        assert table.loc["accuracy", column] == _pct((d.final == preds.labels).mean())
        assert table.loc["sent to stage 2", column] == _pct(d.routed.mean())
        assert table.loc["accuracy", "stage 2 alone"] == _pct((preds.p2.argmax(1) == preds.labels).mean())
        assert table.loc["sent to stage 2", "stage 1 alone"] == "—"
        # The headline metrics and the table agree, digit for digit.
        assert widget(at.metric, "Sent to stage 2").value == table.loc["sent to stage 2", column]
        assert widget(at.metric, "Accuracy").value == table.loc["accuracy", column]
    assert_clean(at)


def test_strip_flows_and_both_rules_are_drawn(app_env):
    at = _tuning(app_env)
    charts = at.get("plotly_chart")
    assert len(charts) >= 6  # strip, two curve charts, confusion, flows, rules
    assert any(s.value == "What the gate sees" for s in at.subheader)
    assert any(s.value == "The two gate rules" for s in at.subheader)
    assert_clean(at)


def test_a_flipped_image_opens_on_explain(app_env):
    at = _tuning(app_env)
    _set_gate(at, 0.0)
    flips = next((d for d in at.dataframe if "image" in d.value.columns), None)
    assert flips is not None, "no flipped answers between 0.60 and 0.00 on the tiny split"
    rel = flips.value["image"].iloc[0]
    at.session_state["flips"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    assert at.title[0].value == "Explain an image"
    assert widget(at.selectbox, "Dataset image").value == rel
    assert widget(at.sidebar.slider, "Gate threshold").value == 0.0  # the gate came along


def test_a_chart_selection_filters_the_dataset_page(app_env):
    at = _tuning(app_env)
    strip_rels = ["test/normal/normal_1.png", "test/osteopenia/osteopenia_2.png"]
    selection = {"points": [{"customdata": r} for r in strip_rels], "point_indices": [], "box": [], "lasso": []}
    at.session_state["strip"] = {"selection": selection}  # what a box selection of two dots gives the page
    at.run()
    assert at.title[0].value == "Dataset"
    assert at.session_state[CHOSEN_KEY][0] == tuple(strip_rels)
    text = next(c.value for c in at.caption if " images of 'test' match" in c.value)
    assert text.startswith("2 of 12")
    assert_clean(at)
