import os
from pathlib import Path

import pytest
import torch

from cascade.checkpoint import (
    PREPROCESS_NAME,
    load_checkpoint,
    load_stage,
    read_labels,
    save_checkpoint,
    stage_spec_from,
)
from cascade.errors import CheckpointError
from cascade.models import available_architectures, create_model, feature_layer, gap_linear_split
from tests.conftest import CLASSES, make_model_dir


def _jetson_dict(model, arch, classes, resolution=224):
    """Exactly the keys jetson-inference's train.py writes (accuracy as a tensor, optimizer state)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return {
        "epoch": 35,
        "arch": arch,
        "resolution": resolution,
        "classes": list(classes),
        "num_classes": len(classes),
        "multi_label": False,
        "state_dict": model.state_dict(),
        "accuracy": torch.tensor(87.5),
        "loss": 0.31,
        "optimizer": opt.state_dict(),
    }


def test_jetson_dict_round_trip_with_capitalised_labels(tmp_path):
    torch.manual_seed(0)
    import torchvision

    # built as jetson-inference does: plain torchvision model with its head replaced
    ref = torchvision.models.resnet18(num_classes=1000)
    ref.fc = torch.nn.Linear(ref.fc.in_features, 3)
    classes = ("Normal", "Osteopenia", "Osteoporosis")
    torch.save(_jetson_dict(ref, "resnet18", classes, 224), tmp_path / "model_best.pth.tar")
    (tmp_path / "labels.txt").write_text("Normal\nOsteopenia\nOsteoporosis\n")
    spec, model = load_stage(tmp_path)
    assert spec.arch == "resnet18" and spec.classes == classes and spec.resolution == 224
    assert spec.class_index("normal") == 0
    x = torch.randn(2, 3, 64, 64)
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
    # and back: our save is loadable the way jetson's onnx_export.py reads it
    out = tmp_path / "again"
    out.mkdir()
    save_checkpoint(out / "model_best.pth.tar", model, "resnet18", classes, 224, 35, 87.5, 0.31)
    ckpt = torch.load(out / "model_best.pth.tar", weights_only=True)
    assert set(ckpt) >= {
        "epoch",
        "arch",
        "resolution",
        "classes",
        "num_classes",
        "multi_label",
        "state_dict",
        "accuracy",
        "loss",
        "optimizer",
    }
    ref2 = torchvision.models.resnet18()
    ref2.fc = torch.nn.Linear(512, ckpt["num_classes"])
    ref2.load_state_dict(ckpt["state_dict"])  # strict: keys are plain torchvision's


def test_densenet_keys_are_torchvision_keys():
    import torchvision

    ours = create_model("densenet121", 3)
    ref = torchvision.models.densenet121()
    ref.classifier = torch.nn.Linear(ref.classifier.in_features, 3)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    ours.eval(), ref.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))
    assert isinstance(feature_layer(ours), torch.nn.ReLU) and not feature_layer(ours).inplace


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['EVIL_MARK'])}",))


def test_pickle_with_code_is_refused_and_not_run(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARK", str(mark))
    path = tmp_path / "model_best.pth.tar"
    torch.save({"arch": "resnet18", "state_dict": {}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="arbitrary code"):
        load_checkpoint(path)
    assert not mark.exists()
    with pytest.raises(CheckpointError):
        load_stage(tmp_path)
    assert not mark.exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not a readable"),
        (b"garbage" * 10, "not a readable"),
    ],
)
def test_broken_checkpoint_files(tmp_path, content, match):
    (tmp_path / "model_best.pth.tar").write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "model_best.pth.tar")


def test_wrong_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_stage(tmp_path / "nope")
    (tmp_path / "cascade.toml").write_text("")  # model_dir naming a file said it "does not exist"
    with pytest.raises(CheckpointError, match="cascade.toml' is not a folder"):
        stage_spec_from(tmp_path / "cascade.toml")
    torch.save({"a": torch.zeros(1)}, tmp_path / "model_best.pth.tar")
    with pytest.raises(CheckpointError, match="bare state_dict"):
        load_stage(tmp_path)
    torch.save([1, 2], tmp_path / "model_best.pth.tar")
    with pytest.raises(CheckpointError, match="list"):
        load_stage(tmp_path)
    model = create_model("resnet18", 3)
    save_checkpoint(tmp_path / "model_best.pth.tar", model, "resnet34", ["a", "b", "c"], 64, 1, 0, 0)
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(CheckpointError, match="do not fit a resnet34"):
        load_stage(tmp_path)
    save_checkpoint(tmp_path / "model_best.pth.tar", model, "resnet18", ["a", "b", "c"], 64, 1, 0, 0)
    (tmp_path / "labels.txt").write_text("a\nb\n")
    with pytest.raises(CheckpointError, match="2 labels but the checkpoint 3"):
        stage_spec_from(tmp_path)
    (tmp_path / "labels.txt").write_text("a\n")
    with pytest.raises(CheckpointError, match="at least 2"):
        read_labels(tmp_path / "labels.txt")
    save_checkpoint(tmp_path / "model_best.pth.tar", model, "notanet", ["a", "b", "c"], 64, 1, 0, 0)
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(CheckpointError, match="unknown architecture"):
        load_stage(tmp_path)


@pytest.mark.parametrize(
    "arch",
    [
        "resnet18",
        "densenet121",
        "vgg11",
        "alexnet",
        "squeezenet1_0",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "efficientnet_b0",
        "regnet_y_400mf",
        "googlenet",
    ],
)
def test_factory_builds_every_family_with_a_three_class_head(arch):
    assert arch in available_architectures()
    model = create_model(arch, 3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 96))
    assert out.shape == (1, 3)
    assert feature_layer(model) is not None
    exact = gap_linear_split(model) is not None
    assert exact == arch.startswith(("resnet", "densenet", "mobilenet_v2", "efficientnet", "regnet"))


def test_googlenet_jetson_checkpoint_with_aux_heads_loads(tmp_path):
    import torchvision

    ref = torchvision.models.googlenet(aux_logits=True, init_weights=False)
    ref.fc = torch.nn.Linear(1024, 3)
    torch.save(_jetson_dict(ref, "googlenet", ["a", "b", "c"]), tmp_path / "model_best.pth.tar")
    spec, model = load_stage(tmp_path)
    assert spec.classes == ("a", "b", "c")


def test_pretrained_without_a_download_says_so(monkeypatch, tmp_path):
    import urllib.error

    import torch.hub

    def offline(*_a, **_k):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError, match="could not download the ImageNet weights for resnet18"):
        create_model("resnet18", 3, pretrained=True)


def test_preprocess_mode_from_checkpoint_key_sidecar_or_jetson_default(tmp_path):
    folder = make_model_dir(tmp_path / "m", "resnet18")
    assert stage_spec_from(folder).preprocess == "jetson"  # jetson-inference's folders declare nothing
    (folder / PREPROCESS_NAME).write_text("area\n")
    assert stage_spec_from(folder).preprocess == "area"
    _, model = load_stage(folder)
    save_checkpoint(folder / "model_best.pth.tar", model, "resnet18", CLASSES, 64, 0, 50.0, 1.0, preprocess="area")
    assert torch.load(folder / "model_best.pth.tar", weights_only=True)["preprocess"] == "area"
    assert stage_spec_from(folder).preprocess == "area"  # key and file agree
    (folder / PREPROCESS_NAME).unlink()
    assert stage_spec_from(folder).preprocess == "area"


def test_preprocess_mode_conflicts_and_unknown_values_are_refused(tmp_path):
    folder = make_model_dir(tmp_path / "m", "resnet18")
    _, model = load_stage(folder)
    (folder / PREPROCESS_NAME).write_text("bilinear")
    with pytest.raises(CheckpointError, match="preprocess.txt' says preprocess 'bilinear'; it must be one of jetson"):
        stage_spec_from(folder)
    save_checkpoint(folder / "model_best.pth.tar", model, "resnet18", CLASSES, 64, 0, 50.0, 1.0, preprocess="jetson")
    (folder / PREPROCESS_NAME).write_text("area")
    with pytest.raises(CheckpointError, match="says 'jetson' but .* says 'area'; keep one"):
        stage_spec_from(folder)


def test_demo_models_declare_the_area_filter_they_were_trained_with():
    demo = Path(__file__).resolve().parents[2] / "models" / "demo"
    for stage in ("stage1", "stage2"):
        if not (demo / stage / "model_best.pth.tar").is_file():
            pytest.skip("demo models absent")
        assert stage_spec_from(demo / stage).preprocess == "area"
