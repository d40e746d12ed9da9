"""The metrics' names and one-line definitions: one word, one meaning, on every page that shows them.

"Recall" is always one class's share of its own knees given that class; "sensitivity" only ever means the
abnormal-vs-normal screen's (any abnormal class not called normal). Pages use these for labels and ``help=`` tooltips.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ACCURACY = "accuracy"
ABNORMAL_SENSITIVITY = "abnormal sensitivity"
NORMAL_RECALL = "normal recall"
SENT_TO_STAGE2 = "sent to stage 2"
STAGE2_SAVED = "stage-2 runs saved"

_FIXED = {
    ACCURACY: "Share of images whose final class is their true class.",
    SENT_TO_STAGE2: "Share of images stage 1 did not settle: both stages run on them.",
    STAGE2_SAVED: "Share of images stage 1 settles alone, so stage 2 never runs on them (stage 1 runs on all).",
}


def recall_name(cls: str) -> str:
    return f"{cls} recall"


def specificity_name(cls: str) -> str:
    return f"{cls} specificity"


def definition(name: str, classes: Sequence[str], normal_label: str = "normal") -> str:
    """The one-line definition shown on hover for a metric ``name`` (as returned by the ``*_name`` helpers)."""
    abnormal = " or ".join(c for c in classes if c != normal_label) or "abnormal"
    if name == ABNORMAL_SENSITIVITY:
        return f"Share of abnormal knees ({abnormal}) not called {normal_label}: 1 − the screen's miss rate."
    if name in _FIXED:
        return _FIXED[name]
    for cls in classes:
        if name == recall_name(cls):
            extra = " (the abnormal screen's specificity)" if cls == normal_label else ""
            return f"Share of {cls} knees given the final class {cls}{extra}."
        if name == specificity_name(cls):
            return f"Share of knees that are not {cls} and are not called {cls}."
    raise KeyError(name)


def delta_text(current: float, reference: float, digits: int = 1) -> str | None:
    """``+1.2 pts vs saved``, or None when the change would show as zero (no arrow for "nothing changed")."""
    d = round(100 * (current - reference), digits)
    if not math.isfinite(d) or not d:
        return None
    return f"{d:+.{digits}f} pts vs saved"
