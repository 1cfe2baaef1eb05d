"""Next-token accuracy as an `evaluate` module: share of scored tokens where the model's top prediction is right."""

import datasets
import evaluate
import numpy as np

IGNORE_INDEX = -100
_DESCRIPTION = (
    "Next-token accuracy: the share of scored tokens for which the causal LM's most likely next token is the reference "
    "token; tokens whose reference is -100 (prompt, padding) are left out (shipped with hftoolkit)."
)
_KWARGS = """
Args:
    predictions (list of int): the model's most likely token at each position, aligned with references.
    references (list of int): the reference token ids; -100 marks tokens not scored.
Returns:
    next_token_accuracy (float)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class NextTokenAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        p, r = np.asarray(predictions), np.asarray(references)
        scored = r != IGNORE_INDEX
        if not scored.any():
            return {"next_token_accuracy": float("nan")}
        return {"next_token_accuracy": float((p[scored] == r[scored]).mean())}
