"""Metadata on the dashboard: the table's path in the sidebar, filters and sorts on the Dataset page, an image's values
on the Explain page, and stage 1's P(normal) against a numeric column on the Gate tuning page.

The table is ``manifest.csv`` of the dataset (or of the folder above a split opened on its own) unless the sidebar names
another CSV. Problems with it are listed where it is used, and every page keeps working without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from cascade.dataset import DatasetIndex, Item
from cascade.gate import decide_batch
from cascade.metadata import Metadata, find_manifest, load_metadata
from cascade.predcache import Predictions
from dashboard import state
from dashboard.components.metadata_charts import Y_MODES, metadata_scatter, overlap_sentence
from dashboard.resources import AppContext

METADATA_KEY = "metadata_path"
NONE = "—"


def sidebar_input() -> None:
    """The optional CSV path (inside the sidebar's "Models and data" expander)."""
    st.text_input(
        "Metadata table (CSV)",
        key=METADATA_KEY,
        placeholder="manifest.csv of the dataset",
        help="One row per image: a path column (relative to the dataset root or to a split) and any numeric or "
        "categorical columns, e.g. bone density, T-score, age, sex. Empty: the dataset's manifest.csv, if any.",
    )


def _stamp(path: Path | None) -> str:
    try:
        info = path.stat() if path is not None else None
    except OSError:
        return "missing"
    return "none" if info is None else f"{info.st_mtime_ns}:{info.st_size}"


@st.cache_data(max_entries=8, show_spinner=False)
def _load(_index: DatasetIndex, root: str, count: int, csv: str, stamp: str) -> Metadata:
    return load_metadata(_index, csv or None)


def _source(index: DatasetIndex) -> Path | None:
    raw = str(st.session_state.get(METADATA_KEY) or "").strip()
    if not raw:
        return find_manifest(index.root)
    p = Path(raw).expanduser()
    if not p.is_absolute() and (index.root / p).exists():
        p = index.root / p
    return p


def metadata(ctx: AppContext) -> Metadata | None:
    """The open dataset's metadata (None without a dataset), read once per file version."""
    if ctx.index is None:
        return None
    src = _source(ctx.index)
    return _load(ctx.index, str(ctx.index.root), len(ctx.index.items), os.fspath(src) if src else "", _stamp(src))


def _warnings(meta: Metadata) -> None:
    if meta.warnings:
        name = meta.source.name if meta.source else "the metadata table"
        st.warning(
            f"**{name}**: " + ("\n".join(f"\n- {w}" for w in meta.warnings)) + "\n\nEverything else works as before.",
            icon=":material/table_view:",
        )


def filter_and_sort(ctx: AppContext, table: pd.DataFrame) -> pd.DataFrame:
    """Dataset page: narrow ``table`` (one row per image, column ``rel``) by one metadata column and sort by one."""
    meta = metadata(ctx)
    if meta is None or (len(meta) == 0 and not meta.warnings):
        return table
    title = f"Metadata: {len(meta.columns)} column(s) from `{meta.source}`" if len(meta) else "Metadata"
    with st.expander(title, expanded=bool(meta.warnings), icon=":material/table_view:"):
        _warnings(meta)
        if len(meta) == 0:
            return table
        c = st.columns([2, 4, 2])
        column = c[0].selectbox("Filter by metadata", [NONE, *meta.columns], key="meta_filter_column")
        values = meta.table.reindex(table["rel"])
        keep = np.ones(len(table), dtype=bool)
        if column in meta.numeric:
            v = values[column].to_numpy(dtype=np.float64)
            known = v[np.isfinite(v)]
            if len(known) and known.min() < known.max():
                lo, hi = float(known.min()), float(known.max())
                sel = c[1].slider(column, lo, hi, (lo, hi), key=f"meta_range_{column}")
                keep = np.isfinite(v) & (v >= sel[0]) & (v <= sel[1]) if sel != (lo, hi) else keep
        elif column in meta.categorical:
            options = sorted(x for x in values[column].dropna().unique() if x != "")
            chosen = c[1].multiselect(column, options, placeholder="any", key=f"meta_pick_{column}")
            if chosen:
                keep = values[column].isin(chosen).to_numpy()
        sorts = [NONE] + [f"{col} {arrow}" for col in meta.columns for arrow in ("↑", "↓")]
        sort = c[2].selectbox(
            "Sort by metadata", sorts, key="meta_sort", help="Overrides the sort above; ties keep it."
        )
        out = table[keep]
        if sort != NONE:
            col, arrow = sort.rsplit(" ", 1)
            key = meta.table[col].reindex(out["rel"]).to_numpy()
            order = pd.Series(key).sort_values(ascending=arrow == "↑", na_position="last", kind="stable").index
            out = out.iloc[order.to_numpy()]
        st.caption(f"{len(meta)} of {len(ctx.index.items)} images have a metadata row. {' '.join(meta.notes)}")
    return out


def show_for_image(ctx: AppContext, item: Item | None) -> None:
    """Explain page: what the metadata table says about this image (nothing for uploads or without a table)."""
    meta = metadata(ctx)
    if item is None or meta is None or len(meta) == 0:
        return
    row = meta.row(item.rel)
    if not row:
        st.caption(f"No row for this image in `{meta.source.name}`.")
        return
    parts = [f"{k} **{v:.4g}**" if isinstance(v, float) else f"{k} **{v}**" for k, v in row.items()]
    st.caption(f"Known about it ({meta.source.name}): " + " · ".join(parts))


def gate_plot(ctx: AppContext, preds: Predictions) -> None:
    """Gate tuning: stage 1's P(normal) or the final class against a numeric column, coloured by true class."""
    meta = metadata(ctx)
    if meta is None or len(meta) == 0:
        return
    st.subheader("What each image is known to be")
    _warnings(meta)
    if not meta.numeric:
        st.caption(f"`{meta.source.name}` has no numeric column to plot against.")
        return
    cascade = ctx.need_cascade()
    c = st.columns([2, 3])
    default = meta.numeric.index("density") if "density" in meta.numeric else 0
    column = c[0].selectbox("Column", list(meta.numeric), index=default, key="meta_plot_column")
    y_mode = c[1].segmented_control("Up the side", Y_MODES, default=Y_MODES[0], key="meta_plot_y", required=True)
    t, rule = state.gate()
    x = meta.table[column].reindex(list(preds.rels)).to_numpy(dtype=np.float64)
    final = decide_batch(preds.p1, preds.p2, cascade.normal_index, t, rule).final
    fig = metadata_scatter(
        x, preds.p1[:, cascade.normal_index], preds.labels, final, cascade.classes, column, t, y_mode, preds.rels
    )
    st.plotly_chart(fig, width="stretch", key="meta_scatter")
    missing = int((~np.isfinite(x)).sum())
    st.caption(
        overlap_sentence(x, preds.labels, cascade.classes, column)
        + (f" {missing} image(s) without a {column} value are not shown." if missing else "")
    )
