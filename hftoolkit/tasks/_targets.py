"""Multi-label and regression targets for text classification: checking and encoding them, metrics, predictions.

The kind of problem follows the data and one opt-in: a label column holding a list of labels per row is multi-label
(sigmoid + BCE, one decision per label at `evaluation.threshold`); numbers with `dataset.regression: true` are
regression (one output, MSE). The names are transformers' `config.problem_type` values, which pick the loss and are
saved with the model, so `hft predict` reads the kind from the run's config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from hftoolkit import metrics as metric_lib
from hftoolkit.data import column_values
from hftoolkit.errors import DataError
from hftoolkit.tasks._classification import LABELS

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.run.records import DataReport

SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
REGRESSION = "regression"
DEFAULT_THRESHOLD = 0.5  # evaluation.threshold's default; also what predict uses where no recipe is at hand (an export)
DEFAULT_METRICS = {
    SINGLE_LABEL: ("accuracy", "f1"),
    MULTI_LABEL: ("multilabel_f1", "exact_match_accuracy"),
    REGRESSION: ("mse", "pearsonr", "spearmanr"),
}


def threshold_set(recipe: Recipe) -> bool:
    """The recipe sets evaluation.threshold (compared with the schema default, so a resolved recipe reads the same)."""
    return recipe.evaluation.threshold != type(recipe.evaluation).model_fields["threshold"].default


def problem_type(train: Dataset, column: str, recipe: Recipe) -> str:
    from datasets import LargeList, List

    if recipe.dataset.regression:
        return REGRESSION
    return MULTI_LABEL if isinstance(train.features[column], (List, LargeList)) else SINGLE_LABEL


# ----------------------------------------------------------------------------------------------------------------------
# Regression


def encode_regression(splits: dict[str, Dataset], column: str, report: DataReport) -> None:
    """Every label a number (integers become floats); cast to float32, the dtype of the model's output."""
    from datasets import Value

    for role, split in splits.items():
        dtype = getattr(split.features[column], "dtype", "")
        if not dtype.startswith(("float", "int", "uint")):
            raise DataError(
                f"dataset.regression: column {column!r} of split {role!r} has type {split.features[column]}; "
                "regression needs numbers"
            )
        values = column_values(split, column)
        for i, v in enumerate(values):
            if v is None or v != v:  # NaN is the only value unequal to itself
                raise DataError(f"split {role!r} row {i}: label {v!r} in column {column!r} is missing; regression needs a number")
        splits[role] = split.cast_column(column, Value("float32"))
        if values:
            mean = sum(values) / len(values)
            report.notes.append(f"regression target {column!r} ({role}): mean {mean:.4g}, min {min(values):.4g}, max {max(values):.4g}")


# ----------------------------------------------------------------------------------------------------------------------
# Multi-label


def encode_multi_labels(splits: dict[str, Dataset], recipe: Recipe) -> list[str]:
    """Check every row's list of labels and cast the column to a list of ClassLabel ids in place; returns the names."""
    from datasets import ClassLabel, List

    column = recipe.dataset.columns.label
    assert column is not None
    inner = splits["train"].features[column].feature
    rows = {role: column_values(split, column) for role, split in splits.items()}
    for role, values in rows.items():
        for i, v in enumerate(values):
            if v is None or any(x is None for x in v):
                raise DataError(f"split {role!r} row {i}: labels are missing (null) in column {column!r}")
    dtype = getattr(inner, "dtype", "")
    if isinstance(inner, ClassLabel):
        names = list(inner.names)
        if recipe.dataset.label_names is not None and recipe.dataset.label_names != names:
            raise DataError(f"dataset.label_names {recipe.dataset.label_names} differ from the dataset's own label names {names}")
    elif dtype in ("string", "large_string"):
        names = sorted({x for v in rows["train"] for x in v})
    elif dtype.startswith(("int", "uint")):
        top = max((x for v in rows["train"] for x in v), default=-1)
        names = list(recipe.dataset.label_names or [str(k) for k in range(top + 1)])
    else:
        raise DataError(f"column {column!r} holds lists of {inner}; multi-label classification needs lists of strings or integers")
    strings = dtype in ("string", "large_string")
    known = set(names) if strings else set(range(len(names)))
    for role, values in rows.items():
        for i, v in enumerate(values):
            bad = [x for x in v if x not in known]
            if bad:
                where = "does not occur in train" if strings else f"is outside the known labels 0..{len(names) - 1}"
                raise DataError(f"split {role!r} row {i}: label {bad[0]!r} in column {column!r} {where}")
    _check_label_count(names, recipe, column)
    for role in splits:
        splits[role] = splits[role].cast_column(column, List(ClassLabel(names=names)))
    return names


def _check_label_count(names: list[str], recipe: Recipe, column: str) -> None:
    if recipe.dataset.num_labels is not None and recipe.dataset.num_labels != len(names):
        raise DataError(f"dataset.num_labels is {recipe.dataset.num_labels} but the data has {len(names)} labels: {', '.join(names)}")
    if len(names) < 2:
        raise DataError(f"column {column!r} has only {len(names)} distinct label(s) ({names}); multi-label classification needs at least 2")


def multi_hot(ids: list[int], k: int) -> list[float]:
    out = [0.0] * k
    for i in ids:
        out[i] = 1.0
    return out


def count_multi_labels(features: Dataset, names: list[str]) -> dict[str, int]:
    """Rows carrying each label (a row may count for several)."""
    import numpy as np

    hot = np.asarray(column_values(features, LABELS), dtype=np.float32).reshape(-1, len(names))
    return {name: int(n) for name, n in zip(names, hot.sum(0))}


# ----------------------------------------------------------------------------------------------------------------------
# Metrics and predictions


def metrics(kind: str, recipe: Recipe) -> Callable:
    """`compute_metrics` for multi-label (sigmoid probabilities in) or regression (one value per example in)."""
    names = recipe.evaluation.metrics or list(DEFAULT_METRICS[kind])
    threshold = recipe.evaluation.threshold

    def compute(eval_pred: Any) -> dict[str, float]:
        import numpy as np

        preds, refs = eval_pred.predictions, np.asarray(eval_pred.label_ids)
        preds = np.asarray(preds[0] if isinstance(preds, tuple) else preds, dtype=np.float64)
        if kind == MULTI_LABEL:
            return metric_lib.compute(names, (preds >= threshold).astype(int).tolist(), refs.astype(int).tolist())
        return metric_lib.compute(names, preds.reshape(-1).tolist(), refs.reshape(-1).astype(np.float64).tolist())

    return compute


def multi_label_results(model: Any, logits: Any, inputs: list[str], threshold: float) -> list[dict[str, Any]]:
    """Every label whose probability reaches the threshold, most probable first (possibly none)."""
    probs = logits.float().sigmoid()
    id2label = model.config.id2label
    out = []
    for item, p in zip(inputs, probs):
        chosen = sorted(((float(p[i]), id2label[i]) for i in range(len(p)) if float(p[i]) >= threshold), reverse=True)
        out.append({"input": item, "labels": [{"label": name, "score": round(score, 6)} for score, name in chosen]})
    return out


def regression_results(logits: Any, inputs: list[str]) -> list[dict[str, Any]]:
    return [{"input": item, "value": round(float(v), 6)} for item, v in zip(inputs, logits.float().reshape(-1))]
