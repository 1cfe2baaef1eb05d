"""Recall as an `evaluate` module: per-class counts averaged as binary, macro, micro or weighted.

Kept self-contained (evaluate.load copies only this file), and written with numpy so it needs no scikit-learn.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Recall for classification (shipped with hftoolkit). Zero-division gives 0."
_KWARGS = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
    labels (list of int): labels to include (default: all labels seen in predictions or references).
    pos_label (int): the positive class when average='binary'. Default 1.
    average (str): 'binary' (default), 'macro', 'micro', 'weighted', or None for per-class scores.
Returns:
    recall (float, or list of floats when average is None)
"""


def _per_class(p, r, labels):
    tp = np.array([np.sum((p == c) & (r == c)) for c in labels], dtype=float)
    fp = np.array([np.sum((p == c) & (r != c)) for c in labels], dtype=float)
    fn = np.array([np.sum((p != c) & (r == c)) for c in labels], dtype=float)
    support = np.array([np.sum(r == c) for c in labels], dtype=float)
    return tp, fp, fn, support


def _score(tp, fp, fn):
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1e-300), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1}["recall"]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Recall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary"):
        p, r = np.asarray(predictions), np.asarray(references)
        if average == "binary":
            labels = [pos_label]
        elif labels is None:
            labels = sorted(set(p.tolist()) | set(r.tolist()))
        tp, fp, fn, support = _per_class(p, r, labels)
        if average == "micro":
            value = float(_score(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))[0])
        else:
            per_class = _score(tp, fp, fn)
            if average is None:
                return {"recall": per_class.tolist()}
            if average == "weighted":
                value = float(np.sum(per_class * support) / support.sum()) if support.sum() else 0.0
            elif average in ("macro", "binary"):
                value = float(per_class.mean()) if len(per_class) else 0.0
            else:
                raise ValueError(f"average must be binary, macro, micro, weighted or None, got {average!r}")
        return {"recall": value}
