"""The Grad-CAM page in AppTest: whether stage 2 ran at this gate, a faithfulness score with its random-map level,
maps that follow the file as it is now (overwritten, removed), names shown as text, opacity without a model call."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from cascade.config import load_config
from cascade.images import read_image
from dashboard.components.narrative import pct
from tests.conftest import make_knee_like
from tests.dashboard.conftest import assert_clean, open_app, widget

NOT_RUN = "Not run at this gate"


@pytest.fixture()
def own_dataset(app_env, tmp_path, tiny_dataset, monkeypatch):
    """A private copy of the tiny dataset, so a test may overwrite and delete its files."""
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    monkeypatch.setenv("KNEE_CASCADE_DATA", str(root))
    return root


def _cascade(config):
    from dashboard.caches import open_cascade_cached

    return open_cascade_cached(load_config(config), "auto")


def _calls(cascade) -> int:
    return cascade.backend1.calls + cascade.backend2.calls


def _texts(at) -> list[str]:
    return [c.value for c in at.caption] + [m.value for m in at.markdown]


def test_stage_2_maps_say_when_the_gate_did_not_run_stage_2(app_env):
    at = open_app("views/gradcam.py")
    widget(at.sidebar.slider, "Gate threshold").set_value(0.0)  # every knee passes: stage 2 never runs
    at.run()
    assert_clean(at)
    assert any(NOT_RUN in t for t in _texts(at))
    assert any("Stage 2 did not run" in t for t in _texts(at))
    widget(at.sidebar.slider, "Gate threshold").set_value(1.0)  # no knee passes: stage 2 always runs
    at.run()
    assert not any(NOT_RUN in t for t in _texts(at))
    assert any("Stage 2 ran" in t for t in _texts(at))


def test_faithfulness_is_shown_beside_the_random_map_level(app_env):
    at = open_app("views/gradcam.py")
    assert_clean(at)
    scores = [m for m in at.markdown if m.value.startswith("Faithfulness")]
    assert scores and all("random maps" in m.value for m in scores)
    assert "random" in scores[0].help.lower() or "Blur" in scores[0].help


def test_opacity_only_reblends_and_runs_no_model(app_env):
    at = open_app("views/gradcam.py")
    cascade = _cascade(app_env)
    calls = _calls(cascade)
    widget(at.slider, "Opacity").set_value(0.8).run()
    assert_clean(at)
    assert _calls(cascade) == calls


def test_an_image_overwritten_or_removed_while_the_app_runs_shows_the_new_answer_or_says_so(app_env, own_dataset):
    at = open_app("views/gradcam.py")
    rel = widget(at.selectbox, "Dataset image").value
    cascade = _cascade(app_env)
    calls = _calls(cascade)
    at.run()
    assert _calls(cascade) == calls  # nothing changed: everything from the caches
    path = own_dataset / rel
    new = 255 - make_knee_like(999, (120, 90))  # another image under the same name
    Image.fromarray(new).save(path)
    at.run()
    assert_clean(at)
    assert _calls(cascade) > calls  # the new file was run, not the old answer shown
    p1 = cascade.run_stage(1, [read_image(path)]).probs[0]
    target = int(p1.argmax())
    assert any(c.value.startswith(f"Stage 1 · **{cascade.classes[target]}** ({pct(p1[target])})") for c in at.caption)
    path.unlink()  # its folder's listing changes, so the index is rebuilt and the file is no longer offered
    at.run()
    assert widget(at.selectbox, "Dataset image").value != rel or any("removed" in e.value for e in at.error)


def test_a_dataset_item_whose_file_is_gone_says_it_was_removed(own_dataset):
    from cascade.dataset import index_dataset
    from cascade.errors import ImageReadError
    from dashboard.caches import dataset_image

    item = index_dataset(own_dataset).items[0]
    image, token = dataset_image(item)
    assert dataset_image(item) == (pytest.approx(image), token) or dataset_image(item)[1] == token
    item.path.write_bytes(item.path.read_bytes())  # rewritten with the same bytes: a new mtime, a new identity
    assert dataset_image(item)[1] != token
    item.path.unlink()
    with pytest.raises(ImageReadError, match="removed"):
        dataset_image(item)


def test_an_upload_name_with_markdown_and_html_is_shown_as_text(app_env):
    at = open_app("views/gradcam.py")
    at.segmented_control[0].set_value("Upload").run()
    buf = io.BytesIO()
    Image.fromarray(make_knee_like(5)).save(buf, format="PNG")
    name = "**bold** _x_ <b>tag</b> :red[alarm] `tick`.png"
    at.session_state["last_upload"] = (name, buf.getvalue())
    at.run()
    assert_clean(at)
    shown = [c.value for c in at.caption if "bold" in c.value]
    assert len(shown) == 2  # "shown earlier" above the picker, and the page's own caption under the image
    assert all(
        "**bold**" not in s and "<b>" not in s and ":red[" not in s and "`" not in s.replace("\\`", "") for s in shown
    )
    assert any(s.replace("\\", "") == name for s in shown)


def test_two_sessions_scoring_the_same_map_at_once_get_the_same_score(app_env):
    """Faithfulness draws no global random state, so concurrent sessions cannot change each other's scores."""
    from concurrent.futures import ThreadPoolExecutor

    from cascade.explain import StageExplainer

    cascade = _cascade(app_env)
    ex = StageExplainer(cascade.backend(2))
    images = [make_knee_like(seed) for seed in range(3)]
    maps = [ex.maps(im, "fast", [1]).maps[1] for im in images]
    alone = [ex.faithfulness(im, m, 1) for im, m in zip(images, maps, strict=True)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        together = list(pool.map(lambda i: ex.faithfulness(images[i % 3], maps[i % 3], 1), range(9)))
    assert together == [alone[i % 3] for i in range(9)]
    assert np.isfinite(alone).all()
