"""The calibration and metadata sections in Streamlit's AppTest: the sidebar says whether calibration is on, Gate
tuning fits, saves and switches it and plots P(normal) against density, Dataset filters and sorts by metadata, Explain
shows an image's values, and a bad table is a warning on a page that otherwise works."""

from __future__ import annotations

import shutil

import pytest

from cascade.config import load_config
from tests.dashboard.conftest import assert_clean, click, ensure_predictions, open_app, widget


@pytest.fixture()
def meta_env(app_env, tiny_dataset, tmp_path, monkeypatch):
    """The app on a copy of the tiny dataset whose manifest.csv gives each image a density (and one bad row)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    rows = ["file,density,sex"]
    for i, path in enumerate(sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))):
        rows.append(f"{path},{0.5 + 0.01 * i:.2f},{'F' if i % 2 else 'M'}")
    rows.append("test/normal/missing.png,0.9,F")
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.setenv("KNEE_CASCADE_DATA", str(data))
    return app_env


def _sidebar_calibration(at) -> str:
    return next(c.value for c in at.sidebar.caption if "Calibration" in c.value)


def _subheaders(at) -> list[str]:
    return [s.value for s in at.subheader]


def test_gate_tuning_fits_saves_and_switches_calibration(meta_env):
    at = ensure_predictions(open_app("views/gate_tuning.py"))
    assert_clean(at)
    assert "off (no temperatures fitted)" in _sidebar_calibration(at)
    assert any(s.startswith("Calibration") for s in _subheaders(at))
    assert "What each image is known to be" in _subheaders(at)
    assert len(at.get("plotly_chart")) >= 7  # 4 of the page, the metadata scatter, two reliability diagrams
    assert any("missing.png" in w.value for w in at.warning)  # the bad row, said once the table is used
    tables = [d.value for d in at.dataframe]
    scores = next(t for t in tables if "score (lower is better)" in t.columns)
    assert "top-label ECE, equal-mass bins" in set(scores["score (lower is better)"])
    moves = next(t for t in tables if "suggested gate" in t.columns)
    assert len(moves) == 4

    at = click(at, "Save the temperatures fitted on")
    assert_clean(at)
    cfg = load_config(meta_env)
    assert cfg.calibration.enabled and cfg.calibration.fitted_on.startswith("test split of")
    assert "# my comment" in meta_env.read_text()
    assert "Calibration **on" in _sidebar_calibration(at)

    at = click(at, "Switch calibration off")
    assert_clean(at)
    assert not load_config(meta_env).calibration.enabled and "**off (T₁" in _sidebar_calibration(at)


def test_gate_tuning_plots_the_final_class_against_metadata(meta_env):
    at = ensure_predictions(open_app("views/gate_tuning.py"))
    widget(at.get("segmented_control"), "Up the side").set_value("Final class")
    at.run()
    assert_clean(at)
    assert any("density by true class" in c.value for c in at.caption)


def test_dataset_filters_and_sorts_by_metadata(meta_env):
    at = open_app("views/dataset.py")
    assert_clean(at)
    count = next(c.value for c in at.caption if "images of" in c.value and "match" in c.value)
    assert count.startswith("12 of 12")
    widget(at.selectbox, "Filter by metadata").set_value("density")
    at.run()
    widget(at.slider, "density").set_value((0.55, 0.6))
    at.run()
    assert_clean(at)
    count = next(c.value for c in at.caption if "match" in c.value)
    assert not count.startswith("12 of 12")
    widget(at.selectbox, "Filter by metadata").set_value("sex")
    at.run()
    widget(at.multiselect, "sex").set_value(["F"])
    widget(at.selectbox, "Sort by metadata").set_value("density ↓")
    at.run()
    assert_clean(at)
    assert next(c.value for c in at.caption if "match" in c.value).startswith("6 of 12")
    cards = [c.value for c in at.caption if "  \ntrue **" in c.value]
    names = [card.split("  \n")[0].replace("\\", "") for card in cards]  # shown escaped: osteoporosis\_3.png
    assert len(names) == 6 and names[0] == "osteoporosis_3.png"  # the densest F image first (file order: normal_1)


def test_explain_shows_the_images_metadata(meta_env):
    at = open_app("views/explain.py")
    assert_clean(at)
    known = [c.value for c in at.caption if c.value.startswith("Known about it")]
    assert known and "density **" in known[0] and "sex **" in known[0]


def test_a_bad_table_named_in_the_sidebar_is_a_warning(meta_env, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,age\nx.png,3\n")
    at = open_app("views/dataset.py")
    widget(at.sidebar.text_input, "Metadata table (CSV)").set_value(str(bad))
    at.run()
    assert_clean(at)
    assert any("no path column" in w.value for w in at.warning)
    assert at.get("pagination") or any("match" in c.value for c in at.caption)  # the grid is still there


def test_calibration_reaches_every_probability_the_pages_use(app_env, tiny_dataset, tmp_path, monkeypatch):
    """Switched on, the context's cascade carries the temperatures (sharing the loaded backends), a split's cached raw
    predictions come back calibrated, and one image's stage-1 probabilities too; switched off, raw again."""
    import numpy as np

    from cascade.calibration import CalibrationSettings, apply_temperature
    from cascade.config import save_calibration
    from dashboard.resources import build_context, predict_image, split_predictions
    from dashboard.state import Sources
    from tests.conftest import make_knee_like

    monkeypatch.setenv("KNEE_CASCADE_CACHE", str(tmp_path / "cache"))
    src = Sources(str(app_env), str(tiny_dataset), "torch")
    raw_ctx = build_context(src)
    raw = split_predictions(raw_ctx, "val", compute=True)
    image = make_knee_like(7)
    raw_one = predict_image(raw_ctx, "img7", image).p1
    save_calibration(app_env, CalibrationSettings(True, 2.0, 0.5, "test"))
    hot_ctx = build_context(src)
    assert hot_ctx.cascade.temperatures == (2.0, 0.5) and hot_ctx.cascade.backend1 is raw_ctx.cascade.backend1
    hot = split_predictions(hot_ctx, "val")  # from the cache: no model run
    assert np.allclose(hot.p1, apply_temperature(raw.p1, 2.0), atol=1e-5)
    assert np.allclose(hot.p2, apply_temperature(raw.p2, 0.5), atol=1e-5)
    assert np.allclose(predict_image(hot_ctx, "img7", image).p1, apply_temperature(raw_one[None], 2.0)[0], atol=1e-5)
    save_calibration(app_env, CalibrationSettings(False, 2.0, 0.5, "test"))
    off = split_predictions(build_context(src), "val")
    assert np.allclose(off.p1, raw.p1, atol=1e-6)
