"""The cascade drawn as a Graphviz diagram, with the path one image took lit up."""

from __future__ import annotations

from dataclasses import dataclass

from cascade.gate import GateRule
from dashboard.components.numbers import gate_text

LIT = "#ff9f1c"
DIM = "#6b7280"
FILL = "#1f2937"
TEXT = "#e5e7eb"


@dataclass(frozen=True)
class StageBox:
    """What a stage box says: its architecture, input size and the backend that runs it."""

    arch: str
    resolution: int
    backend: str


def _esc(text: str) -> str:
    """A DOT string literal's body: quotes and backslashes escaped, line breaks as DOT's ``\\n``."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def gate_label(threshold: float, rule: GateRule | str) -> str:
    """The gate's question, as the diamond shows it."""
    rule = GateRule.parse(rule)
    if rule is GateRule.TOP1:
        return f"normal on top\nand P(normal) ≥ {gate_text(threshold)}?"
    return f"P(normal) ≥ {gate_text(threshold)}?"


def cascade_dot(
    stage1: StageBox,
    stage2: StageBox,
    threshold: float,
    rule: GateRule | str,
    path: int | None = None,
    final_label: str | None = None,
) -> str:
    """DOT source of the cascade. ``path`` lights the route of one image: 1 = settled by the gate, 2 = via stage 2.

    ``final_label`` names the answer at the end of the lit route.
    """
    lit1 = path == 1
    lit2 = path == 2
    any_lit = path in (1, 2)

    def node(name: str, label: str, lit: bool, shape: str = "box") -> str:
        colour = LIT if lit else (DIM if any_lit else TEXT)
        width = 3 if lit else 1.2
        return (
            f'{name} [label="{_esc(label)}", shape={shape}, '
            f'color="{colour}", penwidth={width}, fontcolor="{TEXT}", fillcolor="{FILL}", style="rounded,filled"];'
        )

    def edge(a: str, b: str, lit: bool, label: str = "") -> str:
        colour = LIT if lit else (DIM if any_lit else TEXT)
        width = 3 if lit else 1.2
        text = f', label="{_esc(label)}", fontcolor="{colour}"' if label else ""
        return f'{a} -> {b} [color="{colour}", penwidth={width}{text}];'

    answer1 = "normal"
    answer2 = "stage 2's class"
    if lit1 and final_label:
        answer1 = f"answer: {final_label}"
    if lit2 and final_label:
        answer2 = f"answer: {final_label}"
    lines = [
        "digraph cascade {",
        'rankdir=LR; bgcolor="transparent"; nodesep=0.35; ranksep=0.45;',
        f'node [fontname="Helvetica", fontsize=12, fontcolor="{TEXT}"]; edge [fontname="Helvetica", fontsize=11];',
        node("xray", "Knee X-ray", any_lit),
        node("s1", f"Stage 1\n{stage1.arch} · {stage1.resolution} px\n{stage1.backend}", any_lit),
        node("gate", gate_label(threshold, rule), any_lit, shape="diamond"),
        node("out1", answer1, lit1, shape="ellipse"),
        node("s2", f"Stage 2\n{stage2.arch} · {stage2.resolution} px\n{stage2.backend}", lit2),
        node("out2", answer2, lit2, shape="ellipse"),
        edge("xray", "s1", any_lit),
        edge("s1", "gate", any_lit),
        edge("gate", "out1", lit1, "yes"),
        edge("gate", "s2", lit2, "no"),
        edge("s2", "out2", lit2),
        "}",
    ]
    return "\n".join(lines)
