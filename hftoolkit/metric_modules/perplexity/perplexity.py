"""Perplexity as an `evaluate` module: exp of the mean negative log-likelihood over the scored tokens.

Takes per-token losses the caller already computed (with the model it is evaluating), unlike the Hub's
`perplexity` measurement, which loads a model by name itself.
"""

import datasets
import evaluate
import numpy as np

IGNORE_INDEX = -100
_DESCRIPTION = (
    "Perplexity: exp(mean negative log-likelihood) over the tokens a causal LM was scored on; tokens whose reference "
    "is -100 (prompt, padding) are left out (shipped with hftoolkit)."
)
_KWARGS = """
Args:
    predictions (list of float): negative log-likelihood (natural log) the model gave each reference token.
    references (list of int): the reference token ids, aligned with predictions; -100 marks tokens not scored.
Returns:
    perplexity (float): exp of the mean negative log-likelihood over the scored tokens.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        nll, refs = np.asarray(predictions, dtype=np.float64), np.asarray(references)
        scored = refs != IGNORE_INDEX
        if not scored.any():
            return {"perplexity": float("nan")}
        return {"perplexity": float(np.exp(nll[scored].mean()))}
