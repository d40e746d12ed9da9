"""The calibration and metadata sections in headless Chromium, on the demo models and the committed phantoms (whose
manifest.csv carries each image's bone density): calibration fitted on val and switched on, then Gate tuning, Dataset
and Explain drawn and photographed into ``screenshots/``.

Skips without Debian's Chromium, like ``test_browser.py``.
"""

from __future__ import annotations

import re

import pytest

from cascade.config import save_calibration
from dashboard.bench import CHROMIUM
from engines.calibrate import calibrate
from tests.conftest import ROOT
from tests.dashboard.test_browser import assert_clean, browser, open_page, settle, shot, streamlit_server  # noqa: F401

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]
DATA = ROOT / "sample_images"


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    """The app on a copy of the demo config, calibrated on the phantoms' val split."""
    base = tmp_path_factory.mktemp("demo")
    config = base / "cascade.toml"
    config.write_text((ROOT / "cascade.toml").read_text().replace('"models/demo', f'"{ROOT}/models/demo'))
    cache = base / "predictions"
    settings, _ = calibrate(DATA, "val", config, "onnx", cache)
    save_calibration(config, settings)
    env = {
        "KNEE_CASCADE_CONFIG": str(config),
        "KNEE_CASCADE_DATA": str(DATA),
        "KNEE_CASCADE_CACHE": str(cache),
        "KNEE_CASCADE_BACKEND": "onnx",
    }
    with streamlit_server(env, base / "server.log") as url:
        yield url


def test_calibration_and_metadata_on_the_pages(demo_url, browser):  # noqa: F811
    page = open_page(browser, f"{demo_url}/gate_tuning")
    settle(page)
    page.get_by_role("button", name=re.compile("Run both stages")).click()
    page.get_by_text("How calibration moves the gate suggestions").first.wait_for(timeout=180_000)
    settle(page)
    assert_clean(page, "gate_tuning")
    body = page.inner_text("body")
    assert "Calibration on (T₁ = " in body  # the sidebar line
    assert "What each image is known to be" in body and "overlap" in body
    assert page.locator(".js-plotly-plot").count() >= 7
    shot(page, "calibration_gate_tuning")

    page = open_page(browser, f"{demo_url}/dataset")
    settle(page)
    page.get_by_text("Metadata: 4 column(s)").first.click()
    settle(page)
    assert_clean(page, "dataset")
    assert page.get_by_text("Filter by metadata").count() >= 1
    shot(page, "metadata_dataset")

    page = open_page(browser, f"{demo_url}/explain")
    settle(page)
    page.get_by_text("Known about it").first.wait_for(timeout=60_000)
    assert_clean(page, "explain")
    assert "density" in page.inner_text("body")
    shot(page, "metadata_explain")
