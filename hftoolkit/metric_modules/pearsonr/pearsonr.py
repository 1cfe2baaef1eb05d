"""Pearson correlation as an `evaluate` module (regression, STS-B style): scipy.stats.pearsonr via hftoolkit's
_regression (a constant input gives 0, not nan)."""

from hftoolkit.metric_modules import _regression


class Pearsonr(_regression.CorrelationMetric):
    kind = "pearsonr"
    title = "Pearson correlation coefficient"
