"""The dataset browser's table, filters and sorts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cascade.dataset import Item
from cascade.gate import decide_batch
from cascade.predcache import Predictions
from dashboard.components.browse import CHOSEN_KEY, FILTER_KEYS, Filters, apply_filters, browse_table, show_in_dataset

CLASSES = ("normal", "osteopenia", "osteoporosis")


def _setup(n: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    items = [
        Item(Path(f"/d/test/{CLASSES[c]}/{i:03d}.png"), f"test/{CLASSES[c]}/{i:03d}.png", "test", CLASSES[c])
        for i, c in enumerate(labels)
    ]
    preds = Predictions(
        rng.dirichlet(np.ones(3), n - 1),  # the last image was unreadable: no row
        rng.dirichlet(np.ones(3), n - 1),
        labels[:-1],
        tuple(it.rel for it in items[:-1]),
        CLASSES,
        "test",
        ((items[-1].rel, "corrupt"),),
    )
    return items, preds


def test_table_matches_the_gate():
    items, preds = _setup()
    df = browse_table(items, preds, 0, 0.5, 0.6, "p_normal")
    d = decide_batch(preds.p1, preds.p2, 0, 0.5)
    assert len(df) == 30 and df["predicted"].sum() == 29
    np.testing.assert_array_equal(df["routed"].iloc[:-1].astype(bool), d.routed)
    np.testing.assert_array_equal(df["final"].iloc[:-1], np.asarray(CLASSES)[d.final])
    flips = d.final != decide_batch(preds.p1, preds.p2, 0, 0.6).final
    np.testing.assert_array_equal(df["flipped"].iloc[:-1].astype(bool), flips)


def test_filters_partition_and_drop_unpredicted_rows():
    items, preds = _setup()
    df = browse_table(items, preds, 0, 0.5, 0.6, "p_normal")
    assert len(apply_filters(df, Filters())) == 30
    right = apply_filters(df, Filters(correct="correct"))
    wrong = apply_filters(df, Filters(correct="incorrect"))
    assert len(right) + len(wrong) == 29 and right["correct"].all()
    routed = apply_filters(df, Filters(route="stage 2"))
    assert len(routed) + len(apply_filters(df, Filters(route="stage 1 only"))) == 29
    normal_true = apply_filters(df, Filters(true_classes=("normal",)))
    assert set(normal_true["label"]) == {"normal"}
    final = apply_filters(df, Filters(final_classes=("osteoporosis",)))
    assert set(final["final"]) <= {"osteoporosis"}
    assert len(apply_filters(df, Filters(flipped_only=True))) == int(df["flipped"].fillna(False).sum())


def test_sorts():
    items, preds = _setup()
    df = browse_table(items, preds, 0, 0.5, 0.6, "p_normal")
    by_margin = apply_filters(df, Filters(sort="gate margin (closest to the gate first)"))
    margins = by_margin["abs_margin"].dropna().to_numpy()
    assert np.all(np.diff(margins) >= 0)
    assert by_margin["predicted"].iloc[-1] == False  # noqa: E712  (rows without predictions go last)
    conf = apply_filters(df, Filters(sort="confidence (most sure first)"))["confidence"].dropna().to_numpy()
    assert np.all(np.diff(conf) <= 0)


def test_without_predictions_only_class_filters_apply():
    items, _ = _setup()
    df = browse_table(items, None, 0, 0.5, 0.6, "p_normal")
    assert len(apply_filters(df, Filters(true_classes=("normal",)))) == sum(it.label == "normal" for it in items)
    assert apply_filters(df, Filters(correct="correct")).empty
    assert list(apply_filters(df, Filters(sort="confidence (least sure first)"))["rel"]) == sorted(df["rel"])


def test_a_chart_selection_shows_exactly_its_images():
    items, preds = _setup()
    df = browse_table(items, preds, 0, 0.5, 0.6, "p_normal")
    chosen = (items[3].rel, items[7].rel, items[3].rel)
    updates = show_in_dataset(chosen, "two dots")
    assert updates[CHOSEN_KEY] == ((items[3].rel, items[7].rel), "two dots")
    assert updates[FILTER_KEYS["correct"]] == "any" and updates[FILTER_KEYS["true_classes"]] == []
    out = apply_filters(df, Filters(rels=updates[CHOSEN_KEY][0]))
    assert sorted(out["rel"]) == sorted({items[3].rel, items[7].rel})
