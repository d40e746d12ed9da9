"""The explanation library: fast CAM equals Grad-CAM, every method runs, threads do not mix, faithfulness separates
real maps from random ones."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cascade.checkpoint import load_stage
from cascade.errors import CascadeError
from cascade.explain import (
    METHODS,
    CamResult,
    ExplainError,
    StageExplainer,
    method_key,
    random_maps,
    removal_scores,
    scale_maps,
)
from cascade.fastcam import CamModel
from cascade.images import read_image
from cascade.models import create_model, feature_layer, load_state_dict
from cascade.preprocess import preprocess_batch
from cascade.torch_cams import Explainer, model_lock
from sample_images.generate import render_knee
from tests.conftest import ROOT, TINY_RES, make_knee_like

ARCHS = ("resnet18", "densenet121")
EQ_RES = 128  # a 4×4 feature map: enough pixels for a correlation to mean something
NUM_CLASSES = 3


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy CPU those threads spin: up to 25× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tiny_models) -> dict[str, torch.nn.Module]:
    return {spec.arch: model for spec, model in (load_stage(folder) for folder in tiny_models)}


@pytest.fixture(scope="module")
def explainers(models) -> dict[str, Explainer]:
    return {arch: Explainer(model) for arch, model in models.items()}


def _random_batch(seed: int, n: int = 2, res: int = TINY_RES) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, res, res)).astype(np.float32)


def _images(source: str, n: int, res: int) -> np.ndarray:
    if source == "random":
        return _random_batch(7, n, res)
    if source == "phantom":
        rng = np.random.default_rng(3)
        grays = [render_knee(rng, density, 256) for density in np.linspace(0.45, 1.05, n)]
    else:
        grays = [make_knee_like(seed, (160, 130)) for seed in range(n)]
    return preprocess_batch(grays, res, "jetson")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _agreement(first: np.ndarray, second: np.ndarray) -> tuple[list[float], int]:
    """Per-image correlations where either map has evidence, and how many pairs were empty in both."""
    corrs, degenerate = [], 0
    for a, b in zip(first, second, strict=True):
        if a.max() == 0 and b.max() == 0:  # ReLU left nothing for this class: both agree there is no evidence
            degenerate += 1
        elif a.max() == 0 or b.max() == 0:  # one has evidence, the other none: they disagree completely
            corrs.append(0.0)
        else:
            corrs.append(_pearson(a, b))
    return corrs, degenerate


# ---- fast CAM is Grad-CAM ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["random", "phantom", "knee_like"])
@pytest.mark.parametrize("arch", ARCHS)
def test_fast_cam_equals_pytorch_grad_cam_gradcam(models, arch, source):
    """Compared with pytorch-grad-cam's own GradCAM object (not our wrapper of it), same layer, same scaling.

    A random head often has Σ_k w_ck A_k ≤ 0 everywhere for a whole class, and then both maps are all zero; such
    pairs are skipped, but every image must have at least one class with evidence to compare.
    """
    model = models[arch]
    x = _images(source, 3, EQ_RES)
    explainer = Explainer(model)
    corrs, compared = [], np.zeros(len(x), dtype=int)
    for target in range(NUM_CLASSES):
        fast = explainer.explain(x, "fast", target)
        with GradCAM(model, [feature_layer(model)]) as cam:
            reference = cam(torch.from_numpy(x), [ClassifierOutputTarget(target)] * len(x))
        assert fast.method == "fast" and fast.maps.shape == reference.shape
        corrs += _agreement(fast.maps, reference)[0]
        compared += ~fast.empty
    assert (compared >= 1).all(), f"an image has no class with a non-zero map: {compared}"
    assert min(corrs) >= 0.999


@pytest.mark.parametrize("arch", ARCHS)
def test_hirescam_and_xgradcam_equal_gradcam_on_gap_linear_heads(explainers, arch):
    """With GAP + Linear the gradient is constant over space, so these collapse to Grad-CAM (the docstring's claim)."""
    x = _random_batch(11, 2, EQ_RES)
    explainer = explainers[arch]
    for target in range(NUM_CLASSES):
        grad = explainer.explain(x, "gradcam", target).maps
        for method in ("hirescam", "xgradcam"):
            corrs, _ = _agreement(explainer.explain(x, method, target).maps, grad)
            assert all(c >= 0.999 for c in corrs), method


def test_torchvision_densenet_features_is_not_grad_cam_but_ours_is():
    """The pitfall is real: torchvision's in-place final ReLU hides the true activation from features[-1]."""
    torch.manual_seed(5)
    tv = torchvision.models.densenet121(num_classes=NUM_CLASSES).eval()
    ours = create_model("densenet121", NUM_CLASSES)
    load_state_dict(ours, tv.state_dict(), "densenet121")
    ours.eval()
    x = _random_batch(1, 2, EQ_RES)
    explainer = Explainer(ours)
    ours_corrs, tv_corrs = [], []
    for target in range(NUM_CLASSES):
        fast = explainer.explain(x, "fast", target).maps
        ours_corrs += _agreement(fast, explainer.explain(x, "gradcam", target).maps)[0]
        with GradCAM(tv, [tv.features[-1]]) as cam:
            tv_maps = cam(torch.from_numpy(x), [ClassifierOutputTarget(target)] * len(x))
        tv_corrs += _agreement(fast, tv_maps)[0]
    assert ours_corrs and min(ours_corrs) >= 0.999
    assert tv_corrs and min(tv_corrs) < 0.999


# ---- every method --------------------------------------------------------------------------------------------------


def _check_result(result: CamResult, n: int, res: int) -> None:
    assert result.maps.shape == (n, res, res) and result.maps.dtype == np.float32
    assert result.maps.min() >= 0.0 and result.maps.max() <= 1.0
    assert result.probs.shape == (n, NUM_CLASSES) and np.allclose(result.probs.sum(axis=1), 1.0, atol=1e-5)
    assert result.targets.shape == (n,) and result.seconds > 0


@pytest.mark.parametrize("method", [m for m in METHODS if m != "scorecam"])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_method_returns_maps_in_unit_range(explainers, arch, method):
    x = _random_batch(2, 2)
    result = explainers[arch].explain(x, method, 1)
    _check_result(result, 2, TINY_RES)
    assert result.method == result.requested == method
    assert list(result.targets) == [1, 1]


@pytest.mark.parametrize(
    "arch", ["resnet18", pytest.param("densenet121", marks=pytest.mark.slow)]
)  # 512 vs 1024 masked forward passes
def test_scorecam_runs_on_a_tiny_input(explainers, arch):
    result = explainers[arch].explain(_random_batch(3, 1), "scorecam", 0)
    _check_result(result, 1, TINY_RES)
    assert result.method == "scorecam"


def test_only_scorecam_is_slow_and_its_cost_counts_the_channels(explainers):
    assert [m for m, spec in METHODS.items() if spec.slow] == ["scorecam"]
    assert "512" in explainers["resnet18"].cost("scorecam")
    assert "1024" in explainers["densenet121"].cost("scorecam")
    assert explainers["resnet18"].feature_channels == 512
    assert all(explainers["resnet18"].cost(m) for m in METHODS)


def test_default_target_is_the_predicted_class_and_per_image_targets_work(explainers):
    x = _random_batch(4, 3)
    explainer = explainers["densenet121"]
    predicted = explainer.explain(x, "gradcam")
    assert np.array_equal(predicted.targets, predicted.probs.argmax(axis=1))
    per_image = explainer.explain(x, "gradcam", [2, 0, 1])
    assert list(per_image.targets) == [2, 0, 1]
    for i, c in enumerate((2, 0, 1)):
        alone = explainer.explain(x[i : i + 1], "gradcam", c).maps[0]
        np.testing.assert_allclose(per_image.maps[i], alone, atol=1e-5)


def test_eigencam_ignores_the_target_and_says_so(explainers):
    x = _random_batch(5, 2)
    a = explainers["resnet18"].explain(x, "eigencam", 0)
    b = explainers["resnet18"].explain(x, "eigencam", 2)
    np.testing.assert_array_equal(a.maps, b.maps)
    assert "ignores the target" in a.note


def test_fast_falls_back_to_gradcam_without_a_gap_linear_head():
    torch.manual_seed(0)
    squeeze = create_model("squeezenet1_1", NUM_CLASSES).eval()  # its head is a 1×1 conv, not Linear
    explainer = Explainer(squeeze)
    x = _random_batch(6, 2)
    result = explainer.explain(x, "fast", 0)
    assert result.requested == "fast" and result.method == "gradcam"
    assert "Linear" in result.note and "Grad-CAM" in result.note
    np.testing.assert_array_equal(result.maps, explainer.explain(x, "gradcam", 0).maps)
    assert "Grad-CAM" in explainer.cost("fast")


@pytest.mark.parametrize("method", ["fast", "gradcam", "eigencam"])
def test_explain_targets_matches_one_call_per_class(explainers, method):
    x = _random_batch(8, 2)
    explainer = explainers["densenet121"]
    both = explainer.explain_targets(x, method, [1, 2])
    assert list(both) == [1, 2]
    for c, result in both.items():
        single = explainer.explain(x, method, c)
        np.testing.assert_allclose(result.maps, single.maps, atol=1e-6)
        assert list(result.targets) == [c, c] and result.method == single.method
        assert result.seconds > 0


def test_engine_cams_give_the_same_result_as_the_explainer(models, explainers):
    """A backend's (probs, cams) from CamModel (as ONNX/TensorRT return them) scale to exactly the fast maps."""
    x = _random_batch(9, 2)
    with torch.no_grad():
        probs, cams = CamModel(models["densenet121"])(torch.from_numpy(x))
    from_engine = CamResult.from_fast_cams(probs.numpy(), cams.numpy(), TINY_RES, target=[0, 1])
    direct = explainers["densenet121"].explain(x, "fast", [0, 1])
    np.testing.assert_allclose(from_engine.maps, direct.maps, atol=1e-6)
    assert list(from_engine.targets) == [0, 1] and from_engine.method == "fast"
    with pytest.raises(ExplainError, match="cams"):
        CamResult.from_fast_cams(probs.numpy(), cams.numpy()[:, :2], TINY_RES)
    with pytest.raises(ExplainError, match="raw maps"):
        scale_maps(np.zeros((4, 4)), TINY_RES)


def test_gradients_flow_even_inside_the_callers_inference_mode(explainers):
    x = _random_batch(10, 2)
    outside = explainers["resnet18"].explain(x, "gradcam", 0).maps
    with torch.inference_mode():
        inside = explainers["resnet18"].explain(x, "gradcam", 0).maps
    np.testing.assert_array_equal(inside, outside)


# ---- bad inputs ----------------------------------------------------------------------------------------------------


def test_unknown_method_lists_the_methods(explainers):
    with pytest.raises(ValueError, match="gradcam.*scorecam") as info:
        explainers["resnet18"].explain(_random_batch(0, 1), "saliency")
    assert isinstance(info.value, CascadeError)
    assert method_key(" GradCAM++ ") == "gradcam++"


@pytest.mark.parametrize("target", [3, -1, [0], [0, 5], True, "1"])
def test_target_out_of_range_or_malformed(explainers, target):
    with pytest.raises(ExplainError, match="class"):
        explainers["resnet18"].explain(_random_batch(0, 2), "gradcam", target)


@pytest.mark.parametrize(
    "batch",
    [
        np.zeros((3, TINY_RES, TINY_RES), np.float32),
        np.zeros((1, 1, TINY_RES, TINY_RES), np.float32),
        np.zeros((1, 3, TINY_RES, TINY_RES + 1), np.float32),
        np.zeros((0, 3, TINY_RES, TINY_RES), np.float32),
        np.full((1, 3, TINY_RES, TINY_RES), np.nan, np.float32),
    ],
    ids=["3d", "one-channel", "not-square", "empty", "nan"],
)
def test_wrong_batch_is_refused(explainers, batch):
    with pytest.raises(ExplainError):
        explainers["resnet18"].explain(batch, "fast")


def test_explain_targets_refuses_an_out_of_range_class(explainers):
    with pytest.raises(ExplainError, match="out of range"):
        explainers["resnet18"].explain_targets(_random_batch(0, 1), "fast", [1, 3])


# ---- threads and hooks ---------------------------------------------------------------------------------------------


def test_two_threads_get_exactly_their_sequential_maps(explainers):
    explainer = explainers["resnet18"]
    jobs = [(_random_batch(20, 2), "gradcam", 0), (_random_batch(21, 2), "layercam", 2)]
    jobs += [(_random_batch(22, 2), "gradcam++", None), (_random_batch(23, 2), "fast", 1)]
    expected = [explainer.explain(x, m, t).maps for x, m, t in jobs]
    results: dict[int, list[np.ndarray]] = {i: [] for i in range(len(jobs))}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(indices: list[int]) -> None:
        try:
            start.wait()
            for _ in range(3):
                for i in indices:
                    results[i].append(explainer.explain(jobs[i][0], jobs[i][1], jobs[i][2]).maps)
        except BaseException as exc:  # surfaced below: an exception in a thread would otherwise be lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=([0, 3],)), threading.Thread(target=worker, args=([1, 2],))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, maps in results.items():
        assert len(maps) == 3
        for m in maps:
            np.testing.assert_array_equal(m, expected[i])


def test_predictions_on_the_callers_model_do_not_disturb_cams(models):
    """The Explainer hooks only its private copy, so another thread may run the original model at any moment."""
    model = models["densenet121"]
    explainer = Explainer(model)
    model.zero_grad(set_to_none=True)  # other tests ran pytorch-grad-cam on this very model
    x, other = _random_batch(30, 2), torch.from_numpy(_random_batch(31, 4))
    expected = explainer.explain(x, "gradcam", 1).maps
    stop = threading.Event()

    def predict_forever() -> None:
        with torch.inference_mode():
            while not stop.is_set():
                model(other)

    thread = threading.Thread(target=predict_forever)
    thread.start()
    try:
        got = [explainer.explain(x, "gradcam", 1).maps for _ in range(4)]
    finally:
        stop.set()
        thread.join()
    for maps in got:
        np.testing.assert_array_equal(maps, expected)
    assert all(p.grad is None for p in model.parameters())


def test_shared_model_is_left_without_hooks_or_gradients(models):
    model = models["resnet18"]
    model.zero_grad(set_to_none=True)
    explainer = Explainer(model, share_model=True)
    assert explainer.model is model and explainer.lock is model_lock(model)
    layer = feature_layer(model)
    for method in ("gradcam", "eigencam", "layercam"):
        explainer.explain(_random_batch(40, 1), method, 0)
        assert not layer._forward_hooks, method
    assert all(p.grad is None for p in model.parameters())


def test_cam_model_is_unchanged_for_the_onnx_export(models):
    probs, cams = CamModel(models["resnet18"])(torch.from_numpy(_random_batch(41, 2)))
    assert probs.shape == (2, NUM_CLASSES) and cams.shape == (2, NUM_CLASSES, 2, 2) and (cams >= 0).all()


# ---- scaling without torch ----------------------------------------------------------------------------------------


def test_scale_maps_is_pytorch_grad_cams_scaling():
    from pytorch_grad_cam.utils.image import scale_cam_image

    raw = np.random.default_rng(1).normal(size=(3, 4, 4)).astype(np.float32)
    expected = scale_cam_image(scale_cam_image(np.maximum(raw, 0), (TINY_RES, TINY_RES)))
    np.testing.assert_allclose(scale_maps(raw, TINY_RES), expected, atol=1e-6)


def test_explain_imports_neither_torch_nor_pytorch_grad_cam():
    """The ONNX Runtime path explains (fast CAM, faithfulness) without them: importing cascade.explain loads neither."""
    import subprocess
    import sys

    code = "import sys, cascade.explain; print(sorted({'torch', 'pytorch_grad_cam'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- faithfulness --------------------------------------------------------------------------------------------------


DEMO = ROOT / "models" / "demo"


@pytest.fixture(scope="module")
def demo_stages():
    """The shipped demo models with a probability function of the kind a backend's ``predict`` is."""
    out = {}
    for stage in ("stage1", "stage2"):
        spec, model = load_stage(DEMO / stage)
        cam_model = CamModel(model).eval()

        def run(batch: np.ndarray, cam_model=cam_model):
            with torch.no_grad():
                return cam_model(torch.from_numpy(batch))

        out[stage] = (spec, run)
    return out


def _demo_images(per_class: int = 4) -> list[np.ndarray]:
    folders = sorted((ROOT / "sample_images" / "test").iterdir())
    return [read_image(p) for folder in folders for p in sorted(folder.glob("*.png"))[:per_class]]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_faithfulness_ranks_the_true_map_above_random_and_inverted_maps_on_the_demo_models(demo_stages, stage):
    """The old default ("confidence change") scored every method about alike: this score must tell the maps apart.

    Over the demo test images (four per class) the true fast CAM of the predicted class must beat the mean of the
    random maps and its own inversion on average by a clear margin and on at least two images in three; the rest are
    images the model is so sure of that no removal moves its probability, where every map scores about 0.
    """
    spec, run = demo_stages[stage]

    def predict(batch: np.ndarray) -> np.ndarray:
        return run(batch)[0].numpy()

    true, inverted, random_mean = [], [], []
    for image in _demo_images():
        x = preprocess_batch([image], spec.resolution, spec.preprocess)
        probs, raw = (t.numpy() for t in run(x))
        target = int(probs[0].argmax())
        cam = scale_maps(raw[0, target][None], spec.resolution)[0]
        scores = removal_scores(predict, x[0], np.stack([cam, 1.0 - cam]), target)
        true.append(scores[0])
        inverted.append(scores[1])
        random_mean.append(removal_scores(predict, x[0], random_maps(spec.resolution), target).mean())
    true, inverted, random_mean = np.array(true), np.array(inverted), np.array(random_mean)
    assert (true - random_mean).mean() > 0.15 and (true - inverted).mean() > 0.3, (true, random_mean, inverted)
    assert (true > random_mean).mean() >= 2 / 3 and (true > inverted).mean() >= 2 / 3, (true, random_mean, inverted)


def test_a_class_with_no_probability_scores_about_zero(demo_stages):
    """The old score gave +0.98 to a map of a 0 % class: there is nothing to lose, so no map can score well."""
    spec, run = demo_stages["stage1"]
    image = read_image(sorted((ROOT / "sample_images" / "test" / "normal").glob("*.png"))[0])
    x = preprocess_batch([image], spec.resolution, spec.preprocess)
    probs, raw = (t.numpy() for t in run(x))
    least = int(probs[0].argmin())
    assume = probs[0, least]
    cam = scale_maps(raw[0, least][None], spec.resolution)
    score = removal_scores(lambda b: run(b)[0].numpy(), x[0], cam, least)[0]
    assert abs(score) <= max(0.05, 2 * assume)


def test_faithfulness_is_the_same_in_every_thread_and_leaves_global_random_state_alone(models):
    """No global RNG is seeded or drawn from: concurrent scores equal the sequential ones, and numpy's and torch's
    global generators are where they were."""
    from concurrent.futures import ThreadPoolExecutor

    cam_model = CamModel(models["resnet18"]).eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return cam_model(torch.from_numpy(batch))[0].numpy()

    x = _random_batch(60, 4)
    maps = random_maps(TINY_RES, 3, seed=5)
    expected = [removal_scores(predict, x[i], maps, i % 3) for i in range(4)]
    np_state, torch_state = np.random.get_state()[1].copy(), torch.random.get_rng_state().clone()
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda i: removal_scores(predict, x[i % 4], maps, i % 4 % 3), range(12)))
    for i, scores in enumerate(got):
        np.testing.assert_array_equal(scores, expected[i % 4])
    assert np.array_equal(np.random.get_state()[1], np_state) and torch.equal(torch.random.get_rng_state(), torch_state)


def test_faithfulness_refuses_bad_arguments(models):
    def predict(batch: np.ndarray) -> np.ndarray:
        return np.full((len(batch), NUM_CLASSES), 1 / NUM_CLASSES, np.float32)

    x = _random_batch(52, 1)[0]
    with pytest.raises(ExplainError, match="maps"):
        removal_scores(predict, x, np.zeros((1, TINY_RES + 1, TINY_RES), np.float32), 0)
    with pytest.raises(ExplainError, match="out of range"):
        removal_scores(predict, x, np.zeros((1, TINY_RES, TINY_RES), np.float32), 3)


# ---- one stage's dispatch ------------------------------------------------------------------------------------------


class _EngineLike:
    """What the dispatch needs of a backend, with CAMs from CamModel (as ONNX Runtime and TensorRT return them)."""

    name = "engine"

    def __init__(self, spec, model, cams: bool = True):
        self.spec, self.supports_cams, self.calls = spec, cams, 0
        self._cam_model = CamModel(model).eval()

    def predict_with_cams(self, batch):
        self.calls += 1
        with torch.no_grad():
            probs, cams = self._cam_model(torch.from_numpy(batch))
        return probs.numpy(), cams.numpy() if self.supports_cams else None

    def predict(self, batch):
        return self.predict_with_cams(batch)[0]


def test_stage_explainer_uses_the_engines_cams_and_the_checkpoint_for_the_rest(tiny_models):
    spec, model = load_stage(tiny_models[1])
    engine = _EngineLike(spec, model)
    ex = StageExplainer(engine)
    image = make_knee_like(3, (300, 200))  # any size: maps come at the input resolution
    fast = ex.maps(image, "fast", [2, 1])
    assert fast.engine == "engine" and engine.calls == 1 and list(fast.maps) == [2, 1]
    assert all(m.shape == (TINY_RES, TINY_RES) for m in fast.maps.values())
    reference = Explainer(model).explain_targets(ex.batch(image), "fast", [1, 2])
    for c in (1, 2):
        np.testing.assert_allclose(fast.maps[c], reference[c].maps[0], atol=1e-6)
    grad = ex.maps(image, "gradcam", [1])
    assert grad.engine == "PyTorch" and grad.method == "gradcam" and engine.calls == 1
    assert ex.torch_explainer() is ex.torch_explainer()  # loaded once
    no_cams = StageExplainer(_EngineLike(spec, model, cams=False)).maps(image, "fast", [0])
    assert no_cams.engine == "PyTorch" and no_cams.method == "fast"


def test_stage_explainer_faithfulness_and_its_random_baseline(tiny_models):
    spec, model = load_stage(tiny_models[0])
    ex = StageExplainer(_EngineLike(spec, model))
    image = make_knee_like(4)
    cam = ex.maps(image, "fast", [0]).maps[0]
    score = ex.faithfulness(image, cam, 0)
    base = ex.random_baseline(image)
    assert base.mean.shape == base.std.shape == (NUM_CLASSES,)
    assert -1 <= score <= 1 and (np.abs(base.mean) <= 1).all() and (base.std >= 0).all()
    assert ex.faithfulness(image, cam, 0) == score and ex.random_baseline(image) == base
    alone = removal_scores(ex.backend.predict, ex.batch(image)[0], random_maps(TINY_RES), 2)
    np.testing.assert_allclose(base.mean[2], alone.mean())  # one batch for all classes, the same numbers
