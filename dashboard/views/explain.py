"""Explain an image: both stages' probabilities, the gate on the normal bar, the route lit on the diagram, in words.

Both stages run once per image (stage 2 even when the gate would stop it, to show what it would have said); moving
the gate slider re-decides from those cached numbers without running a model.
"""

import streamlit as st

from cascade.gate import decide, flip_threshold
from dashboard import state, widgets
from dashboard.components.charts import probability_bars
from dashboard.components.diagram import StageBox, cascade_dot
from dashboard.components.narrative import decision_steps, flip_sentence, pct, would_have_said
from dashboard.resources import app_context, failing_part, fit_within, predict_image
from dashboard.sections import metadata as metadata_section

ctx = app_context()
st.title("Explain an image")
cascade = ctx.need_cascade()
picked = widgets.image_picker(ctx, "explain")
if picked is None:
    st.stop()

with failing_part("Running the models"):
    pred = predict_image(ctx, picked.token, picked.image)
t, rule = state.gate()
classes, ni = cascade.classes, cascade.normal_index
decision = decide(pred.p1, pred.p2, classes, ni, t, rule)
b1, b2 = cascade.backend1, cascade.backend2

left, right = st.columns([2, 3], gap="large")
with left:
    h, w = picked.image.shape
    st.image(fit_within(picked.image, 640), caption=f"{picked.title} · {w}×{h} px", width="stretch")
    if picked.item is not None:
        st.caption(f"True class (folder): **{picked.item.label}**")
    metadata_section.show_for_image(ctx, picked.item)
with right:
    st.markdown(f"### Answer: **{decision.label}** · {pct(decision.confidence)} (stage {decision.decided_by})")
    st.plotly_chart(
        probability_bars(pred.p1, classes, "Stage 1", gate=t, normal_index=ni),
        width="stretch",
        config={"displayModeBar": False},
        key="bars1",
    )
    title2 = "Stage 2" if decision.stage2_ran else "What stage 2 would have said (the gate stopped it)"
    st.plotly_chart(
        probability_bars(pred.p2, classes, title2, faded=not decision.stage2_ran),
        width="stretch",
        config={"displayModeBar": False},
        key="bars2",
    )

st.graphviz_chart(
    cascade_dot(
        StageBox(cascade.spec1.arch, cascade.spec1.resolution, b1.name),
        StageBox(cascade.spec2.arch, cascade.spec2.resolution, b2.name),
        t,
        rule,
        path=decision.decided_by,
        final_label=f"{decision.label} {pct(decision.confidence)}",
    ),
    width="stretch",
)

st.subheader("How the cascade decided")
st.markdown("\n".join(f"{i}. {line}" for i, line in enumerate(decision_steps(decision, classes, ni), start=1)))
if not decision.stage2_ran:
    st.markdown(would_have_said(pred.p2, classes))
flip = flip_threshold(pred.p1, ni, rule)
st.info(flip_sentence(pred.p1, pred.p2, classes, ni, rule), icon=":material/swap_horiz:")
if flip is not None:
    st.caption(f"Gate margin at {t:.2f}: {decision.margin:+.3f} (≥ 0 passes the gate).")

st.subheader("Latency")
lat = st.columns(2)
lat[0].metric(
    "Stage 1", f"{1000 * pred.seconds1:.0f} ms", help=f"{b1.describe()}: {cascade.reasons.get(1, '')}", border=True
)
lat[1].metric(
    "Stage 2",
    f"{1000 * pred.seconds2:.0f} ms",
    help=f"{b2.describe()}: {cascade.reasons.get(2, '')}",
    border=True,
)
st.caption(
    f"Stage 1 on {b1.describe()}; stage 2 on {b2.describe()}. Measured on this image's first run, preprocessing "
    "included; later reruns reuse the result."
    + ("" if decision.stage2_ran else " At this gate stage 2's time is saved.")
)
