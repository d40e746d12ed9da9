"""Gate tuning in headless Chromium: a click on a count in the flow diagram shows those images on Dataset.

Plotly's selection events only exist in a browser, so this is the test that the click really travels (AppTest can only
hand the page a selection). Skips without Debian's Chromium, as ``tests/dashboard/test_browser.py``.
"""

from __future__ import annotations

import re

import pytest

from tests.dashboard.test_browser import app_url, assert_clean, browser, open_page, settle  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


def test_a_click_on_a_flow_count_filters_the_dataset_page(app_url, browser):  # noqa: F811
    page = open_page(browser, f"{app_url}/gate_tuning")
    settle(page)
    run = page.get_by_role("button", name=re.compile("Run both stages"))
    if run.count():
        run.click()
    page.wait_for_selector(".js-plotly-plot", timeout=120_000)
    settle(page)
    flows = page.locator(".js-plotly-plot").filter(has_text="sent to stage 2 ·").first
    flows.scroll_into_view_if_needed()
    count = flows.locator("g.trace.scatter path.point").first
    expected = int(flows.locator("g.trace.scatter g.textpoint text").first.text_content())
    box = count.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.get_by_role("heading", name="Dataset").first.wait_for(timeout=60_000)
    settle(page)
    assert page.get_by_text("chosen on Gate tuning").count() == 1
    assert re.search(r"gate=0\.60*(&|$)", page.url), page.url  # the saved gate 0.6 came along
    assert page.get_by_text(re.compile(rf"^{expected} of \d+ images of 'test' match")).count() == 1
    assert_clean(page, "dataset_from_flows")
