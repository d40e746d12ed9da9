"""One model factory: torchvision architectures by name, with the classification head sized for the stage's classes.

The state-dict keys stay exactly torchvision's (as jetson-inference's train.py writes them), so checkpoints move
between this project and jetson-inference unchanged. The one structural change is DenseNet's: torchvision applies the
final ReLU functionally and in place inside ``forward``, which hides the true last activation from CAM hooks; here it
is an explicit, out-of-place module (``final_relu``) with no parameters, so the keys do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cascade.errors import CheckpointError

#: Prefixes of the families the factory knows; each maps to where its head and its last feature map are.
SUPPORTED_PREFIXES = (
    "resnet",
    "resnext",
    "wide_resnet",
    "densenet",
    "vgg",
    "alexnet",
    "squeezenet",
    "mobilenet",
    "efficientnet",
    "regnet",
    "googlenet",
    "shufflenet",
    "mnasnet",
    "convnext",
    "inception",
)
# Auxiliary classifiers exist only for training; inference models are built without them and their weights ignored.
_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


class DenseNetClassifier(nn.Module):
    """torchvision DenseNet with the final ReLU as an explicit out-of-place module (same state-dict keys)."""

    def __init__(self, densenet: torchvision.models.DenseNet) -> None:
        super().__init__()
        self.features = densenet.features
        self.final_relu = nn.ReLU(inplace=False)
        self.classifier = densenet.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.final_relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1))


def available_architectures() -> list[str]:
    """Classification architectures torchvision can build that this factory supports."""
    names = torchvision.models.list_models(module=torchvision.models)
    return sorted(n for n in names if n.startswith(SUPPORTED_PREFIXES))


def _check_arch(arch: str) -> None:
    if arch not in available_architectures():
        raise CheckpointError(
            f"unknown architecture '{arch}'; expected a torchvision classification model such as resnet18 or "
            f"densenet121 (supported families: {', '.join(SUPPORTED_PREFIXES)})"
        )


def _new_linear(old: nn.Linear, num_classes: int) -> nn.Linear:
    return nn.Linear(old.in_features, num_classes)


def _replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the last classification layer for one with ``num_classes`` outputs (as jetson's reshape_model does)."""
    for attr in ("fc", "classifier", "heads"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        if isinstance(head, nn.Linear):
            setattr(model, attr, _new_linear(head, num_classes))
            return
        if isinstance(head, nn.Sequential):
            for idx in range(len(head) - 1, -1, -1):
                layer = head[idx]
                if isinstance(layer, nn.Linear):
                    head[idx] = _new_linear(layer, num_classes)
                    return
                if isinstance(layer, nn.Conv2d):  # squeezenet: a 1×1 conv classifier
                    head[idx] = nn.Conv2d(layer.in_channels, num_classes, kernel_size=1)
                    if hasattr(model, "num_classes"):
                        model.num_classes = num_classes
                    return
    raise CheckpointError(f"cannot find the classification head of {type(model).__name__}")


def create_model(arch: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """Build ``arch`` with a ``num_classes`` head; ``pretrained`` loads ImageNet weights (needs a download)."""
    _check_arch(arch)
    if num_classes < 2:
        raise CheckpointError(f"a classifier needs at least 2 classes, got {num_classes}")
    kwargs: dict = {}
    if arch.startswith(("googlenet", "inception")):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = False
    weights = None
    if pretrained:
        weights = "DEFAULT"
    try:
        if pretrained and arch.startswith(("googlenet", "inception")):
            model = torchvision.models.get_model(arch, weights=weights)
            model.aux_logits = False
            for aux in ("aux1", "aux2", "AuxLogits"):
                if hasattr(model, aux):
                    setattr(model, aux, None)
        else:
            model = torchvision.models.get_model(arch, weights=weights, **kwargs)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        if pretrained:
            raise CheckpointError(
                f"could not download the ImageNet weights for {arch} ({exc}); this machine may have no internet. "
                "Train without --pretrained, or place the torchvision weights in the torch hub cache first"
            ) from exc
        raise
    _replace_head(model, num_classes)
    if arch.startswith("densenet"):
        model = DenseNetClassifier(model)
    return model


def load_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], arch: str) -> None:
    """Load weights, accepting ``module.``-prefixed (DataParallel) keys and ignoring auxiliary classifiers."""
    cleaned = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith(_AUX_PREFIXES):
            continue
        cleaned[key] = value
    try:
        model.load_state_dict(cleaned, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"the weights do not fit a {arch} with this head ({first}); is 'arch' or 'num_classes' in the "
            "checkpoint right?"
        ) from exc


def feature_layer(model: nn.Module) -> nn.Module:
    """The module whose output is the last feature map after its activation: the layer every CAM method targets."""
    if isinstance(model, DenseNetClassifier):
        return model.final_relu
    for attr in ("layer4", "trunk_output", "inception5b", "conv5"):
        if hasattr(model, attr):
            return getattr(model, attr)
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return features[-1]
    if hasattr(model, "layers") and isinstance(model.layers, nn.Sequential):  # mnasnet
        return model.layers[-1]
    raise CheckpointError(f"no known last feature layer for {type(model).__name__}")


def _resnet_trunk(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def _shufflenet_trunk(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.conv5(m.stage4(m.stage3(m.stage2(m.maxpool(m.conv1(x))))))


def gap_linear_split(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Linear] | None:
    """``(trunk, head)`` with ``model(x) == head(trunk(x).mean((2, 3)))`` in eval mode, or None for other heads.

    ``trunk(x)`` is the last feature map after its activation; with such a head, CAMs are exact (see cascade.explain).
    """
    from torchvision.models import EfficientNet, MNASNet, MobileNetV2, RegNet, ResNet, ShuffleNetV2

    if isinstance(model, DenseNetClassifier):
        return (lambda x: model.final_relu(model.features(x))), model.classifier
    if isinstance(model, ResNet) and isinstance(model.fc, nn.Linear):
        return partial(_resnet_trunk, model), model.fc
    if isinstance(model, RegNet) and isinstance(model.fc, nn.Linear):
        return (lambda x: model.trunk_output(model.stem(x))), model.fc
    if isinstance(model, ShuffleNetV2) and isinstance(model.fc, nn.Linear):
        return partial(_shufflenet_trunk, model), model.fc
    if isinstance(model, EfficientNet | MobileNetV2 | MNASNet):
        layers = [m for m in model.classifier if not isinstance(m, nn.Dropout)]
        if len(layers) == 1 and isinstance(layers[0], nn.Linear):
            trunk = model.layers if isinstance(model, MNASNet) else model.features
            return trunk, layers[0]
    return None
