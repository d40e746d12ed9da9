"""Text from files and links shown as text: file names and paths may hold Markdown, HTML or Streamlit directives."""

from __future__ import annotations

import re

# Markdown and Streamlit's extensions (":red[…]", ":material/x:", "$math$"), plus HTML's angle brackets and entities.
_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~:$<>&])")


def escape_markdown(text: object) -> str:
    """``text`` for ``st.markdown``/``st.caption``/labels so that it shows literally (each special character escaped).

    Line breaks become spaces: a name is one line.
    """
    flat = " ".join(str(text).splitlines())
    return _SPECIAL.sub(r"\\\1", flat)
