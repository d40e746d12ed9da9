"""Gate tuning: every metric against the threshold from cached predictions, suggested gates, and saving the gate.

Predictions for the split are computed once (both stages on every image) and cached on disk; from then on the slider,
the curves, the confusion matrix, the Sankey diagram and the suggestions are arithmetic on those numbers.
"""

import numpy as np
import pandas as pd
import streamlit as st

from cascade.config import save_gate
from cascade.errors import CascadeError
from cascade.gate import decide_batch
from cascade.sweep import DEFAULT_THRESHOLDS, flow_counts, suggest_gates
from dashboard import state, widgets
from dashboard.components.charts import class_curves, confusion_heatmap, flow_sankey, headline_curves
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
saved = cfg.threshold
widgets.headline_metrics(preds, ni, saved)

s = widgets.gate_sweep(preds, ni, DEFAULT_THRESHOLDS)
left, right = st.columns(2)
left.plotly_chart(headline_curves(s, t, saved), width="stretch", key="curves_main")
right.plotly_chart(class_curves(s, classes, t, saved), width="stretch", key="curves_class")

now = decide_batch(preds.p1, preds.p2, ni, t, rule)
point = widgets.gate_sweep(preds, ni, [t])
left, right = st.columns(2)
left.plotly_chart(confusion_heatmap(point.confusion[0], classes), width="stretch", key="confusion")
into, out = flow_counts(preds.labels, now.routed, now.final, len(classes))
right.plotly_chart(flow_sankey(into, out, classes), width="stretch", key="sankey")

st.subheader("Answers that change when the gate moves")
st.caption(f"Saved gate {state.gate_text(saved)} → slider {state.gate_text(t)} ({state.RULE_LABELS[rule.value]}).")
before = decide_batch(preds.p1, preds.p2, ni, saved, rule)
flips = np.flatnonzero(before.final != now.final)
if len(flips) == 0:
    st.caption("None: every image gets the same answer at both gates.")
else:
    names = np.asarray(classes)
    table = pd.DataFrame(
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
    st.caption(f"{len(flips)} change: {fixed} become right, {broken} become wrong.")
    st.dataframe(table, hide_index=True, width="stretch", height=min(400, 38 + 35 * len(flips)))

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
