"""A prediction table from ``python -m engines precompute`` as the Gate tuning and Dataset pages' predictions.

Pointed at by the sidebar's "Prediction table" field or ``KNEE_CASCADE_PREDICTIONS``, it takes the place of the
dashboard's own cache: a table computed on a Ray cluster is tuned here without running a model. pyarrow only, never
Ray. The table is read once per file version, and a split's rows are matched to the dataset (file identities
re-checked) once per table, dataset and models; a table of other models is refused with a message.
"""

from __future__ import annotations

import streamlit as st

from cascade.pipeline import Cascade
from cascade.predcache import Predictions
from cascade.predtable import PredictionTable, file_identity, models_identity, read_table, split_predictions
from dashboard.context import AppContext


def _stamp(path: str) -> str:
    try:
        return ":".join(map(str, file_identity(path)))
    except OSError:
        return "missing"


@st.cache_resource(max_entries=2, show_spinner="Reading the prediction table…")
def _table(path: str, stamp: str) -> PredictionTable:
    return read_table(path)


@st.cache_resource(max_entries=4)
def _models(_cascade: Cascade, token: str) -> str:
    """The open cascade's models identity (hashing both checkpoints once per loaded cascade)."""
    return models_identity(_cascade.spec1, _cascade.spec2)


@st.cache_resource(max_entries=16, show_spinner="Matching the prediction table to the dataset…")
def _split(path: str, stamp: str, token: str, root: str, count: int, split: str, _ctx: AppContext) -> Predictions:
    index = _ctx.need_index()
    return split_predictions(_table(path, stamp), index.select(split), split, _models(_ctx.need_cascade(), token))


def table_predictions(ctx: AppContext, split: str) -> Predictions:
    """The split's predictions from the configured table; PredictionTableError (a message) when it does not fit.

    The table holds the models' raw probabilities, like the dashboard's own cache: the config's calibration (if any)
    is applied on reading, as there.
    """
    path = ctx.sources.predictions_path
    index = ctx.need_index()
    preds = _split(path, _stamp(path), ctx.cascade_token, str(index.root), len(index.items), split, ctx)
    return preds.with_temperatures(ctx.need_cascade().temperatures)
