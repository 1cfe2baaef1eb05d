"""Text classification (BERT family and any AutoModelForSequenceClassification): columns, tokenization, predict.

Labels, the head, metrics and the confusion matrix are shared with image classification (tasks/_classification.py);
multi-label and regression targets are in tasks/_targets.py.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Callable

from hftoolkit.data import require_columns
from hftoolkit.errors import DataError
from hftoolkit.tasks import _targets as targets
from hftoolkit.tasks._classification import LABELS, ClassificationTask
from hftoolkit.tasks.base import DataReport

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.recipe import Recipe

# Bump when the tokenization output changes, so cached features from older versions are not reused.
PREPROCESS_VERSION = 1
LENGTH_SAMPLE = 10_000  # rows of train whose token lengths the data report summarizes


def tokenizer_identity(tokenizer: Any) -> str:
    """Content hash of a tokenizer (vocab, normalizer, special tokens), stable across processes.

    Used as part of the cache fingerprint instead of datasets' pickling-based hash, which changes when the
    fast tokenizer's truncation state changes and then silently re-tokenizes (or worse, keys on the wrong thing).
    """
    state: Any
    try:
        state = json.loads(tokenizer.backend_tokenizer.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
    except AttributeError:
        state = sorted(tokenizer.get_vocab().items())
    blob = json.dumps([type(tokenizer).__name__, state, tokenizer.all_special_tokens, tokenizer.padding_side], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def token_length_stats(features: Dataset, sample: int = LENGTH_SAMPLE) -> dict[str, float]:
    """Token length statistics of the first `sample` rows of tokenized features (their `length` column)."""
    s = sorted(features["length"][:sample])
    if not s:
        return {}
    return {"sample": len(s), "mean": sum(s) / len(s), "p50": s[len(s) // 2], "p95": s[min(len(s) - 1, int(len(s) * 0.95))], "max": s[-1]}


def _split_sources(splits: dict[str, Dataset]) -> str:
    return ",".join(f"{k}={v._fingerprint}" for k, v in sorted(splits.items()))


class TextClassification(ClassificationTask):
    name = "text-classification"
    pipeline_tag = "text-classification"
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    recipe_keys = ("dataset.regression", "evaluation.threshold")  # only this task may set them
    float_label_hint = "to predict numbers (regression) set dataset.regression: true"
    # From the data (lists of labels: multi-label) and the recipe (dataset.regression), set by prepare(); the pipeline
    # calls prepare() before anything that reads it, and predict reads the saved config's problem_type instead.
    problem_type = targets.SINGLE_LABEL

    @property
    def default_metrics(self) -> tuple[str, ...]:  # type: ignore[override]
        return targets.DEFAULT_METRICS[self.problem_type]

    def check_recipe(self, recipe: Recipe) -> None:
        """Recipe-time rules for this task's own keys (raised as ValueError: the schema reports them with their line)."""
        ds, t = recipe.dataset, recipe.training
        if ds.regression:
            for key in ("label_names", "num_labels"):
                if getattr(ds, key) is not None:
                    raise ValueError(f"dataset.{key} names classes; dataset.regression: true predicts numbers")
            if targets.threshold_set(recipe):
                raise ValueError("evaluation.threshold is for multi-label data; dataset.regression: true predicts numbers")
            if t.metric_for_best_model in ("mse", "eval_mse") and t.greater_is_better is not False:
                raise ValueError("training.metric_for_best_model mse is better when lower: set training.greater_is_better: false")

    def load_processor(self, ref: str, kwargs: dict[str, Any]) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(ref, **kwargs)

    # ---------------------------------------------------------------------------------------------------------------
    # Checking columns and encoding labels on the raw splits

    def prepare(self, splits: dict[str, Dataset], recipe: Recipe, report: DataReport) -> list[str]:
        cols = recipe.dataset.columns
        if cols.text is None or cols.label is None:
            raise DataError("text-classification needs dataset.columns.text and dataset.columns.label")
        for role, split in splits.items():
            require_columns(split, role, {"text": cols.text, "text_pair": cols.text_pair, "label": cols.label})
            report.columns[role] = list(split.column_names)
        self.problem_type = targets.problem_type(splits["train"], cols.label, recipe)
        if self.problem_type == targets.REGRESSION:
            targets.encode_regression(splits, cols.label, report)
            return None
        if self.problem_type == targets.MULTI_LABEL:
            return targets.encode_multi_labels(splits, recipe)
        names = self.encode_labels(splits, recipe)
        if targets.threshold_set(recipe):
            raise DataError(
                f"evaluation.threshold is for multi-label data (a list of labels per row); column {cols.label!r} holds "
                "one label per row"
            )
        return names

    def stratify_column(self, recipe: Recipe) -> str | None:
        # Only single labels stratify (and are counted by the pipeline); multi-label counts come from preprocess().
        return super().stratify_column(recipe) if self.problem_type == targets.SINGLE_LABEL else None

    def model_kwargs(self, labels: list[str] | None) -> dict[str, Any]:
        if labels is None:
            return {"num_labels": 1, "problem_type": targets.REGRESSION}
        return {**super().model_kwargs(labels), "problem_type": self.problem_type}

    # ---------------------------------------------------------------------------------------------------------------
    # Features

    def preprocess(self, splits: dict[str, Dataset], recipe: Recipe, tokenizer: Any, report: DataReport) -> dict[str, Dataset]:
        cols = recipe.dataset.columns
        max_length = recipe.dataset.max_length
        ident = tokenizer_identity(tokenizer)
        text, pair, label = cols.text, cols.text_pair, cols.label
        multi = self.problem_type == targets.MULTI_LABEL
        names = list(splits["train"].features[label].feature.names) if multi else []

        def tokenize(batch: dict[str, list]) -> dict[str, list]:
            for c in (text, pair):
                if c is not None:
                    for i, v in enumerate(batch[c]):
                        if not isinstance(v, str):
                            raise DataError(f"column {c!r}: value {v!r} is not text (row {i} of a batch)")
            enc = tokenizer(batch[text], batch[pair] if pair else None, truncation=True, max_length=max_length)
            out = dict(enc)
            out[LABELS] = [targets.multi_hot(ids, len(names)) for ids in batch[label]] if multi else batch[label]
            out["length"] = [len(ids) for ids in enc["input_ids"]]
            # The fast tokenizer keeps what truncation cut off; that is how we count truncated examples for free.
            out["truncated"] = [len(e.overflowing) > 0 for e in enc.encodings] if enc.encodings else [False] * len(out["length"])
            return out

        features = {}
        for role, split in splits.items():
            fingerprint = hashlib.sha256(
                f"tc{PREPROCESS_VERSION}|{split._fingerprint}|{ident}|{max_length}|{text}|{pair}|{label}".encode()
            ).hexdigest()[:32]
            mapped = split.map(
                tokenize,
                batched=True,
                batch_size=1000,
                num_proc=recipe.dataset.num_proc,
                remove_columns=split.column_names,
                new_fingerprint=fingerprint,
                desc=f"Tokenizing {role}",
            )
            truncated = mapped.data.column("truncated").to_pylist() if mapped._indices is None else mapped["truncated"]
            report.truncated_share[role] = sum(truncated) / max(len(truncated), 1)
            features[role] = mapped.remove_columns(["truncated"])
            if multi:
                report.label_counts[role] = targets.count_multi_labels(features[role], names)
        report.token_lengths = token_length_stats(features["train"])
        return features

    def collator(self, tokenizer: Any, recipe: Recipe, on_gpu: bool) -> Callable:
        from transformers import DataCollatorWithPadding

        # Dynamic padding; multiples of 8 let tensor cores work on GPU and only waste compute on CPU.
        pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if on_gpu else None)

        def collate(examples: list[dict]) -> dict:
            # `length` feeds the length-grouped sampler; the model must not see it.
            return pad([{k: v for k, v in ex.items() if k != "length"} for ex in examples])

        return collate

    # ---------------------------------------------------------------------------------------------------------------
    # Metrics and prediction

    def metrics(self, recipe: Recipe, labels: list[str] | None) -> Callable:
        if self.problem_type == targets.SINGLE_LABEL:
            return super().metrics(recipe, labels)
        return targets.metrics(self.problem_type, recipe)

    def preprocess_logits_for_metrics(self, logits: Any, labels: Any) -> Any:
        # Float labels: multi-hot rows (multi-label: probabilities, thresholded by the metrics) or one value per row.
        if labels is not None and labels.is_floating_point():
            logits = logits[0] if isinstance(logits, tuple) else logits
            return logits.float().sigmoid() if labels.ndim == 2 else logits.float().reshape(-1)
        return super().preprocess_logits_for_metrics(logits, labels)

    def write_eval_artifacts(self, out_dir: Any, predictions: Any, references: Any, labels: list[str] | None) -> list[str]:
        if self.problem_type != targets.SINGLE_LABEL:
            return []  # a confusion matrix needs one class per example
        return super().write_eval_artifacts(out_dir, predictions, references, labels)

    def predict_options(self, recipe: Recipe) -> dict[str, Any]:
        return {"threshold": recipe.evaluation.threshold}

    def predict(self, model: Any, tokenizer: Any, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
        import torch

        enc = tokenizer(inputs, truncation=True, max_length=options.get("max_length", 512), padding=True, return_tensors="pt")
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.no_grad():
            logits = model(**enc).logits
        kind = getattr(model.config, "problem_type", None)
        if kind == targets.REGRESSION:
            return targets.regression_results(logits, inputs)
        if kind == targets.MULTI_LABEL:
            return targets.multi_label_results(model, logits, inputs, options["threshold"])
        return self.top_labels(model, logits, inputs)


TASK = TextClassification()
