"""The task protocol: what a task file provides so the pipeline can train, evaluate and predict with it.

A new task is one new file implementing `Task` plus one line in `hftoolkit/tasks/__init__.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.recipe import Recipe


@dataclass
class DataReport:
    """What the data looks like, shown by `hft validate` and `hft finetune`, saved in the run and the model card."""

    columns: dict[str, list[str]] = field(default_factory=dict)
    split_sizes: dict[str, int] = field(default_factory=dict)
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    token_lengths: dict[str, float] = field(default_factory=dict)
    truncated_share: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    empty_texts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> text column -> empty/blank rows
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        for role, n in self.split_sizes.items():
            out.append(f"split {role}: {n} rows")
        for role, cols in self.columns.items():
            out.append(f"columns ({role}): {', '.join(cols)}")
        for role, counts in self.label_counts.items():
            out.append(f"labels ({role}): " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        if self.token_lengths:
            tl = self.token_lengths
            out.append(
                "token length (train sample of %d): mean %.1f, p50 %d, p95 %d, max %d"
                % (tl["sample"], tl["mean"], tl["p50"], tl["p95"], tl["max"])
            )
        for role, share in self.truncated_share.items():
            out.append(f"truncated ({role}): {share:.1%} of examples cut at max_length")
        for role, per_column in self.empty_texts.items():
            shown = ", ".join(f"{col}={n}" for col, n in per_column.items() if n)
            if shown:
                out.append(f"empty or whitespace-only texts ({role}): {shown}")
        for reason, n in self.dropped.items():
            out.append(f"dropped: {n} rows ({reason})")
        out += self.notes
        return out

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Task(Protocol):
    name: str  # the recipe's `task:` value
    pipeline_tag: str  # Hub pipeline tag for the model card
    auto_model: str  # transformers Auto class used to load the model
    peft_task_type: str | None  # peft.TaskType name; None = PEFT's generic PeftModel (inputs other than input_ids)
    default_metrics: tuple[str, ...]
    processor_kind: str  # "tokenizer" or "image processor": which files a local model folder needs, and whether
    # dataset.max_length (tokens) applies

    def load_processor(self, ref: str, kwargs: dict[str, Any]) -> Any:
        """Tokenizer or image processor for the model."""

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

    def write_eval_artifacts(self, out_dir: Any, predictions: Any, references: Any, labels: list[str] | None) -> list[str]:
        """Extra evaluation files (e.g. a confusion matrix PNG); returns their names."""

    def predict(self, model: Any, processor: Any, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
        """`hft predict`: one result per input, each {"input": ...} plus either "label" and "score" (classifiers)
        or "generated_text" (generators). `options` holds what the user gave (max_new_tokens, do_sample, temperature,
        top_p) over the task's optional predict_options defaults (tasks ignore options that do not apply to them).
        Bad inputs raise DataError."""

    # Optional hooks: the pipeline calls them only when a task defines them.
    #
    # def write_train_artifacts(self, model, processor, recipe: Recipe, out_dir: Path) -> list[str]:
    #     """After training, main process only, once the model is saved: extra run files (causal LM: samples.jsonl
    #     from the recipe's generation prompts); returns their names."""
    #
    # def predict_options(self, recipe: Recipe) -> dict[str, Any]:
    #     """Defaults for `predict` options from the run's recipe (causal LM: its generation settings and whether
    #     inputs are chat messages); the user's options override them."""
    #
    # def check_predict_inputs(self, inputs: list[str]) -> None:
    #     """Before the model is loaded: raise DataError for inputs that cannot work (image classification: a path
    #     that does not exist), so a typo fails in a second instead of after loading the model; text tasks warn
    #     about inputs that look like image paths."""
    #
    # def processor_model_kwargs(self, processor) -> dict[str, Any]:
    #     """Extra `from_pretrained` arguments that depend on the processor (text classification: the tokenizer's
    #     pad_token_id, which decoder models use to find the last real token of each row)."""
