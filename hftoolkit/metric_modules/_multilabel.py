"""What the shipped multi-label modules (multilabel_f1, exact_match_accuracy) share: multi-hot vector inputs.

Imported by the module files through the installed `hftoolkit` package, as _prf is.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

KWARGS = """
Args:
    predictions (list of list of int): predicted multi-hot vectors (1 = label assigned), one per example.
    references (list of list of int): reference multi-hot vectors, same shape.
Returns:
    {returns}
"""


def info(description: str, returns: str) -> evaluate.MetricInfo:
    vector = datasets.Sequence(datasets.Value("int64"))
    return evaluate.MetricInfo(
        description=description, citation="", inputs_description=KWARGS.format(returns=returns),
        features=datasets.Features({"predictions": vector, "references": vector}),
    )


def as_bool(predictions, references) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(predictions, dtype=bool), np.asarray(references, dtype=bool)
