"""Shared fixtures: tiny random models in jetson-inference folders and generated images, so tests stay fast."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cascade.checkpoint import save_checkpoint, write_labels
from cascade.models import create_model

ROOT = Path(__file__).resolve().parent.parent
REALDATA = ROOT.parent / "shared" / "realdata-dev"
CLASSES = ("normal", "osteopenia", "osteoporosis")
TINY_RES = 64


def make_model_dir(folder: Path, arch: str, classes=CLASSES, resolution: int = TINY_RES, seed: int = 0) -> Path:
    """A jetson-inference model folder with random weights."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    model = create_model(arch, len(classes))
    save_checkpoint(folder / "model_best.pth.tar", model, arch, classes, resolution, 1, 50.0, 1.0)
    write_labels(folder / "labels.txt", classes)
    return folder


def make_knee_like(seed: int, size: tuple[int, int] = (96, 80)) -> np.ndarray:
    """A cheap radiograph-like uint8 image: a bright vertical 'bone' on darker tissue with noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.full((h, w), 60.0) + rng.normal(0, 8, (h, w))
    img[:, w // 3 : 2 * w // 3] += 90 + 30 * rng.random()
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """Stage folders: resnet18 (stage 1) and densenet121 (stage 2), random weights, 64 px."""
    base = tmp_path_factory.mktemp("models")
    return make_model_dir(base / "stage1", "resnet18", seed=1), make_model_dir(base / "stage2", "densenet121", seed=2)


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory, tiny_models) -> Path:
    s1, s2 = tiny_models
    path = tmp_path_factory.mktemp("cfg") / "cascade.toml"
    path.write_text(
        f'# my comment\n[stage1]\nmodel_dir = "{s1}"\n\n[stage2]\nmodel_dir = "{s2}"\n\n'
        '[gate]\nthreshold = 0.6\nrule = "p_normal"\nnormal_label = "normal"\n\n[extra]\nkeep = "me"\n'
    )
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """ImageFolder tree with train/val/test, 4 images per class per split."""
    root = tmp_path_factory.mktemp("data")
    for s, split in enumerate(("train", "val", "test")):
        for c, label in enumerate(CLASSES):
            d = root / split / label
            d.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(make_knee_like(100 * s + 10 * c + i)).save(d / f"{label}_{i}.png")
    return root


def make_dicom_bytes(
    arr: np.ndarray, photometric="MONOCHROME2", slope=None, intercept=None, window=None, pixels=True
) -> bytes:
    """A minimal DX DICOM file (12-bit in 16) with optional rescale, window and no pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if pixels:
        ds.PixelData = arr.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
