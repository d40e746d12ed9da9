"""The Explain page in AppTest: which image it opens, what it says about links and uploads, its extra views."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cascade.config import load_config
from cascade.images import read_image
from tests.conftest import REALDATA, make_knee_like
from tests.dashboard.conftest import assert_clean, open_app, widget


def _answer(at) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("### Answer"))


def _png(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(make_knee_like(seed)).save(buf, format="PNG")
    return buf.getvalue()


def test_explain_opens_the_shared_split_test_by_default(app_env):
    at = open_app("views/explain.py")
    assert widget(at.selectbox, "Split").value == "test"
    assert widget(at.selectbox, "Dataset image").value.startswith("test/")
    assert at.query_params["img"].startswith("test/")
    widget(at.selectbox, "Split").set_value("val").run()
    assert widget(at.selectbox, "Dataset image").value.startswith("val/")
    at.switch_page("views/gate_tuning.py").run()
    assert widget(at.selectbox, "Split").value == "val"  # one split choice for every page
    assert_clean(at)


def test_a_linked_image_brings_its_split(app_env):
    at = open_app("views/explain.py", query={"img": "train/osteopenia/osteopenia_2.png"})
    assert widget(at.selectbox, "Split").value == "train"
    assert widget(at.selectbox, "Dataset image").value == "train/osteopenia/osteopenia_2.png"
    assert not at.warning
    assert_clean(at)


def test_an_unknown_linked_image_is_reported_and_a_test_image_shown(app_env):
    at = open_app("views/explain.py", query={"img": "nope/**x**.png"})
    notes = [w.value for w in at.warning if "link" in w.value]
    assert len(notes) == 1 and "is not an image of the dataset" in notes[0] and r"\*\*x\*\*" in notes[0]
    assert widget(at.selectbox, "Dataset image").value.startswith("test/")
    assert_clean(at)
    at.run()
    assert len([w for w in at.warning if "link" in w.value]) == 1
    widget(at.selectbox, "Dataset image").set_value("test/normal/normal_1.png").run()
    assert not [w for w in at.warning if "link" in w.value]


def test_the_answer_names_its_probability_and_says_when_the_gate_passes_against_the_top_class(app_env, tiny_dataset):
    from dashboard.caches import open_cascade_cached

    at = open_app("views/explain.py")
    widget(at.sidebar.slider, "Gate threshold").set_value(0.0).run()
    answer = _answer(at)
    assert "P(normal)" in answer and "confidence" not in answer.lower()
    cascade = open_cascade_cached(load_config(app_env), "auto")
    rel = widget(at.selectbox, "Dataset image").value
    probs = cascade.run_stage(1, [read_image(tiny_dataset / rel)]).probs[0]
    top_is_normal = int(np.argmax(probs)) == cascade.normal_index
    assert ("although stage 1's top class is" in answer) == (not top_is_normal)
    steps = next(m.value for m in at.markdown if m.value.startswith("1. "))
    assert ("passes although normal is not stage 1's top class" in steps) == (not top_is_normal)


def test_both_rules_and_what_the_model_sees(app_env):
    at = open_app("views/explain.py")
    heads = [s.value for s in at.subheader]
    assert "Both gate rules on this image" in heads and "What the model sees" in heads
    table = at.dataframe[0].value
    assert len(table) == 2 and set(table["passes"]) <= {"yes", "no"}
    assert any("(in use)" in r for r in table["rule"])
    assert any("Stage 1: 64×64 px" in c.value for c in at.caption)
    assert any("Stage 2: 64×64 px" in c.value for c in at.caption)
    assert_clean(at)


def test_upload_names_are_shown_as_text(app_env):
    at = open_app("views/explain.py")
    at.segmented_control[0].set_value("Upload").run()
    name = "**bold** <b>x</b> :red[y].png"
    at.file_uploader[0].set_value((name, _png(), "image/png")).run()
    assert_clean(at)
    shown = [img.caption for el in at.get("image") for img in el.proto.imgs if "bold" in img.caption]
    assert shown and all(r"\*\*bold\*\*" in s and r"\<b\>" in s and r"\:red\[y\]" in s for s in shown), shown


def test_dataset_images_are_not_flagged_out_of_distribution(app_env):
    at = open_app("views/explain.py")
    assert not [w for w in at.warning if "Unlike the training images" in w.value]
    assert any("Distance to the training images" in c.value for c in at.caption)


@pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata-dev is not here")
def test_a_real_radiograph_uploaded_is_flagged_out_of_distribution(app_env):
    path = sorted(REALDATA.glob("normal/*"))[0]
    at = open_app("views/explain.py")
    at.segmented_control[0].set_value("Upload").run()
    at.file_uploader[0].set_value((path.name, path.read_bytes(), "image/jpeg")).run()
    assert_clean(at)
    assert [w for w in at.warning if "Unlike the training images" in w.value]
