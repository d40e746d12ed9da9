"""Folders that come from jetson-inference and go back to it.

A jetson-inference export (fixed batch 1, Softmax appended, no cam_0, no stamp) runs once verified against its
checkpoint; a stale or foreign one is refused; ``export --jetson`` writes what imageNet loads; and a folder trained
and exported as upstream does gives, through the cascade, the probabilities ONNX Runtime gives on jetson-sampled input.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from cascade.checkpoint import BEST_NAME, load_stage, write_labels
from cascade.errors import BackendError
from cascade.fileio import file_sha256
from cascade.predcache import model_identity
from engines import identity
from engines.cli import main as cli_main
from engines.export import export_onnx
from engines.identity import OnnxIdentityError
from engines.onnx_file import read_onnx_info
from engines.select import make_backend, open_cascade
from tests.conftest import make_knee_like, make_model_dir
from tests.engines.conftest import input_batches

REPO = Path(__file__).resolve().parents[2]


def jetson_export(folder, arch: str) -> None:
    """What jetson-inference's onnx_export.py writes: model + Softmax, fixed batch 1, input_0 → output_0."""
    spec, model = load_stage(folder)
    dummy = torch.zeros(1, 3, spec.resolution, spec.resolution)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # jetson's script uses this exporter
        torch.onnx.export(
            nn.Sequential(model, nn.Softmax(1)).eval(),
            (dummy,),
            str(folder / f"{arch}.onnx"),
            input_names=["input_0"],
            output_names=["output_0"],
            opset_version=17,
            dynamo=False,
        )


@pytest.fixture(scope="module")
def jetson_folder(tmp_path_factory):
    folder = make_model_dir(tmp_path_factory.mktemp("jetson") / "resnet18", "resnet18", seed=31)
    jetson_export(folder, "resnet18")
    return folder


def test_jetson_onnx_used_as_it_is(jetson_folder):
    onnx_file = jetson_folder / "resnet18.onnx"
    before = onnx_file.read_bytes()
    backend, reason = make_backend(jetson_folder, "onnx")
    assert "resnet18.onnx from jetson-inference, verified against model_best.pth.tar" in reason
    assert onnx_file.read_bytes() == before  # never re-exported under jetson-inference's name
    assert not (jetson_folder / "resnet18.cascade.onnx").exists()
    assert backend.input_spec().shape == (1, 3, 64, 64) and backend.input_spec().max_batch == 1
    assert not backend.supports_cams

    batch = input_batches(64)["phantoms"]
    probs, cams = backend.predict_with_cams(batch)  # three images through a batch-1 model
    assert cams is None and probs.shape == (3, 3)
    _, model = load_stage(jetson_folder)
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(batch)), 1).numpy()
    assert np.abs(probs - want).max() <= 1e-4
    assert backend.calls == 1


def test_engine_only_folder_without_checkpoint(tmp_path, jetson_folder):
    folder = tmp_path / "deployed"
    folder.mkdir()
    for name in ("resnet18.onnx", "labels.txt"):
        (folder / name).write_bytes((jetson_folder / name).read_bytes())
    assert not (folder / BEST_NAME).exists()
    backend, reason = make_backend(folder, "auto")
    assert backend.name == "onnxruntime-cpu" and "used as it is" in reason
    assert backend.spec.arch == "resnet18" and backend.spec.resolution == 64
    assert backend.spec.classes == ("normal", "osteopenia", "osteoporosis")
    assert backend.predict(input_batches(64)["random"]).shape == (3, 3)


def test_wrong_resolution_refused(tmp_path, jetson_folder):
    folder = make_model_dir(tmp_path / "m", "resnet18", resolution=96, seed=32)
    (folder / "resnet18.onnx").write_bytes((jetson_folder / "resnet18.onnx").read_bytes())  # a 64 px export
    with pytest.raises(Exception, match="takes 64px input but the checkpoint says 96px"):
        make_backend(folder, "onnx")


def test_engine_only_folder_without_onnxruntime_has_no_backend(tmp_path, jetson_folder, monkeypatch):
    import sys

    from cascade.errors import BackendError

    folder = tmp_path / "deployed"
    folder.mkdir()
    for name in ("resnet18.onnx", "labels.txt"):
        (folder / name).write_bytes((jetson_folder / name).read_bytes())
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendError, match="no backend can run") as err:
        make_backend(folder, "auto")
    assert "onnxruntime cannot be imported" in str(err.value) and "PyTorch needs model_best.pth.tar" in str(err.value)


def _jetson_copy(tmp_path, jetson_folder, name="copy"):
    folder = tmp_path / name
    shutil.copytree(jetson_folder, folder)
    return folder


def test_the_verdict_is_cached_by_both_files_hashes(tmp_path, jetson_folder, monkeypatch):
    folder = _jetson_copy(tmp_path, jetson_folder)
    calls = []
    real = identity.probe_difference
    monkeypatch.setattr(identity, "probe_difference", lambda *a: calls.append(1) or real(*a))
    assert "checked now" in make_backend(folder, "onnx")[1]
    backend, reason = make_backend(folder, "onnx")
    assert "checked earlier" in reason and len(calls) == 1
    (verdict,) = identity.IDENTITY_CACHE_DIR.glob("*.json")
    saved = json.loads(verdict.read_text())
    assert saved["onnx_sha256"] == file_sha256(folder / "resnet18.onnx")
    assert saved["checkpoint_sha256"] == file_sha256(folder / BEST_NAME) and saved["max_abs_diff"] <= 1e-3
    # the prediction cache key names the file that actually ran, besides the checkpoint
    key = model_identity(backend)
    assert key.startswith("model_best.pth.tar:") and f"+resnet18.onnx:{saved['onnx_sha256']}" in key


def test_foreign_or_stale_jetson_onnx_is_refused_with_the_re_export_command(tmp_path, jetson_folder):
    folder = _jetson_copy(tmp_path, jetson_folder)
    onnx_file = folder / "resnet18.onnx"
    old = onnx_file.stat().st_mtime
    make_model_dir(folder, "resnet18", seed=77)  # the checkpoint was retrained after the export
    os.utime(onnx_file, (old - 100, old - 100))
    for kind in ("onnx", "auto"):  # auto does not fall back to PyTorch silently either
        with pytest.raises(OnnxIdentityError, match="is stale .older than its checkpoint.") as err:
            make_backend(folder, kind)
        assert f"python -m engines export {folder} --jetson" in str(err.value)
    os.utime(onnx_file, None)  # newer than the checkpoint, still not its export: foreign
    with pytest.raises(OnnxIdentityError, match="foreign"):
        make_backend(folder, "onnx")
    assert onnx_file.read_bytes() == (jetson_folder / "resnet18.onnx").read_bytes()  # left as it was


def test_output_width_other_than_the_labels_is_one_line_naming_file_and_fix(tmp_path, jetson_folder):
    folder = _jetson_copy(tmp_path, jetson_folder)
    write_labels(folder / "labels.txt", ["normal", "abnormal"])
    make_model_dir(folder, "resnet18", classes=("normal", "abnormal"), seed=31)
    with pytest.raises(BackendError) as err:
        make_backend(folder, "onnx")
    message = str(err.value)
    assert "\n" not in message and f"'{folder / 'resnet18.onnx'}' outputs 3 classes but labels.txt lists 2" in message
    # auto ran PyTorch around it with exit 0: beside a checkpoint such a file is foreign, never silently passed over
    with pytest.raises(OnnxIdentityError, match="outputs 3 classes but labels.txt lists 2.*not used"):
        make_backend(folder, "auto")
    assert f"python -m engines export {folder} --jetson" in message


def test_stamped_jetson_export_is_known_by_its_stamp_and_stale_when_the_checkpoint_changes(tmp_path):
    folder = make_model_dir(tmp_path / "m", "resnet18", seed=33)
    export_onnx(folder, jetson=True)
    backend, reason = make_backend(folder, "onnx")
    assert "exported here for jetson-inference" in reason and backend.input_spec().max_batch == 1
    make_model_dir(folder, "resnet18", seed=34)
    with pytest.raises(OnnxIdentityError, match="model_best.pth.tar changed since it was exported"):
        make_backend(folder, "onnx")


def imagenet_requirements(path):
    """What jetson-inference's imageNet needs of an ONNX classifier (checked with onnx directly)."""
    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(model)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    assert [i.name for i in inputs] == ["input_0"]
    assert [d.dim_value for d in inputs[0].type.tensor_type.shape.dim][:2] == [1, 3]
    assert [o.name for o in model.graph.output] == ["output_0"]
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    assert [p.name for p in path.parent.iterdir() if p.suffix in (".data", ".bin")] == []
    return [d.dim_value for d in inputs[0].type.tensor_type.shape.dim], [
        d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim
    ]


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_jetson_export_is_what_imagenet_loads(tmp_path, arch, capsys):
    folder = make_model_dir(tmp_path / arch, arch, seed=35)
    assert cli_main(["export", str(folder), "--jetson"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {folder / (arch + '.onnx')} (for jetson-inference's imageNet" in out and "imagenet --model=" in out
    path = folder / f"{arch}.onnx"
    in_shape, out_shape = imagenet_requirements(path)
    assert in_shape == [1, 3, 64, 64] and out_shape == [1, 3]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32) * 3
    probs = session.run(["output_0"], {"input_0": x})[0]
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert not (folder / f"{arch}.cascade.onnx").exists()


def _tiny_sgd_folder(root, data, arch, seed):
    """A stage trained as jetson-inference does (SGD recipe, a couple of steps) and exported with --jetson."""
    from train.train import get_args_parser, run

    out = root / arch
    argv = [str(data), "--arch", arch, "--model-dir", str(out), "--resolution", "48", "--epochs", "1"]
    argv += ["--batch-size", "8", "--workers", "0", "--optimizer", "sgd", "--lr", "0.01", "--seed", str(seed)]
    run(get_args_parser().parse_args(argv))
    export_onnx(out, jetson=True)
    return out


def _sample_like_a_jetson(gray, resolution):
    """imageNet's input, computed here from the kernel's formula (tests/cascade/test_preprocess.py's reference)."""
    from tests.cascade.test_preprocess import jetson_kernel, stb_rgb8

    return jetson_kernel(stb_rgb8(gray), resolution, resolution)[None]


def test_cascade_on_a_jetson_trained_folder_gives_onnx_runtimes_answers_on_jetson_inputs(tmp_path, tiny_dataset):
    s1 = _tiny_sgd_folder(tmp_path, tiny_dataset, "resnet18", 1)
    s2 = _tiny_sgd_folder(tmp_path, tiny_dataset, "densenet121", 2)
    for folder in (s1, s2):
        assert not (folder / "preprocess.txt").exists()
        assert torch.load(folder / BEST_NAME, weights_only=True)["preprocess"] == "jetson"
        (folder / "checkpoint.pth.tar").unlink()  # what is deployed: model_best, labels.txt and the .onnx
    config = tmp_path / "cascade.toml"
    config.write_text(
        f'[stage1]\nmodel_dir = "{s1}"\n[stage2]\nmodel_dir = "{s2}"\n[gate]\nthreshold = 0.6\n'
        'rule = "p_normal"\nnormal_label = "normal"\n'
    )
    cascade = open_cascade(config, "auto")
    for stage, folder in ((1, s1), (2, s2)):
        assert cascade.backend(stage).model_file == folder / f"{folder.name}.onnx"  # jetson's file, as on the Jetson
    rng = np.random.default_rng(5)
    images = [
        make_knee_like(1, (97, 61)),
        make_knee_like(2, (248, 130)),  # float32 sampling matters at this width
        rng.integers(0, 256, (30, 41), dtype=np.uint8),
    ]
    p1, p2 = cascade.predict(images, stage2_always=True)
    for probs, folder in ((p1, s1), (p2, s2)):
        session = ort.InferenceSession(str(folder / f"{folder.name}.onnx"), providers=["CPUExecutionProvider"])
        want = np.concatenate([session.run(None, {"input_0": _sample_like_a_jetson(g, 48)})[0] for g in images])
        assert np.abs(probs - want).max() <= 1e-5


def test_a_foreign_export_agreeing_only_where_probabilities_saturate_is_refused(tmp_path):
    # The probe's noise images drive the demo stage 1 to P(normal) = 0.9999999: an export of the same network with
    # logits × 1.5 (another temperature, another training run) agreed within 1e-7 and was accepted as its checkpoint's.
    folder = tmp_path / "stage1"
    shutil.copytree(REPO / "models" / "demo" / "stage1", folder, ignore=shutil.ignore_patterns("*.onnx"))
    jetson_export(folder, "resnet18")
    ckpt = torch.load(folder / BEST_NAME, weights_only=True)
    for key in ("fc.weight", "fc.bias"):
        ckpt["state_dict"][key] = ckpt["state_dict"][key] * 1.5
    torch.save(ckpt, folder / BEST_NAME)
    spec, _ = load_stage(folder)
    info = read_onnx_info(folder / "resnet18.onnx")
    dp, dlogp = identity.probe_difference(info, spec)
    assert dp < identity.IDENTITY_TOLERANCE < 1 < dlogp  # probabilities alone cannot tell them apart
    with pytest.raises(OnnxIdentityError, match="log-probabilities differ") as err:
        identity.confirm_identity(info, spec, None, cache_dir=tmp_path / "verdicts")
    assert "foreign" in str(err.value) and f"python -m engines export {folder} --jetson" in str(err.value)


def test_log_difference_ignores_float32_noise_in_vanishing_probabilities():
    p = np.array([[1.0, 3e-23, 0.0]], np.float32)
    q = np.array([[1.0, 1e-30, 2e-40]], np.float32)
    assert identity.log_difference(p, q) == 0.0
    assert identity.log_difference(p, np.array([[0.9, 0.1, 0.0]])) > 1
