"""Precision as an `evaluate` module (binary, macro, micro or weighted averaging); arithmetic in hftoolkit's _prf."""

from hftoolkit.metric_modules import _prf


class Precision(_prf.PRFMetric):
    kind = "precision"
