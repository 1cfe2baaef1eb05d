"""The recipe schema: which keys a recipe may hold, their defaults and checks, built from the registered tasks.

The sections every task shares are declared here. What is a task's own comes from the task (tasks/<task>.py): the
dataset column roles it reads (`column_roles`), the keys only it uses (`recipe_fields`, e.g. causal LM's
dataset.batching and generation section) and its cross-key rules (`check_recipe`); the task names come from the
registry. A new task therefore never edits this module. Rules that users rely on:
- unknown keys are errors, with the nearest valid key suggested;
- every problem is reported at once, each naming the file, the line and the YAML path (recipe/loading.py);
- validators check, they never rewrite what the user wrote;
- a key that only other tasks use must stay at its default: set, it would be silently ignored;
- precedence is schema defaults < YAML < `--set key.path=value`.
Only pydantic, PyYAML and the (light) task modules are imported here, so `hft validate --help` and `hft schema`
stay fast.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import yaml
from pydantic import BaseModel, Field, PrivateAttr, create_model, field_validator, model_validator

from hftoolkit.recipe.base import Section, no_blank_entries
from hftoolkit.recipe.loading import Override, load_validated
from hftoolkit.recipe.defaults import fill_measured_defaults
from hftoolkit.recipe_tuning import LoraInit, QuantizationSection, tuning_problems
from hftoolkit.safety import HF_TOKEN_PATTERN, token_path
from hftoolkit.tasks.registry import TASKS, get_task

SplitRole = Literal["train", "validation", "test"]
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
# Seeds go to numpy's legacy seeding (transformers.set_seed), which takes 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1
# A LoRA rank above the width of any layer adapts nothing more; far above it, shapes overflow torch's int64.
MAX_LORA_RANK = 65_536
# More worker processes than any one machine has cores is a typo, and datasets would start that many.
MAX_PROCESSES = 1024


class ModelSection(Section):
    name: str = Field(
        description="Hub id (org/name), a local folder, or `package:<module>` for a model shipped inside an installed "
        "Python package (its get_model_path())."
    )
    revision: str | None = Field(None, description="Branch, tag or commit of a Hub model. Pin a commit for reproducible runs.")
    trust_remote_code: bool = Field(False, description="Run model code from the repo. Requires `revision` pinned to a commit sha.")
    allow_pickle: bool = Field(False, description="Allow loading pickle weights (pytorch_model.bin). Off: only safetensors load.")
    gguf_file: str | None = Field(None, description="Start from this GGUF file inside the model folder/repo (needs `pip install gguf`).")
    quantization: QuantizationSection | None = Field(None, description="Load the base 4- or 8-bit (bitsandbytes) and train LoRA on it.")
    replace_head: bool = Field(
        False,
        description="The checkpoint already has a classification head with a different number of labels: replace it "
        "with a new one (otherwise this is an error).",
    )
    license: str | None = Field(
        None,
        description="License of the fine-tuned model as a Hub license id (SPDX-like: apache-2.0, mit, cc-by-4.0, ...), "
        "written into the model card by `hft push`. Needed when the base model's card does not state one.",
    )

    @field_validator("name")
    @classmethod
    def _names_something(cls, name: str) -> str:
        # An empty name is the current directory to the loaders; `package:` alone names no module.
        if not name.strip() or not name.removeprefix("package:").strip():
            raise ValueError(f"{name!r} names no model; give a Hub id (org/name), a local folder or package:<module>")
        return name

    @model_validator(mode="after")
    def _remote_code_needs_pinned_revision(self) -> ModelSection:
        if self.trust_remote_code and not (self.revision and _COMMIT_SHA.match(self.revision)):
            raise ValueError(
                "trust_remote_code: true runs code from the model repo; pin model.revision to a full 40-character "
                "commit sha so the code that runs is the code you reviewed"
            )
        return self


class ColumnsBase(Section):
    """Which dataset column plays which role. The roles are the tasks' (TaskBase.column_roles); each task says
    which roles it reads."""

    @model_validator(mode="after")
    def _one_column_per_role(self) -> ColumnsBase:
        # The label column is encoded to class ids before texts are tokenized: one column cannot be both.
        roles: dict[str, str] = {}
        for role, column in self.model_dump().items():
            if column is not None and column in roles:
                raise ValueError(
                    f"dataset.columns.{role} and dataset.columns.{roles[column]} both name column {column!r}; each "
                    "role needs a column of its own"
                )
            roles.setdefault(column, role)
        return self


class Splits(Section):
    """Names of the dataset's splits for each role. A missing validation split is carved out of train."""

    train: str = "train"
    validation: str | None = "validation"
    test: str | None = "test"


class DatasetBase(Section):
    """The dataset section's keys every task shares; tasks add their own (TaskBase.recipe_fields)."""

    name: str | None = Field(None, description="Hub dataset id (org/name) or a local dataset folder.")
    files: dict[SplitRole, str] | None = Field(
        None,
        description="Local data files per split role (csv, json, jsonl, parquet, or txt for plain text: see "
        "text_sample_by) instead of `name`.",
    )
    config: str | None = Field(None, description="Dataset configuration name (Hub datasets with several configs).")
    revision: str | None = Field(None, description="Branch, tag or commit of a Hub dataset.")
    splits: Splits = Field(default_factory=Splits)
    columns: ColumnsBase = Field(default_factory=ColumnsBase)  # replaced by the tasks' roles below
    label_names: list[str] | None = Field(
        None, description="Names for integer labels 0..K-1 when the dataset has none (ClassLabel names are used otherwise)."
    )
    num_labels: int | None = Field(None, ge=2, description="Expected number of classes; a mismatch with the data is an error.")
    max_samples: int | dict[SplitRole, int] | None = Field(
        None, description="Keep at most this many rows per split (after a seeded shuffle), for quick runs."
    )
    validation_size: float = Field(
        0.1, gt=0, lt=1, description="Share of train carved out (stratified, seeded) when there is no validation split."
    )
    max_length: int = Field(
        256, ge=8, description="Truncate token sequences to this length (causal LM with batching: blocks: the length of every block)."
    )
    allow_empty_text: bool = Field(
        False,
        description="Train on empty or whitespace-only texts (counted in the data report either way; refused unless "
        "true). Causal LM plain-text documents that are empty are always dropped and counted.",
    )
    num_proc: int | None = Field(
        None,
        ge=1,
        le=MAX_PROCESSES,
        description="Processes for preprocessing (datasets.map num_proc: tokenization; image decode checks). Default: "
        "one; the batched fast tokenizer already uses several threads, and on 2 cores 2 processes saved only 9% "
        "(bench/RESULTS.md). Pays on many cores.",
    )
    text_sample_by: Literal["line", "paragraph", "document"] = Field(
        "paragraph",
        description="How a .txt file is cut into rows (the `datasets` text builder's sample_by): paragraph = text "
        "between blank lines, line = every line, document = the whole file as one row.",
    )
    @model_validator(mode="after")
    def _name_or_files(self) -> DatasetBase:
        if (self.name is None) == (self.files is None):
            raise ValueError("give exactly one of dataset.name (Hub id or local folder) or dataset.files (local files per split)")
        if self.files is not None and "train" not in self.files:
            raise ValueError("dataset.files needs a `train` entry")
        if self.files is not None:
            # pick_splits never reads splits when files are given: a non-default value would be silently ignored.
            changed = [role for role, spec in Splits.model_fields.items() if getattr(self.splits, role) != spec.default]
            if changed:
                others = f" (and dataset.splits.{', dataset.splits.'.join(changed[1:])})" if changed[1:] else ""
                raise ValueError(
                    f"dataset.splits.{changed[0]} is not used with dataset.files{others}: with files, the split names "
                    f"are the keys of dataset.files ({', '.join(self.files)}); remove dataset.splits, and give each "
                    "split's file under dataset.files.<role> (no validation file: one is carved from train)"
                )
        return self

    @field_validator("name")
    @classmethod
    def _names_something(cls, name: str | None) -> str | None:
        if name is not None and not name.strip():
            raise ValueError("an empty name is the current directory to the loaders; give a Hub id or a local folder")
        return name

    @field_validator("max_samples")
    @classmethod
    def _positive(cls, v):
        values = v.values() if isinstance(v, dict) else [v] if v is not None else []
        if any(x < 1 for x in values):
            raise ValueError("max_samples must be at least 1")
        return v


class LoraSection(Section):
    enabled: bool = Field(True, description="false = full fine-tuning of every weight.")
    r: int = Field(8, ge=1, le=MAX_LORA_RANK)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | None = Field(None, description="Modules to adapt; chosen per architecture when not given.")
    modules_to_save: list[str] | None = Field(None, description="Modules trained fully and saved with the adapter; the task's head by default.")
    use_dora: bool = Field(False, description="DoRA (PEFT use_dora): weight-decomposed LoRA.")
    use_rslora: bool = Field(False, description="rsLoRA (PEFT use_rslora): scale by alpha/sqrt(r) instead of alpha/r.")
    init: LoraInit = Field("default", description="PEFT init_lora_weights; pissa/olora rewrite the base and are saved converted.")

    @field_validator("target_modules", "modules_to_save")
    @classmethod
    def _module_names(cls, names: list[str] | None) -> list[str] | None:
        return no_blank_entries(names, "module", "give module names such as query or c_attn (or null for the default)")


class TrainingSection(Section):
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(16, ge=1, description="Per-device train batch size.")
    eval_batch_size: int | None = Field(None, ge=1, description="Per-device eval batch size (default: 2 x batch_size).")
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    seed: int = Field(42, ge=0, le=MAX_SEED)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="auto = bf16 on GPUs that support it, fp16 on other GPUs; on CPU bf16 autocast where the CPU has "
        "native bf16 (AVX512-BF16 or AMX), else fp32.",
    )
    eval_strategy: Literal["no", "epoch", "steps"] = "epoch"
    eval_steps: int | None = Field(None, ge=1)
    eval_on_start: bool = Field(False, description="Evaluate once before the first step: the untrained baseline on the loss curve.")
    save_strategy: Literal["no", "epoch", "steps"] = "epoch"
    save_steps: int | None = Field(None, ge=1)
    save_total_limit: int | None = Field(2, ge=1)
    logging_steps: int = Field(10, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after this many evaluations without improvement.")
    metric_for_best_model: str | None = Field(None, description="e.g. accuracy or eval_loss; keeps and restores the best checkpoint.")
    greater_is_better: bool | None = None
    group_by_length: bool = Field(True, description="Batch examples of similar length together (less padding).")
    gradient_checkpointing: bool = False
    dataloader_num_workers: int = Field(0, ge=0, le=MAX_PROCESSES)
    torch_compile: bool = Field(
        False,
        description="Compile the model with torch.compile. Opt-in for long runs: compiling costs minutes up front and "
        "recompiles for new batch shapes (see bench/RESULTS.md).",
    )
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"], description='Trainer integrations; ["none"] for none.')

    @model_validator(mode="after")
    def _consistent(self) -> TrainingSection:
        problems = []
        if self.eval_strategy == "steps" and self.eval_steps is None:
            problems.append("eval_strategy: steps needs training.eval_steps")
        if self.save_strategy == "steps" and self.save_steps is None:
            problems.append("save_strategy: steps needs training.save_steps")
        if self.eval_on_start and self.eval_strategy == "no":
            problems.append("eval_on_start needs evaluation during training (eval_strategy epoch or steps)")
        if self.early_stopping_patience is not None and self.metric_for_best_model is None:
            problems.append("early_stopping_patience needs training.metric_for_best_model")
        if self.metric_for_best_model is not None:
            if self.eval_strategy == "no":
                problems.append("metric_for_best_model needs evaluation during training (eval_strategy epoch or steps)")
            elif self.save_strategy != self.eval_strategy:
                problems.append("metric_for_best_model needs save_strategy equal to eval_strategy (the best checkpoint must be saved)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class EvaluationSection(Section):
    metrics: list[str] | None = Field(
        None,
        description="evaluate metric names. Shipped offline: accuracy, f1, precision, recall, perplexity, "
        "next_token_accuracy, seqeval, multilabel_f1, exact_match_accuracy, mse, pearsonr, spearmanr. Others load "
        "from the Hub.",
    )
    average: Literal["auto", "binary", "macro", "micro", "weighted"] = Field(
        "auto", description="Averaging for f1/precision/recall: auto = binary for 2 classes, macro otherwise."
    )
    split: SplitRole | None = Field(None, description="Split `hft evaluate` scores by default (test, else validation).")

    @field_validator("metrics")
    @classmethod
    def _metric_names(cls, names: list[str] | None) -> list[str] | None:
        return no_blank_entries(names, "metric", "give metric names such as accuracy or f1")


class RecipeBase(Section):
    """The top level of a recipe; `Recipe` (below) adds the task names and the tasks' own sections."""

    task: str  # replaced by the registry's task names
    model: ModelSection
    dataset: DatasetBase  # replaced by the dataset section with the tasks' columns and keys
    lora: LoraSection = Field(default_factory=LoraSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    _filled_defaults: dict[str, Any] = PrivateAttr(default_factory=dict)  # measured defaults used: `filled_defaults`

    @model_validator(mode="wrap")
    @classmethod
    def _measured_defaults(cls, data: Any, handler: Any) -> RecipeBase:
        # Keys left out get their task's / objective's measured defaults (recipe/defaults.py), remembered for validate.
        filled, applied = fill_measured_defaults(data, TASK_OBJECTS)
        recipe = handler(filled)
        recipe._filled_defaults = applied
        return recipe

    @property
    def filled_defaults(self) -> dict[str, Any]:  # dotted key -> measured default filled in for a key left out
        return self._filled_defaults

    def __eq__(self, other: object) -> bool:  # which defaults were filled is provenance, not what the recipe says
        return type(other) is type(self) and self.model_dump() == other.model_dump()  # type: ignore[union-attr]

    @model_validator(mode="after")
    def _columns_fit_task(self) -> RecipeBase:
        # Which column roles the task reads. Setting another one is an error, not silently ignored.
        allowed = TASK_OBJECTS[self.task].column_roles
        given = {k for k, v in self.dataset.columns.model_dump().items() if v is not None}
        extra = sorted(given - set(allowed))
        if extra:
            raise ValueError(
                f"dataset.columns.{extra[0]} is not used by task {self.task} (it uses: {', '.join(sorted(allowed))})"
            )
        return self

    @model_validator(mode="after")
    def _other_tasks_keys_at_defaults(self) -> RecipeBase:
        # Compared with the defaults (not with what was written) so the resolved recipe of any run re-validates.
        for key, owners in TASK_KEYS.items():
            if self.task in owners:
                continue
            value, default = _value_and_default(self, key)
            if value != default:
                shown = "" if isinstance(value, BaseModel) else f" {_plain(value)}"
                raise ValueError(f"{key}{shown} is for task {' and '.join(owners)}; task {self.task} does not use it")
        return self

    @model_validator(mode="after")
    def _task_rules(self) -> RecipeBase:
        problems = TASK_OBJECTS[self.task].check_recipe(self) + tuning_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _no_access_tokens(self) -> RecipeBase:
        # A token in a recipe would be copied into recipe.resolved.yaml and published with the model. The value itself
        # is never echoed: the message names only where it is.
        found = token_path(self.model_dump(mode="json"))
        if found:
            raise ValueError(
                f"{found.lstrip('.')} looks like a Hugging Face access token; tokens never go in recipes (they are saved "
                "with the run and published with the model): set HF_TOKEN or run `hf auth login` instead"
            )
        return self

    def fingerprint(self) -> str:
        """Stable hash of the resolved recipe: identifies 'the same run' across commands."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _value_and_default(recipe: BaseModel, key: str) -> tuple[Any, Any]:
    """The recipe's value at a dotted key, and the schema's default there."""
    *sections, name = key.split(".")
    node: BaseModel = recipe
    for part in sections:
        node = getattr(node, part)
    return getattr(node, name), type(node).model_fields[name].get_default(call_default_factory=True)


def _plain(value: Any) -> str:
    """A value as YAML writes it (true, null, packed), tokens redacted: messages quote what the user wrote."""
    shown = {None: "null", True: "true", False: "false"}.get(value, value) if isinstance(value, (bool, type(None))) else value
    return HF_TOKEN_PATTERN.sub("hf_***", str(shown))


# --------------------------------------------------------------------------------------------------------------------
# The tasks' part of the schema

TASK_OBJECTS = {name: get_task(name) for name in TASKS}
# Sections with defaults a task may add keys to (`recipe_fields` keys "<section>.<key>", and "dataset.<key>"); a key
# without a dot is a section of its own.
_EXTENSIBLE = {"lora": LoraSection, "training": TrainingSection, "evaluation": EvaluationSection}


def _task_fields() -> tuple[dict[str, dict[str, tuple[Any, Any]]], dict[str, list[str]]]:
    """(section -> key -> (annotation, Field) the tasks add, dotted key -> the tasks that use it), registry order.

    Several tasks may use one key; the first task's declaration of it is the schema's."""
    fields: dict[str, dict[str, tuple[Any, Any]]] = {}
    owners: dict[str, list[str]] = {}
    for name, task in TASK_OBJECTS.items():
        for key, spec in task.recipe_fields.items():
            section, _, field_name = key.rpartition(".")
            if section and section != "dataset" and section not in _EXTENSIBLE:
                raise TypeError(f"task {name}: recipe_fields key {key!r} names no section of the recipe")
            fields.setdefault(section, {}).setdefault(field_name, spec)
            owners.setdefault(key, []).append(name)
    return fields, owners


def _columns() -> type[ColumnsBase]:
    """The dataset.columns section: every role some task reads, documented with what each task reads from it."""
    docs: dict[str, list[str]] = {}
    for name, task in TASK_OBJECTS.items():
        for role, doc in task.column_roles.items():
            docs.setdefault(role, []).append(f"{name}: {doc}")
    roles = {role: (Optional[str], Field(None, description="; ".join(d) + ".")) for role, d in docs.items()}
    return create_model("Columns", __base__=ColumnsBase, __doc__=ColumnsBase.__doc__, **roles)


def _extended(base: type[Section], name: str, extra: dict[str, tuple[Any, Any]]) -> type[Section]:
    return create_model(name, __base__=base, __doc__=base.__doc__, **extra) if extra else base


_FIELDS, TASK_KEYS = _task_fields()
Columns = _columns()
DatasetSection = _extended(
    DatasetBase, "DatasetSection", {"columns": (Columns, Field(default_factory=Columns)), **_FIELDS.get("dataset", {})}
)
_SECTIONS = {name: _extended(base, base.__name__, _FIELDS[name]) for name, base in _EXTENSIBLE.items() if name in _FIELDS}
TaskName = Literal[tuple(TASKS)]
Recipe = create_model(
    "Recipe",
    __base__=RecipeBase,
    __doc__="A recipe: what to fine-tune on which data, and how.",
    task=(TaskName, ...),
    dataset=(DatasetSection, ...),
    **{name: (section, Field(default_factory=section)) for name, section in _SECTIONS.items()},
    **_FIELDS.get("", {}),
    output_dir=(str, Field(description="Run directory written by finetune and read by evaluate, predict and push.")),
)


# --------------------------------------------------------------------------------------------------------------------
# Loading


def load_recipe(path: str | Path, overrides: Sequence[Override] = ()) -> Recipe:
    """Read the YAML, apply `--set` items (strings `key.path=value`) and `Unset` items in order, validate.

    Raises RecipeError listing every problem, each naming the file and line, or the override that caused it.
    """
    return load_validated(path, overrides, Recipe)


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe (defaults filled in), as saved in the run directory."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def recipe_json_schema() -> dict:
    schema = Recipe.model_json_schema()
    schema["title"] = "hftoolkit recipe"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
