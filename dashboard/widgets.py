"""Small Streamlit pieces several pages use: the split picker, the "compute predictions" prompt, headline metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from cascade.dataset import DatasetIndex, Item
from cascade.errors import CascadeError
from cascade.predcache import Predictions
from cascade.sweep import Sweep, sweep
from dashboard import state
from dashboard.components import glossary
from dashboard.components.text import escape_markdown
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

SPLIT_WIDGET_KEY = "split_select"


def _split_chosen() -> None:
    st.session_state[state.SPLIT_KEY] = st.session_state[SPLIT_WIDGET_KEY]
    st.session_state[state.SELECTED_KEY] = None  # the selected image belongs to the old split


def split_selector(index: DatasetIndex, label: str = "Split") -> str:
    """One split choice shared by the pages: test (else val) by default, kept when switching pages.

    The choice lives in plain session state (``state.SPLIT_KEY``), the widget is drawn from it, like the gate.
    """
    splits = list(index.splits)
    if st.session_state.get(state.SPLIT_KEY) not in splits:  # first run, or another dataset was opened
        st.session_state[state.SPLIT_KEY] = next((s for s in ("test", "val") if s in splits), splits[0])
    st.session_state[SPLIT_WIDGET_KEY] = st.session_state[state.SPLIT_KEY]
    st.selectbox(
        label,
        splits,
        key=SPLIT_WIDGET_KEY,
        on_change=_split_chosen,
        help="Images of this split are run through both stages once; the result is cached on disk.",
    )
    return st.session_state[state.SPLIT_KEY]


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
    st.caption(f"{len(preds)} images of '{preds.split}' at gate {state.gate_text(t)}.")


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


IMAGE_WIDGET_KEY = "{page}_image"


def _image_chosen(key: str) -> None:
    state.select_image(st.session_state[key])


def _pick_from_dataset(ctx: AppContext, page: str) -> PickedImage | None:
    index = ctx.index
    if index is None:
        what, exc = ctx.errors["index"]
        show_error(what, exc)
        return None
    chosen, bad = state.selected_image(), None
    if chosen is not None and chosen not in ctx.items_by_rel:
        bad, chosen = chosen, None
    if chosen is not None:  # an image chosen elsewhere (Dataset page, link) brings its split along
        st.session_state[state.SPLIT_KEY] = ctx.items_by_rel[chosen].split
    left, right = st.columns([1, 3])
    with left:
        split = split_selector(index)
    rels = [it.rel for it in index.select(split)]
    if chosen not in rels:
        chosen = rels[0]
    if bad is not None:
        state.add_notice(
            state.IMAGE_PARAM,
            f"The link's img={escape_markdown(bad)} is not an image of the dataset in "
            f"{escape_markdown(str(index.root))}; showing the first image of '{split}' instead.",
            chosen,
        )
    key = IMAGE_WIDGET_KEY.format(page=page)
    st.session_state[key] = chosen
    right.selectbox(
        "Dataset image",
        rels,
        key=key,
        on_change=_image_chosen,
        args=(key,),
        help="Type to search. The Dataset page opens an image here too.",
    )
    message = state.notice(state.IMAGE_PARAM, chosen)
    if message:
        st.warning(message, icon=":material/link_off:")
    state.select_image(chosen)
    st.query_params[state.IMAGE_PARAM] = chosen
    item = ctx.items_by_rel[chosen]
    with failing_part(f"Image '{item.rel}'", stop=False):  # show_error escapes names (dash-a)
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
        st.caption(f"Showing the file uploaded earlier: {escape_markdown(name)}.")
    with failing_part(f"Upload '{name}'", stop=False):  # show_error escapes names (dash-a)
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


OOD_FIT_MAX = 200  # images for a reference computed from the dataset (evenly spaced; 27 statistics): train
OOD_HELD_OUT_MAX = 100  # and held-out (val, else test)


def _spaced(items: list[Item], n: int) -> list[Item]:
    if len(items) <= n:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


@st.cache_resource(show_spinner="Measuring the training images (once)…", max_entries=8)
def _ood_reference(
    _index: DatasetIndex, root: str, count: int, resolution: int, mode: str, model_file: str, stamp: int | None
):
    """A stage's reference: stored beside the model when there, else from the dataset's train and held-out splits."""
    from cascade.images import read_image
    from cascade.ood import OodReference, feature_matrix, fit_reference

    if stamp is not None:
        ref = OodReference.load(model_file)
        if ref.resolution == resolution and ref.mode == mode:
            return ref
    splits = _index.splits
    held = next((s for s in ("val", "test") if s in splits), None)
    if "train" not in splits or held is None:
        return None

    def images(items: list[Item]):
        for it in items:
            try:
                yield read_image(it.path)
            except CascadeError:
                continue

    fit = feature_matrix(images(_spaced(_index.select("train"), OOD_FIT_MAX)), resolution, mode)
    held_out = feature_matrix(images(_spaced(_index.select(held), OOD_HELD_OUT_MAX)), resolution, mode)
    source = f"the '{held}' split sets the threshold; statistics of {len(fit)} 'train' images of {_index.root}"
    return fit_reference(fit, held_out, resolution, mode, source=source)


def ood_reference(ctx: AppContext, stage: int):
    """The out-of-distribution reference of a stage's input (``cascade.ood``), or None when there is nothing to use."""
    from cascade.ood import REFERENCE_FILE

    cascade, index = ctx.cascade, ctx.index
    if cascade is None or index is None:
        return None
    spec = (cascade.spec1, cascade.spec2)[stage - 1]
    model_file = Path(spec.model_dir) / REFERENCE_FILE
    stamp = model_file.stat().st_mtime_ns if model_file.is_file() else None
    return _ood_reference(
        index, str(index.root), len(index.items), spec.resolution, spec.preprocess, str(model_file), stamp
    )
