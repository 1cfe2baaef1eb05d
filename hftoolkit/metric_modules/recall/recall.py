"""Recall as an `evaluate` module (binary, macro, micro or weighted averaging); arithmetic in hftoolkit's _prf."""

from hftoolkit.metric_modules import _prf


class Recall(_prf.PRFMetric):
    kind = "recall"
