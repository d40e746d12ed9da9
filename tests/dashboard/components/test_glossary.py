"""Metric names and definitions, and the delta shown against the saved gate."""

from __future__ import annotations

import pytest

from dashboard.components import glossary

CLASSES = ("normal", "osteopenia", "osteoporosis")


def test_each_name_has_one_definition():
    names = [
        glossary.ACCURACY,
        glossary.ABNORMAL_SENSITIVITY,
        glossary.NORMAL_RECALL,
        glossary.SENT_TO_STAGE2,
        glossary.STAGE2_SAVED,
        *(glossary.recall_name(c) for c in CLASSES),
        *(glossary.specificity_name(c) for c in CLASSES),
    ]
    defs = {n: glossary.definition(n, CLASSES) for n in names}
    assert len(set(names)) == len(names) - 1  # "normal recall" is the normal class's recall: one name, one meaning
    assert all(d.endswith(".") and "\n" not in d for d in defs.values())
    assert "osteopenia or osteoporosis" in defs[glossary.ABNORMAL_SENSITIVITY]
    with pytest.raises(KeyError):
        glossary.definition("normal specificity of the screen", CLASSES)


@pytest.mark.parametrize(
    ("current", "reference", "expected"),
    [
        (0.8, 0.8, None),
        (0.8004, 0.8, None),  # would print "+0.0 pts": nothing to show
        (0.7996, 0.8, None),  # nor "-0.0"
        (0.812, 0.8, "+1.2 pts vs saved"),
        (0.79, 0.8, "-1.0 pts vs saved"),
        (float("nan"), 0.8, None),
    ],
)
def test_delta_only_when_something_changed(current, reference, expected):
    assert glossary.delta_text(current, reference) == expected
