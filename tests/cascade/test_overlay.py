"""Overlays keep the radiograph's size and orientation; PNG bytes decode back to the same pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cascade.errors import CascadeError
from cascade.overlay import COLORMAPS, OverlayError, heatmap, overlay, to_png_bytes
from tests.conftest import make_knee_like

GRAY = make_knee_like(0, (50, 90))  # not square, so a swapped width and height would show


def _left_cold_right_hot() -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, 8, dtype=np.float32), (8, 1))


def test_overlay_has_the_original_size_in_rgb():
    out = overlay(GRAY, _left_cold_right_hot(), 0.5)
    assert out.shape == (50, 90, 3) and out.dtype == np.uint8


def test_alpha_zero_is_the_radiograph_and_alpha_one_the_heatmap():
    cam = _left_cold_right_hot()
    np.testing.assert_array_equal(overlay(GRAY, cam, 0.0), np.repeat(GRAY[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(overlay(GRAY, cam, 1.0), heatmap(cam, GRAY.shape))


def test_the_map_is_stretched_over_the_image_the_right_way_round():
    """Jet: hot is red, cold is blue; a map hot on the right must be red on the right of a wide image."""
    out = overlay(np.zeros((40, 100), np.uint8), _left_cold_right_hot(), 1.0).astype(int)
    left, right = out[:, :10].mean(axis=(0, 1)), out[:, -10:].mean(axis=(0, 1))
    assert right[0] > left[0] + 50 and left[2] > right[2] + 50  # channel 0 is red: RGB, not OpenCV's BGR
    assert np.ptp(out[:, 50], axis=0).max() == 0  # constant down each column: rows were not mixed with columns


def test_colormap_changes_the_colours():
    cam = _left_cold_right_hot()
    assert not np.array_equal(overlay(GRAY, cam, 1.0, COLORMAPS["viridis"]), overlay(GRAY, cam, 1.0))


def test_png_bytes_decode_back():
    rgb = overlay(GRAY, _left_cold_right_hot(), 0.4)
    data = to_png_bytes(rgb)
    assert data.startswith(b"\x89PNG")
    back = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, rgb)
    gray_back = cv2.imdecode(np.frombuffer(to_png_bytes(GRAY), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(gray_back, GRAY)


@pytest.mark.parametrize(
    ("gray", "cam", "alpha"),
    [
        (GRAY.astype(np.float32), np.zeros((4, 4)), 0.5),  # not uint8
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), 0.5),  # not grayscale
        (GRAY, np.zeros((2, 4, 4)), 0.5),  # several maps
        (GRAY, np.full((4, 4), 2.0), 0.5),  # not normalised
        (GRAY, np.full((4, 4), np.nan), 0.5),
        (GRAY, np.zeros((4, 4)), 1.5),
    ],
    ids=["float-gray", "rgb-gray", "3d-cam", "cam-above-1", "nan-cam", "alpha-above-1"],
)
def test_bad_overlay_inputs_are_refused(gray, cam, alpha):
    with pytest.raises(OverlayError) as info:
        overlay(gray, cam, alpha)
    assert isinstance(info.value, CascadeError)


def test_png_refuses_non_images():
    with pytest.raises(OverlayError):
        to_png_bytes(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(OverlayError):
        to_png_bytes(np.zeros((4, 4, 4), np.uint8))


@pytest.mark.parametrize("mode", ["jetson", "area"])
def test_the_map_lands_where_the_stage_sampled_the_image(mode):
    """A hot input pixel lights the source pixel it came from: the sampled one (jetson) or its cell's centre (area)."""
    from cascade.overlay import stretch_map

    cam = np.zeros((16, 16), np.float32)
    cam[5, 9] = 1.0
    big = stretch_map(cam, (64, 64), mode)  # 4 source pixels per input pixel
    y, x = np.unravel_index(np.argmax(big), big.shape)
    if mode == "jetson":
        assert (y, x) == (20, 36) and big[20, 36] == 1.0  # input (5, 9) was sampled at source (5·4, 9·4)
    else:
        assert y in (21, 22) and x in (37, 38)  # the centre of source cell 20..23 × 36..39


def test_area_mode_overlays_are_opencvs_bilinear_resize_as_before():
    from cascade.overlay import stretch_map

    cam = np.random.default_rng(0).random((7, 7)).astype(np.float32)
    want = cv2.resize(cam, (90, 50), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(stretch_map(cam, (50, 90), "area"), want, atol=1e-5)
