"""pytorch-grad-cam's methods on a stage's PyTorch model, safe across threads (imports torch: loaded only when used).

Every method runs at ``cascade.models.feature_layer(model)`` (the true last activation; torchvision DenseNet's
``features[-1]`` is not, see ``cascade.models``). pytorch-grad-cam records activations with forward hooks on that layer,
and a hook fires for *every* forward pass through the module, whoever runs it. So an Explainer keeps a private copy of
the model by default, and all its CAM work on one model is serialised by that model's lock (:func:`model_lock`).
The methods, their scaling and the results are described in ``cascade.explain``, which the dashboard calls.
"""

from __future__ import annotations

import copy
import threading
import time
import weakref
from collections.abc import Sequence

import numpy as np
import pytorch_grad_cam
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from cascade.explain import (
    BACKWARD_COST,
    METHODS,
    CamResult,
    ExplainError,
    check_class,
    class_list,
    method_key,
    resolve_targets,
    scale_maps,
)
from cascade.fastcam import CamModel, fast_cam_supported
from cascade.models import feature_layer

_SCORECAM_BATCH = 32  # masked images per forward pass; pytorch-grad-cam's default of 16 is slower on a CPU


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
        wanted = list(dict.fromkeys(class_list(classes)))
        out: dict[int, CamResult] = {}
        with self.lock:
            probs = self._probs(x)
            for c in wanted:
                check_class(c, probs.shape[1])
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
            return f"{type(self.model).__name__} has no GAP + Linear head, so this runs Grad-CAM: {BACKWARD_COST}"
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
        cam = getattr(pytorch_grad_cam, spec.cam_class)(model=self.model, target_layers=[self.layer])
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
