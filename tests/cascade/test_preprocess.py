"""Preprocessing: "jetson" equals jetson-inference's imageNet input bit for bit; "area" is the OpenCV area filter.

The reference below is written from jetson-inference's CUDA kernel (c/tensorConvert.cu, ``gpuTensorNormMean`` as
launched by ``cudaTensorNormMeanRGB`` from ``imageNet::preProcess`` for ONNX models, range (0, 1), ImageNet mean/std)
and jetson-utils' image loader (stb_image: 16-bit samples reduced by ``v >> 8``, gray expanded to RGB), one pixel at a
time in float32, without using the project's code.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cascade.preprocess import (
    PreprocessError,
    input_coordinates,
    model_view,
    preprocess_batch,
    source_indices,
    to_tensor_array,
)
from tests.conftest import make_knee_like

F = np.float32


def stb_rgb8(image: np.ndarray) -> np.ndarray:
    """What jetson-utils' loadImage hands imageNet: 8-bit RGB (16-bit → high byte; gray copied into R, G, B)."""
    if image.dtype == np.uint16:
        image = (image // 256).astype(np.uint8)
    if image.ndim == 2:
        out = np.empty(image.shape + (3,), np.uint8)
        for c in range(3):
            out[:, :, c] = image
        return out
    return image[:, :, :3]


def jetson_kernel(rgb: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """gpuTensorNormMean<uchar3>, one thread (x, y) at a time, float32 as on the GPU (FMA with 0 rounds the same)."""
    in_h, in_w = rgb.shape[:2]
    scale_x, scale_y = F(in_w) / F(out_w), F(in_h) / F(out_h)  # make_float2(float(in)/float(out), ...)
    lo, hi = F(0.0), F(1.0)
    multiplier = (hi - lo) / F(255.0)
    mean = (F(0.485), F(0.456), F(0.406))
    std = (F(0.229), F(0.224), F(0.225))
    out = np.empty((3, out_h, out_w), np.float32)
    for y in range(out_h):
        dy = int(F(y) * scale_y)  # const int dy = ((float)y * scale.y);
        for x in range(out_w):
            dx = int(F(x) * scale_x)
            px = rgb[dy, dx]
            for c in range(3):
                out[c, y, x] = ((F(px[c]) * multiplier + lo) - mean[c]) / std[c]
    return out


def _images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    return {
        "gray 8-bit 97×61": make_knee_like(1, (97, 61)),
        "RGB 8-bit 50×73": rng.integers(0, 256, (50, 73, 3), dtype=np.uint8),
        "RGBA 8-bit 40×33": rng.integers(0, 256, (40, 33, 4), dtype=np.uint8),
        "gray 16-bit 83×129": rng.integers(0, 65536, (83, 129), dtype=np.uint16),
        "RGB 16-bit 31×45": rng.integers(0, 65536, (31, 45, 3), dtype=np.uint16),
        "gray smaller than the input 13×20": make_knee_like(2, (13, 20)),
    }


@pytest.mark.parametrize("resolution", [17, 32, 64])
@pytest.mark.parametrize("name", list(_images()))
def test_jetson_mode_equals_jetson_inference_exactly(name, resolution):
    image = _images()[name]
    want = jetson_kernel(stb_rgb8(image), resolution, resolution)
    np.testing.assert_array_equal(to_tensor_array(image, resolution, "jetson"), want)
    np.testing.assert_array_equal(preprocess_batch([image, image], resolution, "jetson")[1], want)


def test_jetson_mode_uses_the_kernels_float32_scale():
    """248 px at 224: six columns where float32 ``x * (248/224)`` truncates below the exact ``x * 248 // 224``."""
    image = np.tile(np.arange(248, dtype=np.uint16).astype(np.uint8), (3, 1))
    exact = np.arange(224) * 248 // 224
    assert (source_indices(248, 224) != exact).sum() == 6
    np.testing.assert_array_equal(to_tensor_array(image, 224, "jetson"), jetson_kernel(stb_rgb8(image), 224, 224))


def test_area_mode_is_opencvs_area_filter():
    image = make_knee_like(5, (150, 110))
    small = cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
    np.testing.assert_allclose(to_tensor_array(image, 64, "area"), (small - mean) / std, rtol=0, atol=1e-6)
    # the two modes really differ on a radiograph-like image (the reason a model records which it was trained with)
    assert np.abs(to_tensor_array(image, 64, "area") - to_tensor_array(image, 64, "jetson")).max() > 0.1


def test_model_view_is_the_sampled_rgb_input():
    image = make_knee_like(6, (90, 70))
    view = model_view(image, 32, "jetson")
    assert view.shape == (32, 32, 3) and view.dtype == np.uint8
    np.testing.assert_array_equal(view[:, :, 0], image[source_indices(90, 32)][:, source_indices(70, 32)])
    np.testing.assert_array_equal(view[:, :, 0], view[:, :, 2])


@pytest.mark.parametrize(
    ("image", "mode", "message"),
    [
        (np.zeros((8, 8), np.float32), "jetson", "uint8 or uint16"),
        (np.zeros((8, 8, 2), np.uint8), "jetson", "gray H×W or an RGB"),
        (np.zeros((0, 8), np.uint8), "area", "gray H×W or an RGB"),
        (np.zeros((8, 8), np.uint8), "bicubic", "unknown preprocessing mode 'bicubic'"),
    ],
)
def test_bad_inputs_are_clear_errors(image, mode, message):
    with pytest.raises(PreprocessError, match=message):
        preprocess_batch([image], 16, mode)


def test_empty_batch_has_the_input_shape():
    assert preprocess_batch([], 24, "jetson").shape == (0, 3, 24, 24)


@pytest.mark.parametrize("mode", ["jetson", "area"])
def test_input_coordinates_invert_the_resize(mode):
    """Source pixel u lies at input coordinate x where the resize took (jetson) or centred (area) it."""
    coords = input_coordinates(64, 16, mode)  # 4 source pixels per input pixel
    sampled = source_indices(64, 16)
    if mode == "jetson":
        np.testing.assert_allclose(coords[sampled], np.arange(16))  # the sampled pixel maps back onto its input pixel
    else:
        centres = (coords[0::4] + coords[3::4]) / 2  # the middle of each 4-pixel cell is that input pixel's centre
        np.testing.assert_allclose(centres[1:-1], np.arange(1, 15))
    assert coords.min() >= 0 and coords.max() <= 15
