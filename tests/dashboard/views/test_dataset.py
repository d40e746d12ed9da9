"""Dataset page in AppTest: filters that survive page switches and links, level card rows, escaped names, and an
index and predictions that follow the files while the app runs."""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from dashboard.components.text import escape_markdown
from tests.conftest import make_knee_like
from tests.dashboard.conftest import assert_clean, ensure_predictions, open_app, page_errors, widget


def _matched(at) -> str:
    return next(c.value for c in at.caption if " images of '" in c.value and "match" in c.value)


def test_filters_survive_a_page_switch_and_come_from_the_url(app_env):
    at = ensure_predictions(open_app("views/dataset.py"))
    widget(at.multiselect, "True class").set_value(["normal"]).run()
    widget(at.selectbox, "Outcome").set_value("incorrect").run()
    before = _matched(at)
    at.switch_page("views/explain.py").run()
    at.switch_page("views/dataset.py").run()  # Back
    assert widget(at.multiselect, "True class").value == ["normal"]
    assert widget(at.selectbox, "Outcome").value == "incorrect"
    assert _matched(at) == before
    assert_clean(at)

    linked = open_app("views/dataset.py", query={"ds_true": "osteopenia", "ds_route": "stage 2"})
    assert widget(linked.multiselect, "True class").value == ["osteopenia"]
    assert widget(linked.selectbox, "Route").value == "stage 2"
    assert_clean(linked)


def test_cards_sit_in_rows_of_four(app_env):
    at = ensure_predictions(open_app("views/dataset.py"))
    widget(at.selectbox, "Sort by").set_value("confidence (least sure first)").run()
    # 12 cards: three rows of four columns each (a single st.columns of four would stack them column-major).
    rows = [b for b in at.main.children.values() if len(getattr(b, "children", {})) == 4]
    card_rows = [
        r
        for r in rows
        if all(type(c).__name__ == "Column" and len(c.children) == 1 for c in r.children.values())
        and any(b.label == "Explain" for b in r.button)
    ]
    assert len(card_rows) == 3  # one row per four cards, each column holding one card
    assert_clean(at)


def _own_dataset(tmp_path, tiny_dataset, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    monkeypatch.setenv("KNEE_CASCADE_DATA", str(root))
    return root


def test_file_names_are_shown_as_text(app_env, tmp_path, tiny_dataset, monkeypatch):
    root = _own_dataset(tmp_path, tiny_dataset, monkeypatch)
    name = "x`**bold**`<b>[link](e.x) :red[r].png"
    shutil.copy(root / "test" / "normal" / "normal_0.png", root / "test" / "normal" / name)
    at = open_app("views/dataset.py")
    captions = [c.value for c in at.caption]
    assert any(escape_markdown(name) in c for c in captions), captions
    assert not any(name in c for c in captions)
    assert_clean(at)


def test_index_and_predictions_follow_files_changed_while_the_app_runs(app_env, tmp_path, tiny_dataset, monkeypatch):
    root = _own_dataset(tmp_path, tiny_dataset, monkeypatch)
    at = ensure_predictions(open_app("views/dataset.py"))
    assert _matched(at).startswith("12 of 12")
    # A new file inside a class folder: the root's mtime does not change, the index must.
    Image.fromarray(make_knee_like(77)).save(root / "test" / "normal" / "new.png")
    at.run()
    assert "of 13 images" in _matched(at)
    ensure_predictions(at)
    assert not any(b.label.startswith("Run both stages") for b in at.button)
    # Overwrite an image in place (its folder's mtime does not change): the split's predictions are stale.
    target = root / "test" / "osteopenia" / "osteopenia_1.png"
    Image.fromarray(np.full((90, 70), 250, np.uint8)).save(target)
    at.run()
    assert any(b.label.startswith("Run both stages") for b in at.button), "old predictions shown for a changed file"
    assert_clean(at)


def test_a_file_as_dataset_path_says_so(app_env, tmp_path, monkeypatch):
    f = tmp_path / "data.zip"
    f.write_bytes(b"PK")
    errors = page_errors("views/dataset.py", monkeypatch, KNEE_CASCADE_DATA=str(f))
    assert any("is a file, not a folder" in e for e in errors), errors
    assert not any("does not exist" in e for e in errors)
