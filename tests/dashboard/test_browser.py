"""The dashboard in a real browser: headless Chromium opens every page, moves the gate, and sees no exception.

Skips where Debian's Chromium is absent (CI installs it: ``apt-get install -y chromium``). Screenshots of every page
go to ``screenshots/`` (git-ignored) for a human to look at.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dashboard.bench import CHROMIUM, CHROMIUM_ARGS
from dashboard.components.pages import PAGES
from tests.conftest import ROOT

SHOTS = ROOT / "screenshots"
FOOTER = "Research tool. Not for clinical use."
HOME_HEADING = "Knee X-ray cascade"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError("streamlit did not become healthy")


@contextlib.contextmanager
def streamlit_server(env: dict[str, str], log: Path):
    """``streamlit run dashboard/Home.py`` on a free port with ``env``; yields its URL, fails on a logged traceback."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "dashboard" / "Home.py"),
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, **env), stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    text = log.read_text()
    assert "Traceback" not in text, text[-4000:]


@pytest.fixture(scope="module")
def app_url(tiny_config, tiny_dataset, tmp_path_factory):
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    with streamlit_server(
        {"KNEE_CASCADE_CONFIG": str(tiny_config), "KNEE_CASCADE_DATA": str(tiny_dataset)}, log
    ) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    return page


def settle(page, timeout: float = 90_000) -> None:
    """Wait until a script run has finished: the sidebar drawn, no run in progress for a while, no skeleton left."""
    page.get_by_text(FOOTER, exact=True).first.wait_for(timeout=timeout)
    page.wait_for_function(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            return app && app.getAttribute('data-test-script-state') === 'notRunning'
                && !document.querySelector('[data-testid="stSkeleton"]');
        }""",
        timeout=timeout,
    )
    page.wait_for_timeout(800)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"stApp\"]').getAttribute('data-test-script-state') "
        "=== 'notRunning'",
        timeout=timeout,
    )


def assert_clean(page, name: str) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.first.inner_text()
    body = page.inner_text("body")
    assert "Something went wrong" not in body, body[:2000]
    assert "Traceback" not in body


def shot(page, name: str) -> None:
    """Screenshot of the whole page: Streamlit scrolls inside its main element, so grow the viewport to fit it."""
    SHOTS.mkdir(exist_ok=True)
    height = 0
    for _ in range(5):  # the layout reflows as the viewport grows; stop when it fits
        needed = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
        if needed <= height:
            break
        height = min(int(needed) + 40, 8000)
        page.set_viewport_size({"width": 1400, "height": height})
        page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / f"{name}.png"))
    page.set_viewport_size({"width": 1400, "height": 1000})


def answer(page) -> str:
    text = page.locator("h3", has_text="Answer:").first.inner_text()
    return re.sub(r"\s+", " ", text)


def move_gate(page, key: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    thumb = page.locator('[data-testid="stSidebar"] [data-testid="stSlider"] input[type="range"]').first
    thumb.focus()
    page.keyboard.press(key)
    # The rerun may start and end before we look; either way settle() waits for its end.
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(
            "() => document.querySelector('[data-testid=\"stApp\"]').getAttribute('data-test-script-state') "
            "=== 'running'",
            timeout=3000,
        )
    settle(page)


def test_every_page_renders_and_the_gate_redecides(app_url, browser):
    # Gate tuning first: computing the split's predictions there also serves Home's and Dataset's metrics.
    page = open_page(browser, f"{app_url}/gate_tuning")
    settle(page)
    run = page.get_by_role("button", name=re.compile("Run both stages"))
    if run.count():  # another Chromium test of this session may have filled the prediction cache already
        run.click()
    page.wait_for_selector(".js-plotly-plot", timeout=120_000)
    settle(page)
    assert_clean(page, "gate_tuning")
    assert page.get_by_text("Suggested gates", exact=True).count() == 1  # calibration also says "…suggested gates move"
    shot(page, "gate_tuning")

    for info in PAGES:
        name = Path(info.file).stem
        if name == "gate_tuning":
            continue
        page = open_page(browser, f"{app_url}/{info.url_path}")
        settle(page)
        title = HOME_HEADING if info.default else info.title
        page.get_by_role("heading", name=title).first.wait_for(timeout=60_000)
        if name == "gradcam":
            page.wait_for_selector('[data-testid="stImage"] img', timeout=60_000)
            settle(page)
        assert_clean(page, name)
        shot(page, name)

    page = open_page(browser, f"{app_url}/explain")
    settle(page)
    move_gate(page, "Home")  # threshold 0: stage 1 settles every knee as normal
    low = answer(page)
    assert "stage 1" in low and "normal" in low
    assert "gate=0" in page.url
    move_gate(page, "End")  # threshold 1: stage 2 decides
    high = answer(page)
    assert "stage 2" in high
    assert low != high
    assert_clean(page, "explain_moved")
    shot(page, "explain_gate_moved")


def test_explain_keeps_a_three_decimal_gate_and_fetches_nothing_from_the_internet(app_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("data:", "blob:", app_url)) else None)
    page.goto(f"{app_url}/explain?gate=0.456")
    settle(page)
    assert_clean(page, "explain_0456")
    body = page.inner_text("body")
    assert "(0.456)" in body and "0.46 " not in body  # decided and shown at the link's gate
    assert "gate=0.456" in page.url
    assert outside == []  # the favicon is local (a Material icon or emoji would be fetched from the internet)
    shot(page, "explain_gate_0456")


def test_deep_links_to_every_page_get_no_404(app_url, browser):
    # Streamlit's frontend probes `<page>/_stcore/health` and `/host-config` first unless told the base URL.
    for info in PAGES:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        failed = []
        page.on("response", lambda r, failed=failed: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.goto(f"{app_url}/{info.url_path}")
        settle(page)
        page.get_by_role("heading", name=HOME_HEADING if info.default else info.title).first.wait_for(timeout=60_000)
        assert failed == [], info.url_path
        assert_clean(page, f"deep_link_{Path(info.file).stem}")
        page.close()
