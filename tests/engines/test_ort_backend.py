"""ONNX Runtime backend details: session options, and a logits-only export turned into probabilities."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from cascade.checkpoint import load_stage
from engines.hardware import physical_cores
from engines.ort_backend import session_options
from engines.select import make_backend
from tests.conftest import make_model_dir
from tests.engines.conftest import input_batches


def test_session_options_use_physical_cores_and_stop_spinning_after_each_run():
    options = session_options()
    assert options.intra_op_num_threads == physical_cores() and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    assert session_options(threads=1).intra_op_num_threads == 1


def test_logits_only_export_still_gives_probabilities(tmp_path):
    """Older jetson-inference exports end at the Linear layer: the backend applies the softmax itself."""
    folder = make_model_dir(tmp_path / "m", "resnet18", seed=61)
    _, model = load_stage(folder)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 64, 64),),
            str(folder / "resnet18.onnx"),
            input_names=["input_0"],
            output_names=["output_0"],
            dynamic_axes={"input_0": {0: "N"}, "output_0": {0: "N"}},
            dynamo=False,
        )
    backend, _ = make_backend(folder, "onnx")
    batch = input_batches(64)["phantoms"]
    probs = backend.predict(batch)
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(batch)), 1).numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert np.abs(probs - want).max() <= 1e-4
