"""F1 as an `evaluate` module (binary, macro, micro or weighted averaging); arithmetic in hftoolkit's _prf."""

from hftoolkit.metric_modules import _prf


class F1(_prf.PRFMetric):
    kind = "f1"
