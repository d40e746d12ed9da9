"""Every page in Streamlit's AppTest on the tiny models: renders, re-decides without models, takes uploads, filters,
suggests and saves gates, and turns bad inputs into messages."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cascade.config import load_config
from cascade.dataset import index_dataset
from cascade.gate import decide_batch
from cascade.predcache import cached_predictions
from dashboard.components.pages import PAGES
from tests.conftest import ROOT, make_dicom_bytes, make_knee_like
from tests.dashboard.conftest import assert_clean, click, ensure_predictions, open_app, widget

PAGE_FILES = [p.file for p in PAGES]


def _cascade(config):
    from dashboard.caches import open_cascade_cached

    return open_cascade_cached(load_config(config), "auto")


def _calls(cascade) -> int:
    return cascade.backend1.calls + cascade.backend2.calls


def _png(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(make_knee_like(seed)).save(buf, format="PNG")
    return buf.getvalue()


def _dicom(pixels: bool = True) -> bytes:
    return make_dicom_bytes((make_knee_like(3).astype(np.uint16) * 16), pixels=pixels)


def _answer(at) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("### Answer"))


def _set_gate(at, value: float):
    widget(at.sidebar.slider, "Gate threshold").set_value(value)
    return at.run()


@pytest.mark.parametrize("page", PAGE_FILES)
def test_every_page_renders(app_env, page):
    at = open_app(page)
    assert_clean(at)
    assert at.title[0].value  # the page drew its heading
    assert any("Not for clinical use" in c.value for c in at.sidebar.caption)


def test_slider_redecides_without_running_a_model(app_env):
    at = open_app("views/explain.py")
    cascade = _cascade(app_env)
    calls = _calls(cascade)
    low = _answer(_set_gate(at, 0.0))
    assert "(stage 1)" in low and "normal" in low  # threshold 0: stage 1 settles every knee
    assert any("What stage 2 would have said" in m.value for m in at.markdown)
    high = _answer(_set_gate(at, 1.0))
    assert "(stage 2)" in high
    assert not any("What stage 2 would have said" in m.value for m in at.markdown)
    assert _calls(cascade) == calls
    assert at.query_params["gate"] == "1.000"
    flip = at.info[0].value
    assert "gate up to" in flip or "no gate" in flip.lower()
    assert_clean(at)


def test_gate_tuning_metrics_follow_the_slider_and_run_no_model(app_env):
    at = open_app("views/gate_tuning.py")
    at = ensure_predictions(at)
    assert_clean(at)
    cascade = _cascade(app_env)
    calls = _calls(cascade)
    sent_low = widget(_set_gate(at, 0.0).metric, "Sent to stage 2").value
    sent_high = widget(_set_gate(at, 1.0).metric, "Sent to stage 2").value
    assert sent_low == "0.0 %" and sent_high == "100.0 %"
    assert _calls(cascade) == calls
    assert_clean(at)


def test_uploads(app_env, monkeypatch):
    at = open_app("views/explain.py")
    at.segmented_control[0].set_value("Upload").run()
    assert any("Upload an image" in i.value for i in at.info)

    at.file_uploader[0].set_value(("knee.png", _png(), "image/png")).run()
    assert_clean(at)
    assert "Answer" in _answer(at)

    at.file_uploader[0].set_value(("scan.dcm", _dicom(), "application/dicom")).run()
    assert_clean(at)
    assert "Answer" in _answer(at)

    for name, data, message in [
        ("bad.png", b"certainly not an image", "not a PNG, JPEG or DICOM"),
        ("empty.png", b"", "empty"),
        ("report.dcm", _dicom(pixels=False), "without pixel data"),
    ]:
        at.file_uploader[0].set_value((name, data, "application/octet-stream")).run()
        assert not at.exception
        assert any(message in e.value for e in at.error), [e.value for e in at.error]
        assert not any(m.value.startswith("### Answer") for m in at.markdown)

    monkeypatch.setattr("cascade.images.MAX_PIXELS", 1000)  # so a small image counts as huge
    at.file_uploader[0].set_value(("huge.png", _png(seed=9), "image/png")).run()
    assert not at.exception
    assert any("limit" in e.value for e in at.error), [e.value for e in at.error]


def test_dataset_filters_and_open(app_env, tiny_dataset):
    at = open_app("views/dataset.py")
    at = ensure_predictions(at)
    assert_clean(at)

    def matched(at) -> int:
        text = next(c.value for c in at.caption if " images of 'test' match" in c.value)
        return int(text.split(" of ")[0])

    assert matched(at) == 12
    widget(at.multiselect, "True class").set_value(["normal"]).run()
    assert matched(at) == 4
    widget(at.multiselect, "True class").set_value([]).run()
    right = matched(widget(at.selectbox, "Outcome").set_value("correct").run())
    wrong = matched(widget(at.selectbox, "Outcome").set_value("incorrect").run())
    assert right + wrong == 12
    widget(at.selectbox, "Outcome").set_value("any").run()
    stage2 = matched(widget(at.selectbox, "Route").set_value("stage 2").run())
    stage1 = matched(widget(at.selectbox, "Route").set_value("stage 1 only").run())
    assert stage1 + stage2 == 12
    widget(at.selectbox, "Route").set_value("any").run()

    flipped = next(c for c in at.checkbox if c.label.startswith("Only images whose answer differs"))
    flipped.check().run()
    assert not any(" images of 'test' match" in c.value for c in at.caption) or matched(at) == 0
    # Move the gate below every P(normal): the images that flip are exactly those the gate API says.
    _set_gate(at, 0.0)
    cascade = _cascade(app_env)
    preds = cached_predictions(cascade, index_dataset(tiny_dataset), "test", app_env.parent / "predictions")
    ni = cascade.normal_index
    expected = int(
        (decide_batch(preds.p1, preds.p2, ni, 0.0).final != decide_batch(preds.p1, preds.p2, ni, 0.6).final).sum()
    )
    if expected:
        assert matched(at) == expected
    next(c for c in at.checkbox if c.label.startswith("Only images whose answer differs")).uncheck().run()

    first = next(b for b in at.button if b.label == "Explain")
    first.click().run()
    assert at.title[0].value == "Explain an image"
    assert widget(at.selectbox, "Dataset image").value == "test/normal/normal_0.png"
    assert_clean(at)


def test_suggestions_apply_and_save_keeps_the_rest_of_the_config(app_env):
    at = open_app("views/gate_tuning.py")
    at = ensure_predictions(at)
    _set_gate(at, 0.99)
    apply = [b for b in at.button if b.label == "Apply" and not b.disabled]
    assert apply, "no suggestion to apply"
    apply[0].click().run()
    new_t = widget(at.sidebar.slider, "Gate threshold").value
    assert new_t != pytest.approx(0.99)
    at = click(at, "Save gate")
    assert any("Saved gate" in s.value for s in at.success)
    cfg = load_config(app_env)
    assert cfg.threshold == pytest.approx(round(new_t, 4))
    text = app_env.read_text()
    assert "# my comment" in text and 'keep = "me"' in text
    save = next(b for b in at.button if b.label.startswith("Save gate"))
    assert save.disabled  # the slider now sits at the saved gate
    assert_clean(at)


def test_gate_comes_from_the_url(app_env):
    at = open_app("views/explain.py", query={"gate": "0.25", "rule": "top1"})
    assert widget(at.sidebar.slider, "Gate threshold").value == pytest.approx(0.25)
    assert widget(at.sidebar.radio, "Gate rule").value == "top1"
    assert_clean(at)
    at = open_app(query={"gate": "7", "rule": "nonsense"})  # invalid values fall back to the saved gate
    assert widget(at.sidebar.slider, "Gate threshold").value == pytest.approx(0.6)
    assert_clean(at)


@pytest.mark.slow
def test_gradcam_methods_and_slow_warning(app_env):
    at = open_app("views/gradcam.py")
    assert_clean(at)
    assert len(at.get("download_button")) == 4  # stage 1, stage 2, and stage 2's two abnormal classes
    assert any(m.value.startswith("Faithfulness") for m in at.markdown)
    widget(at.selectbox, "Method").set_value("gradcam").run()
    assert_clean(at)
    assert any("Grad-CAM" in c.value for c in at.caption)
    widget(at.selectbox, "Method").set_value("scorecam").run()
    assert any("slow" in w.value for w in at.warning)
    assert any(b.label.startswith("Run Score-CAM") for b in at.button)
    assert not at.get("download_button")  # nothing ran yet


@pytest.mark.parametrize(
    ("setting", "value", "page", "message"),
    [
        ("KNEE_CASCADE_CONFIG", "/nonexistent/cascade.toml", "views/explain.py", "does not exist"),
        ("KNEE_CASCADE_DATA", "/nonexistent/data", "views/dataset.py", "does not exist"),
        ("KNEE_CASCADE_DATA", "/nonexistent/data", "views/home.py", "does not exist"),
    ],
)
def test_bad_sources_become_messages(app_env, monkeypatch, setting, value, page, message):
    monkeypatch.setenv(setting, value)
    at = open_app(page)
    assert not at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]


def test_model_folder_that_does_not_load(app_env, tmp_path):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    text = app_env.read_text()
    start = text.index('model_dir = "', text.index("[stage2]")) + len('model_dir = "')
    end = text.index('"', start)
    app_env.write_text(text[:start] + str(empty) + text[end:])
    for page in ("views/home.py", "views/gate_tuning.py"):
        at = open_app(page)
        assert not at.exception
        assert at.error
    at = open_app("views/dataset.py")  # browsing still works without models
    assert not at.exception
    assert any("browsing only" in w.value for w in at.warning)


def test_unexpected_failure_is_a_message_not_a_traceback(app_env, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("dashboard.components.narrative.decision_steps", broken)
    at = open_app("views/explain.py")
    assert not at.exception
    assert any("Something went wrong" in e.value and "boom" in e.value for e in at.error)
    at.switch_page("views/home.py").run()  # the other pages still work
    assert_clean(at)


DEMO = ROOT / "models" / "demo"


@pytest.mark.skipif(
    not all((DEMO / s / "model_best.pth.tar").is_file() for s in ("stage1", "stage2")),
    reason="the demo models are not in this checkout",
)
@pytest.mark.parametrize("page", PAGE_FILES)
def test_default_config_renders(page, monkeypatch, tmp_path):
    for name in ("KNEE_CASCADE_CONFIG", "KNEE_CASCADE_DATA", "KNEE_CASCADE_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KNEE_CASCADE_CACHE", str(tmp_path))
    at = open_app(page)
    assert_clean(at)
    assert any("Demo models" in w.value for w in at.sidebar.warning)
