"""Out-of-distribution check: held-out phantoms look like the training phantoms; a real radiograph does not."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.images import read_image
from cascade.ood import FEATURES, OodError, OodReference, feature_matrix, fit_reference, image_features, stage_view
from tests.conftest import REALDATA, ROOT, make_knee_like

PHANTOMS = ROOT / "sample_images"
RES, MODE = 128, "area"  # the demo models' input size and sampling


def _features(split: str) -> np.ndarray:
    return feature_matrix((read_image(p) for p in sorted((PHANTOMS / split).glob("*/*.png"))), RES, MODE)


@pytest.fixture(scope="module")
def phantom_reference() -> OodReference:
    return fit_reference(_features("train"), _features("val"), RES, MODE, source="phantoms")


def test_held_out_phantoms_are_mostly_not_flagged(phantom_reference):
    flagged = phantom_reference.distances(_features("test")) > phantom_reference.threshold
    assert flagged.mean() <= 0.05, flagged.mean()


@pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata-dev is not here")
def test_a_real_radiograph_is_flagged_for_phantom_trained_models(phantom_reference):
    files = sorted(p for p in REALDATA.glob("*/*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    assert files
    checks = [phantom_reference.check(read_image(p)) for p in files]
    assert all(c.flagged for c in checks), [round(c.ratio, 2) for c in checks]


def test_reference_round_trips_through_its_file(tmp_path, phantom_reference):
    path = tmp_path / "ood_reference.json"
    phantom_reference.save(path)
    again = OodReference.load(path)
    image = make_knee_like(3, (300, 240))
    assert again.check(image).distance == pytest.approx(phantom_reference.check(image).distance)
    assert again.threshold == phantom_reference.threshold


def test_bad_reference_files_and_too_few_images_are_clear_errors(tmp_path):
    bad = tmp_path / "ood_reference.json"
    bad.write_text("{not json")
    with pytest.raises(OodError, match="cannot read"):
        OodReference.load(bad)
    with pytest.raises(OodError, match="at least"):
        fit_reference(np.zeros((3, len(FEATURES))), np.zeros((1, len(FEATURES))), RES)


@pytest.mark.parametrize("mode", ["jetson", "area"])
def test_the_stage_view_is_the_stage_input_as_sampled(mode):
    from cascade.preprocess import model_view

    image = make_knee_like(1, (301, 257))
    view = stage_view(image, 64, mode)
    assert view.shape == (64, 64) and view.dtype == np.uint8
    assert np.array_equal(view, model_view(image, 64, mode)[..., 0])  # the stage's own sampling, not another resize
    assert image_features(view).shape == (len(FEATURES),)
