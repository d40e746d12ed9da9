"""Grad-CAM: the original beside stage 1's and stage 2's heatmaps, any method and target, faithfulness, downloads.

Maps are computed once per image, models, stage, method and class, at the network's input resolution, and cached;
opacity and colour changes only re-blend them over a display-sized copy of the image. The full-size overlay for a
download is drawn only when its button is clicked. Slow methods (Score-CAM) say what they cost and wait for a click.
"""

import streamlit as st

from cascade.explain import METHODS
from cascade.gate import passes_gate
from cascade.overlay import COLORMAPS, overlay, to_png_bytes
from dashboard import state, widgets
from dashboard.caches import (
    faithfulness_score,
    fit_within,
    predict_image,
    random_baseline,
    stage_cams,
    stage_explainer,
    warm_up_explainers,
)
from dashboard.components.narrative import pct
from dashboard.components.text import escape_markdown
from dashboard.context import app_context, failing_part

PREDICTED = "predicted class"
DISPLAY_SIZE = 512
FAITHFULNESS_HELP = (
    "Blur the pixels the map lights most, then instead the ones it lights least, and compare the target's "
    "probability (mean over 10–90 % of the pixels). Above the random-map level: the map points at what the model "
    "uses; near it: no better than a random map; below 0: the map points away from the evidence."
)
NOT_RUN = "Not run at this gate (shown for teaching)"

ctx = app_context()
st.title("Grad-CAM")
cascade = ctx.need_cascade()
classes, ni = cascade.classes, cascade.normal_index
picked = widgets.image_picker(ctx, "gradcam")
warm_up_explainers(ctx)  # torch and pytorch-grad-cam load in the background while the fast maps are looked at
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
    scored = c[4].toggle(
        "Faithfulness", value=True, key="cam_faithful", persist_state="session", help=FAITHFULNESS_HELP
    )

spec = METHODS[method]
if spec.slow:
    with failing_part("Explainer"):
        cost = stage_explainer(ctx, 2).cost(method)
    st.warning(f"**{spec.label} is slow.** {cost}", icon=":material/hourglass_top:")
    run_key = f"cam_run_{picked.token}_{method}"
    if st.button(f"Run {spec.label} on this image", key=run_key, type="primary"):
        st.session_state[run_key + "_ok"] = True
    if not st.session_state.get(run_key + "_ok"):
        st.stop()

with failing_part("Running the models"):
    pred = predict_image(ctx, picked.token, picked.image)
stage_probs = {1: pred.p1, 2: pred.p2}
threshold, rule = state.gate()
stage2_ran = not bool(passes_gate(pred.p1, ni, threshold, rule))


def target_for(stage: int) -> int:
    if target_name == PREDICTED:
        return int(stage_probs[stage].argmax())
    return classes.index(target_name)


view = fit_within(picked.image, DISPLAY_SIZE)
colormap = COLORMAPS[cmap]
stem = picked.title.rsplit("/", 1)[-1].rsplit(".", 1)[0]


pending_scores = []  # drawn after every map, so the heatmaps appear first and the scores fill in


def show_map(stage: int, cls: int, cams, slot, section: str) -> None:
    """One overlay with its caption, a place for its faithfulness score, and a download button."""
    cam = cams.maps[cls]
    mode = cascade.backend(stage).spec.preprocess  # the map is stretched back as this stage resized the image
    slot.image(overlay(view, cam, alpha, colormap, mode), width="stretch")
    slot.caption(f"Stage {stage} · **{classes[cls]}** ({pct(stage_probs[stage][cls])}) · {METHODS[cams.method].label}")
    if stage == 2 and not stage2_ran:
        slot.caption(f":orange[**{NOT_RUN}**]: stage 1 settled this image at gate {state.gate_text(threshold)}.")
    empty = float(cam.max()) <= 0.0
    if empty:
        slot.caption("No positive evidence for this class anywhere in the image (nothing to score).")
    if scored and not empty:
        pending_scores.append((stage, cls, cams.method, cam, slot.empty()))
    slot.download_button(
        "Download PNG",
        lambda: to_png_bytes(overlay(picked.image, cam, alpha, colormap, mode)),  # full size, drawn only when clicked
        file_name=f"{stem}_stage{stage}_{classes[cls]}_{cams.method}.png",
        mime="image/png",
        key=f"dl_{section}_{stage}_{cls}",
        icon=":material/download:",
    )


def show_score(stage: int, cls: int, method: str, cam, place) -> None:
    """The map's faithfulness beside what random maps score on this image and class."""
    with failing_part("Faithfulness", stop=False), place.container(), st.spinner("Scoring faithfulness…"):
        score = faithfulness_score(ctx, stage, picked.token, picked.image, method, cls, cam)
        base = random_baseline(ctx, stage, picked.token, picked.image)
        st.markdown(
            f"Faithfulness **{score:+.2f}** · random maps {base.mean[cls]:+.2f} ± {base.std[cls]:.2f}",
            help=FAITHFULNESS_HELP,
        )


abnormal = [i for i in range(len(classes)) if i != ni]
pair = abnormal[:2] if len(abnormal) >= 2 else []
cols = st.columns(3)
cols[0].image(view, width="stretch")
cols[0].caption(escape_markdown(picked.title))
if picked.item is not None:
    cols[0].caption(f"True class (folder): **{escape_markdown(picked.item.label)}**")
cols[0].caption(
    f"Stage 2 {'ran' if stage2_ran else 'did not run'} for this image at gate {state.gate_text(threshold)} "
    f"({state.RULE_LABELS[rule.value]})."
)
notes = set()
stage2_maps = None
for stage in (1, 2):
    cls = target_for(stage)
    wanted = [cls, *pair] if stage == 2 else [cls]  # stage 2's maps for the pair below come from the same call
    with failing_part(f"Stage {stage} maps", stop=False), st.spinner(f"Stage {stage}: {spec.label}…"):
        cams = stage_cams(ctx, stage, picked.token, picked.image, method, wanted)
        stage2_maps = cams if stage == 2 else stage2_maps
        show_map(stage, cls, cams, cols[stage], "main")
        if cams.note:
            notes.add(cams.note)
        cols[stage].caption(f"{cams.seconds * 1000:.0f} ms · {cams.engine}")

if pair and stage2_maps is not None:
    a, b = pair
    st.subheader(f"Stage 2: {classes[a]} vs {classes[b]}")
    st.caption("Where stage 2 sees evidence for each abnormal class: the two maps side by side.")
    if not stage2_ran:
        st.caption(f":orange[**{NOT_RUN}**]: at this gate stage 1's answer stands, so stage 2 was not needed.")
    slots = st.columns(len(pair))  # one column per abnormal class
    for slot, cls in zip(slots, pair, strict=True):
        with slot:
            show_map(2, cls, stage2_maps, slot, "pair")
for pending in pending_scores:
    show_score(*pending)
for note in sorted(notes):
    st.info(note, icon=":material/info:")
