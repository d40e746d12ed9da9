"""Dataset: a paged grid of thumbnails, filtered by class, outcome, route and flips, sorted by margin or confidence.

The filters live in session state and in the URL (``?ds_true=normal&ds_outcome=incorrect``), so Back, a page switch
and a shared link all keep them. A click in a chart on Gate tuning arrives here as a set of chosen images.
"""

import hashlib

import streamlit as st

from dashboard import state, widgets
from dashboard.components.browse import (
    ANY,
    CHOSEN_KEY,
    FILTER_KEYS,
    SORTS,
    Filters,
    apply_filters,
    browse_table,
)
from dashboard.components.text import escape_markdown
from dashboard.resources import app_context, thumbnail
from dashboard.sections import metadata as metadata_section

PER_PAGE = 24
COLUMNS = 4

ctx = app_context()
st.title("Dataset")
index = ctx.need_index()
split = widgets.split_selector(index)
items = index.select(split)
preds = None
if ctx.cascade is None:
    what, exc = ctx.errors.get("cascade") or ctx.errors["config"]
    st.warning(f"{what} not loaded ({exc}): browsing only, no outcome filters.", icon=":material/warning:")
else:
    preds = widgets.predictions_or_prompt(ctx, split, key="dataset_compute")
t, rule = state.gate()
saved = ctx.config.threshold if ctx.config else t
normal_index = ctx.cascade.normal_index if ctx.cascade else 0
have = preds is not None
classes = list(index.classes)
final_classes = list(ctx.cascade.classes) if ctx.cascade else classes


def _keep(name: str) -> dict:
    """Widget arguments that keep a filter across page switches, Back and links (session state and the URL)."""
    return {"key": FILTER_KEYS[name], "persist_state": "session", "bind": "query-params"}


with st.container(border=True):
    c = st.columns(4)
    true_sel = c[0].multiselect("True class", classes, placeholder="any", **_keep("true_classes"))
    final_sel = c[1].multiselect(
        "Final class", final_classes, placeholder="any", disabled=not have, **_keep("final_classes")
    )
    correct = c[2].selectbox("Outcome", [ANY, "correct", "incorrect"], disabled=not have, **_keep("correct"))
    route = c[3].selectbox("Route", [ANY, "stage 2", "stage 1 only"], disabled=not have, **_keep("route"))
    c = st.columns([2, 3], vertical_alignment="bottom")
    sort = c[0].selectbox("Sort by", list(SORTS), disabled=not have, **_keep("sort"))
    flipped = c[1].checkbox(
        f"Only images whose answer differs from the saved gate ({state.gate_text(saved)})",
        disabled=not have,
        help="Move the gate slider in the sidebar to see which answers change.",
        **_keep("flipped_only"),
    )
    chosen_rels, chosen_why = st.session_state.get(CHOSEN_KEY) or ((), "")
    if chosen_rels:
        note, clear = st.columns([5, 1], vertical_alignment="center")
        note.info(
            f"Showing the {len(chosen_rels)} image(s) chosen on Gate tuning: {escape_markdown(chosen_why)}",
            icon=":material/filter_alt:",
        )
        if clear.button("Show all", icon=":material/filter_alt_off:", width="stretch"):
            del st.session_state[CHOSEN_KEY]
            st.rerun()
filters = Filters(
    tuple(true_sel), tuple(final_sel), correct, route, flipped, sort if have else "file name", tuple(chosen_rels)
)
table = apply_filters(browse_table(items, preds, normal_index, t, saved, rule), filters)
table = metadata_section.filter_and_sort(ctx, table)
if preds is not None and preds.failed:
    st.warning(f"{len(preds.failed)} image(s) could not be read and have no outcome.", icon=":material/broken_image:")

st.caption(f"{len(table)} of {len(items)} images of '{split}' match.")
if table.empty:
    st.stop()
pages = max(1, -(-len(table) // PER_PAGE))
# A new filter starts again at page 1: the widget's key follows the filters (metadata ones through the count).
digest = hashlib.sha1(repr((split, filters, t, rule, len(table))).encode()).hexdigest()[:8]
page = st.pagination(pages, key=f"dataset_page_{digest}") if pages > 1 else 1
rows = list(table.iloc[(page - 1) * PER_PAGE : page * PER_PAGE].itertuples(index=False))
by_rel = ctx.items_by_rel
# One st.columns per row of cards: cards of a row start level whatever the height of the row above (captions and
# error messages differ in height, and a column-major layout staggers them).
for start in range(0, len(rows), COLUMNS):
    cols = st.columns(COLUMNS)
    for col, row in zip(cols, rows[start : start + COLUMNS], strict=False):
        item = by_rel[row.rel]
        with col.container(border=True):
            thumb = thumbnail(item)
            if isinstance(thumb, str):
                st.error(escape_markdown(thumb), icon=":material/broken_image:")
            else:
                st.image(thumb, width="stretch")
            name = escape_markdown(row.rel.rsplit("/", 1)[-1])
            label = escape_markdown(row.label)
            if row.predicted:
                mark = ":green[✓ right]" if row.correct else ":red[✗ wrong]"
                via = "stage 2" if row.routed else "stage 1"
                final = escape_markdown(row.final)
                st.caption(
                    f"{name}  \ntrue **{label}** → **{final}** {mark}  \n"
                    f"{via}, P({final}) {100 * row.confidence:.0f} % · margin {row.margin:+.2f}"
                    + (" · :orange[flipped]" if row.flipped else "")
                )
            else:
                st.caption(f"{name}  \ntrue **{label}**")
            b = st.columns(2)
            if b[0].button("Explain", key=f"explain_{row.rel}", width="stretch", help="Open on Explain an image"):
                state.select_image(row.rel)
                st.switch_page("views/explain.py")
            if b[1].button("CAM", key=f"cam_{row.rel}", width="stretch", help="Open on Grad-CAM"):
                state.select_image(row.rel)
                st.switch_page("views/gradcam.py")
