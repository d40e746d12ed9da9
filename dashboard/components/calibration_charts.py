"""Reliability diagrams before and after temperature scaling, and how the suggested gates move. Streamlit-free."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cascade.calibration import ReliabilityBins
from cascade.sweep import Suggestion
from dashboard.components.charts import _LAYOUT as PLOT_LAYOUT  # the shared look of every figure
from dashboard.components.charts import GATE_COLOUR
from dashboard.components.numbers import gate_text

RAW_COLOUR = "#f472b6"
CALIBRATED_COLOUR = "#4ade80"


def reliability_figure(
    before: ReliabilityBins,
    after: ReliabilityBins | None,
    title: str,
    x_title: str = "predicted probability",
    gate: float | None = None,
) -> go.Figure:
    """Observed frequency against mean predicted probability per bin (diagonal: perfectly calibrated), with the
    images per bin below; ``gate`` marks the threshold on the x axis (for P(normal))."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.74, 0.26], vertical_spacing=0.04)
    fig.add_scatter(
        x=[0, 1],
        y=[0, 1],
        mode="lines",
        name="calibrated ideal",
        line={"color": "#9ca3af", "dash": "dot"},
        row=1,
        col=1,
    )
    curves = [("raw", before, RAW_COLOUR)] + ([("temperature-scaled", after, CALIBRATED_COLOUR)] if after else [])
    for name, bins, colour in curves:
        full = bins.count > 0
        fig.add_scatter(
            x=bins.confidence[full],
            y=bins.observed[full],
            mode="lines+markers",
            name=f"{name} (ECE {bins.ece:.3f})",
            line={"color": colour},
            marker={"size": 6 + 14 * np.sqrt(bins.count[full] / max(bins.count.max(), 1))},
            customdata=np.stack([bins.count[full], bins.lo[full], bins.hi[full]], axis=1),
            hovertemplate="bin (%{customdata[1]:.2f}, %{customdata[2]:.2f}]: %{customdata[0]} images<br>"
            "mean predicted %{x:.3f}, observed %{y:.3f}<extra>" + name + "</extra>",
            row=1,
            col=1,
        )
        fig.add_bar(
            x=(bins.lo + bins.hi) / 2,
            y=bins.count,
            width=bins.hi - bins.lo,
            name=f"images per bin ({name})",
            marker={"color": colour, "line": {"width": 0}},
            opacity=0.45,
            showlegend=False,
            hovertemplate="(%{customdata[0]:.2f}, %{customdata[1]:.2f}]: %{y} images<extra>" + name + "</extra>",
            customdata=np.stack([bins.lo, bins.hi], axis=1),
            row=2,
            col=1,
        )
    if gate is not None:
        line = {"color": GATE_COLOUR, "width": 2}
        fig.add_vline(x=gate, line=line, annotation={"text": f"gate {gate_text(gate)}"}, row=1, col=1)
        fig.add_vline(x=gate, line=line, row=2, col=1)
    fig.update_layout(
        title=title,
        barmode="overlay",
        height=430,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        legend={"orientation": "h", "y": -0.18},
        **PLOT_LAYOUT,
    )
    fig.update_yaxes(title_text="observed frequency", range=[0, 1.02], tickformat=".0%", row=1, col=1)
    fig.update_yaxes(title_text="images", row=2, col=1)
    fig.update_xaxes(range=[0, 1], tickformat=".0%", row=1, col=1)
    fig.update_xaxes(title_text=x_title, range=[0, 1], tickformat=".0%", row=2, col=1)
    return fig


def gate_moves(raw: Sequence[Suggestion], calibrated: Sequence[Suggestion]) -> pd.DataFrame:
    """One row per suggested gate: its threshold on raw and on calibrated probabilities, and the move."""
    rows = []
    for a, b in zip(raw, calibrated, strict=True):
        move = None if a.threshold is None or b.threshold is None else b.threshold - a.threshold
        rows.append(
            {
                "suggested gate": a.title,
                "raw": a.threshold,
                "calibrated": b.threshold,
                "move": move,
                "calibrated: why": b.why,
            }
        )
    return pd.DataFrame(rows)


def scores_table(before: dict, after: dict) -> pd.DataFrame:
    """ECE (both bin kinds), Brier and NLL, top-label and P(normal), raw against temperature-scaled."""

    def flat(r: dict) -> dict[str, float]:
        return {
            "top-label ECE, equal-width bins": r["ece_top_label"]["equal_width"],
            "top-label ECE, equal-mass bins": r["ece_top_label"]["equal_mass"],
            "Brier score (all classes)": r["brier"],
            "negative log-likelihood": r["nll"],
            "P(normal) ECE, equal-width bins": r["p_normal"]["ece"]["equal_width"],
            "P(normal) ECE, equal-mass bins": r["p_normal"]["ece"]["equal_mass"],
            "P(normal) Brier score": r["p_normal"]["brier"],
            "P(normal) NLL": r["p_normal"]["nll"],
        }

    a, b = flat(before), flat(after)
    return pd.DataFrame({"score (lower is better)": list(a), "raw": list(a.values()), "calibrated": list(b.values())})
