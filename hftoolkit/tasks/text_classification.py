"""Text classification (BERT family and any AutoModelForSequenceClassification): columns, tokenization, predict.

Labels, the head, metrics and the confusion matrix are shared with image classification (tasks/_classification.py);
multi-label and regression targets are in tasks/_targets.py.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Callable

from pydantic import Field

from hftoolkit.data import require_columns
from hftoolkit.errors import DataError
from hftoolkit.tasks import _targets as targets
from hftoolkit.tasks._classification import LABELS, ClassificationTask
from hftoolkit.tasks._text import check_texts, ensure_pad_token, token_length_stats, tokenizer_identity, warn_image_paths
from hftoolkit.tasks.base import flat

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.run.records import DataReport

# Bump when the tokenization output changes, so cached features from older versions are not reused.
PREPROCESS_VERSION = 1
PREDICT_MAX_LENGTH = 512  # tokens `predict` keeps of each input (more is cut off)

# The export's README (`hft export`): running model.onnx with onnxruntime and tokenizers alone. The ending depends on
# the saved config's problem_type: softmax + argmax, sigmoid + every label over the run's threshold, or the number.
ONNX_USAGE = '''```python
import json

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

tokenizer = Tokenizer.from_file("tokenizer.json")
tokenizer.enable_padding(pad_id={pad_id}, pad_token={pad_token!r})
tokenizer.enable_truncation(max_length={max_length})
session = ort.InferenceSession("{model_file}", providers=["CPUExecutionProvider"])
inputs = {{i.name for i in session.get_inputs()}}
id2label = json.load(open("config.json"))["id2label"]

texts = {texts!r}
encodings = tokenizer.encode_batch(texts)
feed = {{
    "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
    "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
}}
logits = session.run(["logits"], {{k: v for k, v in feed.items() if k in inputs}})[0]
{ending}```'''
USAGE_ENDINGS = {
    targets.SINGLE_LABEL: '''probs = np.exp(logits - logits.max(-1, keepdims=True))
probs /= probs.sum(-1, keepdims=True)
for text, p in zip(texts, probs):
    print(id2label[str(int(p.argmax()))], round(float(p.max()), 4), text, sep="\\t")
''',
    # Multi-label: one sigmoid per label; every label at or over the run's threshold, most probable first.
    targets.MULTI_LABEL: '''threshold = json.load(open("export_report.json"))["predict_options"]["threshold"]
probs = 1 / (1 + np.exp(-logits))
for text, p in zip(texts, probs):
    chosen = sorted(((float(p[i]), id2label[str(i)]) for i in range(len(p)) if p[i] >= threshold), reverse=True)
    print(",".join(name for _, name in chosen) or "(none)", ",".join(f"{s:.4f}" for s, _ in chosen) or "-", text, sep="\\t")
''',
    targets.REGRESSION: '''for text, value in zip(texts, logits.reshape(-1)):
    print(round(float(value), 4), text, sep="\\t")
''',
}
USAGE_TEXTS = ["this works well.", "it broke after a day."]


class TextClassification(ClassificationTask):
    name = "text-classification"
    pipeline_tag = "text-classification"
    card_title = "Text Classification"
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    processor_kind = "tokenizer"
    column_roles = {
        "text": "the text to classify",
        "text_pair": "the second text of sentence pairs",
        "label": "the class label (ClassLabel, string or integer column)",
    }
    serve_kind = "text"
    onnx_servable = True
    # Measured (bench/RESULTS.md "Defaults by measurement": SST-2, all-MiniLM-L6-v2, 3 epochs): LoRA 1e-3 (0.811;
    # 3e-3 0.814, the schema's 2e-4 0.765), full fine-tuning 5e-5 (0.822; 1e-4 0.826, 2e-5 0.804). Within a point of
    # the best, the lower learning rate: safer on larger models.
    training_defaults = {
        "lora": {"training.learning_rate": 1e-3},
        "full": {"training.learning_rate": 5e-5},
    }
    recipe_fields = {
        "dataset.regression": (bool, Field(
            False,
            description="Text classification: the label column holds numbers to predict (one output, MSE loss; metrics "
            "mse, pearsonr, spearmanr). Without it a float label is an error.",
        )),
        "evaluation.threshold": (float, Field(
            targets.DEFAULT_THRESHOLD, gt=0, lt=1,
            description="Multi-label text classification (a list of labels per row): a label is predicted when its "
            "sigmoid probability is at least this.",
        )),
    }
    float_label_hint = "to predict numbers (regression) set dataset.regression: true"
    # From the data (lists of labels: multi-label) and the recipe (dataset.regression), set by prepare(); every
    # command prepares the data before anything reads it, and predict reads the saved config's problem_type instead.
    problem_type = targets.SINGLE_LABEL

    @property
    def default_metrics(self) -> tuple[str, ...]:  # type: ignore[override]
        return targets.DEFAULT_METRICS[self.problem_type]

    def check_recipe(self, recipe: Recipe) -> list[str]:
        ds, t = recipe.dataset, recipe.training
        if not ds.regression:
            return []
        problems = [
            f"dataset.{key} names classes; dataset.regression: true predicts numbers"
            for key in ("label_names", "num_labels") if getattr(ds, key) is not None
        ]
        if targets.threshold_set(recipe):
            problems.append("evaluation.threshold is for multi-label data; dataset.regression: true predicts numbers")
        if t.metric_for_best_model in ("mse", "eval_mse") and t.greater_is_better is not False:
            problems.append("training.metric_for_best_model mse is better when lower: set training.greater_is_better: false")
        return problems

    def load_processor(self, ref: str, kwargs: dict[str, Any]) -> Any:
        from transformers import AutoTokenizer

        # GPT-2 and many Llama-family tokenizers have no pad token; their *ForSequenceClassification heads read the
        # last token that is not padding, found through config.pad_token_id (processor_model_kwargs below).
        return ensure_pad_token(
            AutoTokenizer.from_pretrained(ref, **kwargs), ref, "the classifier reads the last token before the padding"
        )

    def processor_model_kwargs(self, tokenizer: Any) -> dict[str, Any]:
        return {"pad_token_id": tokenizer.pad_token_id}

    # ---------------------------------------------------------------------------------------------------------------
    # Checking columns and encoding labels on the raw splits

    def prepare(self, splits: dict[str, Dataset], recipe: Recipe, report: DataReport) -> list[str] | None:
        cols = recipe.dataset.columns
        if cols.text is None or cols.label is None:
            raise DataError("text-classification needs dataset.columns.text and dataset.columns.label")
        for role, split in splits.items():
            require_columns(split, role, {"text": cols.text, "text_pair": cols.text_pair, "label": cols.label})
            report.columns[role] = list(split.column_names)
        # On the raw splits, so a bad value is named by its row in the source (tokenize() sees only a batch).
        check_texts(splits, [cols.text, cols.text_pair], report, allow_empty=recipe.dataset.allow_empty_text)
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
            # Values are text: prepare() checked every row of the raw splits.
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

    def check_predict_inputs(self, inputs: list[str]) -> None:
        warn_image_paths(inputs)

    def predict(self, model: Any, tokenizer: Any, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
        import torch

        enc = tokenizer(inputs, truncation=True, max_length=options.get("max_length", PREDICT_MAX_LENGTH), padding=True, return_tensors="pt")
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.no_grad():
            logits = model(**enc).logits
        kind = getattr(model.config, "problem_type", None)
        if kind == targets.REGRESSION:
            return targets.regression_results(logits, inputs)
        if kind == targets.MULTI_LABEL:
            threshold = options.get("threshold", targets.DEFAULT_THRESHOLD)
            return targets.multi_label_results(model, logits, inputs, threshold)
        return self.top_labels(model, logits, inputs)

    def result_line(self, result: dict[str, Any]) -> str:
        if "labels" in result:  # multi-label: every label over the threshold, most probable first
            names = ",".join(flat(x["label"]) for x in result["labels"]) or "(none)"
            scores = ",".join(f"{x['score']:.4f}" for x in result["labels"]) or "-"
            return f"{names}\t{scores}\t{flat(result['input'])}"
        if "value" in result:  # regression
            return f"{result['value']:.4f}\t{flat(result['input'])}"
        return super().result_line(result)

    # ---------------------------------------------------------------------------------------------------------------
    # Deploy

    def onnx_usage(self, model_file: str, tokenizer: Any, config: Any) -> str:
        # The same cut `predict` makes, capped at what the model's positions allow.
        positions = getattr(config, "max_position_embeddings", None) or PREDICT_MAX_LENGTH
        return ONNX_USAGE.format(
            model_file=model_file, pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token,
            max_length=min(PREDICT_MAX_LENGTH, positions), texts=USAGE_TEXTS,
            ending=USAGE_ENDINGS[getattr(config, "problem_type", None) or targets.SINGLE_LABEL],
        )


TASK = TextClassification()
