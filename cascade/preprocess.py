"""Preprocessing: the one place where input size, mean and std live.

jetson-inference trains with torchvision's ImageNet normalisation and, at inference, resizes the whole image to the
network's square resolution (no crop), then normalises. We do the same so that a model trained here runs unchanged in
jetson-inference and vice versa. Radiographs are grayscale: the gray channel is replicated into R, G and B.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_RESOLUTION = 224

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)


def resize_gray(image: np.ndarray, resolution: int) -> np.ndarray:
    """Resize a grayscale uint8 image to a square ``resolution`` (area filter when shrinking: no aliasing)."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    h, w = image.shape
    interp = cv2.INTER_AREA if (h > resolution or w > resolution) else cv2.INTER_LINEAR
    return cv2.resize(image, (resolution, resolution), interpolation=interp)


def to_tensor_array(image: np.ndarray, resolution: int) -> np.ndarray:
    """One grayscale uint8 image → normalised float32 array of shape 3×R×R, ready for any backend."""
    small = resize_gray(image, resolution).astype(np.float32) / 255.0
    return (np.broadcast_to(small, (3, resolution, resolution)) - _MEAN) / _STD


def preprocess_batch(images: Sequence[np.ndarray], resolution: int) -> np.ndarray:
    """Grayscale uint8 images of any size → contiguous float32 batch N×3×R×R."""
    if len(images) == 0:
        return np.zeros((0, 3, resolution, resolution), dtype=np.float32)
    return np.ascontiguousarray(np.stack([to_tensor_array(im, resolution) for im in images]), dtype=np.float32)


def denormalize(batch: np.ndarray) -> np.ndarray:
    """Inverse of the normalisation: N×3×R×R float → N×R×R×3 float in [0, 1] (for overlays and CAM metrics)."""
    rgb = batch * _STD + _MEAN
    return np.clip(np.transpose(rgb, (0, 2, 3, 1)), 0.0, 1.0)
