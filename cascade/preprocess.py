"""Preprocessing: the one place where resize mode, input size, mean, std and the way back to the image live.

A stage sees the whole image (no crop) resized to its square resolution R, as 8-bit RGB scaled to [0, 1] and
normalised with ImageNet's mean and std. How the image is resized is a property of the model (``StageSpec.preprocess``):

``"jetson"`` — what jetson-inference's imageNet does on the Jetson (``cudaTensorNormMeanRGB`` for ONNX models): output
pixel (x, y) takes the nearest-lower source pixel ``(int(x * in_w / out_w), int(y * in_h / out_h))`` with the scale
computed in float32 as the kernel does, then ``(p * (1/255) - mean) / std`` in float32. This is the default: a model
evaluated and tuned here gets the numbers it gets on the Jetson.

``"area"`` — OpenCV's area filter when shrinking (bilinear when enlarging): less aliasing, but not what the Jetson
does. The committed demo models were trained with it.

Pixels: gray images are replicated into R, G and B (as jetson-utils' loader does for a gray file); RGB images are used
as they are; an alpha channel is ignored (the kernel reads x, y, z of RGBA). 16-bit arrays are reduced to 8 bits by
their high byte, as jetson-utils' stb_image loader does (``v >> 8``). Note that ``cascade.images.read_image`` has
already windowed a 16-bit file to its own min..max (and reduced colour to gray) before any of this: for such files the
Jetson, fed the raw file, sees ``v >> 8`` instead, which is the same only when the file spans the full 16-bit range.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from cascade.errors import CascadeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_RESOLUTION = 224
#: resize modes a model folder may declare; folders that declare none (jetson-inference's own) get DEFAULT_MODE
PREPROCESS_MODES = ("jetson", "area")
DEFAULT_MODE = "jetson"

# float32 constants exactly as the CUDA kernel holds them: make_float3(0.485f, ...), (1.0f - 0.0f) / 255.0f
_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)
_MULTIPLIER = np.float32(1.0) / np.float32(255.0)


class PreprocessError(CascadeError, ValueError):
    """An image or a preprocessing mode this module cannot handle."""


def check_mode(mode: str) -> str:
    """``mode`` if it is a known resize mode, else PreprocessError naming the choices."""
    if mode not in PREPROCESS_MODES:
        raise PreprocessError(f"unknown preprocessing mode {mode!r}; choose one of {', '.join(PREPROCESS_MODES)}")
    return mode


def to_8bit(image: np.ndarray) -> np.ndarray:
    """uint8 as it is; uint16 by its high byte (jetson-utils' loader: ``v >> 8``). Gray (H×W) or colour (H×W×C)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    raise PreprocessError(f"expected a uint8 or uint16 image, got {image.dtype} (read files with cascade.images)")


def _check_shape(image: np.ndarray) -> None:
    ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))
    if not ok or image.size == 0:
        raise PreprocessError(f"expected a gray H×W or an RGB(A) H×W×3/4 image, got shape {image.shape}")


def source_indices(in_size: int, out_size: int) -> np.ndarray:
    """jetson-inference's nearest-pixel rule along one axis: ``int((float)x * (float(in) / float(out)))``."""
    scale = np.float32(in_size) / np.float32(out_size)
    return (np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)


def _resize(image: np.ndarray, resolution: int, mode: str) -> np.ndarray:
    if mode == "jetson":
        h, w = image.shape[:2]
        return image[source_indices(h, resolution)][:, source_indices(w, resolution)]
    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if (h > resolution or w > resolution) else cv2.INTER_LINEAR
    return cv2.resize(image, (resolution, resolution), interpolation=interp)


def resize_image(image: np.ndarray, resolution: int, mode: str) -> np.ndarray:
    """8-bit R×R (gray) or R×R×C (colour) image resized as ``mode`` says; no channel change, no normalisation."""
    check_mode(mode)
    image = to_8bit(image)
    _check_shape(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return _resize(image, resolution, mode)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """8-bit gray H×W → H×W×3 (replicated); RGBA → RGB (the kernel never reads alpha); RGB as it is."""
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def model_view(image: np.ndarray, resolution: int, mode: str) -> np.ndarray:
    """What the model sees: the R×R×3 uint8 RGB input as sampled, before normalisation.

    A gray image is resized once and then replicated, which gives the same pixels as replicating first.
    """
    return to_rgb(resize_image(image, resolution, mode))


def normalize(rgb: np.ndarray) -> np.ndarray:
    """R×R×3 uint8 → 3×R×R float32, with the kernel's arithmetic: ``(p * (1/255) - mean) / std`` in float32."""
    scaled = np.transpose(rgb, (2, 0, 1)).astype(np.float32) * _MULTIPLIER
    return (scaled - _MEAN) / _STD


def to_tensor_array(image: np.ndarray, resolution: int, mode: str) -> np.ndarray:
    """One image (gray or RGB, 8- or 16-bit, any size) → normalised float32 array 3×R×R, ready for any backend."""
    return normalize(model_view(image, resolution, mode))


def preprocess_batch(images: Sequence[np.ndarray], resolution: int, mode: str) -> np.ndarray:
    """Images of any size → contiguous float32 batch N×3×R×R, resized as ``mode`` says (the stage's preprocess)."""
    check_mode(mode)
    if len(images) == 0:
        return np.zeros((0, 3, resolution, resolution), dtype=np.float32)
    return np.ascontiguousarray(np.stack([to_tensor_array(im, resolution, mode) for im in images]), dtype=np.float32)


def input_coordinates(length: int, resolution: int, mode: str) -> np.ndarray:
    """For each source pixel along an axis of ``length``, its (fractional) coordinate in the R-pixel model input.

    The inverse of the resize, used to lay a map computed on the R×R input back over the original image. ``"jetson"``
    input pixel x was sampled at source ``x * length / R`` (top-left aligned), so source u maps to ``u * R / length``;
    ``"area"`` is centre-aligned (as OpenCV resizes): ``(u + 0.5) * R / length - 0.5``. Clipped to [0, R - 1].
    """
    check_mode(mode)
    u = np.arange(length, dtype=np.float64)
    coords = u * resolution / length if mode == "jetson" else (u + 0.5) * resolution / length - 0.5
    return np.clip(coords, 0.0, resolution - 1.0)
