"""Small Streamlit pieces several pages use: the split picker, the "compute predictions" prompt, headline metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

from cascade.dataset import DatasetIndex, Item
from cascade.predcache import Predictions
from cascade.sweep import Sweep, sweep
from dashboard import state
from dashboard.components import glossary
from dashboard.prediction_table import table_predictions
from dashboard.resources import (
    AppContext,
    dataset_image,
    failing_part,
    image_token,
    read_upload,
    show_error,
    split_predictions,
)


def split_selector(index: DatasetIndex, label: str = "Split") -> str:
    """One split choice shared by the pages (kept when switching pages)."""
    splits = list(index.splits)
    preferred = next((s for s in ("test", "val") if s in splits), splits[0])
    current = st.session_state.get(state.SPLIT_KEY)
    if current is not None and current not in splits:  # another dataset was opened
        del st.session_state[state.SPLIT_KEY]
    return st.selectbox(
        label,
        splits,
        index=splits.index(current if current in splits else preferred),
        key=state.SPLIT_KEY,
        persist_state="session",
        help="Images of this split are run through both stages once; the result is cached on disk.",
    )


def predictions_or_prompt(ctx: AppContext, split: str, key: str) -> Predictions | None:
    """The split's cached predictions, or a button that computes them (with a progress bar) once.

    After computing, the prompt is cleared and the predictions returned in the same run: no second script run.
    """
    with failing_part("Predictions", stop=False):
        if ctx.sources.predictions_path:  # a precomputed table (python -m engines precompute) replaces the cache
            return table_predictions(ctx, split)
        preds = split_predictions(ctx, split)
        if preds is not None:
            return preds
        n = len(ctx.need_index().select(split))
        prompt = st.empty()
        with prompt.container():
            st.info(
                f"The {n} images of '{split}' have not been run through the cascade yet. It is done once, then cached "
                "on disk, so the gate can be moved freely afterwards.",
                icon=":material/info:",
            )
            run = st.button(f"Run both stages on '{split}'", key=key, type="primary", icon=":material/play_arrow:")
        if run:
            preds = split_predictions(ctx, split, compute=True)
            prompt.empty()
            return preds
    return None


def gate_sweep(preds: Predictions, normal_index: int, thresholds) -> Sweep:
    """The sweep of a split's predictions at the given thresholds under the current rule."""
    _, rule = state.gate()
    return sweep(preds.p1, preds.p2, preds.labels, normal_index, np.asarray(thresholds, dtype=np.float64), rule)


def headline_metrics(preds: Predictions, normal_index: int, saved: float | None) -> None:
    """Accuracy, abnormal sensitivity, normal recall and stage-2 share at the gate (deltas: vs the saved gate)."""
    t, _ = state.gate()
    points = gate_sweep(preds, normal_index, [t] if saved is None else [t, saved])

    def delta(values: np.ndarray) -> str | None:
        if saved is None or abs(saved - t) < 1e-9 or not np.isfinite(values[1]):
            return None
        return glossary.delta_text(values[0], values[1])

    def fmt(v: float) -> str:
        return "n/a" if not np.isfinite(v) else f"{100 * v:.1f} %"

    classes, normal = preds.classes, preds.classes[normal_index]
    cols = st.columns(4)
    for col, name, values, colour in (
        (cols[0], glossary.ACCURACY, points.accuracy, "normal"),
        (cols[1], glossary.ABNORMAL_SENSITIVITY, points.abnormal_sensitivity, "normal"),
        (cols[2], glossary.NORMAL_RECALL, points.normal_recall, "normal"),
        (cols[3], glossary.SENT_TO_STAGE2, points.routed_share, "inverse"),
    ):
        col.metric(
            name.capitalize(),
            fmt(values[0]),
            delta(values),
            delta_color=colour,
            help=glossary.definition(name, classes, normal),
        )
    st.caption(f"{len(preds)} images of '{preds.split}' at gate {t:.2f}.")


UPLOAD_KEY = "last_upload"  # (name, bytes): shared by the Explain and Grad-CAM pages
SOURCE_KEY = "image_source"
SOURCES = ("Dataset", "Upload")


@dataclass(frozen=True)
class PickedImage:
    """The image a page works on: pixels, a cache identity, a title, and its dataset item when it has one."""

    image: np.ndarray
    token: str
    title: str
    item: Item | None = None


def _pick_from_dataset(ctx: AppContext, page: str) -> PickedImage | None:
    index = ctx.index
    if index is None:
        what, exc = ctx.errors["index"]
        show_error(what, exc)
        return None
    rels = list(ctx.items_by_rel)
    chosen = state.selected_image()
    if chosen not in ctx.items_by_rel:
        chosen = rels[0]
    st.selectbox(
        "Dataset image",
        rels,
        index=rels.index(chosen),
        key=f"{page}_image",
        on_change=lambda: state.select_image(st.session_state[f"{page}_image"]),
        help="Type to search. The Dataset page opens an image here too.",
    )
    chosen = st.session_state[f"{page}_image"]
    state.select_image(chosen)
    st.query_params[state.IMAGE_PARAM] = chosen
    item = ctx.items_by_rel[chosen]
    with failing_part(f"Image '{item.rel}'", stop=False):
        return PickedImage(dataset_image(item), image_token(item=item), item.rel, item)
    return None


def _pick_upload(page: str) -> PickedImage | None:
    upload = st.file_uploader(
        "Upload a radiograph (PNG, JPEG, 16-bit PNG, DICOM)",
        key=f"{page}_upload",
        help="Any file is accepted and checked: DICOM files often have no extension.",
    )
    if upload is not None:
        st.session_state[UPLOAD_KEY] = (upload.name, upload.getvalue())
    last = st.session_state.get(UPLOAD_KEY)
    if last is None:
        st.info("Upload an image to explain it.", icon=":material/upload:")
        return None
    name, data = last
    if upload is None:
        st.caption(f"Showing the file uploaded earlier: `{name}`.")
    with failing_part(f"Upload '{name}'", stop=False):
        return PickedImage(read_upload(data, name), image_token(data=data), name)
    return None


def image_picker(ctx: AppContext, page: str) -> PickedImage | None:
    """A dataset image (the selected one by default) or an upload; a bad file gives a message and None."""
    source = st.segmented_control(
        "Image from", SOURCES, default=SOURCES[0], key=SOURCE_KEY, persist_state="session", required=True
    )
    if source == "Upload":
        st.query_params.pop(state.IMAGE_PARAM, None)
        return _pick_upload(page)
    return _pick_from_dataset(ctx, page)
