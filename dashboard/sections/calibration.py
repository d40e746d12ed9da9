"""Calibration on the dashboard: the on/off line in the sidebar, and the Gate tuning section with reliability diagrams
before and after temperature scaling and the suggested gates on raw against calibrated probabilities.

Everything is derived from the split's cached raw predictions: refitting, comparing or switching runs no model.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import streamlit as st

from cascade.calibration import (
    BIN_STRATEGIES,
    CalibrationSettings,
    calibration_report,
    class_bins,
    fit_temperature,
    top_label_bins,
)
from cascade.config import save_calibration
from cascade.errors import CascadeError
from cascade.predcache import Predictions
from cascade.sweep import DEFAULT_THRESHOLDS, suggest_gates, sweep
from dashboard import state
from dashboard.components.calibration_charts import gate_moves, reliability_figure, scores_table
from dashboard.context import AppContext

RESULT_KEY = "calibration_save_result"
COMMAND = "python -m engines calibrate DATA --split val"


def sidebar_status(ctx: AppContext) -> None:
    """One line on every page: is calibration on, with which temperatures."""
    if ctx.config is None:
        return
    cal = ctx.config.calibration
    icon = ":material/thermostat:" if cal.enabled else ":material/thermostat_auto:"
    where = f" Fitted on {cal.fitted_on}." if cal.fitted_on else ""
    st.sidebar.caption(
        f"{icon} Calibration **{cal.describe()}**",
        help="Temperature scaling per stage, from the config's [calibration] table. When on, every probability "
        f"(gate, answers, curves) is softmax(log p / T).{where} Fit and switch it on the Gate tuning page or with "
        f"`{COMMAND}`.",
    )


def _write(path: str, settings: CalibrationSettings, what: str) -> None:
    try:
        save_calibration(path, settings)
        st.session_state[RESULT_KEY] = ("ok", f"{what} (`{path}`).")
    except (CascadeError, OSError) as exc:
        st.session_state[RESULT_KEY] = ("error", f"Could not write the calibration: {exc}")


def _fitted_here(raw: Predictions, root: str) -> CalibrationSettings:
    t1 = fit_temperature(raw.p1, raw.labels).temperature
    t2 = fit_temperature(raw.p2, raw.labels).temperature
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    return CalibrationSettings(True, t1, t2, f"{raw.split} split of {root} ({len(raw)} images), {today}")


def render(ctx: AppContext, preds: Predictions) -> None:
    """The Gate tuning page's calibration section for the split's predictions."""
    cfg, cascade = ctx.need_config(), ctx.need_cascade()
    st.subheader("Calibration: can the gate be read as a probability?")
    raw = preds.with_temperatures((1.0, 1.0))
    if len(raw) < 2:
        st.caption("Calibration needs at least two readable images in the split.")
        return
    saved = cfg.calibration
    here = _fitted_here(raw, str(ctx.index.root) if ctx.index else "the dataset")
    use_saved = saved.fitted and st.toggle(
        "Compare with the config's temperatures",
        value=True,
        key="calibration_use_saved",
        help=f"Off: temperatures fitted here, on '{raw.split}'. The config's come from {saved.fitted_on or 'a fit'}.",
    )
    chosen = saved if use_saved else here
    temps = (chosen.stage1_temperature, chosen.stage2_temperature)
    source = (
        f"the config's, fitted on {saved.fitted_on or 'an earlier split'}"
        if use_saved
        else f"fitted here on the {len(raw)} images of '{raw.split}' (not saved yet)"
    )
    st.caption(
        f"Calibration is **{saved.describe()}** in the config. Temperatures compared below: T₁ = {temps[0]:.3f}, "
        f"T₂ = {temps[1]:.3f}, {source}. T > 1: the stage was over-confident; T < 1: under-confident. "
        + ("Fit on the validation split, not on the split you judge the gate on." if raw.split == "test" else "")
    )
    _controls(cfg.path, saved, here, raw.split)

    c = st.columns([2, 3, 3])
    stage = c[0].radio("Stage", [1, 2], format_func=lambda s: f"Stage {s}", horizontal=True, key="calibration_stage")
    strategy = c[1].segmented_control(
        "Bins", BIN_STRATEGIES, default=BIN_STRATEGIES[0], key="calibration_bins", required=True
    )
    n_bins = c[2].slider("Number of bins", 3, 20, 10, key="calibration_n_bins")
    cal = raw.with_temperatures(temps)
    p_raw, p_cal = (raw.p1, cal.p1) if stage == 1 else (raw.p2, cal.p2)
    ni, y = cascade.normal_index, raw.labels
    t, rule = state.gate()
    left, right = st.columns(2)
    left.plotly_chart(
        reliability_figure(
            class_bins(p_raw, y, ni, n_bins, strategy),
            class_bins(p_cal, y, ni, n_bins, strategy),
            f"Stage {stage}: P(normal) against how often it is normal",
            "predicted P(normal)",
            gate=t if stage == 1 else None,
        ),
        width="stretch",
        key="reliability_normal",
    )
    right.plotly_chart(
        reliability_figure(
            top_label_bins(p_raw, y, n_bins, strategy),
            top_label_bins(p_cal, y, n_bins, strategy),
            f"Stage {stage}: top-label confidence against accuracy",
            "confidence of the top class",
        ),
        width="stretch",
        key="reliability_top",
    )
    table = scores_table(calibration_report(p_raw, y, ni, n_bins), calibration_report(p_cal, y, ni, n_bins))
    st.dataframe(table, hide_index=True, width="stretch", column_config=_number_columns(("raw", "calibrated")))
    st.caption(
        f"{len(raw)} images, {n_bins} bins. Equal-width bins split [0, 1] evenly; equal-mass bins hold the same number "
        "of images each. Brier: mean squared error of the probabilities; NLL: mean −log p(true class)."
    )

    st.markdown(
        "**How calibration moves the gate suggestions** (stage 1's T moves P(normal); stage 2's changes no answer)"
    )
    raw_sweep = sweep(raw.p1, raw.p2, y, ni, DEFAULT_THRESHOLDS, rule)
    cal_sweep = sweep(cal.p1, cal.p2, y, ni, DEFAULT_THRESHOLDS, rule)
    moves = gate_moves(suggest_gates(raw_sweep), suggest_gates(cal_sweep))
    st.dataframe(moves, hide_index=True, width="stretch", column_config=_number_columns(("raw", "calibrated", "move")))


def _number_columns(names) -> dict:
    return {n: st.column_config.NumberColumn(n, format="%.3f") for n in names}


def _controls(path, saved: CalibrationSettings, here: CalibrationSettings, split: str) -> None:
    b = st.columns(3)
    b[0].button(
        f"Save the temperatures fitted on '{split}'",
        key="calibration_save",
        icon=":material/save:",
        on_click=_write,
        args=(str(path), here, f"Saved T₁ = {here.stage1_temperature:.3f}, T₂ = {here.stage2_temperature:.3f}"),
        help=f"Writes [calibration] into {path} (switched on), keeping its other content. Same as `{COMMAND}`.",
    )
    label = "Switch calibration off" if saved.enabled else "Switch calibration on"
    b[1].button(
        label,
        key="calibration_toggle",
        disabled=not saved.fitted,
        icon=":material/toggle_on:" if saved.enabled else ":material/toggle_off:",
        on_click=_write,
        args=(str(path), dataclasses.replace(saved, enabled=not saved.enabled), label.replace("Switch", "Switched")),
        help="Applies (or stops applying) the config's temperatures on every page; no model runs.",
    )
    result = st.session_state.pop(RESULT_KEY, None)
    if result is not None:
        (b[2].success if result[0] == "ok" else b[2].error)(result[1])
