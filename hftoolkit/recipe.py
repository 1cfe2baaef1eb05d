"""The recipe: its pydantic schema, and loading it from YAML plus `--set` overrides.

This is the one place that defines what a recipe may contain. Rules that users rely on:
- unknown keys are errors, with the nearest valid key suggested;
- every problem is reported at once, each naming the file, the line and the YAML path;
- validators check, they never rewrite what the user wrote;
- precedence is schema defaults < YAML < `--set key.path=value`.
Only pydantic and PyYAML are imported here so `hft validate --help` and `hft schema` stay fast.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Unset is re-exported: callers build `--unset` items as hftoolkit.recipe.Unset(key).
from hftoolkit.recipe_loading import Override, Unset, load_validated  # noqa: F401
from hftoolkit.recipe_tuning import DpoLoss, LoraInit, Objective, QuantizationSection, fill_objective_defaults
from hftoolkit.recipe_tuning import objective_problems, tuning_problems

TaskName = Literal["text-classification", "causal-lm", "image-classification"]
SplitRole = Literal["train", "validation", "test"]
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
# Shape of a Hugging Face access token. Recipes are saved in run directories and published with models.
HF_TOKEN_PATTERN = re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}")
# Seeds go to numpy's legacy seeding (transformers.set_seed), which takes 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1
# More new tokens than the longest context of the model families hft fine-tunes (Llama 3: 128k) is a typo.
MAX_NEW_TOKENS = 131_072
# A LoRA rank above the width of any layer adapts nothing more; far above it, shapes overflow torch's int64.
MAX_LORA_RANK = 65_536
# More worker processes than any one machine has cores is a typo, and datasets would start that many.
MAX_PROCESSES = 1024


def _no_blank_entries(values: list[str] | None, what: str, hint: str) -> list[str] | None:
    """Names and texts in lists must say something: an empty one is read as `.` (a folder) or matches nothing."""
    blank = [i for i, value in enumerate(values or []) if not value.strip()]
    if blank:
        raise ValueError(f"{what} {blank[0]} is empty or only whitespace; {hint}")
    return values


class _Section(BaseModel):
    # inf and nan (`.inf`, `1e400`) are refused: no setting means them, and they crash or hang later.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSection(_Section):
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


class Columns(_Section):
    """Which dataset column plays which role. Each task says which roles it needs."""

    text: str | None = Field(None, description="Input text (classification, plain-text causal LM).")
    text_pair: str | None = Field(None, description="Second text for sentence-pair classification.")
    label: str | None = Field(None, description="Class label (ClassLabel, string or integer column).")
    image: str | None = Field(None, description="Image column (image classification).")
    messages: str | None = Field(None, description="Chat messages column: a list of {role, content} (SFT).")
    prompt: str | None = Field(None, description="Prompt column (SFT with prompt/response pairs).")
    response: str | None = Field(None, description="Response column (SFT with prompt/response pairs).")
    chosen: str | None = Field(None, description="Preferred completion (DPO/ORPO): text or assistant messages.")
    rejected: str | None = Field(None, description="Dispreferred completion (DPO/ORPO), same kind as chosen.")

    @model_validator(mode="after")
    def _one_column_per_role(self) -> Columns:
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


class Splits(_Section):
    """Names of the dataset's splits for each role. A missing validation split is carved out of train."""

    train: str = "train"
    validation: str | None = "validation"
    test: str | None = "test"


class DatasetSection(_Section):
    name: str | None = Field(None, description="Hub dataset id (org/name) or a local dataset folder.")
    files: dict[SplitRole, str] | None = Field(
        None,
        description="Local data files per split role (csv, json, jsonl, parquet, or txt for plain text: see "
        "text_sample_by) instead of `name`.",
    )
    config: str | None = Field(None, description="Dataset configuration name (Hub datasets with several configs).")
    revision: str | None = Field(None, description="Branch, tag or commit of a Hub dataset.")
    splits: Splits = Field(default_factory=Splits)
    columns: Columns = Field(default_factory=Columns)
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
    skip_bad_images: bool = Field(False, description="Skip images that fail to decode (counted in the data report).")
    skip_bad_pairs: bool = Field(False, description="Drop bad preference pairs (empty, identical, differing prompts), counted.")
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
    batching: Literal["padded", "packed", "blocks"] = Field(
        "padded",
        description="Causal LM only. padded: one example per row, padded to the longest in the batch. packed: the "
        "batch's examples packed into as few rows of at most max_length tokens as fit, positions restarting at 0 for "
        "each so no example attends to another. blocks: plain text concatenated (EOS between rows) and cut into rows of exactly max_length "
        "tokens, attention crossing row boundaries (continued pre-training, like transformers' run_clm example).",
    )
    end_of_turn_token: str | None = Field(
        None,
        description="Causal LM chat data: the token the chat template ends an assistant turn with, when it is not the "
        "tokenizer's EOS token (e.g. <|im_end|> on a base model whose EOS is <|endoftext|>). It becomes the EOS token of "
        "the saved tokenizer and model config so generation stops at the end of a reply.",
    )

    @model_validator(mode="after")
    def _name_or_files(self) -> DatasetSection:
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


class LoraSection(_Section):
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
        return _no_blank_entries(names, "module", "give module names such as query or c_attn (or null for the default)")


class TrainingSection(_Section):
    objective: Objective = Field("sft", description="sft, or preference tuning through TRL: dpo (DPOTrainer) or orpo.")
    beta: float | None = Field(None, gt=0, description="DPO/ORPO beta (default per objective).")
    loss_type: DpoLoss | None = Field(None, description="DPO loss (TRL DPOConfig.loss_type; default sigmoid).")
    _objective_defaults = model_validator(mode="before")(fill_objective_defaults)
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
        problems += objective_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class EvaluationSection(_Section):
    metrics: list[str] | None = Field(
        None,
        description="evaluate metric names. Shipped offline: accuracy, f1, precision, recall, perplexity, "
        "next_token_accuracy. Others load from the Hub.",
    )
    average: Literal["auto", "binary", "macro", "micro", "weighted"] = Field(
        "auto", description="Averaging for f1/precision/recall: auto = binary for 2 classes, macro otherwise."
    )
    split: SplitRole | None = Field(None, description="Split `hft evaluate` scores by default (test, else validation).")

    @field_validator("metrics")
    @classmethod
    def _metric_names(cls, names: list[str] | None) -> list[str] | None:
        return _no_blank_entries(names, "metric", "give metric names such as accuracy or f1")


class GenerationSection(_Section):
    """Text generation with a causal LM: samples written at the end of training, and `hft predict` defaults."""

    prompts: list[str] = Field(
        default_factory=list,
        description="Generated with the fine-tuned model at the end of training and saved to samples.jsonl in the run "
        "directory. With chat data (messages or prompt/response columns) each prompt is a user message formatted with "
        "the chat template; with plain text it is the start of a text to continue.",
    )
    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS, description="Most tokens generated per prompt.")
    do_sample: bool = Field(False, description="Sample (with temperature and top_p) instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (do_sample: true only).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest token set with this probability mass (do_sample: true only).")

    @field_validator("prompts")
    @classmethod
    def _prompts_have_text(cls, prompts: list[str]) -> list[str]:
        # Generation from nothing fails at the end of training, after all the work; refuse it up front.
        return _no_blank_entries(prompts, "prompt", "every prompt needs text to continue or answer") or []


class Recipe(_Section):
    task: TaskName
    model: ModelSection
    dataset: DatasetSection
    lora: LoraSection = Field(default_factory=LoraSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    generation: GenerationSection = Field(default_factory=GenerationSection, description="Causal LM only.")
    output_dir: str = Field(description="Run directory written by finetune and read by evaluate, predict and push.")

    @model_validator(mode="after")
    def _columns_fit_task(self) -> Recipe:
        # Which column roles each task accepts. Setting another one is an error, not silently ignored.
        allowed = {
            "text-classification": {"text", "text_pair", "label"},
            "image-classification": {"image", "label"},
            "causal-lm": {"text", "messages", "prompt", "response", "chosen", "rejected"},
        }[self.task]
        given = {k for k, v in self.dataset.columns.model_dump().items() if v is not None}
        extra = sorted(given - allowed)
        if extra:
            raise ValueError(
                f"dataset.columns.{extra[0]} is not used by task {self.task} (it uses: {', '.join(sorted(allowed))})"
            )
        return self

    @model_validator(mode="after")
    def _causal_lm_settings(self) -> Recipe:
        # Compared with the defaults (not with what was written) so the resolved recipe of any run re-validates.
        ds = self.dataset
        if self.task != "causal-lm":
            if ds.batching != "padded":
                raise ValueError(f"dataset.batching {ds.batching} is for task causal-lm; {self.task} batches padded")
            if ds.end_of_turn_token is not None:
                raise ValueError(f"dataset.end_of_turn_token is for causal-lm chat data, not task {self.task}")
            if self.generation != GenerationSection():
                raise ValueError(f"generation is for task causal-lm; {self.task} generates no text")
            return self
        if self.training.objective != "sft" or ds.columns.chosen or ds.columns.rejected:
            return self  # preference pairs: _tuning
        c = ds.columns
        kinds = [k for k, on in (("text", c.text), ("messages", c.messages), ("prompt/response", c.prompt or c.response)) if on]
        if len(kinds) != 1:
            given = f" (given: {', '.join(kinds)})" if kinds else ""
            raise ValueError(
                "dataset.columns needs exactly one kind of causal-lm data: text (plain text), messages (chat) or "
                f"prompt and response{given}"
            )
        if (c.prompt is None) != (c.response is None):
            raise ValueError("dataset.columns needs both prompt and response (a prompt/response pair per row)")
        if ds.batching == "blocks" and c.text is None:
            raise ValueError("dataset.batching blocks cuts plain text (columns.text) into blocks; chat data uses padded or packed")
        if ds.end_of_turn_token is not None and c.text is not None:
            raise ValueError("dataset.end_of_turn_token is for chat data (messages or prompt/response), not plain text")
        return self

    @model_validator(mode="after")
    def _tuning(self) -> Recipe:
        problems = tuning_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _no_access_tokens(self) -> Recipe:
        # A token in a recipe would be copied into recipe.resolved.yaml and published with the model. The value itself
        # is never echoed: the message names only where it is.
        def walk(value: Any, path: str) -> str | None:
            if isinstance(value, str):
                return path if HF_TOKEN_PATTERN.search(value) else None
            items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
            for key, child in items:
                found = walk(child, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]")
                if found:
                    return found
            return None

        found = walk(self.model_dump(mode="json"), "")
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


def diff_recipes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved recipes (for resume/overwrite messages)."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b, dotted = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changed += diff_recipes(a, b, dotted + ".")
        elif a != b:
            changed.append(f"{dotted}: {a!r} -> {b!r}")
    return changed


