"""seqeval as an `evaluate` module: entity-level precision / recall / F1 per entity type and overall, token accuracy.

The same inputs and outputs as the Hub's `seqeval` module (tag sequences in; a dict per entity type plus
overall_precision / overall_recall / overall_f1 / overall_accuracy out), shipped so it works offline and is pinned
to this package. With a `scheme` it scores in seqeval's strict mode: an entity counts only when its tags form a
valid span in that scheme, exactly as `hft predict` reads spans.
"""

import datasets
import evaluate
from seqeval import scheme as seqeval_schemes
from seqeval.metrics import accuracy_score, classification_report

_DESCRIPTION = (
    "seqeval: entity-level precision, recall and F1 (per entity type and micro-averaged overall) and token accuracy "
    "for sequence labelling in IOB-style schemes (shipped with hftoolkit)."
)
_KWARGS = """
Args:
    predictions (list of list of str): predicted tags, one list per sequence.
    references (list of list of str): reference tags, aligned with predictions.
    suffix (bool): tags are TYPE-B instead of B-TYPE. Default False.
    scheme (str): IOB1, IOB2, IOE1, IOE2, IOBES or BILOU: score in strict mode with that scheme. Default None
        (seqeval's lenient conlleval-style mode).
    mode (str): 'strict' or None; a scheme implies strict.
    sample_weight (list of float): optional per-sequence weights.
    zero_division (0, 1 or "warn"): the value of an undefined precision/recall. Default "warn" (0 with a warning).
Returns:
    {TYPE: {precision, recall, f1, number}} per entity type, and overall_precision, overall_recall, overall_f1,
    overall_accuracy (token accuracy).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Seqeval(evaluate.Metric):
    def _info(self):
        tags = datasets.Sequence(datasets.Value("string", id="label"), id="sequence")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Nakayama, seqeval: a Python framework for sequence labeling evaluation (2018)",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": tags, "references": tags}),
        )

    def _compute(self, predictions, references, suffix=False, scheme=None, mode=None, sample_weight=None, zero_division="warn"):
        scheme_class = None
        if scheme is not None:
            scheme_class = getattr(seqeval_schemes, scheme, None)
            if not (isinstance(scheme_class, type) and issubclass(scheme_class, seqeval_schemes.Token)):
                raise ValueError(f"scheme must be one of IOB1, IOB2, IOE1, IOE2, IOBES, BILOU, got {scheme!r}")
            mode = "strict"
        report = classification_report(
            y_true=references, y_pred=predictions, suffix=suffix, output_dict=True, scheme=scheme_class, mode=mode,
            sample_weight=sample_weight, zero_division=zero_division,
        )
        report.pop("macro avg", None)
        report.pop("weighted avg", None)
        overall = report.pop("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
        scores = {
            entity_type: {"precision": float(s["precision"]), "recall": float(s["recall"]), "f1": float(s["f1-score"]),
                          "number": int(s["support"])}
            for entity_type, s in report.items()
        }
        scores["overall_precision"] = float(overall["precision"])
        scores["overall_recall"] = float(overall["recall"])
        scores["overall_f1"] = float(overall["f1-score"])
        scores["overall_accuracy"] = float(accuracy_score(y_true=references, y_pred=predictions))
        return scores
