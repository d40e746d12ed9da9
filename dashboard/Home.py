"""Entry point: ``streamlit run dashboard/Home.py``. Shared sidebar, then the chosen page.

Any failure a page did not expect is shown as one message and logged with its traceback on the server, so the user
never sees a traceback and the other pages keep working.
"""

import logging
import sys
from pathlib import Path

# `streamlit run` puts this file's folder on sys.path, not the repository root that holds the packages.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

if __name__ != "__main__":
    # Imported, not run: `streamlit run` finds this `app` (an st.App) and serves it; each session then runs this file
    # as its script (`__main__`, below). The app adds one route per page URL so that deep links cause no 404s.
    from dashboard.deeplinks import page_routes  # noqa: E402

    app = st.App(__file__, routes=page_routes())
else:
    from dashboard import sidebar  # noqa: E402
    from dashboard.components.pages import PAGES  # noqa: E402
    from dashboard.context import CONTEXT_KEY  # noqa: E402

    # A local icon: a Material icon or emoji as page_icon makes the browser fetch the favicon from the internet.
    FAVICON = Path(__file__).resolve().parent / "static" / "favicon.png"
    st.set_page_config(page_title="Knee X-ray cascade", page_icon=str(FAVICON), layout="wide")

    page = st.navigation([st.Page(p.file, title=p.title, icon=p.icon, default=p.default) for p in PAGES])
    try:
        st.session_state[CONTEXT_KEY] = sidebar.render()
        page.run()
    except Exception as exc:  # the last line of defence: a message, not a traceback
        logging.getLogger("dashboard").exception("page %s failed", page.title)
        st.error(
            f"Something went wrong on this page: {type(exc).__name__}: {exc}. "
            "The details are in the server log; the other pages still work.",
            icon=":material/error:",
        )
