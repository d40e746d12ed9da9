"""The sidebar every page shares: where models and images come from, and the gate (mirrored in the URL)."""

from __future__ import annotations

import streamlit as st

from cascade.gate import GateRule
from dashboard import state
from dashboard.components.numbers import GATE_DECIMALS, GateValueError, is_on_gate_grid, parse_gate, quantize_gate
from dashboard.context import AppContext, build_context, is_demo
from dashboard.sections import calibration as calibration_section
from dashboard.sections import metadata as metadata_section

_SEEDED_FOR = "_gate_seeded_for"
FOOTER = "Research tool. Not for clinical use."


def _full_path(text: str) -> str:
    """The whole path for a tooltip (a long one is cut in its field)."""
    return f"\n\nNow: `{_code(text, 4096)}`" if text else ""


def _sources_form() -> None:
    defaults = state.default_sources()
    current = state.sources()
    with st.sidebar.expander("Models and data", icon=":material/folder_open:"):
        st.text_input(
            "Cascade config",
            value=defaults.config_path,
            key=state.CONFIG_KEY,
            help="A cascade.toml naming the two model folders and the gate." + _full_path(current.config_path),
        )
        st.text_input(
            "Dataset folder",
            value=defaults.data_path,
            key=state.DATA_KEY,
            help="An ImageFolder tree: root/[train|val|test/]<class>/<image>, e.g. an unzipped Kaggle knee set."
            + _full_path(current.data_path),
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


def _url_gate() -> tuple[float | None, str | None, dict[str, str]]:
    """The gate a shared link carries (``?gate=0.456&rule=top1``), and what was wrong with a value that is not used."""
    t, rule, problems = None, None, {}
    raw_t = st.query_params.get(state.GATE_KEY)
    if raw_t is not None:
        try:
            t = parse_gate(raw_t)
        except GateValueError as exc:
            problems[state.GATE_KEY] = f"The link's `gate={_code(raw_t)}` was not used: {exc}."
    raw_rule = st.query_params.get(state.RULE_KEY)
    if raw_rule is not None:
        if raw_rule in {r.value for r in GateRule}:
            rule = raw_rule
        else:
            choices = " or ".join(f"`{r.value}`" for r in GateRule)
            problems[state.RULE_KEY] = f"The link's `rule={_code(raw_rule)}` was not used: the rules are {choices}."
    return t, rule, problems


def _code(text: str, limit: int = 80) -> str:
    """Text for inside a Markdown code span (a backtick would end it), cut at ``limit`` characters."""
    text = str(text).replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _saved_gate(ctx: AppContext) -> tuple[float, str]:
    """The config's gate at the dashboard's precision (a saved value with more decimals is said to be rounded)."""
    if ctx.config is None:
        return state.DEFAULT_GATE, GateRule.P_NORMAL.value
    saved = ctx.config.threshold
    if not is_on_gate_grid(saved):
        state.add_notice(
            "saved_gate",
            f"The config's gate {saved} has more than {GATE_DECIMALS} decimals; the dashboard uses "
            f"{state.gate_text(quantize_gate(saved))}.",
            quantize_gate(saved),
        )
    return quantize_gate(saved), ctx.config.rule.value


def _seed_gate(ctx: AppContext) -> None:
    """Put the gate into session state (``state.GATE_KEY`` / ``RULE_KEY``, not widget state) before its widgets exist.

    On a session's first run the URL's gate wins over the saved one; when another config is opened, its saved gate
    replaces the current one. Bad link values are reported in the sidebar while the fallback is in use.
    """
    saved_t, saved_rule = _saved_gate(ctx)
    config_id = str(ctx.config.path) if ctx.config else None
    if _SEEDED_FOR not in st.session_state:
        url_t, url_rule, problems = _url_gate()
        st.session_state[state.GATE_KEY] = saved_t if url_t is None else url_t
        st.session_state[state.RULE_KEY] = url_rule or saved_rule
        t, rule = state.gate()
        using = {state.GATE_KEY: f"gate {state.gate_text(t)}", state.RULE_KEY: f"rule `{rule.value}`"}
        for name, problem in problems.items():
            state.add_notice(name, f"{problem} Using the saved {using[name]}.", (t, rule.value))
    elif ctx.config is not None and st.session_state[_SEEDED_FOR] != config_id:
        st.session_state[state.GATE_KEY] = saved_t
        st.session_state[state.RULE_KEY] = saved_rule
    st.session_state[_SEEDED_FOR] = config_id


def _copy_threshold(widget_key: str) -> None:
    st.session_state[state.GATE_KEY] = quantize_gate(st.session_state[widget_key])


def _copy_rule() -> None:
    st.session_state[state.RULE_KEY] = st.session_state[state.RULE_WIDGET_KEY]


def _gate_widgets(ctx: AppContext) -> None:
    _seed_gate(ctx)
    t, rule = state.gate()
    # The widgets show the gate the pages decide on; they write back through their callbacks.
    st.session_state[state.GATE_SLIDER_KEY] = t
    st.session_state[state.GATE_INPUT_KEY] = t
    st.session_state[state.RULE_WIDGET_KEY] = rule.value
    # The slider and the number box are one control at one precision: same range, step and format, same state.
    gate_range = {"min_value": 0.0, "max_value": 1.0, "step": state.GATE_STEP, "format": f"%.{GATE_DECIMALS}f"}
    st.sidebar.slider(
        "Gate threshold",
        **gate_range,
        key=state.GATE_SLIDER_KEY,
        on_change=_copy_threshold,
        args=(state.GATE_SLIDER_KEY,),
        help="Stage 1 answers 'normal' alone when its P(normal) passes this; otherwise stage 2 decides. "
        "Moving it re-decides cached predictions: no model runs.",
    )
    st.sidebar.number_input(
        "Exact gate",
        **gate_range,
        key=state.GATE_INPUT_KEY,
        on_change=_copy_threshold,
        args=(state.GATE_INPUT_KEY,),
        help=f"Type a threshold ({GATE_DECIMALS} decimals, as the slider); it moves the slider too.",
    )
    st.sidebar.radio(
        "Gate rule",
        [r.value for r in GateRule],
        format_func=state.RULE_LABELS.get,
        key=state.RULE_WIDGET_KEY,
        on_change=_copy_rule,
        horizontal=True,
    )
    for name in (state.GATE_KEY, state.RULE_KEY):
        message = state.notice(name, (t, rule.value))
        if message:
            st.sidebar.warning(message, icon=":material/link_off:")
    message = state.notice("saved_gate", quantize_gate(ctx.config.threshold) if ctx.config else None)
    if message:
        st.sidebar.warning(message, icon=":material/info:")
    st.query_params[state.GATE_KEY] = state.gate_text(t)
    st.query_params[state.RULE_KEY] = rule.value
    saved_t, saved_rule = _saved_gate(ctx)
    if ctx.config and (t != saved_t or rule.value != saved_rule):
        st.sidebar.caption(f"Saved gate: {state.gate_text(saved_t)} ({state.RULE_LABELS[saved_rule]})")


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
