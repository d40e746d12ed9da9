"""Grad-CAM: the original beside stage 1's and stage 2's heatmaps, any method and target, faithfulness, downloads.

Maps are computed once per image, stage, method and class and cached; opacity and colour changes only re-blend.
Slow methods (Score-CAM) say what they cost and wait for a click before they run.
"""

import streamlit as st

from cascade.explain import FAITHFULNESS_METRICS, METHODS
from cascade.overlay import COLORMAPS, overlay, to_png_bytes
from dashboard import widgets
from dashboard.components.narrative import pct
from dashboard.resources import (
    app_context,
    explainer,
    failing_part,
    faithfulness_score,
    fit_within,
    predict_image,
    stage_cams,
)

PREDICTED = "predicted class"
METRIC_LABELS = {
    "confidence_change": "confidence change",
    "road": "ROAD (slower)",
    None: "none",
}
DISPLAY_SIZE = 512

ctx = app_context()
st.title("Grad-CAM")
cascade = ctx.need_cascade()
classes, ni = cascade.classes, cascade.normal_index
picked = widgets.image_picker(ctx, "gradcam")
if picked is None:
    st.stop()

with st.container(border=True):
    c = st.columns([3, 2, 2, 2, 2])
    method = c[0].selectbox(
        "Method",
        list(METHODS),
        format_func=lambda k: METHODS[k].label + (" (slow)" if METHODS[k].slow else ""),
        key="cam_method",
        persist_state="session",
        help="Fast CAM comes from the prediction's own forward pass (exact Grad-CAM for these heads). The others are "
        "pytorch-grad-cam's, run on the PyTorch model.",
    )
    target_name = c[1].selectbox("Target class", [PREDICTED, *classes], key="cam_target", persist_state="session")
    alpha = c[2].slider("Opacity", 0.0, 1.0, 0.45, 0.05, key="cam_alpha", persist_state="session")
    cmap = c[3].selectbox("Colours", list(COLORMAPS), key="cam_cmap", persist_state="session")
    metric = c[4].selectbox(
        "Faithfulness",
        [*FAITHFULNESS_METRICS, None],
        format_func=METRIC_LABELS.get,
        key="cam_metric",
        persist_state="session",
        help="confidence change: how the target's probability moves when only the lit region is kept (≥ 0 is "
        "faithful). ROAD: removing what the map lights should hurt more than removing the rest (> 0 is faithful).",
    )

spec = METHODS[method]
if spec.slow:
    with failing_part("Explainer"):
        cost = explainer(ctx, 2).cost(method)
    st.warning(f"**{spec.label} is slow.** {cost}", icon=":material/hourglass_top:")
    run_key = f"cam_run_{picked.token}_{method}"
    if st.button(f"Run {spec.label} on this image", key=run_key, type="primary"):
        st.session_state[run_key + "_ok"] = True
    if not st.session_state.get(run_key + "_ok"):
        st.stop()

with failing_part("Running the models"):
    pred = predict_image(ctx, picked.token, picked.image)
stage_probs = {1: pred.p1, 2: pred.p2}


def target_for(stage: int) -> int:
    if target_name == PREDICTED:
        return int(stage_probs[stage].argmax())
    return classes.index(target_name)


view = fit_within(picked.image, DISPLAY_SIZE)
colormap = COLORMAPS[cmap]


def show_map(stage: int, cls: int, cams, slot, section: str) -> None:
    """One overlay with its caption, faithfulness score and download button."""
    cam = cams.maps[cls]
    mode = cascade.backend(stage).spec.preprocess  # the map goes back through this stage's resize
    blended = overlay(view, cam, alpha, colormap, mode)
    slot.image(blended, width="stretch")
    slot.caption(f"Stage {stage} · **{classes[cls]}** ({pct(stage_probs[stage][cls])}) · {METHODS[cams.method].label}")
    empty = float(cam.max()) <= 0.0
    if empty:
        slot.caption("No positive evidence for this class anywhere in the image (nothing to score).")
    if metric is not None and not empty:
        with failing_part("Faithfulness", stop=False):
            with st.spinner("Scoring faithfulness…"):
                score = faithfulness_score(ctx, stage, picked.token, picked.image, cams.method, cls, metric, cam)
            slot.markdown(f"Faithfulness ({METRIC_LABELS[metric]}): **{score:+.3f}**")
    full = overlay(picked.image, cam, alpha, colormap, mode)
    slot.download_button(
        "Download PNG",
        to_png_bytes(full),
        file_name=f"{picked.title.rsplit('/', 1)[-1].rsplit('.', 1)[0]}_stage{stage}_{classes[cls]}_{cams.method}.png",
        mime="image/png",
        key=f"dl_{section}_{stage}_{cls}",
        icon=":material/download:",
    )


cols = st.columns(3)
cols[0].image(view, caption=f"{picked.title}", width="stretch")
if picked.item is not None:
    cols[0].caption(f"True class (folder): **{picked.item.label}**")
notes = set()
for stage in (1, 2):
    cls = target_for(stage)
    with failing_part(f"Stage {stage} maps", stop=False), st.spinner(f"Stage {stage}: {spec.label}…"):
        cams = stage_cams(ctx, stage, picked.token, picked.image, method, [cls])
        show_map(stage, cls, cams, cols[stage], "main")
        if cams.note:
            notes.add(cams.note)
        cols[stage].caption(f"{cams.seconds * 1000:.0f} ms · {cams.engine}")

abnormal = [i for i in range(len(classes)) if i != ni]
if len(abnormal) >= 2:
    a, b = abnormal[:2]
    st.subheader(f"Stage 2: {classes[a]} vs {classes[b]}")
    st.caption("Where stage 2 sees evidence for each abnormal class: the two maps side by side.")
    pair = st.columns(3)
    with failing_part("Stage 2 maps", stop=False), st.spinner("Stage 2: both classes…"):
        cams2 = stage_cams(ctx, 2, picked.token, picked.image, method, [a, b])
        for slot, cls in zip(pair[:2], (a, b), strict=True):
            with slot:
                show_map(2, cls, cams2, slot, "pair")
for note in sorted(notes):
    st.info(note, icon=":material/info:")
