"""Precision / recall / F1 arithmetic shared by the three shipped evaluate modules of those names.

The module files stay tiny and import this through the installed `hftoolkit` package (evaluate copies only the
module file into its cache, but resolves library imports normally), so the arithmetic exists once.
Plain numpy: no scikit-learn dependency. Zero division gives 0, as scikit-learn's zero_division=0 does.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

KWARGS_DOC = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
    labels (list of int): labels to include (default: all labels seen in predictions or references).
    pos_label (int): the positive class when average='binary'. Default 1.
    average (str): 'binary' (default), 'macro', 'micro', 'weighted', or None for per-class scores.
Returns:
    the score (float, or list of floats when average is None)
"""


def _scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"precision": precision, "recall": recall, "f1": ratio(2 * precision * recall, precision + recall)}


def compute(kind: str, predictions, references, labels=None, pos_label=1, average="binary"):
    p, r = np.asarray(predictions), np.asarray(references)
    if average == "binary":
        labels = [pos_label]
    elif labels is None:
        labels = sorted(set(p.tolist()) | set(r.tolist()))
    tp = np.array([np.sum((p == c) & (r == c)) for c in labels], dtype=float)
    fp = np.array([np.sum((p == c) & (r != c)) for c in labels], dtype=float)
    fn = np.array([np.sum((p != c) & (r == c)) for c in labels], dtype=float)
    support = np.array([np.sum(r == c) for c in labels], dtype=float)
    if average == "micro":
        return float(_scores(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))[kind][0])
    per_class = _scores(tp, fp, fn)[kind]
    if average is None:
        return per_class.tolist()
    if average == "weighted":
        return float(np.sum(per_class * support) / support.sum()) if support.sum() else 0.0
    if average in ("macro", "binary"):
        return float(per_class.mean()) if len(per_class) else 0.0
    raise ValueError(f"average must be binary, macro, micro, weighted or None, got {average!r}")


class PRFMetric(evaluate.Metric):
    """Base of the f1/precision/recall modules; subclasses set `kind`."""

    kind = ""

    def _info(self):
        return evaluate.MetricInfo(
            description=f"{self.kind} for classification (shipped with hftoolkit). Zero division gives 0.",
            citation="",
            inputs_description=KWARGS_DOC,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary"):
        return {self.kind: compute(self.kind, predictions, references, labels, pos_label, average)}
