"""What export and serving need to know about a task, beyond the task protocol: request kind, ONNX use, README.

Export itself is task-agnostic: the graph's inputs are whatever the task's own collator puts in a batch (minus the
labels), its output is `logits`, and token-level outputs are compared where the attention mask is set. What differs
per task is small and lives here, one `DeployIO` per recipe task name:
- `kind`: the shape of `/v1/predict` requests and responses (`text`, `image` as base64, `generate`);
- `onnx_servable`: whether `hft serve EXPORT_DIR` can answer from the ONNX graph (a causal LM cannot: no KV cache);
- `batch_recipe`: the recipe the collator is built from (causal LM: padded rows, never packed ones);
- `snippet`: the README that shows how to run the export with onnxruntime (and tokenizers) alone.

Token classification plugs in as one more entry: kind `entities` (its `predict` returns entity spans), ONNX
servable, and the text snippet with per-token argmax; parity already compares token-level logits under the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hftoolkit.errors import ExportError

if TYPE_CHECKING:
    from hftoolkit.recipe import Recipe

TEXT_SNIPPET = '''```python
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

IMAGE_SNIPPET = '''```python
import json

import numpy as np
import onnxruntime as ort
from PIL import Image

session = ort.InferenceSession("{model_file}", providers=["CPUExecutionProvider"])
id2label = json.load(open("config.json"))["id2label"]
height, width, mean, std = {height}, {width}, np.array({mean}), np.array({std})

image = Image.open("photo.jpg").convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
pixels = ((np.asarray(image, dtype=np.float32) / 255 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
logits = session.run(["logits"], {{"pixel_values": pixels}})[0]
print(id2label[str(int(logits[0].argmax()))])
```

`hft serve` and `hft predict` resize and centre-crop exactly as in training; this plain resize is close to it when
the image is about square.'''

LM_SNIPPET = '''```python
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

tokenizer = Tokenizer.from_file("tokenizer.json")
session = ort.InferenceSession("{model_file}", providers=["CPUExecutionProvider"])
ids = tokenizer.encode({text!r}).ids
logits = session.run(["logits"], {{"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), np.int64)}})[0]
print(tokenizer.decode([int(logits[0, -1].argmax())]))  # the most likely next token
```

This graph scores a whole sequence per call (no KV cache), which is right for scoring and ranking but slow for
generation. To generate text, publish the merged weights (`hft push RUN --merge`) and serve them with vLLM, TGI or
transformers, or run `hft serve RUN_DIR`.'''


@dataclass(frozen=True)
class DeployIO:
    kind: str  # "text" | "image" | "generate" (| "entities" for token classification)
    onnx_servable: bool
    snippet: str

    def batch_recipe(self, recipe: Recipe) -> Recipe:
        """The recipe the task's collator is built from for export batches."""
        return recipe

    def snippet_fields(self, processor: Any, config: Any) -> dict[str, Any]:
        return {}

    def readme(self, title: str, model_file: str, processor: Any, config: Any) -> str:
        body = self.snippet.format(model_file=model_file, **self.snippet_fields(processor, config))
        return f"# {title}\n\nRun it with onnxruntime alone (no torch, no transformers):\n\n{body}\n"


@dataclass(frozen=True)
class TextIO(DeployIO):
    def snippet_fields(self, processor: Any, config: Any) -> dict[str, Any]:
        # The same cut `hft predict` makes (512 tokens), capped at what the model's positions allow.
        positions = getattr(config, "max_position_embeddings", None) or PREDICT_MAX_LENGTH
        return {
            "pad_id": processor.pad_token_id, "pad_token": processor.pad_token,
            "max_length": min(PREDICT_MAX_LENGTH, positions), "texts": ["this works well.", "it broke after a day."],
        }


@dataclass(frozen=True)
class ImageIO(DeployIO):
    def snippet_fields(self, processor: Any, config: Any) -> dict[str, Any]:
        from hftoolkit.tasks.image_classification import input_size

        height, width = input_size(processor)
        return {"height": height, "width": width, "mean": list(processor.image_mean), "std": list(processor.image_std)}


@dataclass(frozen=True)
class CausalLMIO(DeployIO):
    def batch_recipe(self, recipe: Recipe) -> Recipe:
        # Packed rows carry position_ids instead of an attention mask: export one sequence per row.
        dataset = recipe.dataset.model_copy(update={"batching": "padded"})
        return recipe.model_copy(update={"dataset": dataset})

    def snippet_fields(self, processor: Any, config: Any) -> dict[str, Any]:
        return {"text": "The history of"}


PREDICT_MAX_LENGTH = 512  # text classification's predict truncation (tasks/text_classification.py)

DEPLOY_IO: dict[str, DeployIO] = {
    "text-classification": TextIO("text", True, TEXT_SNIPPET),
    "image-classification": ImageIO("image", True, IMAGE_SNIPPET),
    "causal-lm": CausalLMIO("generate", False, LM_SNIPPET),
}


def deploy_io(task_name: str) -> DeployIO:
    if task_name not in DEPLOY_IO:
        raise ExportError(f"task {task_name!r} cannot be exported or served yet (supported: {', '.join(DEPLOY_IO)})")
    return DEPLOY_IO[task_name]
