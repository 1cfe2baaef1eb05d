"""Multi-label F1 as an `evaluate` module: micro and macro F1 over multi-hot label vectors.

Micro F1 pools every (example, label) decision; macro F1 is the mean of the per-label F1s, so rare labels weigh as
much as common ones. The arithmetic (zero division gives 0) is hftoolkit's _prf, shared with f1/precision/recall.
"""

import numpy as np

import evaluate
from hftoolkit.metric_modules import _multilabel, _prf


class MultilabelF1(evaluate.Metric):
    def _info(self):
        return _multilabel.info("Micro and macro F1 for multi-label classification (shipped with hftoolkit).", "f1_micro, f1_macro (float)")

    def _compute(self, predictions, references):
        p, r = _multilabel.as_bool(predictions, references)
        tp, fp, fn = ((p & r).sum(0).astype(float), (p & ~r).sum(0).astype(float), (~p & r).sum(0).astype(float))
        per_label = _prf._scores(tp, fp, fn)["f1"]
        pooled = _prf._scores(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))["f1"]
        return {"f1_micro": float(pooled[0]), "f1_macro": float(per_label.mean()) if per_label.size else 0.0}
