"""The sidebar every page shares: where models and images come from, and the gate (bound to the URL)."""

from __future__ import annotations

import streamlit as st

from cascade.gate import GateRule
from dashboard import state
from dashboard.resources import AppContext, build_context, is_demo

_SEEDED_FOR = "_gate_seeded_for"


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
        from engines.select import BACKEND_KINDS

        kinds = list(BACKEND_KINDS)
        st.selectbox(
            "Backend",
            kinds,
            index=kinds.index(defaults.backend) if defaults.backend in kinds else 0,
            key=state.BACKEND_KEY,
            help="auto picks the fastest backend available on this machine; the Home page says why.",
        )


def _gate_widgets(ctx: AppContext) -> None:
    saved_t = ctx.config.threshold if ctx.config else 0.6
    saved_rule = ctx.config.rule.value if ctx.config else GateRule.P_NORMAL.value
    # The saved gate seeds the widgets once; afterwards their state (or a button's set_gate) rules, and passing a
    # default as well would make Streamlit warn about two sources of truth.
    seeded_for = ctx.config.path if ctx.config else None
    previous = st.session_state.get(_SEEDED_FOR)
    if previous is not None and previous != seeded_for and ctx.config is not None:
        # Another config was opened: its saved gate replaces the slider's position (on the first run the URL may
        # carry a gate, which the bound widget reads itself).
        st.session_state[state.GATE_KEY] = float(saved_t)
        st.session_state[state.RULE_KEY] = saved_rule
    st.session_state[_SEEDED_FOR] = seeded_for
    seeded = state.GATE_KEY in st.session_state
    st.sidebar.slider(
        "Gate threshold",
        min_value=0.0,
        max_value=1.0,
        value=None if seeded else float(saved_t),
        step=state.GATE_STEP,
        key=state.GATE_KEY,
        bind="query-params",
        help="Stage 1 answers 'normal' alone when its confidence passes this; otherwise stage 2 decides. "
        "Moving it re-decides cached predictions: no model runs.",
    )
    rules = [r.value for r in GateRule]
    st.sidebar.radio(
        "Gate rule",
        rules,
        index=None if state.RULE_KEY in st.session_state else rules.index(saved_rule),
        format_func=state.RULE_LABELS.get,
        key=state.RULE_KEY,
        bind="query-params",
        horizontal=True,
    )
    t, rule = state.gate()
    if ctx.config and (abs(t - ctx.config.threshold) > 1e-9 or rule is not ctx.config.rule):
        st.sidebar.caption(f"Saved gate: {ctx.config.threshold:.2f} ({state.RULE_LABELS[ctx.config.rule.value]})")


def render() -> AppContext:
    """Draw the shared sidebar and open what it names; returns this run's context."""
    _sources_form()
    ctx = build_context()
    for what, exc in ctx.errors.values():
        st.sidebar.error(f"{what}: {exc}", icon=":material/error:")
    _gate_widgets(ctx)
    if ctx.config is not None and is_demo(ctx.config):
        st.sidebar.warning(
            "Demo models trained on synthetic phantoms: not for clinical use.", icon=":material/warning:"
        )
    return ctx
