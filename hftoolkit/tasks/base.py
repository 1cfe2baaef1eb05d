"""The task contract: what a task file provides so hft can validate, train, evaluate, predict and publish with it.

A task is one file `hftoolkit/tasks/<task>.py` whose `TASK` is an instance of a `TaskBase` subclass, plus one line in
`hftoolkit/tasks/registry.py`. `Task` is the protocol the rest of hft calls; `TaskBase` implements its optional hooks
as no-ops and holds the card fields, so callers call every hook directly (no getattr lookups). Task modules are
imported by the recipe schema: heavy libraries (torch, transformers, datasets) are imported inside methods only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from datasets import Dataset

    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.run.records import DataReport


@dataclass(frozen=True)
class CardFields:
    """What the model card needs from the task (TaskBase.card_fields()). Raw values: the card escapes them."""

    pipeline_tag: str  # Hub pipeline tag (card metadata, model-index task type)
    title: str  # human name of the pipeline tag, model-index task name ("Text Classification")
    auto_model: str  # transformers Auto class that loads the model ("How to use" snippet)
    auto_processor: str  # transformers Auto class that loads the processor (AutoTokenizer, AutoImageProcessor)
    generates_text: bool  # snippet generates text (model.generate) instead of taking the argmax label
    has_labels: bool  # the card shows a label table (id, name, rows per split)
    predict_example: str  # an input for the `hft predict REPO <input>` example (a text, or an image file name)
    example_words: tuple[str, ...] = ()  # predict_example cut into words: the model labels each word (else the input)
    label_counts_of: str = "rows"  # what the label table counts per split (rows; words for word-level tags)
    score_group_title: str | None = None  # scores named `GROUP/metric` are per this (a table of their own, not in
    # the model-index); None: no per-group scores, every score is an overall one


class Task(Protocol):
    """What hft calls on a task. Every member is implemented by the task file or, for hooks, by TaskBase."""

    name: str  # the recipe's `task:` value
    pipeline_tag: str  # Hub pipeline tag for the model card
    auto_model: str  # transformers Auto class used to load the model
    peft_task_type: str | None  # peft.TaskType name; None = PEFT's generic PeftModel (inputs other than input_ids)
    default_metrics: tuple[str, ...]
    processor_kind: str  # "tokenizer" or "image processor": which files a local model folder needs, and whether
    # dataset.max_length (tokens) applies
    column_roles: dict[str, str]  # dataset.columns roles the task reads -> what each holds (the schema's doc)
    # Recipe keys of this task's own: "section.key" (or a new top-level section) -> (annotation, pydantic Field).
    # The schema adds them; a recipe of another task must leave them at their defaults.
    recipe_fields: dict[str, tuple[Any, Any]]

    def check_recipe(self, recipe: Recipe) -> list[str]:
        """Problems with the recipe that only this task knows (which columns go together ...), one line each, each
        starting with the dotted key it is about. Called by the schema after the column roles were checked."""

    def load_processor(self, ref: str, kwargs: dict[str, Any]) -> Any:
        """Tokenizer or image processor for the model."""

    def processor_model_kwargs(self, processor: Any) -> dict[str, Any]:
        """Extra `from_pretrained` arguments that depend on the processor (text classification: the tokenizer's
        pad_token_id, which decoder models use to find the last real token of each row)."""

    def prepare(self, splits: dict[str, Dataset], recipe: Recipe, report: DataReport) -> list[str] | None:
        """Check columns and values of the raw splits (naming the row of a bad value), encode labels in place,
        and return the label names (None for tasks without labels)."""

    def stratify_column(self, recipe: Recipe) -> str | None:
        """Column to stratify a carved validation split by."""

    def preprocess(self, splits: dict[str, Dataset], recipe: Recipe, processor: Any, report: DataReport) -> dict[str, Dataset]:
        """Model-ready features (cached by `datasets` where they are deterministic)."""

    def collator(self, processor: Any, recipe: Recipe, on_gpu: bool) -> Callable:
        """Batches examples at training and evaluation time."""

    def model_kwargs(self, labels: list[str] | None) -> dict[str, Any]:
        """Extra `from_pretrained` arguments (num_labels, id2label, label2id ...)."""

    def head_modules(self, model: Any) -> list[str]:
        """Modules trained fully and saved with a LoRA adapter (the task head)."""

    def metrics(self, recipe: Recipe, labels: list[str] | None) -> Callable:
        """`compute_metrics` for the Trainer, computing through `evaluate`."""

    def preprocess_logits_for_metrics(self, logits: Any, labels: Any) -> Any:
        """Reduce logits on the device before they are gathered (argmax for classification)."""

    def write_train_artifacts(self, model: Any, processor: Any, recipe: Recipe, out_dir: Path) -> list[str]:
        """After training, main process only, once the model is saved: extra run files (causal LM: samples.jsonl
        from the recipe's generation prompts); returns their names."""

    def write_eval_artifacts(self, out_dir: Any, predictions: Any, references: Any, labels: list[str] | None) -> list[str]:
        """Extra evaluation files (e.g. a confusion matrix PNG); returns their names."""

    def check_predict_inputs(self, inputs: list[str]) -> None:
        """Before the model is loaded: raise DataError for inputs that cannot work (image classification: a path
        that does not exist), so a typo fails in a second instead of after loading the model; text tasks warn
        about inputs that look like image paths."""

    def predict_options(self, recipe: Recipe) -> dict[str, Any]:
        """Defaults for `predict` options from the run's recipe (causal LM: its generation settings and whether
        inputs are chat messages); the user's options override them."""

    def predict(self, model: Any, processor: Any, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
        """`hft predict`: one result per input, each {"input": ...} plus e.g. "label" and "score" (classifiers),
        "generated_text" (generators) or "entities" (token classification). `options` holds what the user gave
        (max_new_tokens, do_sample, temperature, top_p) over predict_options (tasks ignore options that do not apply
        to them). Bad inputs raise DataError."""

    def result_line(self, result: dict[str, Any]) -> str:
        """One `predict` result as the one line `hft predict` prints (without --json)."""

    def probe_inputs(self, processor: Any, max_length: int) -> list[dict[str, Any]]:
        """A few fixed model inputs, one dict of tensors per example, for comparing two models' logits (`hft push
        --merge` checks the merged model against the adapter)."""

    def card_fields(self) -> CardFields:
        """What the model card needs from the task."""

    # Deploy (`hft export`, `hft serve`).
    serve_kind: str | None  # shape of /v1/predict requests and responses: "text", "image" (base64), "generate"
    # (token classification: "entities"); None = the task cannot be exported or served yet
    onnx_servable: bool  # `hft serve EXPORT_DIR` can answer from the ONNX graph (causal LM: no KV cache, so no)
    checked_metric: str | None  # the metric whose int8 drop `hft export --quantize` checks (None: the first of the
    # run's metrics where higher is better)

    def export_recipe(self, recipe: Recipe) -> Recipe:
        """The recipe the task's collator is built from for export and parity batches (causal LM: padded rows, never
        packed ones, so every row has an attention mask)."""

    def onnx_usage(self, model_file: str, processor: Any, config: Any) -> str:
        """Markdown for the export's README: how to run `model_file` with onnxruntime (and tokenizers) alone. The
        snippet runs in the export folder and may read the run's predict defaults from export_report.json."""


# Texts `probe_inputs` feeds text models: positive, negative and neutral, so a broken merge shows in the logits.
PROBE_TEXTS = (
    "The delivery was fast and the product works perfectly.",
    "It broke after two days and support never answered.",
    "An ordinary afternoon with nothing much to report.",
    "Would I buy it again? Absolutely not.",
)


def flat(value: object) -> str:
    """A value on one line of `hft predict` output (line breaks shown as \\n)."""
    return str(value).replace("\r", "\\r").replace("\n", "\\n")


class TaskBase:
    """Defaults for every optional hook of `Task`, and the task's card fields. Every task inherits it.

    Card fields (A subclass sets the class attributes; `card_fields()` hands them to the card in one record):
    - `pipeline_tag`: the Hub pipeline tag (card metadata and model-index task type);
    - `card_title`: its human name ("Text Classification"), the model-index task name;
    - `auto_model` / `auto_processor`: the transformers Auto classes of the "How to use" snippet;
    - `generates_text`: the snippet calls `model.generate` (else it prints the argmax label's name);
    - `has_labels`: the card has a label table (classification);
    - `predict_example`: the input of the card's `hft predict REPO <input>` example;
    - `example_words`: that input cut into words, for a model that labels each word (the snippet prints word, label);
    - `label_counts_of`: what the label table counts per split ("rows", or "words" for word-level tags);
    - `score_group_title`: what scores named `GROUP/metric` are per ("entity type"): they get a table of their own
      (None: the task has no per-group scores).

    Deploy: a task sets `serve_kind` (and `onnx_servable`, `onnx_usage`) to be exported and served; the default
    None refuses both with one line.

    Defaults: `training_defaults` maps a method ("lora" / "full") to the dotted `training.` / `lora.` keys whose
    schema default the task replaces, with values chosen by measurement (bench task-defaults, bench/RESULTS.md);
    recipe/defaults.py fills them in for keys a recipe leaves out.
    """

    name: str
    pipeline_tag: str
    card_title: str
    auto_model: str
    auto_processor: str = "AutoTokenizer"
    generates_text: bool = False
    has_labels: bool = False
    predict_example: str = "Text to classify."
    example_words: tuple[str, ...] = ()
    label_counts_of: str = "rows"
    score_group_title: str | None = None
    peft_task_type: str | None = None
    default_metrics: tuple[str, ...] = ()
    processor_kind: str = "tokenizer"
    column_roles: dict[str, str] = {}
    recipe_fields: dict[str, tuple[Any, Any]] = {}
    serve_kind: str | None = None
    onnx_servable: bool = False
    checked_metric: str | None = None
    training_defaults: dict[str, dict[str, Any]] = {}

    def check_recipe(self, recipe: Recipe) -> list[str]:
        return []

    def processor_model_kwargs(self, processor: Any) -> dict[str, Any]:
        return {}

    def stratify_column(self, recipe: Recipe) -> str | None:
        return None

    def model_kwargs(self, labels: list[str] | None) -> dict[str, Any]:
        return {}

    def head_modules(self, model: Any) -> list[str]:
        return []

    def write_train_artifacts(self, model: Any, processor: Any, recipe: Recipe, out_dir: Path) -> list[str]:
        return []

    def write_eval_artifacts(self, out_dir: Any, predictions: Any, references: Any, labels: list[str] | None) -> list[str]:
        return []

    def check_predict_inputs(self, inputs: list[str]) -> None:
        return None

    def predict_options(self, recipe: Recipe) -> dict[str, Any]:
        return {}

    def result_line(self, result: dict[str, Any]) -> str:
        """`label<TAB>score<TAB>input` for classifiers, the generated text for generators, else the values tab-joined."""
        if "label" in result:
            return f"{flat(result['label'])}\t{result['score']:.4f}\t{flat(result['input'])}"
        if "generated_text" in result:
            return flat(result["generated_text"])
        return "\t".join(flat(v) for v in result.values())

    def probe_inputs(self, processor: Any, max_length: int) -> list[dict[str, Any]]:
        """Text tasks: PROBE_TEXTS tokenized one by one (no padding to get wrong)."""
        import torch

        out = []
        for text in PROBE_TEXTS:
            enc = processor(text, return_tensors="pt", truncation=True, max_length=max_length)
            out.append({k: v for k, v in enc.items() if isinstance(v, torch.Tensor)})
        return out

    def export_recipe(self, recipe: Recipe) -> Recipe:
        return recipe

    def onnx_usage(self, model_file: str, processor: Any, config: Any) -> str:
        return ""

    def card_fields(self) -> CardFields:
        return CardFields(
            pipeline_tag=self.pipeline_tag, title=self.card_title, auto_model=self.auto_model,
            auto_processor=self.auto_processor, generates_text=self.generates_text, has_labels=self.has_labels,
            predict_example=self.predict_example, example_words=self.example_words,
            label_counts_of=self.label_counts_of, score_group_title=self.score_group_title,
        )
