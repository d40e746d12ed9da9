"""Fast CAM: every class's Grad-CAM from the prediction's own forward pass.

For a head that is global average pooling + one Linear layer, Grad-CAM at the last (post-activation) feature map A is
exactly ReLU(Σ_k w_ck A_k) up to a positive scale, since ∂logit_c/∂A_k(i,j) = w_ck / (h·w). :class:`CamModel` returns
the probabilities and all classes' maps in one pass, with no backward pass and no hooks, and ``engines.export`` writes
it to ONNX as a second output ``cam_0``. It lives apart from ``cascade.explain`` so that inference never has to import
pytorch-grad-cam.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cascade.models import gap_linear_split


class FastCamUnsupported(ValueError):
    """The model's head is not GAP + one Linear, so CAMs must come from pytorch-grad-cam instead."""


class CamModel(nn.Module):
    """Wraps a stage model: ``forward(x) -> (softmax probabilities N×C, CAMs N×C×h×w)`` in one pass.

    No hooks: the trunk and the head are called directly, so one model can serve many threads and exports cleanly.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        split = gap_linear_split(model)
        if split is None:
            raise FastCamUnsupported(
                f"{type(model).__name__} has no global-average-pool + Linear head; use a pytorch-grad-cam method"
            )
        self.model = model
        self._trunk, self.head = split

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self._trunk(x)  # N×K×h×w, after the activation
        logits = self.head(fmap.mean(dim=(2, 3)))
        cams = F.relu(torch.einsum("ck,nkhw->nchw", self.head.weight, fmap))
        return torch.softmax(logits, dim=1), cams


def fast_cam_supported(model: nn.Module) -> bool:
    return gap_linear_split(model) is not None
