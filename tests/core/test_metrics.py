import numpy as np
import pytest

from fakescope.metrics import binary_metrics, expected_calibration_error, roc_auc


def test_roc_auc_known_values() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    # One inversion out of four pairs; ties count one half.
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.5, 0.9])) == 0.75
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5


def test_binary_metrics_confusion_and_scores() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.7, 0.9, 0.8, 0.3])
    m = binary_metrics(labels, probs)
    assert m["confusion"] == [[2, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)


def test_ece_zero_when_confidence_matches_accuracy() -> None:
    labels = np.array([1] * 8 + [0] * 2)
    assert expected_calibration_error(labels, np.full(10, 0.8)) == pytest.approx(0.0)
    # Always 100% confident, right half the time: ECE is 0.5.
    assert expected_calibration_error(np.array([1, 0]), np.array([1.0, 1.0])) == pytest.approx(0.5)


def test_domain_metrics_count_confident_wrong_answers_and_flags() -> None:
    from fakescope.metrics import domain_metrics

    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([0.95, 0.4, 0.05, 0.6, 0.99])  # wrong+sure, right, wrong+sure, right, right+sure
    in_domain = np.array([False, True, True, True, True])
    m = domain_metrics(labels, probs, in_domain)
    assert m["flagged"] == pytest.approx(0.2)
    assert m["confident_wrong"] == pytest.approx(0.4)
    assert m["confident_wrong_unflagged"] == pytest.approx(0.2)  # the first is flagged
    assert m["in_domain_metrics"]["n"] == 4
