"""Text classification (BERT family and any AutoModelForSequenceClassification): labels, tokenization, metrics.

Labels come from the dataset's ClassLabel names, or the sorted distinct values of a string column, or the
recipe's `label_names` for integer columns, so the saved config never says LABEL_0. Bad label values are
reported with their split and row before anything is trained.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Callable

from hftoolkit import metrics as metric_lib
from hftoolkit.data import require_columns
from hftoolkit.errors import DataError
from hftoolkit.tasks.base import DataReport

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.recipe import Recipe

# Bump when the tokenization output changes, so cached features from older versions are not reused.
PREPROCESS_VERSION = 1
LABELS = "labels"


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


def _split_sources(splits: dict[str, Dataset]) -> str:
    return ",".join(f"{k}={v._fingerprint}" for k, v in sorted(splits.items()))


class TextClassification:
    name = "text-classification"
    pipeline_tag = "text-classification"
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    default_metrics = ("accuracy", "f1")

    def load_processor(self, ref: str, kwargs: dict[str, Any]) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(ref, **kwargs)

    def stratify_column(self, recipe: Recipe) -> str | None:
        return recipe.dataset.columns.label

    # ---------------------------------------------------------------------------------------------------------------
    # Checking and encoding labels on the raw splits

    def prepare(self, splits: dict[str, Dataset], recipe: Recipe, report: DataReport) -> list[str]:
        from datasets import ClassLabel

        cols = recipe.dataset.columns
        if cols.text is None or cols.label is None:
            raise DataError("text-classification needs dataset.columns.text and dataset.columns.label")
        for role, split in splits.items():
            require_columns(split, role, {"text": cols.text, "text_pair": cols.text_pair, "label": cols.label})
            report.columns[role] = list(split.column_names)

        label = cols.label
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
                    f"split 'train' row {row}: label {value!r} in column {label!r} is a float; text-classification needs "
                    "class labels (strings, integers or ClassLabel); regression is not supported"
                )
            if dtype in ("string", "large_string"):
                names = self._string_names(splits, label)
                for role in splits:
                    splits[role] = splits[role].cast_column(label, ClassLabel(names=names))
            elif dtype.startswith(("int", "uint")):
                names = self._integer_names(splits, label, recipe.dataset.label_names)
                for role in splits:
                    splits[role] = splits[role].cast_column(label, ClassLabel(names=names))
            else:
                raise DataError(f"column {label!r} has type {feature}; text-classification needs string or integer labels")
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
        return split.data.column(col).to_pylist()

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
    # Features

    def preprocess(self, splits: dict[str, Dataset], recipe: Recipe, tokenizer: Any, report: DataReport) -> dict[str, Dataset]:
        cols = recipe.dataset.columns
        max_length = recipe.dataset.max_length
        ident = tokenizer_identity(tokenizer)
        text, pair, label = cols.text, cols.text_pair, cols.label

        def tokenize(batch: dict[str, list]) -> dict[str, list]:
            for c in (text, pair):
                if c is not None:
                    for i, v in enumerate(batch[c]):
                        if not isinstance(v, str):
                            raise DataError(f"column {c!r}: value {v!r} is not text (row {i} of a batch)")
            enc = tokenizer(batch[text], batch[pair] if pair else None, truncation=True, max_length=max_length)
            out = dict(enc)
            out[LABELS] = batch[label]
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
                remove_columns=split.column_names,
                new_fingerprint=fingerprint,
                desc=f"Tokenizing {role}",
            )
            truncated = mapped.data.column("truncated").to_pylist() if mapped._indices is None else mapped["truncated"]
            report.truncated_share[role] = sum(truncated) / max(len(truncated), 1)
            features[role] = mapped.remove_columns(["truncated"])
        lengths = features["train"]["length"][:10000]
        if lengths:
            s = sorted(lengths)
            report.token_lengths = {
                "sample": len(s),
                "mean": sum(s) / len(s),
                "p50": s[len(s) // 2],
                "p95": s[min(len(s) - 1, int(len(s) * 0.95))],
                "max": s[-1],
            }
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
    # Metrics and evaluation

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

    def predict(self, model: Any, tokenizer: Any, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
        import torch

        enc = tokenizer(inputs, truncation=True, max_length=options.get("max_length", 512), padding=True, return_tensors="pt")
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.no_grad():
            probs = model(**enc).logits.float().softmax(-1)
        id2label = model.config.id2label
        out = []
        for text, p in zip(inputs, probs):
            i = int(p.argmax())
            out.append({"input": text, "label": id2label[i], "score": round(float(p[i]), 6)})
        return out


TASK = TextClassification()
