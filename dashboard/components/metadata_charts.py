"""What each image is known to be, against what the cascade made of it: scatter plots by a metadata column.

Streamlit-free: arrays in, figures and sentences out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from dashboard.components.charts import _LAYOUT as PLOT_LAYOUT  # the shared look of every figure
from dashboard.components.charts import GATE_COLOUR, _colour
from dashboard.components.numbers import gate_text

Y_P_NORMAL = "Stage 1 P(normal)"
Y_FINAL = "Final class"
Y_MODES = (Y_P_NORMAL, Y_FINAL)


def metadata_scatter(
    x: np.ndarray,
    p_normal: np.ndarray,
    labels: np.ndarray,
    final: np.ndarray,
    classes: Sequence[str],
    column: str,
    gate: float,
    y_mode: str = Y_P_NORMAL,
    names: Sequence[str] | None = None,
) -> go.Figure:
    """One point per image: ``column`` across, stage 1's P(normal) (with the gate line) or the final class up,
    coloured by true class; crosses mark wrong final answers. Images without a value are left out."""
    x = np.asarray(x, dtype=np.float64)
    p_normal = np.asarray(p_normal, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    final = np.asarray(final, dtype=np.int64)
    has = np.isfinite(x)
    rng = np.random.default_rng(0)  # a fixed jitter: the same picture on every rerun
    jitter = rng.uniform(-0.18, 0.18, len(x))
    fig = go.Figure()
    for c, name in enumerate(classes):
        m = has & (labels == c)
        if not m.any():
            continue
        y = p_normal[m] if y_mode == Y_P_NORMAL else final[m] + jitter[m]
        wrong = final[m] != c
        fig.add_scatter(
            x=x[m],
            y=y,
            mode="markers",
            name=f"true {name}",
            marker={
                "color": _colour(c),
                "size": 8,
                "opacity": 0.8,
                "symbol": np.where(wrong, "x", "circle").tolist(),
                "line": {"width": 0},
            },
            customdata=np.stack(
                [
                    np.asarray(classes, dtype=object)[final[m]],
                    p_normal[m],
                    np.asarray(names if names is not None else [""] * len(x), dtype=object)[m],
                ],
                axis=1,
            ),
            hovertemplate=f"%{{customdata[2]}}<br>{column} %{{x:.3g}}<br>P(normal) %{{customdata[1]:.3f}}<br>"
            "final %{customdata[0]}<extra>" + f"true {name}" + "</extra>",
        )
    if y_mode == Y_P_NORMAL:
        fig.add_hline(
            y=gate,
            line={"color": GATE_COLOUR, "width": 2},
            annotation={"text": f"gate {gate_text(gate)}: above, stage 1 says normal", "font": {"color": GATE_COLOUR}},
            annotation_position="top left",
        )
        yaxis = {"title": Y_P_NORMAL, "range": [-0.02, 1.02], "tickformat": ".0%"}
    else:
        yaxis = {"title": Y_FINAL, "tickvals": list(range(len(classes))), "ticktext": list(classes)}
    fig.update_layout(
        title=f"{y_mode} against {column} (✕ = wrong final answer)",
        xaxis_title=column,
        yaxis=yaxis,
        height=440,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        legend={"orientation": "h", "y": -0.18},
        **PLOT_LAYOUT,
    )
    return fig


def overlap_sentence(x: np.ndarray, labels: np.ndarray, classes: Sequence[str], column: str) -> str:
    """Each class's range of ``column`` (5th–95th percentile), and whether neighbouring ranges overlap."""
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    spans = []
    for c, name in enumerate(classes):
        v = x[(labels == c) & np.isfinite(x)]
        if len(v):
            lo, hi = np.percentile(v, [5, 95])
            spans.append((name, float(lo), float(hi)))
    if len(spans) < 2:
        return f"Only one class has {column} values here."
    text = "; ".join(f"{n} {lo:.3g}–{hi:.3g}" for n, lo, hi in spans)
    overlaps = [
        f"{a[0]} and {b[0]}" for i, a in enumerate(spans) for b in spans[i + 1 :] if a[1] <= b[2] and b[1] <= a[2]
    ]
    if overlaps:
        return (
            f"{column} by true class (5th–95th percentile): {text}. The ranges of {', '.join(overlaps)} overlap: "
            f"images with the same {column} belong to different classes, so no gate on a score that follows "
            f"{column} can separate them perfectly."
        )
    return f"{column} by true class (5th–95th percentile): {text}. The ranges do not overlap."
