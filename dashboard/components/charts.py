"""Plotly figures: probability bars, metric curves against the threshold, P(normal) strip, confusion matrix, flows.

Pure functions from arrays to figures; the pages only place them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from cascade.sweep import Sweep
from dashboard.components import glossary
from dashboard.components.glossary import definition
from dashboard.components.numbers import gate_text, percent_labels

GATE_COLOUR = "#ff9f1c"
SAVED_COLOUR = "#9ca3af"
CLASS_COLOURS = ("#4ade80", "#60a5fa", "#f472b6", "#facc15", "#a78bfa", "#fb923c")


def _lean_dark_template() -> go.layout.Template:
    """plotly_dark's layout and the defaults of the trace types drawn here, nothing else.

    The named template carries defaults for every trace type Plotly has, and every figure deep-copies and validates
    them: about 60 ms per figure, most of the time it takes to build one, on each slider move.
    """
    full = pio.templates["plotly_dark"]
    return go.layout.Template(
        layout=full.layout, data={"bar": full.data.bar, "scatter": full.data.scatter, "heatmap": full.data.heatmap}
    )


_LAYOUT = {"template": _lean_dark_template(), "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)"}


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
    """The slider's gate, and the saved one where it differs (labelled at opposite ends so they never overlap).

    Plain shapes and annotations in one layout update: ``add_vline`` costs tens of milliseconds per line.
    """
    lines = [(current, {"color": GATE_COLOUR, "width": 2}, f"gate {gate_text(current)}", 1.0, "bottom")]
    if saved is not None and abs(saved - current) > 1e-9:
        lines.insert(0, (saved, {"color": SAVED_COLOUR, "dash": "dot"}, "saved", 0.0, "bottom"))
    shapes = [*fig.layout.shapes]
    notes = [*fig.layout.annotations]
    for x, line, text, y, yanchor in lines:
        shapes.append({"type": "line", "x0": x, "x1": x, "xref": "x", "y0": 0, "y1": 1, "yref": "paper", "line": line})
        notes.append(
            {
                "x": x,
                "y": y,
                "xref": "x",
                "yref": "paper",
                "text": text,
                "showarrow": False,
                "xanchor": "left",
                "yanchor": yanchor if y == 0.0 else "top",
                "font": {"color": line["color"]},
            }
        )
    fig.update_layout(shapes=shapes, annotations=notes)


def _hover(name: str, classes: Sequence[str], normal_label: str) -> str:
    """A curve's hover line: its value and its one-line definition, so a name never has to be guessed."""
    return f"{name}: %{{y:.1%}}<br><i>{definition(name, classes, normal_label)}</i><extra></extra>"


def headline_curves(
    s: Sweep, classes: Sequence[str], current: float, saved: float | None = None, normal_label: str = "normal"
) -> go.Figure:
    """Accuracy, the abnormal-vs-normal screen and the share of images stage 2 must see, against the threshold."""
    fig = go.Figure()
    t = s.thresholds
    for name, y, line, extra in (
        (glossary.ACCURACY, s.accuracy, {"width": 3, "color": "#e5e7eb"}, {}),
        (glossary.ABNORMAL_SENSITIVITY, s.abnormal_sensitivity, {"color": "#f472b6"}, {}),
        (glossary.NORMAL_RECALL, s.normal_recall, {"color": _colour(s.normal_index)}, {}),
        (glossary.SENT_TO_STAGE2, s.routed_share, {"color": "#60a5fa", "dash": "dash"}, {"fill": "tozeroy"}),
    ):
        fig.add_scatter(x=t, y=y, name=name, line=line, hovertemplate=_hover(name, classes, normal_label), **extra)
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


def class_curves(
    s: Sweep, classes: Sequence[str], current: float, saved: float | None = None, normal_label: str = "normal"
) -> go.Figure:
    """Per-class recall (solid) and, for the abnormal classes, specificity (dotted) against the threshold.

    Normal's specificity is left out: it is the abnormal sensitivity of the other chart under another name.
    """
    fig = go.Figure()
    sens, spec = s.sensitivity, s.specificity
    for i, cls in enumerate(classes):
        name = glossary.recall_name(cls)
        fig.add_scatter(
            x=s.thresholds,
            y=sens[:, i],
            name=name,
            line={"color": _colour(i)},
            hovertemplate=_hover(name, classes, normal_label),
        )
    for i, cls in enumerate(classes):
        if i == s.normal_index:
            continue
        name = glossary.specificity_name(cls)
        fig.add_scatter(
            x=s.thresholds,
            y=spec[:, i],
            name=name,
            line={"color": _colour(i), "dash": "dot"},
            hovertemplate=_hover(name, classes, normal_label),
        )
    _gate_lines(fig, current, saved)
    _curve_layout(fig, "Per class")
    return fig


def rule_curves(sweeps: dict[str, Sweep], labels: dict[str, str], current: float) -> go.Figure:
    """The two gate rules on one sweep: accuracy, abnormal sensitivity and the share sent to stage 2 for each."""
    fig = go.Figure()
    dashes = ("solid", "dash", "dot")
    for k, (rule, s) in enumerate(sweeps.items()):
        for name, y, colour in (
            (glossary.ACCURACY, s.accuracy, "#e5e7eb"),
            (glossary.ABNORMAL_SENSITIVITY, s.abnormal_sensitivity, "#f472b6"),
            (glossary.SENT_TO_STAGE2, s.routed_share, "#60a5fa"),
        ):
            fig.add_scatter(
                x=s.thresholds,
                y=y,
                name=f"{name} · {labels.get(rule, rule)}",
                line={"color": colour, "dash": dashes[k % len(dashes)]},
                hovertemplate=f"{name} ({labels.get(rule, rule)}): %{{y:.1%}}<extra></extra>",
            )
    _gate_lines(fig, current, None)
    _curve_layout(fig, "The two gate rules against the threshold")
    return fig


def p_normal_strip(
    p_normal: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    rels: Sequence[str],
    current: float,
    saved: float | None = None,
    never_passes: np.ndarray | None = None,
) -> go.Figure:
    """Stage 1's P(normal) for every image, one row per true class, with the gate: what a gate is, in one picture.

    Right of the gate line stage 1 answers "normal" alone; left of it the image goes to stage 2. ``never_passes``
    marks images a rule sends to stage 2 at any threshold (top1: normal is not stage 1's top class). Points carry
    their file in ``customdata`` so a selection can be turned into a list of images.
    """
    p_normal = np.asarray(p_normal, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    never = np.zeros(len(p_normal), dtype=bool) if never_passes is None else np.asarray(never_passes, dtype=bool)
    # A fixed jitter per image (not random per run), so points do not jump when the gate moves.
    jitter = (np.arange(len(p_normal)) * 0.6180339887 % 1.0 - 0.5) * 0.5
    fig = go.Figure()
    shade = {"type": "rect", "x0": current, "x1": 1.0, "xref": "x", "y0": 0, "y1": 1, "yref": "paper"}
    fig.update_layout(shapes=[{**shade, "fillcolor": GATE_COLOUR, "opacity": 0.08, "line": {"width": 0}}])
    for i, cls in enumerate(classes):
        m = labels == i
        if not m.any():
            continue
        passed = (p_normal[m] >= current) & ~never[m]
        fig.add_scatter(
            x=p_normal[m],
            y=i + jitter[m],
            mode="markers",
            name=f"true {cls}",
            marker={
                "color": _colour(i),
                "size": 9,
                "symbol": np.where(never[m], "circle-open", "circle").tolist(),
                "line": {"width": 1, "color": "rgba(0,0,0,0.4)"},
            },
            customdata=np.asarray(rels, dtype=object)[m],
            text=np.where(passed, "stage 1 answers normal", "goes to stage 2").tolist(),
            hovertemplate="%{customdata}<br>P(normal) %{x:.3f}: %{text}<extra>true " + cls + "</extra>",
        )
    _gate_lines(fig, current, saved)
    fig.update_layout(
        title="Stage 1's P(normal) for every image, by true class",
        xaxis={"range": [-0.02, 1.02], "tickformat": ".0%", "title": "stage 1's P(normal)"},
        yaxis={
            "tickvals": list(range(len(classes))),
            "ticktext": [f"true {c}" for c in classes],
            "range": [len(classes) - 0.4, -0.6],  # first class on top
        },
        height=120 + 70 * len(classes),
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        showlegend=False,
        dragmode="select",
        **_LAYOUT,
    )
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


@dataclass(frozen=True)
class FlowLink:
    """One band of the flow diagram: ``count`` images of true class ``true`` going ``source`` → ``target``."""

    step: int  # 0: true class → stage 1 outcome, 1: stage 1 outcome → final class
    true: int
    routed: bool
    final: int | None  # None on step 0
    count: int


def flow_links(y: np.ndarray, routed: np.ndarray, final: np.ndarray, num_classes: int) -> list[FlowLink]:
    """Every non-empty band, with the true class kept through both steps (so each band has one colour)."""
    y = np.asarray(y, dtype=np.int64)
    r = np.asarray(routed, dtype=np.int64)
    f = np.asarray(final, dtype=np.int64)
    c = num_classes
    triples = np.bincount((y * 2 + r) * c + f, minlength=c * 2 * c).reshape(c, 2, c)
    links = [
        FlowLink(0, i, bool(g), None, int(triples[i, g].sum()))
        for i in range(c)
        for g in range(2)
        if triples[i, g].any()
    ]
    links += [
        FlowLink(1, i, bool(g), j, int(triples[i, g, j]))
        for g in range(2)
        for j in range(c)
        for i in range(c)
        if triples[i, g, j]
    ]
    return links


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"


def _band(x0: float, x1: float, top0: float, bot0: float, top1: float, bot1: float) -> str:
    xm = (x0 + x1) / 2
    return f"M {x0},{top0} C {xm},{top0} {xm},{top1} {x1},{top1} L {x1},{bot1} C {xm},{bot1} {xm},{bot0} {x0},{bot0} Z"


def flow_diagram(y: np.ndarray, routed: np.ndarray, final: np.ndarray, classes: Sequence[str]) -> go.Figure:
    """True class → stage 1 outcome (settled as normal / sent to stage 2) → final class, drawn as bands.

    Each band keeps its true class's colour through both steps and carries its count as text at its middle (Plotly's
    Sankey shows link values only on hover and loses the true class after the middle column). The count markers hold
    ``[true, routed, final]`` indices in ``customdata`` (final −1 on the first step), so a click can filter images.
    """
    c = len(classes)
    links = flow_links(y, routed, final, c)
    n = max(int(len(np.asarray(y))), 1)
    pad, width = 0.05, 0.06
    scale = (1 - pad * (max(c, 2) - 1)) / n
    xs = (0.0, 1.0, 2.0)
    # Node sizes per column, from the links; nodes stacked from the top with a gap between them.
    size0 = [sum(k.count for k in links if k.step == 0 and k.true == i) for i in range(c)]
    size1 = [sum(k.count for k in links if k.step == 0 and k.routed == bool(g)) for g in range(2)]
    size2 = [sum(k.count for k in links if k.step == 1 and k.final == j) for j in range(c)]

    def tops(sizes: list[int]) -> list[float]:
        out, y0 = [], (1 - (sum(sizes) * scale + pad * (len(sizes) - 1))) / 2
        for v in sizes:
            out.append(y0)
            y0 += v * scale + pad
        return out

    top0, top1, top2 = tops(size0), tops(size1), tops(size2)
    out0, in1, out1, in2 = list(top0), list(top1), list(top1), list(top2)
    fig = go.Figure()
    shapes: list[dict] = []
    notes: list[dict] = []
    mid_x, mid_y, texts, custom, hover = [], [], [], [], []
    names = list(classes)
    stage1_names = ("stage 1 says normal", "sent to stage 2")
    for k in links:
        h = k.count * scale
        if k.step == 0:
            a, b = k.true, int(k.routed)
            y0, y1 = out0[a], in1[b]
            out0[a] += h
            in1[b] += h
            x0, x1 = xs[0] + width, xs[1]
            where = f"true {names[k.true]} → {stage1_names[b]}"
        else:
            a, b = int(k.routed), int(k.final)
            y0, y1 = out1[a], in2[b]
            out1[a] += h
            in2[b] += h
            x0, x1 = xs[1] + width, xs[2]
            where = f"true {names[k.true]}, {stage1_names[a]} → final {names[b]}"
        shapes.append(
            {
                "type": "path",
                "path": _band(x0, x1, y0, y0 + h, y1, y1 + h),
                "fillcolor": _rgba(_colour(k.true), 0.45),
                "line": {"width": 0},
                "layer": "below",
            }
        )
        mid_x.append((x0 + x1) / 2)
        mid_y.append((y0 + y1 + h) / 2)
        texts.append(str(k.count))
        custom.append([k.true, int(k.routed), -1 if k.final is None else k.final])
        hover.append(f"{where}: {k.count} image(s)")
    for x, col_tops, sizes, labels, colours in (
        (xs[0], top0, size0, [f"true {nm}" for nm in names], [_colour(i) for i in range(c)]),
        (xs[1], top1, size1, list(stage1_names), ["#9ca3af", "#60a5fa"]),
        (xs[2], top2, size2, [f"final {nm}" for nm in names], [_colour(i) for i in range(c)]),
    ):
        for top, v, label, colour in zip(col_tops, sizes, labels, colours, strict=True):
            if not v:
                continue
            shapes.append(
                {"type": "rect", "x0": x, "x1": x + width, "y0": top, "y1": top + v * scale, "fillcolor": colour}
            )
            shapes[-1]["line"] = {"width": 0}
            # Labels outside the bands: left of the first column, right of the last, above the middle one.
            side = "left" if x == xs[0] else "middle" if x == xs[1] else "right"
            notes.append(
                {
                    "x": {"left": x, "middle": x + width / 2, "right": x + width}[side],
                    "y": top if side == "middle" else top + v * scale / 2,
                    "text": f"{label} · {v}",
                    "showarrow": False,
                    "xanchor": {"left": "right", "middle": "center", "right": "left"}[side],
                    "yanchor": "bottom" if side == "middle" else "middle",
                    "xshift": {"left": -4, "middle": 0, "right": 4}[side],
                    "font": {"size": 12},
                    "bgcolor": "rgba(17,17,17,0.75)",
                }
            )
    fig.add_scatter(
        x=mid_x,
        y=mid_y,
        mode="markers+text",
        text=texts,
        textfont={"color": "#f9fafb", "size": 12},
        marker={"size": 16, "color": "rgba(17,17,17,0.55)"},
        customdata=custom,
        hovertext=hover,
        hovertemplate="%{hovertext}<extra></extra>",
        showlegend=False,
    )
    fig.update_layout(
        title="True class → stage 1 → final class",
        shapes=shapes,
        annotations=notes,
        xaxis={"visible": False, "range": [-1.05, 3.15], "fixedrange": True},
        yaxis={"visible": False, "range": [1.02, -0.08], "fixedrange": True},
        height=400,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        **_LAYOUT,
    )
    return fig
