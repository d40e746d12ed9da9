"""Stage 1 alone, stage 2 alone and the cascade at the current gate, side by side, from cached predictions.

The README's evaluation tables, live: each column is a confusion matrix turned into metrics by ``cascade.sweep.Sweep``
(the same definitions the curves use), so a figure here equals the curve's value at the gate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cascade.gate import GateRule, decide_batch
from cascade.metrics import confusion_matrix
from cascade.sweep import Sweep
from dashboard.components import glossary

STAGE1 = "stage 1 alone"
STAGE2 = "stage 2 alone"


def cascade_column(threshold_text: str) -> str:
    return f"cascade at gate {threshold_text}"


def stage_comparison(
    p1: np.ndarray,
    p2: np.ndarray,
    y: np.ndarray,
    classes: Sequence[str],
    normal_index: int,
    threshold: float,
    rule: GateRule | str,
    threshold_text: str,
) -> pd.DataFrame:
    """Rows: accuracy, each class's recall, abnormal sensitivity, share sent to stage 2, stage-2 runs saved.

    Columns: stage 1 alone (its top class, no gate), stage 2 alone (run on every image), the cascade at the gate, and
    the definition of each row.
    """
    c = len(classes)
    now = decide_batch(p1, p2, normal_index, threshold, rule)
    finals = (np.asarray(p1).argmax(axis=1), np.asarray(p2).argmax(axis=1), now.final)
    routed = float(now.routed.mean()) if len(now.routed) else float("nan")
    s = Sweep(
        thresholds=np.array([np.nan, np.nan, threshold]),
        confusion=np.stack([confusion_matrix(y, f, c) for f in finals]),
        routed_share=np.array([0.0, 1.0, routed]),
        normal_index=normal_index,
        rule=GateRule.parse(rule),
    )
    rows: dict[str, np.ndarray] = {glossary.ACCURACY: s.accuracy}
    for i, cls in enumerate(classes):
        rows[glossary.recall_name(cls)] = s.sensitivity[:, i]
    rows[glossary.ABNORMAL_SENSITIVITY] = s.abnormal_sensitivity
    rows[glossary.SENT_TO_STAGE2] = s.routed_share
    rows[glossary.STAGE2_SAVED] = 1.0 - s.routed_share
    normal_label = classes[normal_index]
    table = pd.DataFrame(rows, index=[STAGE1, STAGE2, cascade_column(threshold_text)]).T
    # Stage 1 alone never runs stage 2, but it is no saving against itself: say "—" rather than 100 %.
    table.loc[glossary.SENT_TO_STAGE2, STAGE1] = np.nan
    table.loc[glossary.STAGE2_SAVED, STAGE1] = np.nan
    table["what it means"] = [glossary.definition(name, classes, normal_label) for name in table.index]
    return table
