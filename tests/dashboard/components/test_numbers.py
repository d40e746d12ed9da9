"""One gate precision, percentages that add up, comparisons that read the way the gate decided."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.gate import passes_gate
from dashboard.components.numbers import (
    GATE_STEP,
    GateValueError,
    compare_text,
    gate_text,
    largest_remainder,
    last_passing_gate,
    parse_gate,
    percent_labels,
    quantize_gate,
)


def test_percentages_of_a_vector_add_up_to_100_where_plain_rounding_does_not():
    p = [0.335, 0.335, 0.33]  # plain rounding: 34 + 34 + 33 = 101
    assert sum(round(100 * x) for x in p) == 101
    assert largest_remainder(p).tolist() == [34.0, 33.0, 33.0]
    assert percent_labels([0.125, 0.125, 0.75]) == ["13 %", "12 %", "75 %"]  # ties go to the earlier class
    assert largest_remainder([0.4566, 0.3, 0.2434], decimals=1).tolist() == [45.7, 30.0, 24.3]


def test_percentages_always_add_up_and_stay_within_one_unit():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        p = rng.dirichlet(np.ones(rng.integers(2, 6)) * rng.uniform(0.1, 3))
        shown = largest_remainder(p)
        assert shown.sum() == 100
        assert np.all(np.abs(shown - 100 * p) < 1)


def test_largest_remainder_refuses_what_is_no_probability_vector():
    with pytest.raises(ValueError):
        largest_remainder([0.5, -0.1, 0.6])
    with pytest.raises(ValueError):
        largest_remainder([0.0, 0.0])


def test_one_gate_precision():
    assert pytest.approx(0.001) == GATE_STEP
    assert gate_text(0.6) == "0.600" and gate_text(0.456) == "0.456" and gate_text(1) == "1.000"
    assert quantize_gate(0.4564) == 0.456 and quantize_gate(-1) == 0.0 and quantize_gate(3) == 1.0
    assert parse_gate("0.456") == 0.456 and parse_gate("1") == 1.0 and parse_gate(" .5 ") == 0.5


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0.4567", "more than 3 decimals"),
        ("7", "outside 0 … 1"),
        ("-0.1", "outside"),
        ("abc", "not a number"),
        ("nan", "outside"),
        ("", "not a number"),
    ],
)
def test_bad_gate_values_say_what_is_wrong(text, reason):
    with pytest.raises(GateValueError, match=reason):
        parse_gate(text)


@pytest.mark.parametrize(
    ("p", "t", "expected"),
    [
        (0.4566, 0.46, ("45.7 %", "<", "46 %")),  # the case: never "46 % < 46 %"
        (0.45996, 0.46, ("45.996 %", "<", "46 %")),
        (0.4601, 0.46, ("46.01 %", "≥", "46 %")),
        (0.8, 0.6, ("80 %", "≥", "60 %")),
        (0.4559, 0.456, ("45.59 %", "<", "45.6 %")),
        (0.46, 0.46, ("46 %", "=", "46 %")),
    ],
)
def test_comparisons_with_the_gate_read_the_way_it_decided(p, t, expected):
    assert compare_text(p, t) == expected


def test_comparison_keeps_the_bar_label_when_it_reads_right():
    # P(normal) 0.455 is written 45 % on its bar (largest remainder); against a gate of 0.40 that already reads right.
    assert compare_text(0.455, 0.40, first=45.0) == ("45 %", "≥", "40 %")
    # Against 0.455 … 0.46 the bar's 46 % would contradict "<": more digits.
    assert compare_text(0.4549, 0.455, first=46.0)[0] == "45.49 %"


def test_comparison_direction_always_matches_the_gate():
    rng = np.random.default_rng(1)
    for _ in range(3000):
        t = quantize_gate(rng.uniform())
        p = float(np.clip(t + rng.normal(0, 0.002), 0, 1))
        ptext, op, ttext = compare_text(p, t)
        shown_p, shown_t = float(ptext.split()[0]), float(ttext.split()[0])
        assert (op in "≥=") == bool(p >= t)
        if op == "<":
            assert shown_p < shown_t
        elif op == "≥":
            assert shown_p > shown_t


def test_last_passing_gate_is_where_the_gate_stops_passing():
    rng = np.random.default_rng(2)
    for p in [0.46, 0.4566, 0.0004, 0.9996, 1.0, 0.0, *rng.uniform(size=500)]:
        probs = np.array([p, 1 - p])
        last = last_passing_gate(p)
        assert passes_gate(probs, 0, last)
        if last < 1.0:
            assert not passes_gate(probs, 0, quantize_gate(last + GATE_STEP))


def test_probability_bars_labels_add_up_to_100():
    from dashboard.components.charts import probability_bars

    fig = probability_bars([0.335, 0.335, 0.33], ["normal", "osteopenia", "osteoporosis"], "Stage 1", 0.456, 0)
    labels = list(fig.data[0].text)
    assert labels == ["34 %", "33 %", "33 %"]
    assert any(a.text == "gate 0.456" for a in fig.layout.annotations)
