"""Text classification (BERT family and any AutoModelForSequenceClassification): columns, tokenization, predict.

Labels, the head, metrics and the confusion matrix are shared with image classification (tasks/_classification.py).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Callable

from hftoolkit.data import require_columns
from hftoolkit.errors import DataError
from hftoolkit.tasks._classification import LABELS, ClassificationTask
from hftoolkit.tasks._text import check_texts, ensure_pad_token, tokenizer_identity, warn_image_paths

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.run.records import DataReport

# Bump when the tokenization output changes, so cached features from older versions are not reused.
PREPROCESS_VERSION = 1
PREDICT_MAX_LENGTH = 512  # tokens `predict` keeps of each input (more is cut off)

# The export's README (`hft export`): running model.onnx with onnxruntime and tokenizers alone.
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
probs = np.exp(logits - logits.max(-1, keepdims=True))
probs /= probs.sum(-1, keepdims=True)
for text, p in zip(texts, probs):
    print(id2label[str(int(p.argmax()))], round(float(p.max()), 4), text, sep="\\t")
```'''
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

    def prepare(self, splits: dict[str, Dataset], recipe: Recipe, report: DataReport) -> list[str]:
        cols = recipe.dataset.columns
        if cols.text is None or cols.label is None:
            raise DataError("text-classification needs dataset.columns.text and dataset.columns.label")
        for role, split in splits.items():
            require_columns(split, role, {"text": cols.text, "text_pair": cols.text_pair, "label": cols.label})
            report.columns[role] = list(split.column_names)
        # On the raw splits, so a bad value is named by its row in the source (tokenize() sees only a batch).
        check_texts(splits, [cols.text, cols.text_pair], report, allow_empty=recipe.dataset.allow_empty_text)
        return self.encode_labels(splits, recipe)

    # ---------------------------------------------------------------------------------------------------------------
    # Features

    def preprocess(self, splits: dict[str, Dataset], recipe: Recipe, tokenizer: Any, report: DataReport) -> dict[str, Dataset]:
        cols = recipe.dataset.columns
        max_length = recipe.dataset.max_length
        ident = tokenizer_identity(tokenizer)
        text, pair, label = cols.text, cols.text_pair, cols.label

        def tokenize(batch: dict[str, list]) -> dict[str, list]:
            # Values are text: prepare() checked every row of the raw splits.
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
                num_proc=recipe.dataset.num_proc,
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
    # Prediction

    def check_predict_inputs(self, inputs: list[str]) -> None:
        warn_image_paths(inputs)

    def predict(self, model: Any, tokenizer: Any, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
        import torch

        enc = tokenizer(inputs, truncation=True, max_length=options.get("max_length", PREDICT_MAX_LENGTH), padding=True, return_tensors="pt")
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.no_grad():
            logits = model(**enc).logits
        return self.top_labels(model, logits, inputs)

    # ---------------------------------------------------------------------------------------------------------------
    # Deploy

    def onnx_usage(self, model_file: str, tokenizer: Any, config: Any) -> str:
        # The same cut `predict` makes, capped at what the model's positions allow.
        positions = getattr(config, "max_position_embeddings", None) or PREDICT_MAX_LENGTH
        return ONNX_USAGE.format(
            model_file=model_file, pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token,
            max_length=min(PREDICT_MAX_LENGTH, positions), texts=USAGE_TEXTS,
        )


TASK = TextClassification()
