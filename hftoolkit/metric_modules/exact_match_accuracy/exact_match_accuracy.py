"""Exact-match (subset) accuracy as an `evaluate` module: the share of examples whose whole label set is right."""

import evaluate
from hftoolkit.metric_modules import _multilabel


class ExactMatchAccuracy(evaluate.Metric):
    def _info(self):
        return _multilabel.info(
            "Exact-match accuracy for multi-label classification: an example counts only when every label is decided "
            "right (shipped with hftoolkit).",
            "exact_match_accuracy (float)",
        )

    def _compute(self, predictions, references):
        p, r = _multilabel.as_bool(predictions, references)
        return {"exact_match_accuracy": float((p == r).all(axis=1).mean()) if len(p) else 0.0}
