"""Explanations: class activation maps for a stage model, and how faithful they are.

The default, fast CAM (``cascade.fastcam.CamModel``), is exact Grad-CAM for heads that are global average pooling + one
Linear layer, computed in the prediction's own forward pass. (For the same reason HiResCAM and XGradCAM equal Grad-CAM
on such heads; Grad-CAM++, LayerCAM, EigenCAM and ScoreCAM do not.)

The other methods are pytorch-grad-cam's, described once each in :data:`METHODS` and run by one :class:`Explainer`,
always at ``cascade.models.feature_layer(model)`` (the true last activation; torchvision DenseNet's ``features[-1]`` is
not, see ``cascade.models``). pytorch-grad-cam records activations with forward hooks on that layer, and a hook fires
for *every* forward pass through the module, whoever runs it. So an Explainer keeps a private copy of the model by
default, and all its CAM and metric work on one model is serialised by that model's lock (:func:`model_lock`).
"""

from __future__ import annotations

import copy
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
from torch import nn

from cascade.errors import CascadeError
from cascade.fastcam import CamModel, fast_cam_supported
from cascade.models import feature_layer


class ExplainError(CascadeError, ValueError):
    """A CAM or faithfulness request cannot be served as asked (unknown method, class out of range, bad shapes)."""


_BACKWARD = "One forward and one backward pass per image and target class: about three times a prediction."


@dataclass(frozen=True)
class MethodSpec:
    """One CAM method: what to show, what runs it and what it costs (so slow ones can warn before they run)."""

    label: str
    cam_class: type[BaseCAM] | None  # None: the fast CAM of CamModel
    slow: bool
    cost: str
    needs_gradients: bool
    uses_target: bool = True
    per_channel: bool = False  # one forward pass per feature channel (ScoreCAM)


#: Every method the dashboard offers, in display order; keys are what :meth:`Explainer.explain` takes.
METHODS: dict[str, MethodSpec] = {
    "fast": MethodSpec(
        "Fast CAM (exact Grad-CAM)",
        None,
        slow=False,
        cost="Free: every class's map comes out of the prediction's own forward pass (Grad-CAM otherwise).",
        needs_gradients=False,
    ),
    "gradcam": MethodSpec("Grad-CAM", GradCAM, slow=False, cost=_BACKWARD, needs_gradients=True),
    "gradcam++": MethodSpec("Grad-CAM++", GradCAMPlusPlus, slow=False, cost=_BACKWARD, needs_gradients=True),
    "xgradcam": MethodSpec("XGrad-CAM", XGradCAM, slow=False, cost=_BACKWARD, needs_gradients=True),
    "layercam": MethodSpec("LayerCAM", LayerCAM, slow=False, cost=_BACKWARD, needs_gradients=True),
    "eigencam": MethodSpec(
        "EigenCAM",
        EigenCAM,
        slow=False,
        cost="One forward pass and an SVD of the feature map per image; the same map for every class.",
        needs_gradients=False,
        uses_target=False,
    ),
    "hirescam": MethodSpec("HiResCAM", HiResCAM, slow=False, cost=_BACKWARD, needs_gradients=True),
    "scorecam": MethodSpec(
        "Score-CAM",
        ScoreCAM,
        slow=True,
        cost=(
            "One forward pass per feature channel per image and target (512 for resnet18, 1024 for densenet121): "
            "tens of seconds to minutes on a CPU."
        ),
        needs_gradients=False,
        per_channel=True,
    ),
}

_SCORECAM_BATCH = 32  # masked images per forward pass; pytorch-grad-cam's default of 16 is slower on a CPU


def method_key(method: str) -> str:
    """The :data:`METHODS` key for ``method`` (case-insensitive), or an ExplainError listing the valid ones."""
    key = method.strip().lower() if isinstance(method, str) else method
    if key not in METHODS:
        raise ExplainError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    return key


# --------------------------------------------------------------------------------------------------------------------
# One lock per model
# --------------------------------------------------------------------------------------------------------------------

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.Lock:
    """The lock that serialises hook-based CAM work on ``model``; anyone else running ``model`` meanwhile must hold it.

    pytorch-grad-cam registers forward hooks on the model itself, so two CAM objects alive on one model at once (or a
    plain prediction while one is) mix up each other's activations.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.Lock()
        return lock


# --------------------------------------------------------------------------------------------------------------------
# Explainer
# --------------------------------------------------------------------------------------------------------------------


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

        Scaled exactly as :meth:`Explainer.explain` scales CamModel's maps, so engine maps and PyTorch maps match.
        """
        probs = np.asarray(probs, dtype=np.float32)
        cams = np.asarray(cams, dtype=np.float32)
        if probs.ndim != 2 or cams.ndim != 4 or cams.shape[:2] != probs.shape:
            raise ExplainError(f"expected probs N×C and cams N×C×h×w, got {probs.shape} and {cams.shape}")
        targets = resolve_targets(target, probs)
        maps = scale_maps(cams[np.arange(len(cams)), targets], size)
        return cls(maps, targets, probs, "fast", "fast", note, seconds)


def scale_maps(cams: np.ndarray, size: int) -> np.ndarray:
    """N×h×w raw CAMs → N×size×size float32 in [0, 1], exactly as pytorch-grad-cam scales one target layer's maps.

    ReLU, per-map min-max, bilinear resize to the input resolution, min-max again (its per-layer then final scaling).
    """
    cams = np.maximum(np.asarray(cams, dtype=np.float32), 0)
    if cams.ndim != 3 or len(cams) == 0:
        raise ExplainError(f"expected raw maps N×h×w, got shape {cams.shape}")
    return scale_cam_image(scale_cam_image(cams, (size, size)))


def _class_list(classes: Sequence[int]) -> list[int]:
    items = list(classes) if isinstance(classes, Sequence | np.ndarray) and not isinstance(classes, str) else []
    if not items or not all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in items):
        raise ExplainError(f"target classes must be a non-empty list of class indices, got {classes!r}")
    return [int(c) for c in items]


def _check_class(c: int, num_classes: int) -> None:
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
        chosen = _class_list(target)
        if len(chosen) != n:
            raise ExplainError(f"got {len(chosen)} target classes for a batch of {n} images")
    else:
        raise ExplainError(f"target must be a class index, one class index per image, or None; got {target!r}")
    for c in chosen:
        _check_class(c, num_classes)
    return np.asarray(chosen, dtype=np.int64)


class Explainer:
    """Class activation maps for one stage model on the CPU, by any method in :data:`METHODS`, safe across threads.

    ``share_model=False`` (default) works on a private deep copy, so the caller's model (serving predictions in other
    threads) never carries CAM hooks. With ``share_model=True`` whoever else runs the model must hold
    :func:`model_lock` of it.
    """

    def __init__(self, model: nn.Module, *, share_model: bool = False) -> None:
        self.model = (model if share_model else copy.deepcopy(model)).eval()
        self.lock = model_lock(self.model)
        self.layer = feature_layer(self.model)
        self._fast = CamModel(self.model) if fast_cam_supported(self.model) else None
        self._channels: int | None = None if self._fast is None else self._fast.head.in_features
        self.device = next(self.model.parameters()).device

    # ---- public API ----

    def explain(self, batch: np.ndarray, method: str = "fast", target: int | Sequence[int] | None = None) -> CamResult:
        """Maps of ``method`` for ``target``: a class for all, one per image, or None (the predicted class)."""
        start = time.perf_counter()
        key = method_key(method)
        x = self._tensor(batch)
        with self.lock:
            probs = self._probs(x)
            targets = resolve_targets(target, probs)
            maps, used, note = self._maps(x, key, targets)
        return CamResult(maps, targets, probs, used, key, note, time.perf_counter() - start)

    def explain_targets(self, batch: np.ndarray, method: str, classes: Sequence[int]) -> dict[int, CamResult]:
        """Maps of every class in ``classes`` for every image, keyed by class (e.g. osteopenia vs osteoporosis).

        The fast method gets all classes from one forward pass and EigenCAM's map is the same for all; gradient
        methods and ScoreCAM run once per class.
        """
        start = time.perf_counter()
        key = method_key(method)
        x = self._tensor(batch)
        wanted = list(dict.fromkeys(_class_list(classes)))
        out: dict[int, CamResult] = {}
        with self.lock:
            probs = self._probs(x)
            for c in wanted:
                _check_class(c, probs.shape[1])
            n = len(x)
            if key == "fast" and self._fast is not None:
                all_maps = self._fast_maps(x)
                for c in wanted:
                    out[c] = CamResult(all_maps[:, c], np.full(n, c), probs, key, key, "", 0.0)
            elif key == "eigencam":
                maps, used, note = self._maps(x, key, np.full(n, wanted[0]))
                for c in wanted:
                    out[c] = CamResult(maps, np.full(n, c), probs, used, key, note, 0.0)
            else:
                for c in wanted:
                    maps, used, note = self._maps(x, key, np.full(n, c))
                    out[c] = CamResult(maps, np.full(n, c), probs, used, key, note, 0.0)
        seconds = time.perf_counter() - start
        for result in out.values():
            result.seconds = seconds
        return out

    def faithfulness(self, batch: np.ndarray, result: CamResult, metric: str = "confidence_change") -> np.ndarray:
        """:func:`faithfulness` of ``result``'s maps on this Explainer's model (see there for what the numbers mean)."""
        return faithfulness(self.model, batch, result.maps, result.targets, metric)

    @property
    def feature_channels(self) -> int:
        """Channels of the CAM layer: ScoreCAM runs one forward pass per channel."""
        if self._channels is None:
            seen: list[int] = []
            with self.lock:
                handle = self.layer.register_forward_hook(lambda _m, _i, out: seen.append(int(out.shape[1])))
                try:
                    with torch.no_grad():
                        self.model(torch.zeros(1, 3, 224, 224, device=self.device))
                finally:
                    handle.remove()
            self._channels = seen[0]
        return self._channels

    def cost(self, method: str) -> str:
        """A sentence on what ``method`` costs for this model, to show before a slow method runs."""
        key = method_key(method)
        spec = METHODS[key]
        if key == "fast" and self._fast is None:
            return f"{type(self.model).__name__} has no GAP + Linear head, so this runs Grad-CAM: {_BACKWARD}"
        if spec.per_channel:
            return (
                f"{spec.label} runs one forward pass per feature channel: {self.feature_channels} masked images per "
                "image and target class for this model, tens of seconds to minutes on a CPU."
            )
        return spec.cost

    # ---- internals (called with the lock held where they touch the model) ----

    def _tensor(self, batch: np.ndarray) -> torch.Tensor:
        if not isinstance(batch, np.ndarray):
            raise ExplainError(f"expected a numpy batch N×3×R×R, got {type(batch).__name__}")
        if batch.ndim != 4 or batch.shape[1] != 3 or batch.shape[2] != batch.shape[3] or len(batch) == 0:
            raise ExplainError(f"expected a preprocessed batch N×3×R×R with N ≥ 1, got shape {batch.shape}")
        if not np.issubdtype(batch.dtype, np.floating) or not np.isfinite(batch).all():
            raise ExplainError("the batch must hold finite floats (use cascade.preprocess.preprocess_batch)")
        return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)

    def _probs(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(self.model(x).float(), dim=1).cpu().numpy()

    def _fast_maps(self, x: torch.Tensor) -> np.ndarray:
        """Every class's fast CAM, N×C×R×R (a few small maps: selecting before scaling would save nothing)."""
        with torch.no_grad():
            _, cams = self._fast(x)
        n, c, h, w = cams.shape
        size = x.shape[-1]
        return scale_maps(cams.float().cpu().numpy().reshape(n * c, h, w), size).reshape(n, c, size, size)

    def _maps(self, x: torch.Tensor, key: str, targets: np.ndarray) -> tuple[np.ndarray, str, str]:
        """(maps N×R×R, method that ran, note) for one target per image."""
        note = ""
        if key == "fast":
            if self._fast is not None:
                return self._fast_maps(x)[np.arange(len(x)), targets], key, note
            key = "gradcam"
            note = (
                f"fast CAM needs a global-average-pool + Linear head and {type(self.model).__name__} has none, so "
                "pytorch-grad-cam's Grad-CAM ran instead"
            )
        spec = METHODS[key]
        if not spec.uses_target:
            note = f"{spec.label} ignores the target class: its map is the feature map's first principal component"
        cam = spec.cam_class(model=self.model, target_layers=[self.layer])
        if spec.per_channel:
            cam.batch_size = _SCORECAM_BATCH
        # Not `with cam:` — BaseCAM.__exit__ prints and swallows IndexError; release the hooks ourselves instead.
        try:
            # A caller inside torch.inference_mode() still gets gradients: leave it, and use a tensor made outside it.
            with torch.inference_mode(False), torch.enable_grad():
                maps = cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(int(t)) for t in targets])
        finally:
            cam.activations_and_grads.release()
            self.model.zero_grad(set_to_none=True)
        return np.clip(np.asarray(maps, dtype=np.float32), 0.0, 1.0), key, note


# --------------------------------------------------------------------------------------------------------------------
# Faithfulness
# --------------------------------------------------------------------------------------------------------------------

FAITHFULNESS_METRICS = ("confidence_change", "road")
#: Fewer thresholds than pytorch-grad-cam's nine: each costs two imputations and two forward passes per image.
ROAD_PERCENTILES = (20, 40, 60, 80)


def faithfulness(
    model: nn.Module,
    batch: np.ndarray,
    cams: np.ndarray,
    targets: Sequence[int] | np.ndarray,
    metric: str = "confidence_change",
    percentiles: Sequence[int] = ROAD_PERCENTILES,
    seed: int = 0,
) -> np.ndarray:
    """How well each map explains its target's probability, with pytorch-grad-cam's metrics: N float32, higher = better.

    Both are changes in the softmax probability of the target class, so they lie in [-1, 1]:

    - ``"confidence_change"`` (``CamMultImageConfidenceChange``): p(target | image × map) − p(target | image), where the
      normalised image is multiplied by the map (unlit regions become the mean gray). Near 0 or positive: the lit
      region alone keeps the prediction (faithful); strongly negative: the evidence was elsewhere. One forward pass.
    - ``"road"`` (``ROADCombined``, Rong et al. 2022): mean over ``percentiles`` of (drop when the least relevant pixels
      are imputed away − drop when the most relevant are) / 2. Positive: removing what the map highlights hurts more
      than removing what it ignores (faithful); about 0: no better than chance; negative: misleading. Costs two
      sparse imputations and four forward passes per percentile, more thorough but ~10× dearer. The imputation noise
      is seeded (``seed``), so a map always gets the same score.

    Runs on ``model`` under its :func:`model_lock`, so it is safe beside CAM work in other threads.
    """
    if metric not in FAITHFULNESS_METRICS:
        raise ExplainError(f"unknown faithfulness metric {metric!r}; choose one of {', '.join(FAITHFULNESS_METRICS)}")
    if not isinstance(batch, np.ndarray) or batch.ndim != 4 or batch.shape[1] != 3:
        raise ExplainError(f"expected a preprocessed batch N×3×R×R, got shape {getattr(batch, 'shape', None)}")
    cams = np.asarray(cams, dtype=np.float32)
    if cams.shape != (batch.shape[0], *batch.shape[2:]):
        raise ExplainError(f"expected maps {(batch.shape[0], *batch.shape[2:])} for this batch, got {cams.shape}")
    targets = np.asarray(targets).reshape(-1)
    if len(targets) != len(batch) or not np.issubdtype(targets.dtype, np.integer):
        raise ExplainError(f"expected {len(batch)} integer target classes, got {targets!r}")
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
    wanted = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    scorer = CamMultImageConfidenceChange() if metric == "confidence_change" else ROADCombined(list(percentiles))
    with model_lock(model), torch.no_grad(), torch.random.fork_rng(devices=[]):
        was_training = model.training
        model.eval()
        torch.manual_seed(seed)
        try:
            scores = scorer(x, cams, wanted, model)
        finally:
            model.train(was_training)
    return np.asarray(scores, dtype=np.float32).reshape(len(batch))
