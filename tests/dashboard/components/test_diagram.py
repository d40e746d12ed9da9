"""The cascade diagram: valid DOT, the gate's question, and exactly the route taken lit."""

from __future__ import annotations

import re

from dashboard.components.diagram import DIM, LIT, StageBox, cascade_dot

S1, S2 = StageBox("resnet18", 128, "onnxruntime-cpu"), StageBox("densenet121", 128, 'torch "cpu"')


def _colour(dot: str, line_start: str) -> str:
    line = next(x for x in dot.splitlines() if x.startswith(line_start))
    return re.search(r'color="([^"]+)"', line).group(1)


def test_unlit_diagram_names_the_stages_and_the_gate():
    dot = cascade_dot(S1, S2, 0.6, "p_normal")
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    assert "P(normal) ≥ 0.600?" in dot and "resnet18 · 128 px" in dot
    assert 'torch \\"cpu\\"' in dot  # quotes escaped
    assert LIT not in dot


def test_route_through_stage_two_is_lit():
    dot = cascade_dot(S1, S2, 0.6, "p_normal", path=2, final_label="osteoporosis 71 %")
    assert _colour(dot, "s2 [") == LIT and _colour(dot, "out2 [") == LIT
    assert _colour(dot, "gate -> s2") == LIT and _colour(dot, "gate -> out1") == DIM
    assert _colour(dot, "out1 [") == DIM
    assert "answer: osteoporosis 71 %" in dot


def test_route_settled_by_the_gate_is_lit():
    dot = cascade_dot(S1, S2, 0.3, "top1", path=1, final_label="normal 80 %")
    assert _colour(dot, "gate -> out1") == LIT and _colour(dot, "s2 [") == DIM
    assert "normal on top\\nand P(normal) ≥ 0.300?" in dot


def test_the_gate_is_written_at_the_gate_precision():
    dot = cascade_dot(S1, S2, 0.456, "p_normal")
    assert "P(normal) ≥ 0.456?" in dot  # not 0.46: the value shown is the value decided on
