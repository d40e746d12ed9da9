"""The PyTorch backend: the last resort, and the reference the other backends are checked against."""

from __future__ import annotations

import numpy as np
import torch

from cascade.backend import Backend, InputSpec
from cascade.checkpoint import StageSpec
from cascade.fastcam import CamModel, fast_cam_supported


class TorchBackend(Backend):
    """PyTorch eager, CPU or CUDA; CAMs through :class:`cascade.explain.CamModel` where the head allows.

    Thread-safe: in inference mode an eval-mode module keeps no per-call state, and CamModel uses no hooks.
    """

    def __init__(self, spec: StageSpec, model: torch.nn.Module, device: str = "cpu") -> None:
        super().__init__(spec)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.name = f"torch-{self.device.type}"
        self._cam_model = CamModel(self.model).eval() if fast_cam_supported(self.model) else None

    @property
    def supports_cams(self) -> bool:
        return self._cam_model is not None

    def input_spec(self) -> InputSpec:
        r = self.spec.resolution
        return InputSpec("input_0", ("N", 3, r, r))

    def _run(self, batch: np.ndarray, with_cams: bool) -> tuple[np.ndarray, np.ndarray | None]:
        x = torch.from_numpy(batch).to(self.device)
        with torch.inference_mode():
            if with_cams and self._cam_model is not None:
                probs, cams = self._cam_model(x)
                return probs.float().cpu().numpy(), cams.float().cpu().numpy()
            logits = self.model(x)
            probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
        return probs, None
