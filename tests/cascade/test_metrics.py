import numpy as np
import pytest
from sklearn import metrics as skm

from cascade.metrics import abnormal_sensitivity, classification_report, confusion_matrix, roc_auc_binary


@pytest.fixture()
def data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    scores = rng.dirichlet([1, 1, 1], size=300)
    scores[np.arange(300), y] += rng.random(300)  # informative but imperfect
    scores /= scores.sum(1, keepdims=True)
    scores = np.round(scores, 2)  # ties, to exercise average ranks
    return y, scores.argmax(1), scores


def test_confusion_matrix_matches_sklearn(data):
    y, pred, _ = data
    np.testing.assert_array_equal(confusion_matrix(y, pred, 3), skm.confusion_matrix(y, pred, labels=[0, 1, 2]))


def test_report_matches_sklearn(data):
    y, pred, scores = data
    r = classification_report(y, pred, ["normal", "osteopenia", "osteoporosis"], scores, normal_index=0)
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert r["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert r["macro_f2"] == pytest.approx(skm.fbeta_score(y, pred, beta=2, average="macro"))
    sens = skm.recall_score(y, pred, average=None)
    assert list(r["sensitivity"].values()) == pytest.approx(sens)
    for c in range(3):
        spec = skm.recall_score(y != c, pred != c)
        assert r["specificity"][r["classes"][c]] == pytest.approx(spec)
    auc = [skm.roc_auc_score(y == c, scores[:, c]) for c in range(3)]  # one-vs-rest, with tied scores
    assert list(r["roc_auc_ovr"].values()) == pytest.approx(auc)
    assert r["macro_roc_auc"] == pytest.approx(np.mean(auc))
    assert r["abnormal_sensitivity"] == pytest.approx(skm.recall_score(y != 0, pred != 0))


def test_auc_one_class_is_nan_and_degenerate_cases():
    assert np.isnan(roc_auc_binary(np.ones(5, bool), np.arange(5)))
    assert roc_auc_binary(np.array([0, 0, 1, 1], bool), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert np.isnan(abnormal_sensitivity(np.zeros(4, int), np.zeros(4, int), 0))
