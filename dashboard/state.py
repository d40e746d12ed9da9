"""What every page shares: which cascade and dataset are open, the gate, the selected image.

The gate (threshold and rule) lives in plain session state under ``GATE_KEY`` / ``RULE_KEY``: the sidebar's widgets
(a slider and a number box for the threshold, a radio for the rule) are drawn from it and write back to it, so no page
switch can reset it (Streamlit drops a widget's own state when a run is cut short by ``st.switch_page``). It is
mirrored in the URL (``?gate=0.456&rule=top1``), so a link reproduces what its sender saw. Thresholds have one
precision everywhere (``dashboard.components.numbers.GATE_DECIMALS``). Pages read the gate from here and never run a
model to re-decide. Config and dataset paths come from the sidebar, seeded from environment variables
(handy for tests and deployments); they are not put in the URL, so a link cannot point the app at other folders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from cascade.config import DEFAULT_CONFIG
from cascade.gate import GateRule
from dashboard.components.numbers import GATE_STEP, gate_text, quantize_gate  # noqa: F401 (pages use state.gate_text)

ROOT = Path(__file__).resolve().parent.parent
ENV_CONFIG = "KNEE_CASCADE_CONFIG"
ENV_DATA = "KNEE_CASCADE_DATA"
ENV_BACKEND = "KNEE_CASCADE_BACKEND"
ENV_PREDICTIONS = "KNEE_CASCADE_PREDICTIONS"  # a Parquet table from `python -m engines precompute`
ENV_CACHE = "KNEE_CASCADE_CACHE"  # folder of the prediction cache (default: .cache/predictions in the repository)
DEFAULT_DATA = ROOT / "sample_images"

GATE_KEY = "gate"  # the threshold every page decides on (also the URL parameter's name)
RULE_KEY = "rule"
GATE_SLIDER_KEY = "gate_slider"  # widgets drawn from GATE_KEY / RULE_KEY each run
GATE_INPUT_KEY = "gate_input"
RULE_WIDGET_KEY = "rule_radio"
CONFIG_KEY = "config_path"
DATA_KEY = "data_path"
BACKEND_KEY = "backend"
PREDICTIONS_KEY = "predictions_path"
SPLIT_KEY = "split"
SELECTED_KEY = "selected_image"  # rel path of a dataset image, or None
IMAGE_PARAM = "img"
DEFAULT_GATE = 0.6

RULE_LABELS = {
    GateRule.P_NORMAL.value: "P(normal) ≥ t",
    GateRule.TOP1.value: "normal on top and ≥ t",
}


@dataclass(frozen=True)
class Sources:
    """Where the app's models and images come from."""

    config_path: str
    data_path: str
    backend: str
    predictions_path: str = ""  # a precomputed prediction table; "" means the dashboard's own cache


def default_sources() -> Sources:
    """Paths from ``KNEE_CASCADE_CONFIG`` / ``KNEE_CASCADE_DATA`` / ``KNEE_CASCADE_BACKEND``, else the demo set-up."""
    return Sources(
        os.environ.get(ENV_CONFIG) or str(DEFAULT_CONFIG),
        os.environ.get(ENV_DATA) or str(DEFAULT_DATA),
        os.environ.get(ENV_BACKEND) or "auto",
        os.environ.get(ENV_PREDICTIONS) or "",
    )


def prediction_cache_dir() -> str | None:
    """Where split predictions are cached; None means ``cascade.predcache``'s default."""
    return os.environ.get(ENV_CACHE) or None


def sources() -> Sources:
    """The sources chosen in the sidebar (defaults until the sidebar has rendered)."""
    d = default_sources()
    ss = st.session_state
    return Sources(
        str(ss.get(CONFIG_KEY) or d.config_path).strip(),
        str(ss.get(DATA_KEY) or d.data_path).strip(),
        str(ss.get(BACKEND_KEY) or d.backend),
        str(ss.get(PREDICTIONS_KEY) or d.predictions_path).strip(),
    )


def gate() -> tuple[float, GateRule]:
    """The current gate threshold and rule (as set by the sidebar widgets)."""
    t = st.session_state.get(GATE_KEY)
    rule = st.session_state.get(RULE_KEY)
    return quantize_gate(DEFAULT_GATE if t is None else t), GateRule.parse(rule or GateRule.P_NORMAL.value)


def set_gate(threshold: float, rule: GateRule | str | None = None) -> None:
    """Move the gate; use as a button callback (widgets may not be changed after they are drawn in a run)."""
    st.session_state[GATE_KEY] = quantize_gate(threshold)
    if rule is not None:
        st.session_state[RULE_KEY] = GateRule.parse(rule).value


def select_image(rel: str | None) -> None:
    """Make a dataset image the one the Explain and Grad-CAM pages show."""
    st.session_state[SELECTED_KEY] = rel


def selected_image() -> str | None:
    """The selected dataset image: chosen on a page, or given in the URL (``?img=test/normal/x.png``) on arrival.

    The URL is read once per session; afterwards None means "no choice" (e.g. the split was changed).
    """
    if SELECTED_KEY not in st.session_state:
        st.session_state[SELECTED_KEY] = st.query_params.get(IMAGE_PARAM) or None
    return st.session_state[SELECTED_KEY]


NOTICES_KEY = "_link_notices"


def add_notice(name: str, message: str, while_value: object) -> None:
    """Remember what was wrong with a link's parameter ``name``; it is shown while the fallback is still in use."""
    st.session_state.setdefault(NOTICES_KEY, {})[name] = (message, while_value)


def notice(name: str, current: object) -> str | None:
    """The message about parameter ``name`` while ``current`` is still the value used instead; then it is dropped."""
    notices = st.session_state.get(NOTICES_KEY) or {}
    if name not in notices:
        return None
    message, value = notices[name]
    if value != current:
        del notices[name]
        return None
    return message
