"""Explanations for one stage: class activation maps by any method, and a faithfulness score that tells a real map from
a random one.

This module imports neither torch nor pytorch-grad-cam, so the ONNX Runtime and TensorRT paths explain without them:
the default "fast" CAM comes out of the backend's own forward pass (``predict_with_cams``: exact Grad-CAM for global
average pool + Linear heads, see ``cascade.fastcam``), and the faithfulness score runs on the backend too. The other
methods are pytorch-grad-cam's, run by ``cascade.torch_cams.Explainer`` on the stage's PyTorch model, which
:class:`StageExplainer` loads (with torch) the first time one is asked for.

Maps are computed at the network's input resolution R×R and never at the image's size: overlays stretch them for
display (``cascade.overlay``), so a 2660-px upload costs what a 128-px one does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from cascade.errors import CascadeError
from cascade.preprocess import preprocess_batch


class ExplainError(CascadeError, ValueError):
    """A CAM or faithfulness request cannot be served as asked (unknown method, class out of range, bad shapes)."""


BACKWARD_COST = "One forward and one backward pass per image and target class: about three times a prediction."


@dataclass(frozen=True)
class MethodSpec:
    """One CAM method: what to show, what runs it and what it costs (so slow ones can warn before they run)."""

    label: str
    cam_class: str | None  # pytorch-grad-cam's class name; None: the fast CAM
    slow: bool
    cost: str
    needs_gradients: bool
    uses_target: bool = True
    per_channel: bool = False  # one forward pass per feature channel (ScoreCAM)


#: Every method the dashboard offers, in display order; keys are what the explainers take.
METHODS: dict[str, MethodSpec] = {
    "fast": MethodSpec(
        "Fast CAM (exact Grad-CAM)",
        None,
        slow=False,
        cost="Free: every class's map comes out of the prediction's own forward pass (Grad-CAM otherwise).",
        needs_gradients=False,
    ),
    "gradcam": MethodSpec("Grad-CAM", "GradCAM", slow=False, cost=BACKWARD_COST, needs_gradients=True),
    "gradcam++": MethodSpec("Grad-CAM++", "GradCAMPlusPlus", slow=False, cost=BACKWARD_COST, needs_gradients=True),
    "xgradcam": MethodSpec("XGrad-CAM", "XGradCAM", slow=False, cost=BACKWARD_COST, needs_gradients=True),
    "layercam": MethodSpec("LayerCAM", "LayerCAM", slow=False, cost=BACKWARD_COST, needs_gradients=True),
    "eigencam": MethodSpec(
        "EigenCAM",
        "EigenCAM",
        slow=False,
        cost="One forward pass and an SVD of the feature map per image; the same map for every class.",
        needs_gradients=False,
        uses_target=False,
    ),
    "hirescam": MethodSpec("HiResCAM", "HiResCAM", slow=False, cost=BACKWARD_COST, needs_gradients=True),
    "scorecam": MethodSpec(
        "Score-CAM",
        "ScoreCAM",
        slow=True,
        cost=(
            "One forward pass per feature channel per image and target (512 for resnet18, 1024 for densenet121): "
            "tens of seconds to minutes on a CPU."
        ),
        needs_gradients=False,
        per_channel=True,
    ),
}


def method_key(method: str) -> str:
    """The :data:`METHODS` key for ``method`` (case-insensitive), or an ExplainError listing the valid ones."""
    key = method.strip().lower() if isinstance(method, str) else method
    if key not in METHODS:
        raise ExplainError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    return key


def _min_max(maps: np.ndarray) -> np.ndarray:
    low = maps.min(axis=(1, 2), keepdims=True)
    maps = maps - low
    return maps / (1e-7 + maps.max(axis=(1, 2), keepdims=True))


def scale_maps(cams: np.ndarray, size: int) -> np.ndarray:
    """N×h×w raw CAMs → N×size×size float32 in [0, 1], exactly as pytorch-grad-cam scales one target layer's maps.

    ReLU, per-map min-max, bilinear resize to the input resolution, min-max again (its ``scale_cam_image`` per layer,
    then for the result), written with numpy and OpenCV so engine maps need no torch.
    """
    cams = np.maximum(np.asarray(cams, dtype=np.float32), 0)
    if cams.ndim != 3 or len(cams) == 0:
        raise ExplainError(f"expected raw maps N×h×w, got shape {cams.shape}")
    resized = np.stack([cv2.resize(m, (size, size)) for m in _min_max(cams)])
    return _min_max(resized).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Targets and results
# --------------------------------------------------------------------------------------------------------------------


def class_list(classes: Sequence[int]) -> list[int]:
    """``classes`` as a non-empty list of ints, or an ExplainError."""
    items = list(classes) if isinstance(classes, Sequence | np.ndarray) and not isinstance(classes, str) else []
    if not items or not all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in items):
        raise ExplainError(f"target classes must be a non-empty list of class indices, got {classes!r}")
    return [int(c) for c in items]


def check_class(c: int, num_classes: int) -> None:
    if not 0 <= c < num_classes:
        raise ExplainError(f"target class {c} is out of range: this model has classes 0..{num_classes - 1}")


def resolve_targets(target: int | Sequence[int] | None, probs: np.ndarray) -> np.ndarray:
    """N class indices: ``target`` for every image, one per image, or each image's predicted class when None."""
    n, num_classes = probs.shape
    if target is None:
        return probs.argmax(axis=1).astype(np.int64)
    if isinstance(target, int | np.integer) and not isinstance(target, bool):
        chosen = [int(target)] * n
    elif isinstance(target, Sequence | np.ndarray) and not isinstance(target, str):
        chosen = class_list(target)
        if len(chosen) != n:
            raise ExplainError(f"got {len(chosen)} target classes for a batch of {n} images")
    else:
        raise ExplainError(f"target must be a class index, one class index per image, or None; got {target!r}")
    for c in chosen:
        check_class(c, num_classes)
    return np.asarray(chosen, dtype=np.int64)


@dataclass
class CamResult:
    """Maps for one method and one target per image, with what produced them."""

    maps: np.ndarray  # N×R×R float32 in [0, 1], per-image min-max normalised (pytorch-grad-cam's scaling)
    targets: np.ndarray  # N int64: the class each map explains
    probs: np.ndarray  # N×C float32 softmax of the model on the batch
    method: str  # the METHODS key that actually ran (differs from `requested` after a fallback)
    requested: str
    note: str  # why it differs from what was asked, or what to know about it; "" when nothing
    seconds: float  # wall time of the call that produced it (maps computed together share one call)

    @property
    def empty(self) -> np.ndarray:
        """N bools: maps with no positive evidence at all (ReLU left nothing); show "no evidence", not a blank."""
        return self.maps.reshape(len(self.maps), -1).max(axis=1, initial=0.0) <= 0.0

    @classmethod
    def from_fast_cams(
        cls,
        probs: np.ndarray,
        cams: np.ndarray,
        size: int,
        target: int | Sequence[int] | None = None,
        seconds: float = 0.0,
        note: str = "",
    ) -> CamResult:
        """The "fast" result from a backend's ``predict_with_cams`` output (probs N×C, cams N×C×h×w: ONNX, TensorRT).

        Scaled exactly as the PyTorch explainer scales CamModel's maps, so engine maps and PyTorch maps match.
        """
        probs = np.asarray(probs, dtype=np.float32)
        cams = np.asarray(cams, dtype=np.float32)
        if probs.ndim != 2 or cams.ndim != 4 or cams.shape[:2] != probs.shape:
            raise ExplainError(f"expected probs N×C and cams N×C×h×w, got {probs.shape} and {cams.shape}")
        targets = resolve_targets(target, probs)
        maps = scale_maps(cams[np.arange(len(cams)), targets], size)
        return cls(maps, targets, probs, "fast", "fast", note, seconds)


# --------------------------------------------------------------------------------------------------------------------
# Faithfulness: remove what the map lights first, or last, and watch the target's probability
# --------------------------------------------------------------------------------------------------------------------

#: Shares of the pixels removed (replaced by a blurred copy of the image), as ROAD's percentiles.
REMOVAL_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
#: Random maps behind the baseline shown beside each score.
RANDOM_MAPS = 4
_BLUR_SIGMA = 1 / 16  # of the resolution: removes detail, keeps the image's overall brightness


def _removal_order(cam: np.ndarray) -> np.ndarray:
    """Pixel indices from most to least relevant; ties (ReLU's zeros) in a fixed pseudo-random order, not raster."""
    jitter = np.random.default_rng(0).random(cam.size)
    return np.lexsort((jitter, -cam.ravel()))


def _blurred(x: np.ndarray) -> np.ndarray:
    sigma = max(1.0, x.shape[-1] * _BLUR_SIGMA)
    return np.stack([cv2.GaussianBlur(ch, (0, 0), sigma) for ch in x])


def removal_batch(x: np.ndarray, cams: np.ndarray, fractions: Sequence[float] = REMOVAL_FRACTIONS) -> np.ndarray:
    """For each map and fraction f: the image with its most relevant f of pixels blurred, then with its least relevant.

    ``x`` is one preprocessed image 3×R×R, ``cams`` M×R×R; the result is (M·F·2)×3×R×R in that order.
    """
    blurred = _blurred(x)
    flat_x, flat_b = x.reshape(3, -1), blurred.reshape(3, -1)
    out = []
    for cam in cams:
        order = _removal_order(cam)
        for f in fractions:
            k = int(round(f * cam.size))
            for removed in (order[:k], order[cam.size - k :]):  # most relevant first, least relevant first
                img = flat_x.copy()
                img[:, removed] = flat_b[:, removed]
                out.append(img.reshape(x.shape))
    return np.stack(out).astype(np.float32)


def _removal_effects(
    predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, cams: np.ndarray, fractions: Sequence[float]
) -> np.ndarray:
    """M×C: per map and class, mean over ``fractions`` of P(least relevant blurred) − P(most relevant blurred)."""
    x = np.asarray(x, dtype=np.float32)
    cams = np.asarray(cams, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] != 3 or cams.ndim != 3 or cams.shape[1:] != x.shape[1:]:
        raise ExplainError(f"expected one image 3×R×R and maps M×R×R of its size, got {x.shape} and {cams.shape}")
    probs = np.asarray(predict(removal_batch(x, cams, fractions)), dtype=np.float64)
    p = probs.reshape(len(cams), len(fractions), 2, probs.shape[1])
    return (p[:, :, 1] - p[:, :, 0]).mean(axis=1)


def removal_scores(
    predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    cams: np.ndarray,
    target: int,
    fractions: Sequence[float] = REMOVAL_FRACTIONS,
) -> np.ndarray:
    """Faithfulness of each map in ``cams`` (M×R×R) for class ``target`` on one preprocessed image ``x`` (3×R×R).

    ROAD's combined score with a blurred baseline: the mean over ``fractions`` of P(target) when the *least* relevant
    pixels are blurred minus P(target) when the *most* relevant are. It lies in [-1, 1]: positive when blurring what
    the map lights hurts the class more than blurring what it ignores, about 0 for a random map, negative for an
    inverted one, and about 0 for a class the model gives no probability (nothing to lose). ``predict`` maps a batch
    N×3×R×R to probabilities N×C (any backend's ``predict``). Deterministic: no random state is drawn or changed.
    """
    effects = _removal_effects(predict, x, cams, fractions)
    check_class(int(target), effects.shape[1])
    return effects[:, int(target)]


def random_maps(size: int, count: int = RANDOM_MAPS, seed: int = 0) -> np.ndarray:
    """``count`` smooth random maps size×size in [0, 1], as coarse as a CAM (a 4×4 grid, upsampled bilinearly).

    Drawn from a local generator: the same maps on every call and in every thread.
    """
    coarse = np.random.default_rng(seed).random((count, 4, 4)).astype(np.float32)
    return np.stack([cv2.resize(m, (size, size)) for m in coarse])


@dataclass(frozen=True)
class RandomBaseline:
    """What random maps score on one image, per class (C each): a real map should score clearly above ``mean[c]``.

    One batch serves every class: which pixels a random map removes does not depend on the class.
    """

    mean: np.ndarray
    std: np.ndarray

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RandomBaseline)
            and np.array_equal(self.mean, other.mean)
            and np.array_equal(self.std, other.std)
        )


# --------------------------------------------------------------------------------------------------------------------
# One stage's explainer: the dispatch the dashboard calls
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CamMaps:
    """Maps of one stage on one image for some target classes, with the stage's probabilities and what actually ran."""

    maps: dict[int, np.ndarray]  # class → R×R float32 in [0, 1]
    probs: np.ndarray  # C
    method: str  # the METHODS key that ran
    note: str
    seconds: float
    engine: str  # who computed them: the backend (its name) for the fast CAM, else "PyTorch"


class StageExplainer:
    """CAMs and faithfulness for one stage backend, on grayscale images of any size.

    The fast CAM comes from the backend itself where it returns CAMs; every other method (and the fast CAM of a
    backend without a CAM output) runs in pytorch-grad-cam on the stage's PyTorch model: the torch backend's model
    (a private copy, so serving never sees CAM hooks) or the checkpoint, loaded once, on first use or by :meth:`warm`.
    Thread-safe: the PyTorch explainer serialises its own work.
    """

    def __init__(self, backend) -> None:  # a cascade backend (``spec``, ``predict``, ``predict_with_cams``)
        self.backend = backend
        self.spec = backend.spec
        self._torch = None
        self._torch_lock = threading.Lock()

    def batch(self, image: np.ndarray) -> np.ndarray:
        """One grayscale image as this stage's input, 1×3×R×R."""
        return preprocess_batch([image], self.spec.resolution, self.spec.preprocess)

    def torch_explainer(self):
        """The pytorch-grad-cam explainer (``cascade.torch_cams.Explainer``), built once; imports torch."""
        with self._torch_lock:
            if self._torch is None:
                from cascade.checkpoint import load_stage
                from cascade.torch_cams import Explainer

                served = getattr(self.backend, "model", None)
                if served is None:  # ONNX Runtime or TensorRT: nobody else runs this copy, so no second copy
                    import torch

                    # torch does only CAM work here: one image's backward pass gains little from intra-op threads,
                    # and on a busy 2-core CPU they spin against ONNX Runtime's (three densenet121 Grad-CAMs at
                    # 128 px: 0.8 s with one thread, 4 to 24 s with two).
                    torch.set_num_threads(1)
                    self._torch = Explainer(load_stage(self.spec.model_dir)[1], share_model=True)
                else:
                    self._torch = Explainer(served)
            return self._torch

    def warm(self) -> None:
        """Import torch and pytorch-grad-cam, load the model and run one Grad-CAM, so the first real request is quick.

        The first backward pass of a process also sets up the CPU kernels (oneDNN), a large part of its time.
        """
        r = self.spec.resolution
        self.torch_explainer().explain(np.zeros((1, 3, r, r), np.float32), "gradcam", 0)

    def cost(self, method: str) -> str:
        """What ``method`` costs for this model, to show before a slow method runs."""
        return self.torch_explainer().cost(method)

    def maps(self, image: np.ndarray, method: str, classes: Sequence[int]) -> CamMaps:
        """Maps of ``method`` for each of ``classes``, R×R (the input resolution), one pass for all where possible."""
        key = method_key(method)
        wanted = list(dict.fromkeys(class_list(classes)))
        batch = self.batch(image)
        if key == "fast" and self.backend.supports_cams:
            start = time.perf_counter()
            probs, raw = self.backend.predict_with_cams(batch)
            for c in wanted:
                check_class(c, probs.shape[1])
            scaled = scale_maps(raw[0][wanted], self.spec.resolution)
            maps = dict(zip(wanted, scaled, strict=True))
            return CamMaps(maps, probs[0], "fast", "", time.perf_counter() - start, self.backend.name)
        results = self.torch_explainer().explain_targets(batch, key, wanted)
        first = next(iter(results.values()))
        maps = {c: r.maps[0] for c, r in results.items()}
        return CamMaps(maps, first.probs[0], first.method, first.note, first.seconds, "PyTorch")

    def faithfulness(self, image: np.ndarray, cam: np.ndarray, cls: int) -> float:
        """:func:`removal_scores` of one map (R×R) for class ``cls``, run on the backend."""
        return float(removal_scores(self.backend.predict, self.batch(image)[0], cam[None], cls)[0])

    def random_baseline(self, image: np.ndarray) -> RandomBaseline:
        """The scores of :func:`random_maps` on this image, per class: the level a map must beat to mean anything."""
        maps = random_maps(self.spec.resolution)
        effects = _removal_effects(self.backend.predict, self.batch(image)[0], maps, REMOVAL_FRACTIONS)
        return RandomBaseline(effects.mean(axis=0), effects.std(axis=0))
