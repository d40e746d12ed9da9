"""The sidebar every page shares: where models and images come from, and the gate (mirrored in the URL)."""

from __future__ import annotations

import streamlit as st

from cascade.gate import GateRule
from dashboard import state
from dashboard.resources import AppContext, build_context, is_demo
from dashboard.sections import calibration as calibration_section
from dashboard.sections import metadata as metadata_section

_SEEDED_FOR = "_gate_seeded_for"
FOOTER = "Research tool. Not for clinical use."


def _sources_form() -> None:
    defaults = state.default_sources()
    with st.sidebar.expander("Models and data", icon=":material/folder_open:"):
        st.text_input(
            "Cascade config",
            value=defaults.config_path,
            key=state.CONFIG_KEY,
            help="A cascade.toml naming the two model folders and the gate.",
        )
        st.text_input(
            "Dataset folder",
            value=defaults.data_path,
            key=state.DATA_KEY,
            help="An ImageFolder tree: root/[train|val|test/]<class>/<image>, e.g. an unzipped Kaggle knee set.",
        )
        st.text_input(
            "Prediction table (optional)",
            value=defaults.predictions_path,
            key=state.PREDICTIONS_KEY,
            help="A Parquet file from `python -m engines precompute` for this dataset and these models: Gate tuning "
            "and Dataset read it instead of running the models. Empty: the dashboard's own cache.",
        )
        from engines.select import BACKEND_KINDS

        kinds = list(BACKEND_KINDS)
        st.selectbox(
            "Backend",
            kinds,
            index=kinds.index(defaults.backend) if defaults.backend in kinds else 0,
            key=state.BACKEND_KEY,
            help="auto picks the fastest backend available on this machine; the Home page says why.",
        )
        metadata_section.sidebar_input()
        if st.button("Reload models and data", icon=":material/refresh:", help="After files changed on disk."):
            st.cache_resource.clear()
            st.cache_data.clear()


def _url_gate() -> tuple[float | None, str | None]:
    """The gate a shared link carries (``?gate=0.45&rule=top1``); invalid values are ignored."""
    t, rule = None, None
    try:
        value = float(st.query_params.get(state.GATE_KEY, ""))
        t = value if 0.0 <= value <= 1.0 else None
    except ValueError:
        pass
    raw = st.query_params.get(state.RULE_KEY)
    if raw in {r.value for r in GateRule}:
        rule = raw
    return t, rule


def _seed_gate(ctx: AppContext) -> None:
    """Put the gate into session state before its widgets exist, so they need no default of their own.

    On a session's first run the URL's gate wins over the saved one; when another config is opened, its saved gate
    replaces the slider's position.
    """
    saved_t = ctx.config.threshold if ctx.config else 0.6
    saved_rule = ctx.config.rule.value if ctx.config else GateRule.P_NORMAL.value
    config_id = str(ctx.config.path) if ctx.config else None
    if _SEEDED_FOR not in st.session_state:
        url_t, url_rule = _url_gate()
        st.session_state[state.GATE_KEY] = float(saved_t if url_t is None else url_t)
        st.session_state[state.RULE_KEY] = url_rule or saved_rule
    elif ctx.config is not None and st.session_state[_SEEDED_FOR] != config_id:
        st.session_state[state.GATE_KEY] = float(saved_t)
        st.session_state[state.RULE_KEY] = saved_rule
    st.session_state[_SEEDED_FOR] = config_id


def _gate_widgets(ctx: AppContext) -> None:
    _seed_gate(ctx)
    st.sidebar.slider(
        "Gate threshold",
        min_value=0.0,
        max_value=1.0,
        step=state.GATE_STEP,
        key=state.GATE_KEY,
        help="Stage 1 answers 'normal' alone when its confidence passes this; otherwise stage 2 decides. "
        "Moving it re-decides cached predictions: no model runs.",
    )
    st.sidebar.radio(
        "Gate rule",
        [r.value for r in GateRule],
        format_func=state.RULE_LABELS.get,
        key=state.RULE_KEY,
        horizontal=True,
    )
    t, rule = state.gate()
    st.query_params[state.GATE_KEY] = f"{t:.2f}"
    st.query_params[state.RULE_KEY] = rule.value
    if ctx.config and (abs(t - ctx.config.threshold) > 1e-9 or rule is not ctx.config.rule):
        st.sidebar.caption(f"Saved gate: {ctx.config.threshold:.2f} ({state.RULE_LABELS[ctx.config.rule.value]})")


def render() -> AppContext:
    """Draw the shared sidebar and open what it names; returns this run's context."""
    _sources_form()
    ctx = build_context()
    for what, exc in ctx.errors.values():
        st.sidebar.error(f"{what}: {exc}", icon=":material/error:")
    _gate_widgets(ctx)
    calibration_section.sidebar_status(ctx)
    if ctx.config is not None and is_demo(ctx.config):
        st.sidebar.warning("Demo models, trained on synthetic phantoms.", icon=":material/warning:")
    st.sidebar.caption(FOOTER)
    return ctx
