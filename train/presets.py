"""Transform presets (torchvision references style) for radiographs.

Evaluation uses exactly the inference preprocessing of ``cascade.preprocess`` in the stage's mode (so validation
accuracy is the accuracy the deployed model has). Training resizes the same way, augments the R×R gray input, and
normalises it with the same function. The augmentations are what a radiograph can vary in: a small rotation, a
left/right flip (left and right knees mirror each other), a small translation and zoom, brightness and contrast. No
hue or saturation: the images are gray.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

from cascade.preprocess import DEFAULT_MODE, check_mode, normalize, resize_image, to_rgb, to_tensor_array


class EvalPreset:
    """Grayscale uint8 image → the normalised 3×R×R tensor every backend sees (in the stage's resize ``mode``)."""

    def __init__(self, resolution: int, mode: str = DEFAULT_MODE) -> None:
        self.resolution = resolution
        self.mode = check_mode(mode)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(to_tensor_array(image, self.resolution, self.mode)))


class TrainPreset:
    """Augmented version of :class:`EvalPreset`."""

    def __init__(
        self,
        resolution: int,
        mode: str = DEFAULT_MODE,
        rotation: float = 10.0,
        translate: float = 0.06,
        scale: float = 0.1,
        brightness: float = 0.2,
        contrast: float = 0.2,
        hflip: float = 0.5,
    ) -> None:
        self.resolution = resolution
        self.mode = check_mode(mode)
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

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        small = torch.from_numpy(resize_image(image, self.resolution, self.mode)).unsqueeze(0)  # 1×R×R uint8
        augmented = self.augment(small)[0].numpy()  # still uint8: torchvision's v2 keeps the dtype
        return torch.from_numpy(np.ascontiguousarray(normalize(to_rgb(augmented))))
