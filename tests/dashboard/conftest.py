"""Dashboard fixtures: the app pointed at the tiny models, a copy of their config (saving the gate edits it) and the
tiny dataset, with its own prediction cache; plus a helper that runs a page in Streamlit's AppTest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT

APP = ROOT / "dashboard" / "Home.py"
TIMEOUT = 180


@pytest.fixture()
def app_env(tmp_path, tiny_config, tiny_dataset, monkeypatch) -> Path:
    """Environment for one app: returns the path of its own copy of the cascade config."""
    config = tmp_path / "cascade.toml"
    shutil.copy(tiny_config, config)
    monkeypatch.setenv("KNEE_CASCADE_CONFIG", str(config))
    monkeypatch.setenv("KNEE_CASCADE_DATA", str(tiny_dataset))
    monkeypatch.setenv("KNEE_CASCADE_CACHE", str(tmp_path / "predictions"))
    monkeypatch.delenv("KNEE_CASCADE_BACKEND", raising=False)
    return config


def open_app(page: str | None = None, query: dict[str, str] | None = None) -> AppTest:
    """Run the app once (Home), then switch to ``page`` (e.g. "views/explain.py") and run it."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    if query:
        at.query_params.update(query)
    at.run()
    if page is not None:
        at.switch_page(page).run()
    return at


def page_errors(page: str, monkeypatch, **env: str) -> list[str]:
    """The error boxes of ``page`` opened with these ``KNEE_CASCADE_*`` variables set; the page must not crash."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    at = open_app(page)
    assert not at.exception
    return [e.value for e in at.error]


def assert_clean(at: AppTest) -> None:
    """No exception element and no error box on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def click(at: AppTest, label_start: str) -> AppTest:
    button = next(b for b in at.button if b.label.startswith(label_start))
    button.click()
    return at.run()


def widget(elements, label: str):
    return next(w for w in elements if w.label == label)


def ensure_predictions(at: AppTest) -> AppTest:
    """Press "Run both stages" when the split's predictions are not cached yet (another test may have made them)."""
    if any(b.label.startswith("Run both stages") for b in at.button):
        return click(at, "Run both stages")
    return at
