"""ImageFolder datasets read through ``cascade.images`` (grayscale, any format), optionally cached in memory.

Small phantom sets fit in memory once resized, which makes CPU training several times faster than decoding PNGs
every epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cascade.dataset import index_dataset
from cascade.errors import CascadeError
from cascade.images import read_image
from cascade.preprocess import DEFAULT_MODE, resize_image


class TrainError(CascadeError):
    """Training cannot run as asked: bad arguments, a missing or unusable data folder, an unwritable model folder."""


class GrayImageFolder(Dataset):
    """One split of an ImageFolder tree; ``classes`` fixes the label order (sorted folder names by default)."""

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[np.ndarray], torch.Tensor],
        classes: tuple[str, ...] | None = None,
        cache_size: int | None = None,
        mode: str = DEFAULT_MODE,
    ) -> None:
        index = index_dataset(root)
        self.classes = classes or index.classes
        unknown = sorted(set(index.classes) - set(self.classes))
        if unknown:
            raise TrainError(f"'{root}' has class folders {unknown} that are not in {list(self.classes)}")
        self.items = [(it.path, self.classes.index(it.label)) for it in index.items]
        self.targets = [t for _, t in self.items]
        self.transform = transform
        # Keep a copy resized as the model's inputs are (``mode``); at the training size, resizing it again is exact.
        self.cache_size = cache_size
        self.mode = mode
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, i: int) -> np.ndarray:
        if self.cache_size is None:
            return read_image(self.items[i][0])
        if i not in self._cache:
            self._cache[i] = resize_image(read_image(self.items[i][0]), self.cache_size, self.mode)
        return self._cache[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self._load(i)), self.items[i][1]
