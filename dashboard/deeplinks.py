"""Deep links without 404s: each page's URL serves Streamlit's index.html with the server's base URL set.

Streamlit 1.67's frontend guesses the server's base URL from the address bar: opened at ``/explain`` it first probes
``/explain/_stcore/health`` and ``/explain/_stcore/host-config`` (404 by design) and then falls back to ``/``.
``window.__streamlit.BACKEND_BASE_URL`` (the hook embedding hosts use) makes it ask the right place first.
"""

from __future__ import annotations

import json
from pathlib import Path

import streamlit
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from dashboard.components.pages import PAGES

INDEX = Path(streamlit.__file__).parent / "static" / "index.html"


def _base(base_url_path: str) -> str:
    """``server.baseUrlPath`` as a path that starts and ends with a slash ("/" when unset)."""
    inner = base_url_path.strip("/")
    return f"/{inner}/" if inner else "/"


def index_html(base_url_path: str) -> str:
    """Streamlit's index.html with a script that tells the frontend where the server is, before its bundle runs."""
    script = (
        "<script>window.__streamlit = Object.assign({}, window.__streamlit, "
        f"{{BACKEND_BASE_URL: window.location.origin + {json.dumps(_base(base_url_path))}}});</script>"
    )
    return INDEX.read_text(encoding="utf-8").replace("<head>", "<head>" + script, 1)


def page_routes() -> list[Route]:
    """A GET route per page URL (not the default page's, which is the root and probes nothing else)."""
    from streamlit import config

    base = config.get_option("server.baseUrlPath") or ""

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(index_html(base), headers={"Cache-Control": "no-cache"})

    return [Route(f"{_base(base)}{p.url_path}", page, methods=["GET"]) for p in PAGES if p.url_path]
