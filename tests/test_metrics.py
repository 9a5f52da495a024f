import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from genctr.metrics import calibration, evaluate_predictions, gauc, paired_t_test


@pytest.fixture()
def predictions():
    rng = np.random.default_rng(0)
    label = (rng.random(3000) < 0.3).astype(float)
    prob = np.clip(0.3 + 0.3 * (label - 0.3) + rng.normal(0, 0.2, 3000), 0.01, 0.99)
    group = rng.integers(0, 40, 3000)
    return label, prob, group


def test_auc_and_logloss_agree_with_scikit_learn(predictions):
    label, prob, group = predictions
    result = evaluate_predictions(label, prob)
    assert result["auc"] == pytest.approx(roc_auc_score(label, prob), abs=1e-12)
    assert result["logloss"] == pytest.approx(log_loss(label, prob), abs=1e-12)


def test_gauc_is_the_row_weighted_mean_of_per_group_aucs(predictions):
    label, prob, group = predictions
    group[:50] = 999  # a group with...
    label[:50] = 1.0  # ...a single class is left out
    aucs, weights = [], []
    for g in np.unique(group):
        mask = group == g
        if 0 < label[mask].sum() < mask.sum():
            aucs.append(roc_auc_score(label[mask], prob[mask]))
            weights.append(mask.sum())
    assert gauc(label, prob, group) == pytest.approx(np.average(aucs, weights=weights), abs=1e-12)


def test_calibration(predictions):
    label, prob, _ = predictions
    result = calibration(label, prob, bins=10)
    assert result["predicted_over_observed"] == pytest.approx(prob.mean() / label.mean())
    which = np.minimum((prob * 10).astype(int), 9)
    ece = sum(abs(prob[which == b].mean() - label[which == b].mean()) * (which == b).sum()
              for b in range(10) if (which == b).any()) / len(label)
    assert result["ece"] == pytest.approx(ece)


def test_segments(predictions):
    label, prob, _ = predictions
    mask = np.zeros(len(label), bool)
    mask[:1000] = True
    seg = evaluate_predictions(label, prob, segments={"first": mask})["segments"]["first"]
    assert seg["rows"] == 1000
    assert seg["auc"] == pytest.approx(roc_auc_score(label[:1000], prob[:1000]))


def test_paired_t_test():
    from scipy import stats

    a, b = [0.9840, 0.9843, 0.9838], [0.9830, 0.9836, 0.9831]
    result = paired_t_test(a, b)
    assert result["p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert result["mean_diff"] == pytest.approx(np.mean(a) - np.mean(b))
