"""The shared gate in AppTest: it survives every page switch, has one precision, and bad link values are reported."""

from __future__ import annotations

import pytest

from tests.dashboard.conftest import assert_clean, ensure_predictions, open_app, widget

PAGES = ["views/home.py", "views/explain.py", "views/gradcam.py", "views/dataset.py", "views/gate_tuning.py"]


def _gate(at) -> tuple[float, str]:
    return widget(at.sidebar.slider, "Gate threshold").value, widget(at.sidebar.radio, "Gate rule").value


def _answer(at) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("### Answer"))


def _steps(at) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("1. "))


def _set(at, value: float, rule: str):
    widget(at.sidebar.slider, "Gate threshold").set_value(value).run()
    return widget(at.sidebar.radio, "Gate rule").set_value(rule).run()


@pytest.mark.parametrize("button", ["Explain", "CAM"])
def test_gate_survives_the_dataset_cards_buttons(app_env, button):
    at = ensure_predictions(open_app("views/dataset.py"))
    _set(at, 0.45, "top1")
    next(b for b in at.button if b.label == button).click().run()
    assert at.title[0].value in ("Explain an image", "Grad-CAM")
    assert _gate(at) == (pytest.approx(0.45), "top1")
    assert at.query_params["gate"] == "0.450" and at.query_params["rule"] == "top1"
    if button == "Explain":
        assert "(0.450)" in _steps(at)  # decided at the gate the sidebar shows, not at 0.00
    assert_clean(at)


def test_gate_survives_navigation_between_all_pages(app_env):
    at = open_app("views/explain.py")
    _set(at, 0.37, "top1")
    for page in PAGES:
        at.switch_page(page).run()
        assert _gate(at) == (pytest.approx(0.37), "top1"), page
        assert at.query_params["gate"] == "0.370"
    assert_clean(at)


def test_a_three_decimal_link_is_shown_and_decided_at_three_decimals(app_env):
    at = open_app("views/explain.py", query={"gate": "0.456"})
    assert widget(at.sidebar.slider, "Gate threshold").value == pytest.approx(0.456)
    assert widget(at.sidebar.number_input, "Exact gate").value == pytest.approx(0.456)
    assert at.query_params["gate"] == "0.456"  # not rewritten to 0.46
    assert "(0.456)" in _steps(at)
    at.run()  # a rerun changes nothing
    assert at.query_params["gate"] == "0.456" and "(0.456)" in _steps(at)
    assert not at.sidebar.warning or not any("link" in w.value for w in at.sidebar.warning)


def test_typing_an_exact_gate_moves_the_slider(app_env):
    at = open_app("views/explain.py")
    widget(at.sidebar.number_input, "Exact gate").set_value(0.123).run()
    assert widget(at.sidebar.slider, "Gate threshold").value == pytest.approx(0.123)
    assert at.query_params["gate"] == "0.123" and "(0.123)" in _steps(at)
    widget(at.sidebar.slider, "Gate threshold").set_value(0.8).run()
    assert widget(at.sidebar.number_input, "Exact gate").value == pytest.approx(0.8)
    assert_clean(at)


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ({"gate": "0.4567"}, "more than 3 decimals"),
        ({"gate": "7"}, "outside 0 … 1"),
        ({"gate": "abc"}, "not a number"),
        ({"rule": "nonsense"}, "the rules are"),
    ],
)
def test_bad_link_values_are_reported_once_not_replaced_silently(app_env, query, said):
    at = open_app("views/explain.py", query=query)
    assert _gate(at) == (pytest.approx(0.6), "p_normal")  # the saved gate
    notes = [w.value for w in at.sidebar.warning if "link" in w.value]
    assert len(notes) == 1 and said in notes[0] and "saved" in notes[0], notes
    at.run()
    assert len([w for w in at.sidebar.warning if "link" in w.value]) == 1  # not repeated
    widget(at.sidebar.slider, "Gate threshold").set_value(0.5).run()
    assert not [w for w in at.sidebar.warning if "link" in w.value]  # gone once the user sets the gate
    assert_clean(at)


def test_long_paths_are_in_the_tooltip(app_env, tiny_dataset):
    at = open_app()
    field = widget(at.sidebar.text_input, "Dataset folder")
    assert str(tiny_dataset) in field.help


def test_gate_tuning_saves_and_shows_the_gate_it_decides_on(app_env):
    at = ensure_predictions(open_app("views/gate_tuning.py", query={"gate": "0.456"}))
    assert any(b.label.startswith("Save gate 0.456 ") for b in at.button)  # not "Save gate 0.46"
    assert any("slider 0.456" in c.value for c in at.caption)
    assert_clean(at)
