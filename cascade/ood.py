"""Is this image like the ones a stage was trained on? A distance on simple statistics of the stage's own input.

Each image is reduced to what its stage sees (the R×R input as sampled, ``cascade.preprocess``) and then to a few
statistics: intensity mean, spread and percentiles, edge strength, and a coarse 4×4 layout of brightness. The training
split gives their mean and (shrunk) covariance; an image's Mahalanobis distance to them is compared with a threshold
set on the held-out split (its ``QUANTILE``: by construction about 1 % of held-out images lie beyond it). A radiograph
shown to phantom-trained models lies far beyond. No torch and no Streamlit: it runs wherever predictions run.

The reference can be stored beside a model (``ood_reference.json`` in its folder) or computed from a dataset's train and
validation splits and cached by the caller.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from cascade import preprocess
from cascade.errors import CascadeError
from cascade.fileio import write_atomic

REFERENCE_FILE = "ood_reference.json"
QUANTILE = 0.99
SHRINKAGE = 0.1  # least share of the diagonal mixed into the covariance; more when there are few images per feature
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
GRID = 4
FEATURES = (
    "mean",
    "std",
    *(f"p{q}" for q in PERCENTILES),
    "edge_x",
    "edge_y",
    *(f"block_{r}{c}" for r in range(GRID) for c in range(GRID)),
)
MIN_FIT = 8


class OodError(CascadeError):
    """A reference cannot be built or read (too few images, a malformed file)."""


def stage_view(image: np.ndarray, resolution: int, mode: str = preprocess.DEFAULT_MODE) -> np.ndarray:
    """What a stage sees: its R×R 8-bit input as ``cascade.preprocess`` samples it, as one gray channel.

    The stages get this gray image replicated into R, G and B; a colour image is averaged to gray for the statistics.
    """
    view = preprocess.model_view(image, resolution, mode)
    if np.array_equal(view[..., 0], view[..., 1]) and np.array_equal(view[..., 0], view[..., 2]):
        return np.ascontiguousarray(view[..., 0])
    return np.rint(view.mean(axis=2)).astype(np.uint8)


def image_features(view: np.ndarray) -> np.ndarray:
    """The statistics (``FEATURES``) of one stage input (R×R uint8)."""
    x = np.asarray(view, dtype=np.float64) / 255.0
    if x.ndim != 2 or min(x.shape) < GRID:
        raise OodError(f"expected a 2-D image of at least {GRID}×{GRID} pixels, got shape {x.shape}")
    blocks = cv2.resize(x, (GRID, GRID), interpolation=cv2.INTER_AREA).ravel()
    edges = [np.abs(np.diff(x, axis=1)).mean(), np.abs(np.diff(x, axis=0)).mean()]
    return np.concatenate([[x.mean(), x.std()], np.percentile(x, PERCENTILES), edges, blocks])


@dataclass(frozen=True)
class OodCheck:
    """One image against a stage's reference."""

    distance: float
    threshold: float

    @property
    def flagged(self) -> bool:
        return self.distance > self.threshold

    @property
    def ratio(self) -> float:
        """How many times the threshold the distance is (> 1: unlike the training images)."""
        return self.distance / self.threshold if self.threshold > 0 else float("inf")


@dataclass(frozen=True)
class OodReference:
    """Training images' statistics for one stage input (resolution, preprocessing) and the held-out threshold."""

    resolution: int
    mode: str
    mean: tuple[float, ...]
    precision: tuple[tuple[float, ...], ...]  # inverse of the shrunk covariance
    threshold: float
    n_fit: int
    n_held_out: int
    quantile: float = QUANTILE
    source: str = ""

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distances of N×F (or F) feature rows to the training mean."""
        f = np.atleast_2d(np.asarray(features, dtype=np.float64)) - np.asarray(self.mean)
        return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", f, np.asarray(self.precision), f), 0.0))

    def check(self, image: np.ndarray) -> OodCheck:
        """Distance of one image (any size, as read) to this stage's training images."""
        features = image_features(stage_view(image, self.resolution, self.mode))
        return OodCheck(float(self.distances(features)[0]), self.threshold)

    def to_json(self) -> str:
        return json.dumps({"features": list(FEATURES), **asdict(self)}, indent=1)

    def save(self, path: str | os.PathLike) -> None:
        write_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> OodReference:
        """A stored reference; one made with other features is refused (rebuild it)."""
        p = Path(path)
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
            if tuple(doc.pop("features")) != FEATURES:
                raise OodError(f"{p} was made with other image statistics; delete it to rebuild it")
            ref = cls(**doc)
            ref = cls(**{**doc, "mean": tuple(ref.mean), "precision": tuple(tuple(r) for r in ref.precision)})
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise OodError(f"cannot read the out-of-distribution reference {p}: {exc}") from exc
        if len(ref.mean) != len(FEATURES) or np.asarray(ref.precision).shape != (len(FEATURES), len(FEATURES)):
            raise OodError(f"{p} does not hold {len(FEATURES)} statistics; delete it to rebuild it")
        return ref


def feature_matrix(images: Iterable[np.ndarray], resolution: int, mode: str = preprocess.DEFAULT_MODE) -> np.ndarray:
    """N×F statistics of the images' stage inputs."""
    rows = [image_features(stage_view(im, resolution, mode)) for im in images]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))


def fit_reference(
    fit: np.ndarray,
    held_out: np.ndarray,
    resolution: int,
    mode: str = preprocess.DEFAULT_MODE,
    quantile: float = QUANTILE,
    source: str = "",
) -> OodReference:
    """A reference from training-split statistics ``fit`` (N×F) with its threshold set on ``held_out`` (M×F)."""
    fit, held_out = np.asarray(fit, dtype=np.float64), np.asarray(held_out, dtype=np.float64)
    if len(fit) < MIN_FIT or len(held_out) < 1:
        raise OodError(
            f"an out-of-distribution reference needs at least {MIN_FIT} training and 1 held-out image "
            f"(got {len(fit)} and {len(held_out)})"
        )
    mean = fit.mean(axis=0)
    cov = np.cov(fit, rowvar=False)
    diag = np.diag(np.diag(cov))
    scale = max(float(np.mean(np.diag(cov))), 1e-12)
    share = min(1.0, max(SHRINKAGE, 2 * len(mean) / len(fit)))  # few images: trust the variances, not correlations
    shrunk = (1 - share) * cov + share * diag + 1e-6 * scale * np.eye(len(mean))
    precision = np.linalg.pinv(shrunk)
    partial = OodReference(resolution, mode, tuple(mean), tuple(map(tuple, precision)), 0.0, len(fit), len(held_out))
    threshold = float(np.quantile(partial.distances(held_out), quantile))
    return OodReference(
        resolution,
        mode,
        tuple(float(v) for v in mean),
        tuple(tuple(float(v) for v in row) for row in precision),
        threshold,
        len(fit),
        len(held_out),
        quantile,
        source,
    )
