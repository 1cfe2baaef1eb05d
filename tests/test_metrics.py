"""The shipped evaluate modules load offline through `evaluate.load(<folder>)` and compute the right numbers."""

from __future__ import annotations

import pytest

from hftoolkit import metrics

P = [0, 1, 2, 2, 1, 0, 1]
R = [0, 2, 2, 2, 1, 1, 1]


def _hand_prf(p, r, c):
    tp = sum(1 for a, b in zip(p, r) if a == c and b == c)
    fp = sum(1 for a, b in zip(p, r) if a == c and b != c)
    fn = sum(1 for a, b in zip(p, r) if a != c and b == c)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return prec, rec, f1


def test_accuracy():
    assert metrics.compute(["accuracy"], P, R) == {"accuracy": pytest.approx(5 / 7)}


def test_macro_and_binary_averages_match_hand_computation():
    out = metrics.compute(["precision", "recall", "f1"], P, R, num_labels=3)
    per = [_hand_prf(P, R, c) for c in range(3)]
    assert out["precision"] == pytest.approx(sum(x[0] for x in per) / 3)
    assert out["recall"] == pytest.approx(sum(x[1] for x in per) / 3)
    assert out["f1"] == pytest.approx(sum(x[2] for x in per) / 3)
    binary = metrics.compute(["f1"], [1, 0, 1, 1], [1, 0, 0, 1], num_labels=2)
    assert binary["f1"] == pytest.approx(_hand_prf([1, 0, 1, 1], [1, 0, 0, 1], 1)[2])


def test_micro_and_weighted():
    micro = metrics.compute(["f1"], P, R, num_labels=3, average="micro")
    assert micro["f1"] == pytest.approx(5 / 7)  # micro-F1 equals accuracy for single-label problems
    weighted = metrics.compute(["recall"], P, R, num_labels=3, average="weighted")
    assert weighted["recall"] == pytest.approx(5 / 7)  # support-weighted recall equals accuracy too


def test_shipped_modules_are_local_evaluate_modules():
    for name in metrics.SHIPPED:
        module = metrics.load_metric(name)
        assert module.name == name
