"""A stage's spec from our export's stamp (no torch.load), only while the stamp still describes the checkpoint."""

from __future__ import annotations

from cascade.checkpoint import stage_spec_from
from engines.export import export_onnx
from engines.onnx_file import folder_spec, stamped_spec
from tests.conftest import make_model_dir


def test_stamped_spec_equals_the_checkpoints_until_either_changes(tmp_path):
    folder = make_model_dir(tmp_path / "m", "resnet18")
    assert stamped_spec(folder) is None  # nothing exported yet: the checkpoint is read
    export_onnx(folder, verify=False)
    assert stamped_spec(folder) == stage_spec_from(folder) == folder_spec(folder)
    labels = folder / "labels.txt"
    labels.write_text("a\nb\nc\n")
    assert stamped_spec(folder) is None  # labels.txt no longer lists the exported classes
    make_model_dir(folder, "resnet18", seed=5)  # another checkpoint (and labels) under the same name
    assert stamped_spec(folder) is None


def test_a_damaged_export_gives_no_stamped_spec(tmp_path):
    folder = make_model_dir(tmp_path / "m", "resnet18")
    (folder / "resnet18.onnx").write_bytes(b"not onnx")
    assert stamped_spec(folder) is None
    assert folder_spec(folder) == stage_spec_from(folder)
