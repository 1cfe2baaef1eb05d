"""What the shipped regression modules (mse, pearsonr, spearmanr) share: float inputs, and correlations via scipy.

A constant input has no defined correlation (scipy returns nan); it is reported as 0, because run files are JSON,
which cannot hold nan, and a constant prediction shows no relation to the references. Imported by the module files
through the installed `hftoolkit` package, as _prf is.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np
from scipy import stats

CORRELATION_KWARGS = """
Args:
    predictions (list of float): predicted values.
    references (list of float): reference values.
    return_pvalue (bool): also return the two-sided p-value. Default False.
Returns:
    the coefficient (float), and p-value (float) when asked
"""


def info(description: str, inputs_description: str) -> evaluate.MetricInfo:
    floats = datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")})
    return evaluate.MetricInfo(description=description, citation="", inputs_description=inputs_description, features=floats)


def arrays(predictions, references) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)


class CorrelationMetric(evaluate.Metric):
    """Base of pearsonr / spearmanr; `kind` names the scipy.stats function and the output key."""

    kind = ""
    title = ""

    def _info(self):
        return info(f"{self.title} between predictions and references (shipped with hftoolkit).", CORRELATION_KWARGS)

    def _compute(self, predictions, references, return_pvalue=False):
        p, r = arrays(predictions, references)
        if len(p) < 2 or np.ptp(p) == 0 or np.ptp(r) == 0:
            coefficient, pvalue = 0.0, 1.0
        else:
            result = getattr(stats, self.kind)(r, p)
            coefficient, pvalue = float(result.statistic), float(result.pvalue)
        return {self.kind: coefficient, **({"p-value": pvalue} if return_pvalue else {})}
