"""The one interface every inference backend implements (the backends themselves live in ``engines/``).

A backend runs one stage: a preprocessed float32 batch N×3×R×R in, softmax probabilities N×C out; where it can, it also
returns class activation maps N×C×h×w from the same forward pass.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cascade.errors import BackendError

if TYPE_CHECKING:  # the contract needs no torch: checkpoint reading does
    from cascade.checkpoint import StageSpec


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | str, ...]  # e.g. ("N", 3, 224, 224); a fixed batch shows as an int
    dtype: str = "float32"
    batch_limit: int | None = None  # a dynamic batch with an upper bound (a TensorRT optimisation profile's max)

    @property
    def max_batch(self) -> int | None:
        """Largest batch the backend takes in one call (None: any)."""
        first = self.shape[0]
        return first if isinstance(first, int) else self.batch_limit


class Backend(ABC):
    """Runs one stage. Subclasses set ``name`` and implement :meth:`_run`."""

    name: str = "backend"

    def __init__(self, spec: StageSpec) -> None:
        self.spec = spec
        self.calls = 0  # forward passes run; the dashboard tests count these
        self._count_lock = threading.Lock()

    @property
    def supports_cams(self) -> bool:
        return False

    @abstractmethod
    def input_spec(self) -> InputSpec: ...

    @abstractmethod
    def _run(self, batch: np.ndarray, with_cams: bool) -> tuple[np.ndarray, np.ndarray | None]: ...

    def _forward(self, batch: np.ndarray, with_cams: bool) -> tuple[np.ndarray, np.ndarray | None]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        r = self.spec.resolution
        if batch.ndim != 4 or batch.shape[1:] != (3, r, r):
            raise BackendError(f"{self.name}: expected a batch N×3×{r}×{r}, got {batch.shape}")
        with self._count_lock:
            self.calls += 1
        limit = self.input_spec().max_batch
        if limit is None or len(batch) <= limit:
            return self._run(batch, with_cams)
        parts = [self._run(batch[i : i + limit], with_cams) for i in range(0, len(batch), limit)]
        probs = np.concatenate([p for p, _ in parts])
        cams = None if parts[0][1] is None else np.concatenate([c for _, c in parts])
        return probs, cams

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities, N×C float32."""
        return self._forward(batch, with_cams=False)[0]

    def predict_with_cams(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and, where supported, CAMs N×C×h×w from the same pass (else None)."""
        return self._forward(batch, with_cams=self.supports_cams)

    def describe(self) -> str:
        return f"{self.name} ({self.spec.arch}, {self.spec.resolution}px)"

    def close(self) -> None:
        """Free what the backend holds outside Python's reach (TensorRT's GPU buffers); a no-op for most."""
        return None
