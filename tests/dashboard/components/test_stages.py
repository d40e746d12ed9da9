"""Stage 1 alone, stage 2 alone and the cascade side by side: the same numbers as the metrics module and the sweep."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.gate import decide_batch
from cascade.metrics import abnormal_sensitivity
from cascade.sweep import sweep
from dashboard.components.stages import STAGE1, STAGE2, cascade_column, stage_comparison

CLASSES = ("normal", "osteopenia", "osteoporosis")


def test_columns_match_each_stage_and_the_sweep_at_the_gate():
    rng = np.random.default_rng(2)
    p1, p2, y = rng.dirichlet(np.ones(3), 80), rng.dirichlet(np.ones(3), 80), rng.integers(0, 3, 80)
    table = stage_comparison(p1, p2, y, CLASSES, 0, 0.45, "p_normal", "0.45")
    cas = cascade_column("0.45")
    assert list(table.columns) == [STAGE1, STAGE2, cas, "what it means"]
    assert table.loc["accuracy", STAGE1] == pytest.approx((p1.argmax(1) == y).mean())
    assert table.loc["accuracy", STAGE2] == pytest.approx((p2.argmax(1) == y).mean())
    d = decide_batch(p1, p2, 0, 0.45)
    assert table.loc["accuracy", cas] == pytest.approx((d.final == y).mean())
    assert table.loc["abnormal sensitivity", STAGE1] == pytest.approx(abnormal_sensitivity(y, p1.argmax(1), 0))
    s = sweep(p1, p2, y, 0, [0.45])
    assert table.loc["osteopenia recall", cas] == pytest.approx(s.sensitivity[0, 1])
    assert table.loc["sent to stage 2", cas] == pytest.approx(d.routed.mean())
    assert table.loc["stage-2 runs saved", cas] == pytest.approx(1 - d.routed.mean())
    assert table.loc["sent to stage 2", STAGE2] == 1.0 and np.isnan(table.loc["sent to stage 2", STAGE1])
    assert table["what it means"].str.len().min() > 10
