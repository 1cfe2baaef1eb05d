"""What text and image classification share: checking and encoding labels, the head, metrics, the confusion matrix.

Labels come from the dataset's ClassLabel names, or the sorted distinct values of a string column, or the
recipe's `label_names` for integer columns, so the saved config never says LABEL_0. Bad label values are
reported with their split and row before anything is trained. A task file subclasses `ClassificationTask` and
adds what is specific to its inputs (tokenization, image transforms) and `predict`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from hftoolkit import metrics as metric_lib
from hftoolkit.data import column_values
from hftoolkit.errors import DataError
from hftoolkit.tasks.base import TaskBase

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.recipe.schema import Recipe

LABELS = "labels"


class ClassificationTask(TaskBase):
    default_metrics: tuple[str, ...] = ("accuracy", "f1")
    has_labels = True
    float_label_hint = "regression is not supported"  # what to do about a float label column

    def label_column(self, recipe: Recipe) -> str | None:
        return recipe.dataset.columns.label

    def stratify_column(self, recipe: Recipe) -> str | None:
        return self.label_column(recipe)

    # ---------------------------------------------------------------------------------------------------------------
    # Checking and encoding labels on the raw splits

    def encode_labels(self, splits: dict[str, Dataset], recipe: Recipe) -> list[str]:
        """Check every split's labels and cast the label column to ClassLabel in place; returns the label names."""
        from datasets import ClassLabel

        label = self.label_column(recipe)
        assert label is not None
        self._check_label_types(splits, label)
        feature = splits["train"].features[label]
        if isinstance(feature, ClassLabel):
            names = list(feature.names)
            for role, split in splits.items():
                self._check_ids(split, role, label, len(names))
        else:
            dtype = getattr(feature, "dtype", str(feature))
            if dtype.startswith("float"):
                row, value = self._first_value(splits["train"], label)
                raise DataError(
                    f"split 'train' row {row}: label {value!r} in column {label!r} is a float; {self.name} needs "
                    f"class labels (strings, integers or ClassLabel); {self.float_label_hint}"
                )
            if dtype in ("string", "large_string"):
                names = self._string_names(splits, label)
            elif dtype.startswith(("int", "uint")):
                names = self._integer_names(splits, label, recipe.dataset.label_names)
            else:
                raise DataError(f"column {label!r} has type {feature}; {self.name} needs string or integer labels")
            for role in splits:
                splits[role] = splits[role].cast_column(label, ClassLabel(names=names))
        if recipe.dataset.label_names is not None and isinstance(feature, ClassLabel) and recipe.dataset.label_names != names:
            raise DataError(
                f"dataset.label_names {recipe.dataset.label_names} differ from the dataset's own label names {names}"
            )
        if recipe.dataset.num_labels is not None and recipe.dataset.num_labels != len(names):
            raise DataError(
                f"dataset.num_labels is {recipe.dataset.num_labels} but the data has {len(names)} labels: {', '.join(names)}"
            )
        if len(names) < 2:
            raise DataError(f"column {label!r} has only {len(names)} distinct label(s) ({names}); classification needs at least 2")
        return names

    @staticmethod
    def _column(split: Dataset, col: str) -> list:
        return column_values(split, col)

    def _check_label_types(self, splits: dict[str, Dataset], col: str) -> None:
        """One type for every label: a column mixing kinds (datasets types it Json) or splits that disagree
        (integers in train, strings in test) are refused at the first offending row, naming both types."""
        from datasets import ClassLabel, Value

        features = [split.features[col] for split in splits.values()]
        if all(isinstance(f, (Value, ClassLabel)) for f in features) and len({repr(f) for f in features}) == 1:
            return  # one Arrow type everywhere: nothing can be mixed
        first: tuple[str, str, int, Any] | None = None
        for role, split in splits.items():
            for i, v in enumerate(self._column(split, col)):
                if v is None:
                    continue  # reported as a missing label by the checks that follow
                kind = _kind(v)
                if first is None:
                    first = (kind, role, i, v)
                elif kind != first[0]:
                    raise DataError(
                        f"split {role!r} row {i}: label {v!r} in column {col!r} is {_article(kind)}, but split "
                        f"{first[1]!r} row {first[2]} holds {_article(first[0])} ({first[3]!r}); use one type for every "
                        "label (all strings or all integers)"
                    )

    def _first_value(self, split: Dataset, col: str) -> tuple[int, Any]:
        for i, v in enumerate(self._column(split, col)):
            if v is not None:
                return i, v
        return 0, None

    def _check_none(self, split: Dataset, role: str, col: str) -> list:
        values = self._column(split, col)
        for i, v in enumerate(values):
            if v is None:
                raise DataError(f"split {role!r} row {i}: label is missing (null) in column {col!r}")
        return values

    def _check_ids(self, split: Dataset, role: str, col: str, k: int) -> None:
        for i, v in enumerate(self._check_none(split, role, col)):
            if not 0 <= v < k:
                hint = " (an unlabelled test split? set dataset.splits.test to another split or null)" if v == -1 else ""
                raise DataError(f"split {role!r} row {i}: label {v} is outside the known labels 0..{k - 1}{hint}")

    def _string_names(self, splits: dict[str, Dataset], col: str) -> list[str]:
        names = sorted(set(self._check_none(splits["train"], "train", col)))
        known = set(names)
        for role, split in splits.items():
            for i, v in enumerate(self._check_none(split, role, col)):
                if v not in known:
                    raise DataError(
                        f"split {role!r} row {i}: label {v!r} does not occur in train (known labels: {', '.join(names)})"
                    )
        return names

    def _integer_names(self, splits: dict[str, Dataset], col: str, label_names: list[str] | None) -> list[str]:
        if label_names is not None:
            for role, split in splits.items():
                self._check_ids(split, role, col, len(label_names))
            return list(label_names)
        values = sorted(set(self._check_none(splits["train"], "train", col)))
        if values != list(range(len(values))):
            raise DataError(
                f"integer labels in column {col!r} are {values[:10]}, not 0..K-1; give dataset.label_names "
                "or use string labels"
            )
        for role, split in splits.items():
            self._check_ids(split, role, col, len(values))
        # The values themselves become the names ("0", "1"): honest, and never the meaningless LABEL_0.
        return [str(v) for v in values]

    # ---------------------------------------------------------------------------------------------------------------
    # Model

    def model_kwargs(self, labels: list[str] | None) -> dict[str, Any]:
        assert labels is not None
        return {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
        }

    def head_modules(self, model: Any) -> list[str]:
        names = {n.split(".")[-1] for n, _ in model.named_modules()}
        # BERT/RoBERTa/ViT call it `classifier`, GPT-style models `score`; DistilBERT adds `pre_classifier`.
        return [n for n in ("pre_classifier", "classifier", "score") if n in names]

    # ---------------------------------------------------------------------------------------------------------------
    # Metrics, evaluation and prediction

    def metrics(self, recipe: Recipe, labels: list[str] | None) -> Callable:
        names = recipe.evaluation.metrics or list(self.default_metrics)
        num_labels = len(labels or [])

        def compute(eval_pred: Any) -> dict[str, float]:
            preds, refs = eval_pred.predictions, eval_pred.label_ids
            if isinstance(preds, tuple):
                preds = preds[0]
            if getattr(preds, "ndim", 1) > 1:
                preds = preds.argmax(-1)
            return metric_lib.compute(names, preds.tolist(), refs.tolist(), num_labels, recipe.evaluation.average)

        return compute

    def preprocess_logits_for_metrics(self, logits: Any, labels: Any) -> Any:
        if isinstance(logits, tuple):
            logits = logits[0]
        return logits.argmax(-1)

    def write_eval_artifacts(self, out_dir: Any, predictions: Any, references: Any, labels: list[str] | None) -> list[str]:
        from hftoolkit.plots import confusion_matrix_png

        confusion_matrix_png(out_dir / "confusion_matrix.png", predictions, references, labels or [])
        return ["confusion_matrix.png"]

    @staticmethod
    def top_labels(model: Any, logits: Any, inputs: list[str]) -> list[dict[str, Any]]:
        """`predict` results: the most probable label (a name from the saved config) and its probability."""
        probs = logits.float().softmax(-1)
        id2label = model.config.id2label
        out = []
        for item, p in zip(inputs, probs):
            i = int(p.argmax())
            out.append({"input": item, "label": id2label[i], "score": round(float(p[i]), 6)})
        return out


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {str: "string", float: "float"}.get(type(value), type(value).__name__)


def _article(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"
