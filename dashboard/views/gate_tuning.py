"""Gate tuning: every metric against the threshold from cached predictions, suggested gates, and saving the gate.

Predictions for the split are computed once (both stages on every image) and cached on disk; from then on the slider,
the curves, the P(normal) strip, the stage comparison, the confusion matrix, the flows and the suggestions are
arithmetic on those numbers. A click or a box selection on the strip or the flows shows those images on Dataset.
"""

import numpy as np
import pandas as pd
import streamlit as st

from cascade.config import save_gate
from cascade.errors import CascadeError
from cascade.gate import GateRule, decide_batch, gate_key
from cascade.sweep import DEFAULT_THRESHOLDS, suggest_gates, sweep
from dashboard import state, widgets
from dashboard.components.browse import show_in_dataset
from dashboard.components.charts import (
    class_curves,
    confusion_heatmap,
    flow_diagram,
    headline_curves,
    p_normal_strip,
    rule_curves,
)
from dashboard.components.stages import stage_comparison
from dashboard.resources import app_context
from dashboard.sections import calibration as calibration_section
from dashboard.sections import metadata as metadata_section

SAVE_RESULT_KEY = "gate_save_result"

ctx = app_context()
st.title("Gate tuning")
cfg = ctx.need_config()
cascade = ctx.need_cascade()
index = ctx.need_index()
split = widgets.split_selector(index)
preds = widgets.predictions_or_prompt(ctx, split, key="tuning_compute")
if preds is None:
    st.stop()
if len(preds) == 0:
    st.error(f"No readable image in '{split}'.", icon=":material/error:")
    st.stop()

t, rule = state.gate()
ni, classes = cascade.normal_index, cascade.classes
normal_label = classes[ni]
saved = cfg.threshold
widgets.headline_metrics(preds, ni, saved)
now = decide_batch(preds.p1, preds.p2, ni, t, rule)


def _open_in_dataset(event, why) -> None:
    """A chart selection (click or box) → the Dataset page showing exactly those images."""
    selection = event.get("selection") if isinstance(event, dict) else None
    points = (selection or {}).get("points") or []
    rels = _selected_rels(points)
    if rels:
        st.session_state.update(show_in_dataset(rels, why(points)))
        st.switch_page("views/dataset.py")


def _selected_rels(points) -> list[str]:
    rels: list[str] = []
    for p in points:
        custom = p.get("customdata")
        if isinstance(custom, str):  # a strip point: its file
            rels.append(custom)
        elif isinstance(custom, list | tuple) and len(custom) == 3:  # a flow band: [true, routed, final]
            true, routed, final = (int(v) for v in custom)
            m = (preds.labels == true) & (now.routed == bool(routed))
            if final >= 0:
                m &= now.final == final
            rels.extend(preds.rels[i] for i in np.flatnonzero(m))
    return rels


def _strip_why(points) -> str:
    return f"{len(points)} point(s) of the P(normal) strip at gate {state.gate_text(t)}."


def _flow_why(points) -> str:
    parts = []
    for p in points:
        custom = p.get("customdata")
        if isinstance(custom, list | tuple) and len(custom) == 3:
            true, routed, final = (int(v) for v in custom)
            where = "sent to stage 2" if routed else "settled by stage 1"
            parts.append(f"true {classes[true]}, {where}" + (f", final {classes[final]}" if final >= 0 else ""))
    return f"{'; '.join(parts)} (gate {state.gate_text(t)})."


st.subheader("What the gate sees")
st.caption(
    "Each dot is one image of the split at stage 1's P(normal). Right of the gate line (shaded) stage 1 answers "
    "'normal' alone; left of it the image goes to stage 2. Click a dot or drag a box to see those images on Dataset."
)
never = ~np.isfinite(gate_key(preds.p1, ni, rule))
event = st.plotly_chart(
    p_normal_strip(preds.p1[:, ni], preds.labels, classes, preds.rels, t, saved, never if never.any() else None),
    width="stretch",
    key="strip",
    on_select="rerun",
    selection_mode=("points", "box", "lasso"),
)
_open_in_dataset(event, _strip_why)
if never.any():
    st.caption(
        f"Open circles: {int(never.sum())} image(s) whose top class at stage 1 is not {normal_label}; the rule "
        f"'{state.RULE_LABELS[rule.value]}' sends them to stage 2 whatever the threshold."
    )

st.subheader("Stage 1 alone, stage 2 alone and the cascade")
table = stage_comparison(preds.p1, preds.p2, preds.labels, classes, ni, t, rule, state.gate_text(t))
numeric = [c for c in table.columns if c != "what it means"]
# One decimal, as the headline metrics above: the same number reads the same everywhere on the page.
shown = table.copy()
shown[numeric] = table[numeric].map(lambda v: "—" if not np.isfinite(v) else f"{100 * v:.1f} %")
st.dataframe(
    shown,
    width="stretch",
    column_config={
        **{c: st.column_config.TextColumn(width="small") for c in numeric},
        "what it means": st.column_config.TextColumn(width="large"),
    },
)

s = widgets.gate_sweep(preds, ni, DEFAULT_THRESHOLDS)
left, right = st.columns(2)
left.plotly_chart(headline_curves(s, classes, t, saved, normal_label), width="stretch", key="curves_main")
right.plotly_chart(class_curves(s, classes, t, saved, normal_label), width="stretch", key="curves_class")

point = widgets.gate_sweep(preds, ni, [t])
left, right = st.columns(2)
left.plotly_chart(confusion_heatmap(point.confusion[0], classes), width="stretch", key="confusion")
with right:
    event = st.plotly_chart(
        flow_diagram(preds.labels, now.routed, now.final, classes),
        width="stretch",
        key="flows",
        on_select="rerun",
        selection_mode=("points",),
    )
    _open_in_dataset(event, _flow_why)
    st.caption("Click a count to see those images on Dataset.")

st.subheader("The two gate rules")
st.caption(
    f"Solid: {state.RULE_LABELS[GateRule.P_NORMAL.value]}; dashed: {state.RULE_LABELS[GateRule.TOP1.value]}. "
    "The second never lets stage 1 answer 'normal' when another class is its top answer."
)
both = {r.value: sweep(preds.p1, preds.p2, preds.labels, ni, DEFAULT_THRESHOLDS, r) for r in GateRule}
st.plotly_chart(rule_curves(both, state.RULE_LABELS, t), width="stretch", key="curves_rules")

st.subheader("Answers that change when the gate moves")
st.caption(f"Saved gate {state.gate_text(saved)} → slider {state.gate_text(t)} ({state.RULE_LABELS[rule.value]}).")
before = decide_batch(preds.p1, preds.p2, ni, saved, rule)
flips = np.flatnonzero(before.final != now.final)
if len(flips) == 0:
    st.caption("None: every image gets the same answer at both gates.")
else:
    names = np.asarray(classes)
    flipped = pd.DataFrame(
        {
            "image": [preds.rels[i] for i in flips],
            "true class": names[preds.labels[flips]],
            f"answer at {state.gate_text(saved)}": names[before.final[flips]],
            f"answer at {state.gate_text(t)}": names[now.final[flips]],
            "P(normal), stage 1": preds.p1[flips, ni],
        }
    )
    fixed = int((now.final[flips] == preds.labels[flips]).sum())
    broken = int((before.final[flips] == preds.labels[flips]).sum())
    st.caption(f"{len(flips)} change: {fixed} become right, {broken} become wrong. Select a row to open it on Explain.")
    picked = st.dataframe(
        flipped,
        hide_index=True,
        width="stretch",
        height=min(400, 38 + 35 * len(flips)),
        key="flips",
        on_select="rerun",
        selection_mode="single-row",
    )
    rows = picked.selection.rows if picked is not None else []
    if rows:
        state.select_image(flipped["image"].iloc[rows[0]])
        st.switch_page("views/explain.py")

metadata_section.gate_plot(ctx, preds)

st.subheader("Suggested gates")
c = st.columns(2)
target = c[0].number_input("Abnormal sensitivity target", 0.5, 1.0, 0.95, 0.01, format="%.2f")
ratio = c[1].number_input(
    "Cost of a missed abnormal knee, in false alarms", 1.0, 100.0, 5.0, 0.5, help="Used by the minimum-cost gate."
)
for g in suggest_gates(s, target, ratio):
    row = st.columns([3, 1, 5, 1.2], vertical_alignment="center")
    row[0].markdown(f"**{g.title}**")
    row[1].markdown("—" if g.threshold is None else f"`{state.gate_text(g.threshold)}`")
    row[2].caption(g.why)
    row[3].button(
        "Apply",
        key=f"apply_{g.key}",
        disabled=g.threshold is None or abs(g.threshold - t) < 1e-9,
        on_click=state.set_gate,
        args=(g.threshold if g.threshold is not None else t,),
        width="stretch",
    )


def _save(path: str, threshold: float, rule_value: str) -> None:
    try:
        save_gate(path, threshold, rule_value)
        st.session_state[SAVE_RESULT_KEY] = (
            "ok",
            f"Saved gate {state.gate_text(threshold)} ({rule_value}) to `{path}`.",
        )
    except (CascadeError, OSError) as exc:
        st.session_state[SAVE_RESULT_KEY] = ("error", f"Could not save the gate: {exc}")


calibration_section.render(ctx, preds)

st.subheader("Save")
unchanged = abs(t - saved) < 1e-9 and rule is cfg.rule
st.button(
    f"Save gate {state.gate_text(t)} ({state.RULE_LABELS[rule.value]}) to the config",
    type="primary",
    disabled=unchanged,
    on_click=_save,
    args=(str(cfg.path), t, rule.value),
    icon=":material/save:",
    help=f"Writes [gate] threshold and rule into {cfg.path}, keeping its other content and comments.",
)
result = st.session_state.pop(SAVE_RESULT_KEY, None)
if result is not None:
    (st.success if result[0] == "ok" else st.error)(result[1])
elif unchanged:
    st.caption(f"The slider is at the saved gate ({cfg.path}).")
