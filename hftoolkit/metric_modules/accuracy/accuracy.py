"""Accuracy as an `evaluate` module: share of predictions equal to the reference label."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy: the share of predictions that equal the reference label (shipped with hftoolkit)."
_KWARGS = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
    normalize (bool): if False, return the number of correct predictions instead of the share. Default True.
    sample_weight (list of float): optional per-example weights.
Returns:
    accuracy (float or int)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        p, r = np.asarray(predictions), np.asarray(references)
        w = np.ones(len(p)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        correct = float(np.sum(w * (p == r)))
        if not normalize:
            return {"accuracy": int(correct) if sample_weight is None else correct}
        return {"accuracy": correct / float(np.sum(w)) if len(p) else 0.0}
