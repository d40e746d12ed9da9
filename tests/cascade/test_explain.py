"""The explanation library: fast CAM equals Grad-CAM, every method runs, threads do not mix, metrics are sane."""

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
    FAITHFULNESS_METRICS,
    METHODS,
    CamResult,
    Explainer,
    ExplainError,
    faithfulness,
    method_key,
    model_lock,
    scale_maps,
)
from cascade.fastcam import CamModel
from cascade.models import create_model, feature_layer, load_state_dict
from cascade.preprocess import preprocess_batch
from sample_images.generate import render_knee
from tests.conftest import TINY_RES, make_knee_like

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


# ---- faithfulness --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", FAITHFULNESS_METRICS)
@pytest.mark.parametrize("arch", ARCHS)
def test_faithfulness_gives_one_finite_score_per_image(explainers, arch, metric):
    x = _random_batch(50, 2)
    explainer = explainers[arch]
    result = explainer.explain(x, "fast")
    scores = explainer.faithfulness(x, result, metric)
    assert scores.shape == (2,) and scores.dtype == np.float32
    assert np.isfinite(scores).all() and (np.abs(scores) <= 1.0).all()
    np.testing.assert_array_equal(scores, explainer.faithfulness(x, result, metric))  # seeded: same map, same score


def test_confidence_change_of_an_all_ones_map_is_zero(explainers):
    """Multiplying the image by 1 changes nothing, so the confidence cannot change: the metric measures the map."""
    x = _random_batch(51, 2)
    explainer = explainers["resnet18"]
    ones = np.ones((2, TINY_RES, TINY_RES), np.float32)
    scores = faithfulness(explainer.model, x, ones, [0, 1], "confidence_change")
    np.testing.assert_allclose(scores, 0.0, atol=1e-6)
    zeros = faithfulness(explainer.model, x, np.zeros_like(ones), [0, 1], "confidence_change")
    assert np.abs(zeros).max() > 1e-4  # a mean-gray image does change it


def test_faithfulness_refuses_bad_arguments(explainers):
    model, x = explainers["resnet18"].model, _random_batch(52, 2)
    cams = np.zeros((2, TINY_RES, TINY_RES), np.float32)
    with pytest.raises(ExplainError, match="road"):
        faithfulness(model, x, cams, [0, 0], "deletion")
    with pytest.raises(ExplainError, match="maps"):
        faithfulness(model, x, cams[:1], [0, 0])
    with pytest.raises(ExplainError, match="target"):
        faithfulness(model, x, cams, [0])
