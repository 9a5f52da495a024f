"""Metrics: AUC, logloss, gAUC, calibration, per-segment metrics, paired tests over seeds."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from scipy import stats
from sklearn.metrics import log_loss, roc_auc_score

EPS = 1e-7


def auc(label: np.ndarray, prob: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present."""
    if len(np.unique(label)) < 2:
        return float("nan")
    return float(roc_auc_score(label, prob))


def logloss(label: np.ndarray, prob: np.ndarray) -> float:
    return float(log_loss(label, np.clip(prob, EPS, 1 - EPS), labels=[0, 1]))


def gauc(label: np.ndarray, prob: np.ndarray, group: np.ndarray) -> float:
    """Row-weighted mean of per-group AUCs over groups holding both classes.

    Vectorised: per-group average ranks give each group's Mann-Whitney AUC in one pass.
    """
    frame = pl.DataFrame({"g": group, "y": label.astype(np.float64), "p": prob})
    per_group = (frame.with_columns(r=pl.col("p").rank("average").over("g"))
                 .group_by("g")
                 .agg(n=pl.len(), pos=pl.col("y").sum(),
                      rank_pos=(pl.col("r") * pl.col("y")).sum())
                 .with_columns(neg=pl.col("n") - pl.col("pos"))
                 .filter((pl.col("pos") > 0) & (pl.col("neg") > 0))
                 .with_columns(auc=(pl.col("rank_pos") - pl.col("pos") * (pl.col("pos") + 1) / 2)
                               / (pl.col("pos") * pl.col("neg"))))
    if per_group.height == 0:
        return float("nan")
    weights = per_group["n"].to_numpy()
    return float(np.average(per_group["auc"].to_numpy(), weights=weights))


def calibration(label: np.ndarray, prob: np.ndarray, bins: int = 15) -> dict[str, float]:
    """Predicted over observed CTR, and the expected calibration error over equal-width bins."""
    which = np.minimum((prob * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    mean_prob = np.bincount(which, weights=prob, minlength=bins)
    mean_label = np.bincount(which, weights=label, minlength=bins)
    filled = counts > 0
    ece = np.sum(np.abs(mean_prob[filled] - mean_label[filled])) / len(label)
    observed = label.mean()
    return {"predicted_over_observed": float(prob.mean() / observed) if observed else float("nan"),
            "ece": float(ece)}


def evaluate_predictions(label: np.ndarray, prob: np.ndarray, group: np.ndarray | None = None,
                         segments: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Every metric of one split: auc, logloss, gauc, calibration, and per-segment auc/logloss."""
    label = np.asarray(label, dtype=np.float64)
    prob = np.asarray(prob, dtype=np.float64)
    result: dict[str, Any] = {"auc": auc(label, prob), "logloss": logloss(label, prob),
                              "rows": int(len(label))}
    if group is not None:
        result["gauc"] = gauc(label, prob, np.asarray(group))
    result |= calibration(label, prob)
    result["segments"] = {
        name: {"auc": auc(label[mask], prob[mask]),
               "logloss": logloss(label[mask], prob[mask]) if mask.any() else float("nan"),
               "rows": int(mask.sum()), "positives": int(label[mask].sum())}
        for name, mask in (segments or {}).items()
    }
    return result


def paired_t_test(a: list[float], b: list[float]) -> dict[str, float]:
    """Paired t-test of a vs b over the same seeds: mean difference and two-sided p-value."""
    if len(a) != len(b) or len(a) < 2:
        return {"mean_diff": float(np.mean(a) - np.mean(b)) if a and b else float("nan"),
                "p_value": float("nan"), "n": len(a)}
    diff = np.asarray(a) - np.asarray(b)
    p = float(stats.ttest_rel(a, b).pvalue) if np.any(diff != diff[0]) else (
        0.0 if diff[0] != 0 else 1.0)
    return {"mean_diff": float(diff.mean()), "p_value": p, "n": len(a)}
