"""Plotly figures: probability bars with the gate, metric curves against the threshold, confusion matrix, Sankey.

Pure functions from arrays to figures; the pages only place them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from cascade.sweep import Sweep
from dashboard.components.numbers import gate_text, percent_labels

GATE_COLOUR = "#ff9f1c"
SAVED_COLOUR = "#9ca3af"
CLASS_COLOURS = ("#4ade80", "#60a5fa", "#f472b6", "#facc15", "#a78bfa", "#fb923c")
_LAYOUT = {"template": "plotly_dark", "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)"}


def _colour(i: int) -> str:
    return CLASS_COLOURS[i % len(CLASS_COLOURS)]


def probability_bars(
    probs: Sequence[float],
    classes: Sequence[str],
    title: str,
    gate: float | None = None,
    normal_index: int | None = None,
    faded: bool = False,
) -> go.Figure:
    """Horizontal bars of one stage's probabilities; ``gate`` draws the threshold on the normal bar."""
    probs = np.asarray(probs, dtype=np.float64)
    y = list(range(len(classes)))
    fig = go.Figure(
        go.Bar(
            x=probs,
            y=y,
            orientation="h",
            marker_color=[_colour(i) for i in y],
            opacity=0.45 if faded else 0.95,
            text=percent_labels(probs),
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{customdata}: %{x:.3f}<extra></extra>",
            customdata=list(classes),
        )
    )
    if gate is not None and normal_index is not None:
        fig.add_shape(
            type="line",
            x0=gate,
            x1=gate,
            y0=normal_index - 0.48,
            y1=normal_index + 0.48,
            line={"color": GATE_COLOUR, "width": 4},
        )
        fig.add_annotation(  # just above the normal bar, on a dark ground so it reads over any bar colour
            x=gate,
            y=normal_index - 0.5,
            text=f"gate {gate_text(gate)}",
            showarrow=False,
            yanchor="bottom",
            font={"color": GATE_COLOUR},
            bgcolor="rgba(17,17,17,0.85)",
        )
    fig.update_layout(
        title=title,
        height=90 + 48 * len(classes),
        margin={"l": 10, "r": 40, "t": 40, "b": 10},
        xaxis={"range": [0, 1.08], "tickformat": ".0%", "dtick": 0.2},
        # First class on top, with headroom above it for the gate's label.
        yaxis={"tickvals": y, "ticktext": list(classes), "range": [len(classes) - 0.5, -1.0]},
        showlegend=False,
        **_LAYOUT,
    )
    return fig


def _gate_lines(fig: go.Figure, current: float, saved: float | None) -> None:
    """The slider's gate, and the saved one where it differs (labelled at opposite ends so they never overlap)."""
    if saved is not None and abs(saved - current) > 1e-9:
        fig.add_vline(
            x=saved,
            line={"color": SAVED_COLOUR, "dash": "dot"},
            annotation={"text": "saved", "yanchor": "bottom", "font": {"color": SAVED_COLOUR}},
            annotation_position="bottom right",
        )
    fig.add_vline(
        x=current,
        line={"color": GATE_COLOUR, "width": 2},
        annotation={"text": f"gate {gate_text(current)}", "font": {"color": GATE_COLOUR}},
        annotation_position="top right",
    )


def headline_curves(s: Sweep, current: float, saved: float | None = None) -> go.Figure:
    """Accuracy, the abnormal-vs-normal screen and the share of images stage 2 must see, against the threshold."""
    fig = go.Figure()
    t = s.thresholds
    fig.add_scatter(x=t, y=s.accuracy, name="accuracy", line={"width": 3, "color": "#e5e7eb"})
    fig.add_scatter(x=t, y=s.abnormal_sensitivity, name="abnormal sensitivity", line={"color": "#f472b6"})
    fig.add_scatter(x=t, y=s.normal_recall, name="normal recall", line={"color": "#4ade80"})
    fig.add_scatter(
        x=t, y=s.routed_share, name="share sent to stage 2", line={"color": "#60a5fa", "dash": "dash"}, fill="tozeroy"
    )
    _gate_lines(fig, current, saved)
    _curve_layout(fig, "The cascade against the gate threshold")
    return fig


def _curve_layout(fig: go.Figure, title: str) -> None:
    """The shared look of the curves against the threshold (percent axis, legend below, unified hover)."""
    fig.update_layout(
        title=title,
        xaxis_title="gate threshold",
        yaxis={"range": [0, 1.02], "tickformat": ".0%"},
        height=380,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        legend={"orientation": "h", "y": -0.2},
        hovermode="x unified",
        **_LAYOUT,
    )


def class_curves(s: Sweep, classes: Sequence[str], current: float, saved: float | None = None) -> go.Figure:
    """Per-class sensitivity (solid) and specificity (dotted) against the threshold."""
    fig = go.Figure()
    sens, spec = s.sensitivity, s.specificity
    for i, name in enumerate(classes):
        fig.add_scatter(x=s.thresholds, y=sens[:, i], name=f"{name} sensitivity", line={"color": _colour(i)})
        fig.add_scatter(
            x=s.thresholds, y=spec[:, i], name=f"{name} specificity", line={"color": _colour(i), "dash": "dot"}
        )
    _gate_lines(fig, current, saved)
    _curve_layout(fig, "Per class")
    return fig


def confusion_heatmap(cm: np.ndarray, classes: Sequence[str]) -> go.Figure:
    """Counts with true class down and final class across."""
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    text = [[f"{cm[i, j]}<br>{100 * share[i, j]:.0f} %" for j in range(cm.shape[1])] for i in range(cm.shape[0])]
    fig = go.Figure(
        go.Heatmap(
            z=share,
            x=list(classes),
            y=list(classes),
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1,
            showscale=False,
            hovertemplate="true %{y}, final %{x}: %{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Confusion matrix at the gate",
        xaxis_title="final class",
        yaxis={"title": "true class", "autorange": "reversed"},
        height=340,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        **_LAYOUT,
    )
    return fig


def flow_sankey(into: np.ndarray, out: np.ndarray, classes: Sequence[str]) -> go.Figure:
    """True class → gate outcome (settled by stage 1 / sent to stage 2) → final class."""
    c = len(classes)
    labels = (
        [f"true {n}" for n in classes] + ["settled by stage 1", "sent to stage 2"] + [f"final {n}" for n in classes]
    )
    colours = [_colour(i) for i in range(c)] + ["#9ca3af", "#60a5fa"] + [_colour(i) for i in range(c)]
    src, dst, val, col = [], [], [], []
    for i in range(c):
        for g in range(2):
            if into[i, g]:
                src.append(i)
                dst.append(c + g)
                val.append(int(into[i, g]))
                col.append("rgba(156,163,175,0.35)")
    for g in range(2):
        for j in range(c):
            if out[g, j]:
                src.append(c + g)
                dst.append(c + 2 + j)
                val.append(int(out[g, j]))
                col.append("rgba(96,165,250,0.35)" if g else "rgba(156,163,175,0.35)")
    fig = go.Figure(
        go.Sankey(
            node={"label": labels, "color": colours, "pad": 14, "thickness": 14},
            link={"source": src, "target": dst, "value": val, "color": col},
        )
    )
    fig.update_layout(
        title="True class → gate → final class",
        height=360,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        **_LAYOUT,
    )
    return fig
