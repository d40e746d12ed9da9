"""Heatmap overlays on the original radiograph, and PNG bytes for the dashboard's download button.

Maps are computed at the network's input resolution (a square R×R); the radiograph keeps its own size and aspect, so
the map is laid back over the whole image through the inverse of the stage's resize
(``cascade.preprocess.input_coordinates``: top-left aligned for jetson-inference's nearest-pixel sampling,
centre-aligned for the area filter), with bilinear interpolation between input pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from cascade.errors import CascadeError
from cascade.preprocess import DEFAULT_MODE, input_coordinates

#: Colormaps offered by name (OpenCV's constants), jet first as in pytorch-grad-cam's examples.
COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
}


class OverlayError(CascadeError, ValueError):
    """An overlay cannot be drawn from these arrays (wrong shape, dtype or range)."""


def _check_gray(gray: np.ndarray) -> None:
    if not isinstance(gray, np.ndarray) or gray.ndim != 2 or gray.dtype != np.uint8 or gray.size == 0:
        raise OverlayError(
            f"expected the original radiograph as a 2-D uint8 array (cascade.images.read_image), got "
            f"{getattr(gray, 'dtype', type(gray).__name__)} of shape {getattr(gray, 'shape', None)}"
        )


def _interpolate(values: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``values`` along ``axis`` at fractional positions ``coords`` (within 0..len-1)."""
    low = np.floor(coords).astype(np.int64)
    high = np.minimum(low + 1, values.shape[axis] - 1)
    frac = (coords - low).astype(np.float32)
    shape = [1, 1]
    shape[axis] = len(coords)
    frac = frac.reshape(shape)
    return np.take(values, low, axis=axis) * (1 - frac) + np.take(values, high, axis=axis) * frac


def stretch_map(cam: np.ndarray, size: tuple[int, int], mode: str = DEFAULT_MODE) -> np.ndarray:
    """An h×w map over the model input → (height, width) over the original image, inverting the stage's resize.

    The map may be coarser than the input (a CAM at the last feature map): it is first taken as covering the R×R input
    evenly, then mapped back with the resize's inverse. Separable, so memory stays at one image.
    """
    height, width = size
    rows, cols = cam.shape
    ys = input_coordinates(height, rows, mode)
    xs = input_coordinates(width, cols, mode)
    return _interpolate(_interpolate(cam, ys, 0), xs, 1)


def heatmap(
    cam: np.ndarray, size: tuple[int, int], colormap: int = cv2.COLORMAP_JET, mode: str = DEFAULT_MODE
) -> np.ndarray:
    """A map in [0, 1] (any 2-D shape) → an RGB uint8 heatmap of ``size`` = (height, width) over the original image."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2 or cam.size == 0:
        raise OverlayError(f"expected one 2-D map, got shape {cam.shape}")
    if not np.isfinite(cam).all() or cam.min() < -1e-3 or cam.max() > 1 + 1e-3:
        raise OverlayError(f"map values must lie in [0, 1] (got {cam.min():.3g}..{cam.max():.3g}); normalise it first")
    big = stretch_map(np.clip(cam, 0.0, 1.0), size, mode)
    colored = cv2.applyColorMap(np.round(big * 255).astype(np.uint8), colormap)
    return cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)


def overlay(
    gray: np.ndarray,
    cam: np.ndarray,
    alpha: float = 0.4,
    colormap: int = cv2.COLORMAP_JET,
    mode: str = DEFAULT_MODE,
) -> np.ndarray:
    """Blend ``cam`` (R×R in [0, 1]) over ``gray`` (H×W uint8, original size): H×W×3 RGB uint8.

    ``alpha`` is the heatmap's opacity: 0 gives the radiograph alone (in RGB), 1 the heatmap alone. ``mode`` is the
    stage's preprocessing (``spec.preprocess``), whose resize the map is laid back through.
    """
    _check_gray(gray)
    if not 0.0 <= float(alpha) <= 1.0:
        raise OverlayError(f"opacity alpha must lie in [0, 1], got {alpha}")
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    heat = heatmap(cam, gray.shape, colormap, mode)
    return cv2.addWeighted(heat, float(alpha), base, 1.0 - float(alpha), 0.0)


def to_png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an RGB (H×W×3) or grayscale (H×W) uint8 image as PNG bytes, e.g. for ``st.download_button``."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim not in (2, 3) or rgb.size == 0:
        raise OverlayError(f"expected an H×W×3 or H×W uint8 image, got {getattr(rgb, 'shape', type(rgb).__name__)}")
    if rgb.ndim == 3 and rgb.shape[2] != 3:
        raise OverlayError(f"expected 3 channels (RGB), got {rgb.shape[2]}")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, encoded = cv2.imencode(".png", bgr)
    if not ok:
        raise OverlayError("OpenCV could not encode the image as PNG")
    return encoded.tobytes()
