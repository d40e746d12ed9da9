"""Home: the cascade as a diagram, what is loaded and why, the dataset's counts, headline metrics at the gate."""

import pandas as pd
import streamlit as st

from dashboard import state, widgets
from dashboard.caches import machine_summary, tensorrt_buildable
from dashboard.components.diagram import StageBox, cascade_dot
from dashboard.components.text import escape_markdown
from dashboard.context import app_context, failing_part, is_demo

PREPROCESS_HELP = {
    "jetson": "nearest-pixel, as jetson-inference's imageNet feeds it",
    "area": "area-averaged, no aliasing",
}


def build_engines(cfg) -> None:
    """The one place a TensorRT build runs in the app: on this click, with progress (it takes minutes)."""
    st.info(
        "TensorRT and a GPU are available. Building an engine per stage takes minutes; until then the stages run on "
        "the backend named above.",
        icon=":material/memory:",
    )
    if not st.button("Build TensorRT engines", icon=":material/build:", key="build_trt"):
        return
    from engines.trt_build import build_stage_engine

    bar = st.progress(0.0, text="Starting the build…")
    with failing_part("TensorRT build", stop=False):
        for stage, folder in ((1, cfg.stage1_dir), (2, cfg.stage2_dir)):

            def progress(message: str, fraction: float, stage: int = stage) -> None:
                bar.progress((stage - 1 + fraction) / 2, text=f"Stage {stage}: {message}")

            build_stage_engine(folder, progress=progress)
        bar.empty()
        st.rerun()  # the engine files change the cascade's identity: the next run loads them


ctx = app_context()
st.title("Knee X-ray cascade")
st.markdown(
    "Stage 1 looks at every knee. When it is confident enough that the knee is **normal**, the gate lets its answer "
    "stand; otherwise stage 2, a larger model, decides between normal, osteopenia and osteoporosis."
)
cfg = ctx.need_config()
if is_demo(cfg):
    st.warning(
        "These are the **synthetic demo models**, trained on generated knee phantoms (`sample_images/`). "
        "They show how the tool works; they are **not for clinical use**.",
        icon=":material/warning:",
    )
cascade = ctx.need_cascade()
t, rule = state.gate()
b1, b2 = cascade.backend(1), cascade.backend(2)
st.graphviz_chart(
    cascade_dot(
        StageBox(cascade.spec1.arch, cascade.spec1.resolution, b1.name),
        StageBox(cascade.spec2.arch, cascade.spec2.resolution, b2.name),
        t,
        rule,
    ),
    width="stretch",
)

st.subheader("What is loaded")
cards = st.columns(2)
for stage, backend in ((1, b1), (2, b2)):
    spec = backend.spec
    reason = cascade.reasons.get(stage, "not stated")
    with cards[stage - 1].container(border=True):
        st.markdown(f"**Stage {stage}: {spec.arch}** · {spec.resolution} × {spec.resolution} px")
        mode = spec.preprocess
        st.markdown(f"Preprocessing: **{mode}** resize ({PREPROCESS_HELP.get(mode, 'see cascade.preprocess')})")
        st.markdown(
            f"Classes: {escape_markdown(', '.join(spec.classes))}  \nBackend: **{escape_markdown(backend.describe())}**"
        )
        chosen, _, fell_back = reason.partition("not used: ")
        st.caption(f"Why this backend: {escape_markdown(chosen.rstrip('; '))}")
        if fell_back:
            st.caption(f":orange[Fell back from]: {escape_markdown(fell_back)}")
        st.caption(f"Folder: {escape_markdown(spec.model_dir)}")
st.caption(
    f"Config: {escape_markdown(cfg.path)} · saved gate {state.gate_text(cfg.threshold)}"
    f" ({state.RULE_LABELS[cfg.rule.value]})"
    f" · calibration {escape_markdown(cfg.calibration.describe())}"
)
st.caption(f"Machine: {escape_markdown(machine_summary())}")
if tensorrt_buildable():
    build_engines(cfg)

st.subheader("Dataset")
if ctx.index is None:
    what, exc = ctx.errors["index"]
    st.error(
        f"{escape_markdown(what)}: {escape_markdown(exc)}. Choose an ImageFolder dataset under **Models and data** in "
        "the sidebar."
    )
else:
    counts = ctx.index.counts()
    table = pd.DataFrame(counts).T.reindex(columns=list(ctx.index.classes))
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    st.dataframe(table, width="content")
    st.caption(escape_markdown(ctx.index.root))

    st.subheader("At the current gate")
    split = widgets.split_selector(ctx.index)
    preds = widgets.predictions_or_prompt(ctx, split, key="home_compute")
    if preds is not None:
        widgets.headline_metrics(preds, cascade.normal_index, cfg.threshold)
