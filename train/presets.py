"""Transform presets (torchvision references style) for radiographs.

Evaluation uses exactly the inference preprocessing of ``cascade.preprocess`` (so validation accuracy is the accuracy
the deployed model has). Training adds what a radiograph can vary in: a small rotation, a left/right flip (left and
right knees mirror each other), a small translation and zoom, brightness and contrast. No hue or saturation: the
images are gray.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

from cascade.preprocess import IMAGENET_MEAN, IMAGENET_STD, resize_gray, to_tensor_array


class EvalPreset:
    """Grayscale uint8 image → the normalised 3×R×R tensor every backend sees."""

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(to_tensor_array(image, self.resolution)))


class TrainPreset:
    """Augmented version of :class:`EvalPreset`."""

    def __init__(
        self,
        resolution: int,
        rotation: float = 10.0,
        translate: float = 0.06,
        scale: float = 0.1,
        brightness: float = 0.2,
        contrast: float = 0.2,
        hflip: float = 0.5,
    ) -> None:
        self.resolution = resolution
        self.augment = v2.Compose(
            [
                v2.RandomHorizontalFlip(hflip),
                v2.RandomAffine(
                    degrees=rotation,
                    translate=(translate, translate),
                    scale=(1 - scale, 1 + scale),
                    interpolation=v2.InterpolationMode.BILINEAR,
                ),
                v2.ColorJitter(brightness=brightness, contrast=contrast),
            ]
        )
        self.normalize = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        small = torch.from_numpy(resize_gray(image, self.resolution)).unsqueeze(0)  # 1×R×R uint8
        small = self.augment(small).float().div_(255.0)
        return self.normalize(small.expand(3, -1, -1))
