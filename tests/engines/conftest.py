"""Fixtures for the engine tests: tiny model folders exported once per session, and realistic input batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cascade.images import read_image
from cascade.preprocess import preprocess_batch
from engines.export import export_onnx
from tests.conftest import REALDATA, make_knee_like, make_model_dir


def phantom_images(count: int, seed: int = 0) -> list[np.ndarray]:
    """Knee phantoms from sample_images' renderer where it exists, else the cheap conftest stand-in."""
    try:
        from sample_images.generate import render_knee
    except ImportError:
        return [make_knee_like(seed + i) for i in range(count)]
    rng = np.random.default_rng(seed)
    return [render_knee(rng, float(d), size=160) for d in np.linspace(0.3, 0.9, count)]


def real_images(count: int) -> list[np.ndarray]:
    """Up to ``count`` real radiographs from ../shared/realdata-dev (none when it is absent)."""
    if not REALDATA.is_dir():
        return []
    files = sorted(p for p in REALDATA.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    return [read_image(p) for p in files[:count]]


def input_batches(resolution: int, seed: int = 0, count: int = 3, mode: str = "jetson") -> dict[str, np.ndarray]:
    """Named batches of ``count``: random normal noise, phantoms, and real radiographs when available (resized as
    ``mode`` says; the tiny test folders declare none, so they are "jetson" folders)."""
    rng = np.random.default_rng(seed)
    batches = {
        "random": rng.standard_normal((count, 3, resolution, resolution)).astype(np.float32),
        "phantoms": preprocess_batch(phantom_images(count, seed), resolution, mode),
    }
    real = real_images(count)
    if real:
        batches["real"] = preprocess_batch(real, resolution, mode)
    return batches


class ExportedModels:
    """Model folders at 64 px with their ONNX exported, made on first use (one densenet121 export costs seconds)."""

    SEEDS = {"resnet18": 11, "densenet121": 12}

    def __init__(self, base: Path) -> None:
        self.base = base
        self.folders: dict[str, Path] = {}

    def __getitem__(self, arch: str) -> Path:
        if arch not in self.folders:
            folder = make_model_dir(self.base / arch, arch, seed=self.SEEDS[arch])
            export_onnx(folder)
            self.folders[arch] = folder
        return self.folders[arch]


@pytest.fixture(autouse=True)
def _private_identity_cache(tmp_path, monkeypatch):
    """ONNX identity verdicts go to the test's own folder, never to the checkout's .cache."""
    monkeypatch.setattr("engines.identity.IDENTITY_CACHE_DIR", tmp_path / "onnx-identity")


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory) -> ExportedModels:
    """``exported_models["resnet18"]`` / ``["densenet121"]``: exported folders shared by the session (don't modify)."""
    return ExportedModels(tmp_path_factory.mktemp("exported"))
