"""Gate tuning and Dataset read a precomputed prediction table (KNEE_CASCADE_PREDICTIONS) instead of running models."""

from __future__ import annotations

import numpy as np

from cascade.dataset import index_dataset
from cascade.predtable import STATUS_OK, models_identity, write_table
from engines.onnx_file import folder_spec
from tests.cascade.test_predtable import make_table
from tests.dashboard.conftest import assert_clean, open_app, page_errors, widget
from tests.dashboard.test_app import _calls, _cascade


def _table_for(tiny_dataset, tiny_models, path) -> np.ndarray:
    """Write a table of random probabilities for the tiny dataset and the tiny models; its test split's p1."""
    index = index_dataset(tiny_dataset)
    table = make_table(index, seed=3, models=models_identity(*(folder_spec(m) for m in tiny_models)))
    write_table(table, path)
    test = np.array([r.startswith("test/") and s == STATUS_OK for r, s in zip(table.rel, table.status, strict=True)])
    return table.p1[test]


def test_gate_tuning_and_dataset_use_the_table_and_run_no_model(
    app_env, tiny_dataset, tiny_models, tmp_path, monkeypatch
):
    path = tmp_path / "preds.parquet"
    p1 = _table_for(tiny_dataset, tiny_models, path)
    monkeypatch.setenv("KNEE_CASCADE_PREDICTIONS", str(path))
    at = open_app("views/gate_tuning.py")
    assert_clean(at)
    assert not any(b.label.startswith("Run both stages") for b in at.button)  # nothing to compute
    calls = _calls(_cascade(app_env))
    widget(at.sidebar.slider, "Gate threshold").set_value(0.5)
    at.run()
    share = (p1[:, 0] < 0.5).mean()  # the table's own numbers decide the route
    assert widget(at.metric, "Sent to stage 2").value == f"{100 * share:.1f} %"
    assert _calls(_cascade(app_env)) == calls
    at.switch_page("views/dataset.py").run()
    assert_clean(at)
    assert any("1 image(s) could not be read" in w.value for w in at.warning)  # the table's unreadable row


def test_a_corrupted_table_is_a_message_on_the_page(app_env, tmp_path, monkeypatch):
    path = tmp_path / "preds.parquet"
    path.write_bytes(b"PAR1 garbage")
    errors = page_errors("views/gate_tuning.py", monkeypatch, KNEE_CASCADE_PREDICTIONS=str(path))
    assert any("not a readable Parquet file" in e for e in errors), errors


def test_a_table_of_other_models_is_refused(app_env, tiny_dataset, tmp_path, monkeypatch):
    path = tmp_path / "preds.parquet"
    write_table(make_table(index_dataset(tiny_dataset)), path)  # a made-up models identity
    monkeypatch.setenv("KNEE_CASCADE_PREDICTIONS", str(path))
    at = open_app("views/gate_tuning.py")
    assert not at.exception
    assert any("other models" in e.value for e in at.error), [e.value for e in at.error]


def test_a_truncated_table_or_a_fifo_of_these_models_is_a_message_not_a_hang(
    app_env, tiny_dataset, tiny_models, tmp_path, monkeypatch
):
    import os

    from dashboard.components.text import escape_markdown

    path = tmp_path / "preds.parquet"
    _table_for(tiny_dataset, tiny_models, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a copy cut short
    fifo = tmp_path / "pipe.parquet"
    os.mkfifo(fifo)  # opened for reading it would block the page forever
    for bad, says in ((path, "not a readable Parquet file"), (fifo, "does not exist (or is not a file)")):
        monkeypatch.setenv("KNEE_CASCADE_PREDICTIONS", str(bad))
        at = open_app("views/gate_tuning.py")
        assert not at.exception
        # show_error writes the path and message as text: they appear in the markdown source escaped
        shown = (escape_markdown(says), escape_markdown(bad))
        assert any(all(part in e.value for part in shown) for e in at.error), [e.value for e in at.error]
