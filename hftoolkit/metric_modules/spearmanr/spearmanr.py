"""Spearman rank correlation as an `evaluate` module (regression, STS-B style): scipy.stats.spearmanr via hftoolkit's
_regression (a constant input gives 0, not nan)."""

from hftoolkit.metric_modules import _regression


class Spearmanr(_regression.CorrelationMetric):
    kind = "spearmanr"
    title = "Spearman rank correlation coefficient"
