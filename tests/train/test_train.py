import json

import numpy as np
import pytest
import torch

from cascade.checkpoint import load_stage
from cascade.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_batch, to_tensor_array
from tests.conftest import make_knee_like
from train.presets import EvalPreset, TrainPreset
from train.train import get_args_parser, run


def _args(data, out, *extra):
    return get_args_parser().parse_args(
        [
            str(data),
            "--arch",
            "resnet18",
            "--model-dir",
            str(out),
            "--resolution",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--workers",
            "0",
            *extra,
        ]
    )


def test_one_epoch_gives_a_loadable_jetson_folder(tmp_path, tiny_dataset):
    out = tmp_path / "stage"
    metrics = run(_args(tiny_dataset, out, "--select-by", "macro_f1", "--class-weights"))
    for name in ("checkpoint.pth.tar", "model_best.pth.tar", "labels.txt", "metrics.json"):
        assert (out / name).is_file(), name
    assert (out / "labels.txt").read_text().split() == ["normal", "osteopenia", "osteoporosis"]
    ckpt = torch.load(out / "model_best.pth.tar", weights_only=True)
    assert ckpt["arch"] == "resnet18" and ckpt["resolution"] == 32 and ckpt["num_classes"] == 3
    assert ckpt["optimizer"] is None and ckpt["preprocess"] == "jetson" and ckpt["epoch"] == 0
    assert torch.load(out / "checkpoint.pth.tar", weights_only=True)["optimizer"]["state"]
    spec, model = load_stage(out)
    assert spec.preprocess == "jetson"
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(preprocess_batch([make_knee_like(0)], 32, spec.preprocess))), 1)
    assert p.shape == (1, 3)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert len(saved["epochs"]) == 1 and saved["best"]["epoch"] == 1
    for split in ("val", "test"):
        r = saved["best"][split]
        assert {
            "accuracy",
            "sensitivity",
            "specificity",
            "macro_f1",
            "macro_f2",
            "roc_auc_ovr",
            "confusion_matrix",
        } <= set(r)
        assert sum(map(sum, r["confusion_matrix"])) == 12


def test_resume_continues_from_the_saved_epoch(tmp_path, tiny_dataset):
    out = tmp_path / "stage"
    run(_args(tiny_dataset, out))
    args = _args(tiny_dataset, out, "--resume", str(out / "checkpoint.pth.tar"))
    args.epochs = 2
    metrics = run(args)
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert torch.load(out / "checkpoint.pth.tar", weights_only=True)["epoch"] == 1  # upstream's: 0-based, last done


@pytest.mark.parametrize("mode", ["jetson", "area"])
def test_eval_preset_is_the_inference_preprocessing(mode):
    img = make_knee_like(3)
    np.testing.assert_array_equal(EvalPreset(48, mode)(img).numpy(), to_tensor_array(img, 48, mode))
    t = TrainPreset(48, mode)(img)
    assert t.shape == (3, 48, 48) and t.dtype == torch.float32
    std, mean = np.array(IMAGENET_STD).reshape(3, 1, 1), np.array(IMAGENET_MEAN).reshape(3, 1, 1)
    rgb = t.numpy() * std + mean
    np.testing.assert_allclose(rgb[0], rgb[1], atol=1e-5)  # gray replicated: no per-channel jitter
    np.testing.assert_allclose(rgb[1], rgb[2], atol=1e-5)


def _upstream_resume(path, arch="resnet18", lr=0.1):
    """What jetson-inference's train.py does with --resume (SGD, then one step), written out independently."""
    import torchvision
    from torch import nn

    checkpoint = torch.load(path)
    model = torchvision.models.__dict__[arch]()
    model.fc = nn.Linear(model.fc.in_features, checkpoint["num_classes"])  # its reshape_model for resnets
    model.load_state_dict(checkpoint["state_dict"])
    optimizer = torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=1e-4)
    optimizer.load_state_dict(checkpoint["optimizer"])
    start_epoch = checkpoint["epoch"] + 1
    loss = model(torch.zeros(2, 3, checkpoint["resolution"], checkpoint["resolution"])).sum()
    loss.backward()
    optimizer.step()
    return start_epoch


def _upstream_onnx_export_loads(path, arch="resnet18"):
    """The part of jetson-inference's onnx_export.py that reads the checkpoint."""
    import torchvision
    from torch import nn

    checkpoint = torch.load(path)
    model = torchvision.models.__dict__[checkpoint["arch"]]()
    model.fc = nn.Linear(model.fc.in_features, checkpoint["num_classes"])
    model.load_state_dict(checkpoint["state_dict"])
    if checkpoint.get("multi_label", False):
        raise AssertionError("a single-label model")
    return checkpoint["resolution"]


def test_sgd_recipe_checkpoints_resume_in_upstream_train_py(tmp_path, tiny_dataset):
    out = tmp_path / "sgd"
    run(_args(tiny_dataset, out, "--optimizer", "sgd", "--lr", "0.01"))
    for name in ("checkpoint.pth.tar", "model_best.pth.tar"):
        ckpt = torch.load(out / name, weights_only=True)
        group = ckpt["optimizer"]["param_groups"][0]
        assert group["momentum"] == 0.9 and group["weight_decay"] == 1e-4 and "betas" not in group
        assert _upstream_resume(out / name) == 1  # epoch 0 done: upstream continues with epoch 1
        assert _upstream_onnx_export_loads(out / name) == 32


def test_adamw_checkpoints_cannot_resume_upstream_as_the_readme_says(tmp_path, tiny_dataset):
    out = tmp_path / "adamw"
    run(_args(tiny_dataset, out))
    with pytest.raises(KeyError, match="momentum"):
        _upstream_resume(out / "checkpoint.pth.tar")
    with pytest.raises(AttributeError):  # model_best.pth.tar carries optimizer None
        _upstream_resume(out / "model_best.pth.tar")
    assert _upstream_onnx_export_loads(out / "model_best.pth.tar") == 32  # but it exports


@pytest.mark.parametrize(("first", "then"), [("sgd", "adamw"), ("adamw", "sgd")])
def test_resume_with_a_foreign_optimizer_state_keeps_the_weights_and_trains(tmp_path, tiny_dataset, first, then):
    out = tmp_path / "m"
    run(_args(tiny_dataset, out, "--optimizer", first))
    before = torch.load(out / "checkpoint.pth.tar", weights_only=True)["state_dict"]
    args = _args(tiny_dataset, out, "--optimizer", then, "--resume", str(out / "checkpoint.pth.tar"))
    args.epochs = 2
    metrics = run(args)  # was: KeyError 'betas' in OneCycleLR
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    after = torch.load(out / "checkpoint.pth.tar", weights_only=True)
    assert after["epoch"] == 1
    assert ("betas" in after["optimizer"]["param_groups"][0]) == (then == "adamw")  # the new run's optimizer
    key = "conv1.weight"
    assert not torch.equal(before[key], after["state_dict"][key])  # trained on from the loaded weights


def test_resume_from_a_checkpoint_without_optimizer_state(tmp_path, tiny_dataset):
    out = tmp_path / "m"
    run(_args(tiny_dataset, out))
    args = _args(tiny_dataset, out, "--resume", str(out / "model_best.pth.tar"))  # optimizer: None
    args.epochs = 2
    assert len(run(args)["epochs"]) == 2


def test_sgd_learning_rate_drops_tenfold_every_30_epochs():
    from train.train import build_optimizer, build_scheduler

    argv = ["d", "--model-dir", "m", "--optimizer", "sgd", "--lr", "0.1", "--epochs", "90"]
    args = get_args_parser().parse_args(argv)
    model = torch.nn.Linear(2, 2)
    for start, want in ((0, 0.1), (29, 0.1), (30, 0.01), (61, 0.001)):
        optimizer = build_optimizer(args, model)
        build_scheduler(args, optimizer, steps_per_epoch=3, start_epoch=start)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(want), start


def _cli(capsys, *argv):
    from train.train import main

    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_cli_bad_arguments_missing_folders_and_unwritable_output_are_one_error_line(tmp_path, tiny_dataset, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = [
        ([tiny_dataset / "test", "--model-dir", tmp_path / "x"], "train/ and val/"),
        ([tmp_path / "nowhere", "--model-dir", tmp_path / "x"], "is missing"),
        ([tiny_dataset, "--model-dir", blocker / "sub"], "cannot write into --model-dir"),
        ([tiny_dataset, "--model-dir", tmp_path / "x", "--epochs", "0"], "--epochs must be at least 1"),
        ([tiny_dataset, "--model-dir", tmp_path / "x", "--resolution", "4"], "--resolution must lie in"),
        ([tiny_dataset, "--model-dir", tmp_path / "x", "--resume", tmp_path / "no.pth"], "does not exist"),
        ([tiny_dataset, "--model-dir", tmp_path / "x", "--arch", "nonet", "--epochs", "1"], "unknown architecture"),
    ]
    for argv, message in cases:
        code, err = _cli(capsys, *argv)
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], (argv, err)
    with pytest.raises(SystemExit) as exc:
        _cli(capsys, tiny_dataset, "--model-dir", tmp_path / "x", "--optimizer", "rmsprop")
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and "rmsprop" in err[0]
