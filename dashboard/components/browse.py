"""The dataset browser's table: one row per image with its cascade outcome, and the filters and sorts on it.

Pure pandas over cached predictions, so a filter or a gate move re-evaluates thousands of rows without a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cascade.dataset import Item
from cascade.gate import GateRule, decide_batch
from cascade.predcache import Predictions

SORTS = {
    "file name": ("rel", True),
    "gate margin (closest to the gate first)": ("abs_margin", True),
    "confidence (least sure first)": ("confidence", True),
    "confidence (most sure first)": ("confidence", False),
}
ANY = "any"

# Session-state keys of the Dataset page's filter widgets (also their URL query parameters, so Back and links keep
# them), and of the set of images chosen in a chart on another page.
FILTER_KEYS = {
    "true_classes": "ds_true",
    "final_classes": "ds_final",
    "correct": "ds_outcome",
    "route": "ds_route",
    "flipped_only": "ds_flipped",
    "sort": "ds_sort",
}
CHOSEN_KEY = "ds_chosen"  # (tuple of rels, sentence saying where they come from), or absent
FILTER_DEFAULTS = {
    "true_classes": [],
    "final_classes": [],
    "correct": ANY,
    "route": ANY,
    "flipped_only": False,
    "sort": "file name",
}


@dataclass(frozen=True)
class Filters:
    """What the user asked to see; empty class lists mean every class, ANY means no constraint."""

    true_classes: tuple[str, ...] = ()
    final_classes: tuple[str, ...] = ()
    correct: str = ANY  # ANY | "correct" | "incorrect"
    route: str = ANY  # ANY | "stage 2" | "stage 1 only"
    flipped_only: bool = False
    sort: str = "file name"
    rels: tuple[str, ...] = ()  # images chosen in a chart; empty: no constraint


def show_in_dataset(rels, why: str) -> dict[str, object]:
    """Session-state updates that make the Dataset page show exactly ``rels`` (other filters reset to their defaults).

    A click or a box selection in a chart on another page becomes this set of images; ``why`` says what was clicked.
    """
    updates: dict[str, object] = {FILTER_KEYS[k]: v for k, v in FILTER_DEFAULTS.items()}
    updates[CHOSEN_KEY] = (tuple(dict.fromkeys(str(r) for r in rels)), why)
    return updates


def browse_table(
    items: Sequence[Item],
    preds: Predictions | None,
    normal_index: int,
    threshold: float,
    saved: float,
    rule: GateRule | str,
) -> pd.DataFrame:
    """Rows for ``items``; outcome columns (NaN/None where there are no predictions or the image was unreadable)."""
    df = pd.DataFrame({"rel": [it.rel for it in items], "label": [it.label for it in items]})
    if preds is None or len(preds) == 0:
        for col in ("final", "routed", "margin", "confidence", "correct", "flipped", "abs_margin"):
            df[col] = None
        df["predicted"] = False
        return df
    now = decide_batch(preds.p1, preds.p2, normal_index, threshold, rule)
    before = decide_batch(preds.p1, preds.p2, normal_index, saved, rule)
    classes = np.asarray(preds.classes)
    conf = now.scores[np.arange(len(preds)), now.final]
    outcome = pd.DataFrame(
        {
            "rel": list(preds.rels),
            "final": classes[now.final],
            "routed": now.routed,
            "margin": now.margin,
            "confidence": conf,
            "correct": now.final == preds.labels,
            "flipped": now.final != before.final,
        }
    )
    df = df.merge(outcome, on="rel", how="left")
    df["predicted"] = df["final"].notna()
    df["abs_margin"] = df["margin"].abs()
    return df


def apply_filters(df: pd.DataFrame, f: Filters) -> pd.DataFrame:
    """Rows that match every filter, in the chosen order (outcome filters drop rows without predictions)."""
    keep = np.ones(len(df), dtype=bool)
    if f.rels:
        keep &= df["rel"].isin(f.rels).to_numpy()
    if f.true_classes:
        keep &= df["label"].isin(f.true_classes).to_numpy()
    predicted = df["predicted"].to_numpy(dtype=bool)
    if f.final_classes:
        keep &= predicted & df["final"].isin(f.final_classes).to_numpy()
    if f.correct != ANY:
        right = df["correct"].fillna(False).to_numpy(dtype=bool)
        keep &= predicted & (right if f.correct == "correct" else ~right)
    if f.route != ANY:
        routed = df["routed"].fillna(False).to_numpy(dtype=bool)
        keep &= predicted & (routed if f.route == "stage 2" else ~routed)
    if f.flipped_only:
        keep &= predicted & df["flipped"].fillna(False).to_numpy(dtype=bool)
    column, ascending = SORTS[f.sort]
    out = df[keep]
    if column != "rel" and not out[column].notna().any():
        column, ascending = "rel", True
    return out.sort_values([column, "rel"], ascending=[ascending, True], na_position="last", kind="stable")
