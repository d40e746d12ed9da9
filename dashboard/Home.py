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

from dashboard import sidebar  # noqa: E402
from dashboard.context import CONTEXT_KEY  # noqa: E402

st.set_page_config(page_title="Knee X-ray cascade", page_icon=":material/radiology:", layout="wide")

PAGES = [
    st.Page("views/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("views/explain.py", title="Explain an image", icon=":material/image_search:"),
    st.Page("views/gradcam.py", title="Grad-CAM", icon=":material/local_fire_department:"),
    st.Page("views/dataset.py", title="Dataset", icon=":material/grid_view:"),
    st.Page("views/gate_tuning.py", title="Gate tuning", icon=":material/tune:"),
]

page = st.navigation(PAGES)
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
