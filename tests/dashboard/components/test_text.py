"""File names and link values shown as text, whatever Markdown, HTML or Streamlit directives they hold."""

from __future__ import annotations

import re

from dashboard.components.text import escape_markdown


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def test_markdown_html_and_directives_are_escaped():
    name = "**bold** [x](http://e.vil) <img src=x onerror=alert(1)> :red[hi] :material/home: $x^2$ `code`.png"
    escaped = escape_markdown(name)
    unescaped_left = re.sub(r"\\.", "", escaped)  # drop every backslash pair: no special character may remain
    assert not set(unescaped_left) & set("*[]()<>:$`_#!|~&")
    assert _unescape(escaped) == name  # every character is still there, as text


def test_a_name_is_one_line():
    assert "\n" not in escape_markdown("a\n# heading")
