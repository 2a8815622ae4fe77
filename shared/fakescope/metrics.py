"""Binary detection metrics, with "fake" as the positive class, on plain numpy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["binary_metrics", "expected_calibration_error", "roc_auc"]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank statistic (ties get their average rank)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average ranks over runs of equal scores.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def expected_calibration_error(labels: np.ndarray, fake_prob: np.ndarray, n_bins: int = 15) -> float:
    """ECE of the predicted class's confidence, over ``n_bins`` equal-width confidence bins."""
    labels = np.asarray(labels).astype(int)
    fake_prob = np.asarray(fake_prob, dtype=np.float64)
    pred = (fake_prob >= 0.5).astype(int)
    conf = np.where(pred == 1, fake_prob, 1.0 - fake_prob)
    correct = (pred == labels).astype(np.float64)
    bins = np.linspace(0.5, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, bins[1:-1]), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def binary_metrics(labels: np.ndarray, fake_prob: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, ROC-AUC, confusion matrix and ECE.

    Args:
        labels: 0 for real, 1 for fake.
        fake_prob: the predicted probability of fake.
        threshold: the probability at or above which an image is called fake.

    Returns:
        A JSON-ready dict; ``confusion`` is ``[[TN, FP], [FN, TP]]`` (rows: true real, true fake).
    """
    labels = np.asarray(labels).astype(int)
    fake_prob = np.asarray(fake_prob, dtype=np.float64)
    pred = (fake_prob >= threshold).astype(int)
    tp = int(((pred == 1) & (labels == 1)).sum())
    tn = int(((pred == 0) & (labels == 0)).sum())
    fp = int(((pred == 1) & (labels == 0)).sum())
    fn = int(((pred == 0) & (labels == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": len(labels),
        "accuracy": (tp + tn) / len(labels) if len(labels) else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": roc_auc(labels, fake_prob),
        "ece": expected_calibration_error(labels, fake_prob),
        "confusion": [[tn, fp], [fn, tp]],
    }


def domain_metrics(
    labels: np.ndarray, fake_prob: np.ndarray, in_domain: np.ndarray, confident: float = 0.9
) -> dict[str, Any]:
    """How honest the verdicts are about what the detector knows.

    Args:
        labels: 0 for real, 1 for fake.
        fake_prob: the predicted probability of fake.
        in_domain: whether each image was scored in domain (fakescope.domain).
        confident: a verdict is confident when ``p > confident`` or ``p < 1 - confident``.

    Returns:
        ``flagged`` (share out of domain), ``confident_wrong`` (share of all images given a
        confident wrong verdict), ``confident_wrong_unflagged`` (those of them still in domain: the
        answers that mislead), and the metrics of the in-domain images alone.
    """
    labels = np.asarray(labels).astype(int)
    fake_prob = np.asarray(fake_prob, dtype=np.float64)
    in_domain = np.asarray(in_domain, dtype=bool)
    wrong = (fake_prob >= 0.5).astype(int) != labels
    sure = (fake_prob > confident) | (fake_prob < 1.0 - confident)
    n = max(1, len(labels))
    return {
        "flagged": float((~in_domain).sum() / n),
        "confident_wrong": float((wrong & sure).sum() / n),
        "confident_wrong_unflagged": float((wrong & sure & in_domain).sum() / n),
        "in_domain_metrics": binary_metrics(labels[in_domain], fake_prob[in_domain]) if in_domain.any() else None,
    }
