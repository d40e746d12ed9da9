import json

import numpy as np
import pytest
import torch

from cascade.checkpoint import load_stage
from cascade.preprocess import denormalize, preprocess_batch, to_tensor_array
from tests.conftest import make_knee_like
from train.presets import EvalPreset, TrainPreset
from train.train import get_args_parser, main


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
    metrics = main(_args(tiny_dataset, out, "--select-by", "macro_f1", "--class-weights"))
    for name in ("checkpoint.pth.tar", "model_best.pth.tar", "labels.txt", "metrics.json"):
        assert (out / name).is_file(), name
    assert (out / "labels.txt").read_text().split() == ["normal", "osteopenia", "osteoporosis"]
    ckpt = torch.load(out / "model_best.pth.tar", weights_only=True)
    assert ckpt["arch"] == "resnet18" and ckpt["resolution"] == 32 and ckpt["num_classes"] == 3
    assert ckpt["optimizer"] is None
    assert torch.load(out / "checkpoint.pth.tar", weights_only=True)["optimizer"]["state"]
    spec, model = load_stage(out)
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(preprocess_batch([make_knee_like(0)], 32))), 1)
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
    main(_args(tiny_dataset, out))
    args = _args(tiny_dataset, out, "--resume", str(out / "checkpoint.pth.tar"))
    args.epochs = 2
    metrics = main(args)
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert torch.load(out / "checkpoint.pth.tar", weights_only=True)["epoch"] == 2


def test_missing_split_is_a_clear_error(tmp_path, tiny_dataset):
    with pytest.raises(FileNotFoundError, match="train/ and val/"):
        main(_args(tiny_dataset / "test", tmp_path / "x"))


def test_eval_preset_is_the_inference_preprocessing():
    img = make_knee_like(3)
    np.testing.assert_array_equal(EvalPreset(48)(img).numpy(), to_tensor_array(img, 48))
    t = TrainPreset(48)(img)
    assert t.shape == (3, 48, 48) and t.dtype == torch.float32
    rgb = denormalize(t.numpy()[None])[0]
    np.testing.assert_allclose(rgb[..., 0], rgb[..., 1], atol=1e-5)  # gray replicated: no per-channel jitter
    np.testing.assert_allclose(rgb[..., 1], rgb[..., 2], atol=1e-5)
