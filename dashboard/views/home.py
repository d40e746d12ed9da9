"""Home: the cascade as a diagram, what is loaded and why, the dataset's counts, headline metrics at the gate."""

import pandas as pd
import streamlit as st

from dashboard import state, widgets
from dashboard.components.diagram import StageBox, cascade_dot
from dashboard.resources import app_context, is_demo, machine_summary

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
b1, b2 = cascade.backend1, cascade.backend2
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
    with cards[stage - 1].container(border=True):
        st.markdown(f"**Stage {stage}: {spec.arch}** · {spec.resolution} × {spec.resolution} px")
        st.markdown(f"Classes: {', '.join(spec.classes)}  \nBackend: `{backend.describe()}`")
        st.caption(f"Why this backend: {cascade.reasons.get(stage, 'not stated')}")
        st.caption(f"Folder: `{spec.model_dir}`")
st.caption(f"Config: `{cfg.path}` · saved gate {state.gate_text(cfg.threshold)} ({state.RULE_LABELS[cfg.rule.value]})")
st.caption(f"Machine: {machine_summary()}")

st.subheader("Dataset")
if ctx.index is None:
    what, exc = ctx.errors["index"]
    st.error(f"{what}: {exc}. Choose an ImageFolder dataset under **Models and data** in the sidebar.")
else:
    counts = ctx.index.counts()
    table = pd.DataFrame(counts).T.reindex(columns=list(ctx.index.classes))
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    st.dataframe(table, width="content")
    st.caption(f"`{ctx.index.root}`")

    st.subheader("At the current gate")
    split = widgets.split_selector(ctx.index)
    preds = widgets.predictions_or_prompt(ctx, split, key="home_compute")
    if preds is not None:
        widgets.headline_metrics(preds, cascade.normal_index, cfg.threshold)
