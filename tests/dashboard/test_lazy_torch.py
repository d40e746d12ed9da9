"""The first page on the ONNX Runtime path imports neither torch nor torchvision (about 5 s of a 2-core CPU's start-up):
the stage specs come from the ONNX stamps, and nothing on Home needs PyTorch. Checked in a fresh interpreter."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

DEMO = ROOT / "models" / "demo"
HEAVY = ("torch", "torchvision", "pytorch_grad_cam")

CHILD = """
import sys
from streamlit.testing.v1 import AppTest

at = AppTest.from_file(sys.argv[1], default_timeout=120)
at.run()
assert not at.exception, [e.value for e in at.exception]
assert not at.error, [e.value for e in at.error]
assert any("ONNX Runtime" in c.value for c in at.caption), [c.value for c in at.caption]
print(sorted(m for m in {heavy} if m in sys.modules))
"""


@pytest.fixture()
def exported_demo(tmp_path):
    """A copy of the default cascade (the demo models) with its ONNX exports, made here (exporting needs torch)."""
    from engines.select import open_cascade

    for stage in ("stage1", "stage2"):
        shutil.copytree(DEMO / stage, tmp_path / stage, ignore=shutil.ignore_patterns("*.onnx", "*.engine"))
    config = tmp_path / "cascade.toml"
    text = (ROOT / "cascade.toml").read_text().replace("models/demo/", "")
    config.write_text(text)
    open_cascade(config, "onnx")  # exports both stages once
    return config


@pytest.mark.parametrize("backend", ["onnx", "auto"])
def test_home_on_the_onnx_path_does_not_import_torch(exported_demo, tmp_path, backend):
    env = dict(os.environ)
    env.update(
        KNEE_CASCADE_CONFIG=str(exported_demo),
        KNEE_CASCADE_DATA=str(ROOT / "sample_images"),
        KNEE_CASCADE_CACHE=str(tmp_path / "predictions"),
        KNEE_CASCADE_BACKEND=backend,
        PYTHONPATH=str(ROOT),
    )
    code = CHILD.format(heavy=HEAVY)
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "dashboard" / "Home.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
