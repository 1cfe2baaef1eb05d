"""Mean squared error as an `evaluate` module (regression), with the Hub `mse` module's inputs and output key."""

import numpy as np

import evaluate
from hftoolkit.metric_modules import _regression

_DESCRIPTION = "Mean squared error between predicted and reference numbers (shipped with hftoolkit)."
_KWARGS = """
Args:
    predictions (list of float): predicted values.
    references (list of float): reference values.
    squared (bool): False returns the root mean squared error instead. Default True.
Returns:
    mse (float)
"""


class Mse(evaluate.Metric):
    def _info(self):
        return _regression.info(_DESCRIPTION, _KWARGS)

    def _compute(self, predictions, references, squared=True):
        p, r = _regression.arrays(predictions, references)
        mse = float(np.mean((p - r) ** 2)) if len(p) else 0.0
        return {"mse": mse if squared else float(np.sqrt(mse))}
