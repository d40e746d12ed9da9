"""Calibration: scores against hand-computed values, temperature scaling recovering a known over-confidence, the
[calibration] config table, and temperatures applied by the cascade and derived from cached raw predictions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from cascade.calibration import (
    CalibrationError,
    CalibrationSettings,
    apply_temperature,
    binary_brier,
    binary_nll,
    brier,
    calibration_report,
    class_bins,
    fit_temperature,
    nll,
    reliability_bins,
    top_label_bins,
)
from cascade.checkpoint import StageSpec
from cascade.config import load_config, save_calibration, save_gate
from cascade.errors import ConfigError
from cascade.pipeline import Cascade
from cascade.predcache import Predictions, load_predictions, save_predictions

P = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.2, 0.2, 0.6]])
Y = np.array([0, 0, 2])


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------------------
# Scores by hand


def test_nll_and_brier_by_hand():
    assert nll(P, Y) == pytest.approx(-(math.log(0.7) + math.log(0.4) + math.log(0.6)) / 3)
    # rows: 0.3² + 0.2² + 0.1² = 0.14; 0.6² + 0.5² + 0.1² = 0.62; 0.2² + 0.2² + 0.4² = 0.24
    assert brier(P, Y) == pytest.approx((0.14 + 0.62 + 0.24) / 3)


def test_p_normal_scores_by_hand():
    p, normal = P[:, 0], Y == 0  # P(normal) = 0.7, 0.4, 0.2; normal, normal, not
    assert binary_brier(p, normal) == pytest.approx((0.3**2 + 0.6**2 + 0.2**2) / 3)
    assert binary_nll(p, normal) == pytest.approx(-(math.log(0.7) + math.log(0.4) + math.log(0.8)) / 3)


def test_top_label_ece_by_hand_equal_width():
    # top-label confidences 0.7 (right), 0.5 (wrong), 0.6 (right)
    ten = top_label_bins(P, Y, 10, "equal-width")
    assert ten.count.tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]  # (0.4, 0.5], (0.5, 0.6], (0.6, 0.7]
    assert ten.ece == pytest.approx((0.3 + 0.5 + 0.4) / 3)
    one = top_label_bins(P, Y, 1, "equal-width")
    assert one.ece == pytest.approx(abs(2 / 3 - 0.6))
    assert np.isnan(ten.confidence[0]) and ten.n == 3


def test_top_label_ece_by_hand_equal_mass():
    # sorted confidences 0.5, 0.6 | 0.7: bin 1 mean 0.55, accuracy 0.5; bin 2 mean 0.7, accuracy 1
    two = top_label_bins(P, Y, 2, "equal-mass")
    assert two.count.tolist() == [2, 1]
    assert two.ece == pytest.approx(2 / 3 * 0.05 + 1 / 3 * 0.3)
    assert two.lo[0] == 0.0 and two.hi[-1] == 1.0 and two.hi[0] == pytest.approx(0.65)
    assert top_label_bins(P, Y, 15, "equal-mass").count.tolist() == [1, 1, 1]  # never more bins than images


def test_bins_are_right_closed_and_cover_0_and_1():
    b = reliability_bins([0.0, 0.1, 0.1000001, 1.0], [0, 1, 1, 1], 10, "equal-width")
    assert b.count[0] == 2 and b.count[1] == 1 and b.count[9] == 1


def test_p_normal_reliability_is_one_vs_rest():
    b = class_bins(P, Y, 0, 2, "equal-width")  # 0.4, 0.2 in (0, 0.5] (one normal); 0.7 in (0.5, 1] (normal)
    assert b.count.tolist() == [2, 1]
    assert b.observed.tolist() == [0.5, 1.0]
    assert b.ece == pytest.approx(2 / 3 * abs(0.5 - 0.3) + 1 / 3 * 0.3)


def test_report_names_both_bin_kinds():
    r = calibration_report(P, Y, normal_index=0, n_bins=2)
    assert r["ece_top_label"]["equal_mass"] == pytest.approx(2 / 3 * 0.05 + 1 / 3 * 0.3)
    assert r["ece_top_label"]["equal_width"] == pytest.approx(0.5 / 3 + 2 / 3 * 0.35)
    assert r["p_normal"]["brier"] == pytest.approx(0.49 / 3)
    assert r["n"] == 3 and r["bins"] == 2


@pytest.mark.parametrize(
    "probs, labels",
    [(np.zeros((0, 3)), np.zeros(0)), (P, Y[:2]), (P, np.array([0, 0, 3])), (np.full((3, 3), np.nan), Y)],
)
def test_bad_inputs_are_calibration_errors(probs, labels):
    with pytest.raises(CalibrationError):
        nll(probs, labels)


def test_unknown_bin_strategy_is_refused():
    with pytest.raises(CalibrationError, match="equal-width"):
        reliability_bins([0.5], [1], 5, "quantile")


# ---------------------------------------------------------------------------------------------------------------------
# Temperature


def test_apply_temperature_is_stable_and_composes():
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.3, 0.2], [np.nan, np.nan, np.nan]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        soft = apply_temperature(p, 2.0)
    assert np.isfinite(soft[:2]).all() and np.isnan(soft[2]).all()
    assert np.allclose(soft[:2].sum(axis=1), 1.0)
    assert (soft[:2].argmax(axis=1) == p[:2].argmax(axis=1)).all()  # a temperature never changes the top class
    assert soft[1, 0] < 0.5  # T > 1 softens
    assert np.allclose(apply_temperature(apply_temperature(p[1:2], 2.0), 1.5), apply_temperature(p[1:2], 3.0))
    assert apply_temperature(p, 1.0) is not None and np.array_equal(apply_temperature(p[:2], 1.0), p[:2])
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(CalibrationError):
            apply_temperature(p, bad)


def test_fit_recovers_the_temperature_of_an_overconfident_model():
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 1.5, (20000, 3))
    truth = softmax(z)  # the calibrated generator: labels are drawn from it
    y = (rng.random(len(z))[:, None] > np.cumsum(truth, axis=1)).sum(axis=1)
    overconfident = softmax(3.0 * z)  # logits scaled ×3
    fit = fit_temperature(overconfident, y)
    assert fit.temperature == pytest.approx(3.0, rel=0.07)
    assert fit.nll_after < fit.nll_before and not fit.at_bound
    calibrated = apply_temperature(overconfident, fit.temperature)
    for strategy in ("equal-width", "equal-mass"):
        before = top_label_bins(overconfident, y, 15, strategy).ece
        after = top_label_bins(calibrated, y, 15, strategy).ece
        assert after < before / 3
        assert class_bins(calibrated, y, 0, 15, strategy).ece < class_bins(overconfident, y, 0, 15, strategy).ece


def test_fit_on_a_calibrated_model_stays_near_one_and_flags_a_bound():
    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 1.0, (20000, 3))
    p = softmax(z)
    y = (rng.random(len(z))[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    assert fit_temperature(p, y).temperature == pytest.approx(1.0, abs=0.06)
    # all right and already sure: the NLL keeps falling as T shrinks, so the fit ends at the lower bound
    assert fit_temperature(P[[0, 2]], Y[[0, 2]], bounds=(0.5, 4.0)).at_bound


# ---------------------------------------------------------------------------------------------------------------------
# The config table


def test_save_calibration_keeps_comments_and_load_config_reads_it(tiny_config, tmp_path):
    cfg_path = tmp_path / "cascade.toml"
    cfg_path.write_text(tiny_config.read_text())
    assert load_config(cfg_path).calibration == CalibrationSettings()
    assert load_config(cfg_path).temperatures == (1.0, 1.0)
    save_calibration(cfg_path, CalibrationSettings(True, 2.5, 1.25, "val split of /data (12 images)"))
    text = cfg_path.read_text()
    assert "# my comment" in text and 'keep = "me"' in text and "[calibration]" in text
    cfg = load_config(cfg_path)
    assert cfg.temperatures == (2.5, 1.25) and cfg.calibration.fitted_on.startswith("val split")
    assert cfg.calibration.describe() == "on (T₁ = 2.50, T₂ = 1.25)"
    save_gate(cfg_path, 0.4)  # saving the gate keeps the calibration
    save_calibration(cfg_path, CalibrationSettings(False, 2.5, 1.25, "val"))
    off = load_config(cfg_path)
    assert off.threshold == 0.4 and off.temperatures == (1.0, 1.0) and off.calibration.stage1_temperature == 2.5
    assert off.calibration.describe().startswith("off (")


@pytest.mark.parametrize(
    "table, match",
    [
        ("enabled = 1", "true or false"),
        ("stage1_temperature = 0", "positive"),
        ('stage2_temperature = "x"', "positive"),
    ],
)
def test_bad_calibration_tables_are_config_errors(tiny_config, tmp_path, table, match):
    cfg_path = tmp_path / "cascade.toml"
    cfg_path.write_text(tiny_config.read_text() + f"\n[calibration]\n{table}\n")
    with pytest.raises(ConfigError, match=match):
        load_config(cfg_path)


# ---------------------------------------------------------------------------------------------------------------------
# Applied by the cascade, derived from raw cached predictions


class FixedBackend:
    """A stage that answers the same probabilities for every image."""

    name = "fixed"

    def __init__(self, probs, tmp_path):
        self.spec = StageSpec("resnet18", ("normal", "osteopenia", "osteoporosis"), 32, tmp_path)
        self.probs = np.asarray(probs, dtype=np.float32)

    def predict(self, batch):
        return np.repeat(self.probs[None], len(batch), axis=0)


def test_cascade_applies_temperatures_in_run_stage_and_gates_on_them(tmp_path):
    b1, b2 = FixedBackend([0.7, 0.2, 0.1], tmp_path), FixedBackend([0.2, 0.7, 0.1], tmp_path)
    images = [np.zeros((40, 40), np.uint8)] * 2
    raw = Cascade(b1, b2, threshold=0.6)
    hot = Cascade(b1, b2, threshold=0.6, temperatures=(3.0, 2.0))
    assert np.allclose(raw.run_stage(1, images).probs[0], [0.7, 0.2, 0.1])
    assert np.allclose(hot.run_stage(1, images).probs[0], apply_temperature(np.array([[0.7, 0.2, 0.1]]), 3.0)[0])
    assert np.allclose(hot.run_stage(1, images, calibrated=False).probs[0], [0.7, 0.2, 0.1])
    # raw P(normal) 0.7 passes a 0.6 gate; softened by T = 3 it falls below and stage 2 decides
    assert np.isnan(raw.predict(images)[1]).all()
    p1, p2 = hot.predict(images)
    assert p1[0, 0] < 0.6 and np.allclose(p2[0], apply_temperature(np.array([[0.2, 0.7, 0.1]]), 2.0)[0], atol=1e-6)
    r1, r2 = hot.predict(images, stage2_always=True, calibrated=False)
    assert np.allclose(r1[0], [0.7, 0.2, 0.1]) and np.allclose(r2[0], [0.2, 0.7, 0.1])


def test_cached_predictions_are_raw_and_calibrated_ones_derived(tmp_path):
    raw = Predictions(
        p1=P.astype(np.float32),
        p2=P[::-1].astype(np.float32),
        labels=Y,
        rels=("a.png", "b.png", "c.png"),
        classes=("normal", "osteopenia", "osteoporosis"),
        split="val",
        key="k",
    )
    hot = raw.with_temperatures((2.0, 0.5))
    assert hot.temperatures == (2.0, 0.5)
    assert np.allclose(hot.p1, apply_temperature(P, 2.0), atol=1e-6)
    assert np.allclose(hot.p2, apply_temperature(P[::-1], 0.5), atol=1e-6)
    assert raw.with_temperatures((1.0, 1.0)) is raw
    back = hot.with_temperatures((1.0, 1.0))
    assert np.allclose(back.p1, P, atol=1e-5) and np.allclose(back.p2, P[::-1], atol=1e-5)
    save_predictions(hot, tmp_path / "k.npz")  # stored raw whatever was applied
    stored = load_predictions(tmp_path / "k.npz")
    assert stored.temperatures == (1.0, 1.0) and np.allclose(stored.p1, P, atol=1e-5)


def test_save_calibration_refuses_missing_and_invalid_configs(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        save_calibration(tmp_path / "nope.toml", CalibrationSettings(True, 2.0, 2.0, "x"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[stage1]\nmodel_dir = 'a'\n")  # no [stage2]
    with pytest.raises(ConfigError, match="stage2"):
        save_calibration(bad, CalibrationSettings(True, 2.0, 2.0, "x"))
    assert bad.read_text() == "[stage1]\nmodel_dir = 'a'\n"


def test_save_calibration_writes_like_save_gate_through_links_keeping_crlf(tiny_config, tmp_path):
    target = tmp_path / "real.toml"
    target.write_bytes(tiny_config.read_text().replace("\n", "\r\n").encode())
    link = tmp_path / "link.toml"
    link.symlink_to(target)
    save_calibration(link, CalibrationSettings(True, 1.5, 1.5, "val"))
    assert link.is_symlink() and b"\r\n[calibration]\r\n" in target.read_bytes()
    assert load_config(link).temperatures == (1.5, 1.5)
