"""Explain an image: both stages' probabilities, the gate on the normal bar, the route lit on the diagram, in words.

Both stages run once per image (stage 2 even when the gate would stop it, to show what it would have said); moving
the gate slider re-decides from those cached numbers without running a model. Below: both gate rules side by side,
what each stage sees (its R×R input as sampled), and whether the image is like the stages' training images.
"""

import cv2
import pandas as pd
import streamlit as st

from cascade.gate import decide
from cascade.ood import stage_view
from dashboard import state, widgets
from dashboard.caches import fit_within, predict_image
from dashboard.components.charts import probability_bars
from dashboard.components.diagram import StageBox, cascade_dot
from dashboard.components.narrative import (
    RULE_NAMES,
    answer_line,
    decision_steps,
    flip_sentence,
    rule_outcomes,
    shown_percent,
    would_have_said,
)
from dashboard.components.text import escape_markdown
from dashboard.context import app_context, failing_part
from dashboard.sections import metadata as metadata_section

SAMPLING = {
    "jetson": "nearest source pixel, as jetson-inference samples it",
    "area": "area-averaged resize",
}
VIEW_SIZE = 256  # "what the model sees" is enlarged to this many pixels, nearest-neighbour, so each input pixel shows

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
specs = (cascade.spec1, cascade.spec2)

left, right = st.columns([2, 3], gap="large")
with left:
    h, w = picked.image.shape
    st.image(fit_within(picked.image, 640), caption=f"{escape_markdown(picked.title)} · {w}×{h} px", width="stretch")
    if picked.item is not None:
        st.caption(f"True class (folder): **{escape_markdown(picked.item.label)}**")
    metadata_section.show_for_image(ctx, picked.item)
    with failing_part("Out-of-distribution check", stop=False):
        checks = {}
        for stage in (1, 2):
            ref = widgets.ood_reference(ctx, stage)
            if ref is not None:
                checks[stage] = (ref, ref.check(picked.image))
        if not checks:
            st.caption("No training statistics to compare this image with (the dataset has no train and val split).")
        elif any(c.flagged for _, c in checks.values()):
            worst = max(c.ratio for _, c in checks.values())
            st.warning(
                f"**Unlike the training images.** Its distance from the training images' statistics is {worst:.1f} "
                "times the distance 99 % of held-out images stay within: the models were not trained on images like "
                "it, so treat their answer with care.",
                icon=":material/report:",
            )
        else:
            st.caption("Like the training images: within the range of 99 % of held-out images.")
        if checks:
            ref = next(iter(checks.values()))[0]
            st.caption(
                "Distance to the training images' statistics (1.0 = the held-out threshold): "
                + ", ".join(f"stage {s}: {c.ratio:.2f}" for s, (_, c) in checks.items())
                + f". Reference: {escape_markdown(ref.source or 'stored beside the model')}."
            )
with right:
    st.markdown(f"### Answer: **{answer_line(decision, classes)}**")
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

probs = pred.p1 if decision.decided_by == 1 else pred.p2
st.graphviz_chart(
    cascade_dot(
        StageBox(cascade.spec1.arch, cascade.spec1.resolution, b1.name),
        StageBox(cascade.spec2.arch, cascade.spec2.resolution, b2.name),
        t,
        rule,
        path=decision.decided_by,
        final_label=f"{decision.label}, P({decision.label}) {shown_percent(probs, decision.label_index)}",
    ),
    width="stretch",
)

st.subheader("How the cascade decided")
st.markdown("\n".join(f"{i}. {line}" for i, line in enumerate(decision_steps(decision, classes, ni), start=1)))
if not decision.stage2_ran:
    st.markdown(would_have_said(pred.p2, classes))
st.info(flip_sentence(pred.p1, pred.p2, classes, ni, rule), icon=":material/swap_horiz:")
st.caption(
    f"Gate margin at {state.gate_text(t)}: {decision.margin:+.4f} (≥ 0 passes the gate; "
    f"{RULE_NAMES[rule]}: {state.RULE_LABELS[rule.value]})."
)

st.subheader("Both gate rules on this image")
outcomes = rule_outcomes(pred.p1, pred.p2, classes, ni, t)
st.dataframe(
    pd.DataFrame(
        {
            "rule": [f"{RULE_NAMES[o.rule]}{' (in use)' if o.rule is rule else ''}" for o in outcomes],
            "asks": [o.question for o in outcomes],
            "passes": ["yes" if o.passes else "no" for o in outcomes],
            "answer": [f"{o.answer} (stage {o.stage})" for o in outcomes],
            "stage 1 settles it at": [o.settles_up_to for o in outcomes],
        }
    ),
    hide_index=True,
    width="stretch",
)
if len({o.answer for o in outcomes}) > 1:
    st.caption("The rules disagree here: the P(normal) rule ignores which class stage 1 ranks first.")

st.subheader("What the model sees")
st.caption(
    "Each stage's input as it is sampled from the image: R×R pixels, enlarged here without smoothing so that each "
    "input pixel shows. Fine detail smaller than one input pixel does not reach the model."
)
cols = st.columns(4)
for stage, spec in enumerate(specs, start=1):
    view = stage_view(picked.image, spec.resolution, spec.preprocess)
    big = cv2.resize(view, (VIEW_SIZE, VIEW_SIZE), interpolation=cv2.INTER_NEAREST)
    cols[stage - 1].image(big, width="stretch")
    how = SAMPLING.get(spec.preprocess, spec.preprocess)
    cols[stage - 1].caption(f"Stage {stage}: {spec.resolution}×{spec.resolution} px, {how}")

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
