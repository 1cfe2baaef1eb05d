"""The recipe: its pydantic schema, and loading it from YAML plus `--set` overrides.

This is the one place that defines what a recipe may contain. Rules that users rely on:
- unknown keys are errors, with the nearest valid key suggested;
- every problem is reported at once, each naming the file, the line and the YAML path;
- validators check, they never rewrite what the user wrote;
- precedence is schema defaults < YAML < `--set key.path=value`.
Only pydantic and PyYAML are imported here so `hft validate --help` and `hft schema` stay fast.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hftoolkit.errors import RecipeError

TaskName = Literal["text-classification", "causal-lm", "image-classification", "token-classification"]
SplitRole = Literal["train", "validation", "test"]
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
# Shape of a Hugging Face access token. Recipes are saved in run directories and published with models.
HF_TOKEN_PATTERN = re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    name: str = Field(
        description="Hub id (org/name), a local folder, or `package:<module>` for a model shipped inside an installed "
        "Python package (its get_model_path())."
    )
    revision: str | None = Field(None, description="Branch, tag or commit of a Hub model. Pin a commit for reproducible runs.")
    trust_remote_code: bool = Field(False, description="Run model code from the repo. Requires `revision` pinned to a commit sha.")
    allow_pickle: bool = Field(False, description="Allow loading pickle weights (pytorch_model.bin). Off: only safetensors load.")
    gguf_file: str | None = Field(None, description="Start from this GGUF file inside the model folder/repo (needs `pip install gguf`).")
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
    tokens: str | None = Field(None, description="Token classification: a list of words per row.")
    tags: str | None = Field(
        None, description="Token classification: a list of tags per row, one per word (ClassLabel ids or strings)."
    )


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
    skip_bad_rows: bool = Field(
        False,
        description="Token classification: drop rows whose tokens and tags differ in length, that hold an unknown tag "
        "or an I- tag following nothing (counted in the data report) instead of stopping at the first one.",
    )
    label_all_subwords: bool = Field(
        False,
        description="Token classification: every subword of a word carries its tag (B- becomes I- after the first "
        "subword) and is scored; default: only the first subword, the others are ignored (-100).",
    )
    regression: bool = Field(
        False,
        description="Text classification: the label column holds numbers to predict (one output, MSE loss; metrics "
        "mse, pearsonr, spearmanr). Without it a float label is an error.",
    )
    num_proc: int | None = Field(
        None,
        ge=1,
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
        return self

    @field_validator("max_samples")
    @classmethod
    def _positive(cls, v):
        values = v.values() if isinstance(v, dict) else [v] if v is not None else []
        if any(x < 1 for x in values):
            raise ValueError("max_samples must be at least 1")
        return v


class LoraSection(_Section):
    enabled: bool = Field(True, description="false = full fine-tuning of every weight.")
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | None = Field(None, description="Modules to adapt; chosen per architecture when not given.")
    modules_to_save: list[str] | None = Field(None, description="Modules trained fully and saved with the adapter; the task's head by default.")


class TrainingSection(_Section):
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
    seed: int = 42
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
    dataloader_num_workers: int = Field(0, ge=0)
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


class EvaluationSection(_Section):
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
    scheme: Literal["IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU"] = Field(
        "IOB2",
        description="Token classification: the tagging scheme of the tags; data is checked against it, and entities "
        "are scored (seqeval strict mode) and predicted as spans that are valid in it.",
    )
    threshold: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Multi-label text classification (a list of labels per row): a label is predicted when its "
        "sigmoid probability is at least this.",
    )


class GenerationSection(_Section):
    """Text generation with a causal LM: samples written at the end of training, and `hft predict` defaults."""

    prompts: list[str] = Field(
        default_factory=list,
        description="Generated with the fine-tuned model at the end of training and saved to samples.jsonl in the run "
        "directory. With chat data (messages or prompt/response columns) each prompt is a user message formatted with "
        "the chat template; with plain text it is the start of a text to continue.",
    )
    max_new_tokens: int = Field(64, ge=1, description="Most tokens generated per prompt.")
    do_sample: bool = Field(False, description="Sample (with temperature and top_p) instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (do_sample: true only).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest token set with this probability mass (do_sample: true only).")


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
        from hftoolkit.tasks.token_classification import TokenClassification

        allowed = {
            "text-classification": {"text", "text_pair", "label"},
            "image-classification": {"image", "label"},
            "causal-lm": {"text", "messages", "prompt", "response"},
            TokenClassification.name: set(TokenClassification.column_roles),
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
    def _task_owned_settings(self) -> Recipe:
        # Keys that one task reads are declared by it (`recipe_keys`) and checked by its `check_recipe`; another task
        # may not set them. Compared with the schema defaults so the resolved recipe of any run re-validates.
        from hftoolkit.tasks.text_classification import TASK as text_classification
        from hftoolkit.tasks.token_classification import TASK as token_classification

        for owner in (text_classification, token_classification):
            if owner.name == self.task:
                owner.check_recipe(self)
                continue
            for dotted in owner.recipe_keys:
                section, key = dotted.split(".")
                part = getattr(self, section)
                if getattr(part, key) != type(part).model_fields[key].default:
                    raise ValueError(f"{dotted} is for task {owner.name}, not {self.task}")
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: the second value would otherwise silently win."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first defined on line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

# YAML 1.1 reads yes/no/on/off as booleans, so `eval_strategy: no` would arrive as False. Recipes follow YAML 1.2:
# only true/false are booleans; `no` stays the string the user wrote.
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _key_lines(node: yaml.Node, prefix: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map each YAML path to the 1-based line where its key is written, for error messages."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (key_node.value,)
            out[path] = key_node.start_mark.line + 1
            _key_lines(value_node, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[prefix + (i,)] = item.start_mark.line + 1
            _key_lines(item, prefix + (i,), out)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """`training.learning_rate=1e-4` -> (["training", "learning_rate"], 0.0001). Values are YAML scalars."""
    if "=" not in item:
        raise RecipeError("--set", [f"{item!r}: expected key.path=value"])
    key, raw = item.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise RecipeError("--set", [f"{item!r}: expected key.path=value"])
    try:
        value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw != "" else ""
    except yaml.YAMLError as e:
        raise RecipeError("--set", [f"{key}: value {raw!r} is not valid YAML ({e})"]) from None
    # YAML reads 1e-4 as a string (YAML 1.1 needs a dot); users mean a number.
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
        value = float(value)
    return key.split("."), value


def _apply_override(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError("--set", [f"{'.'.join(path)}: {part} is not a section"])
        node = child
    node[path[-1]] = value


def _model_for_path(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `loc`, to list valid sibling keys."""
    model: type[BaseModel] | None = Recipe
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def _abbreviation_of(key: str, valid: list[str]) -> list[str]:
    """`rank` -> `r`, `lr_sched` -> `lr_scheduler`: prefixes that plain edit distance misses."""
    hits = [v for v in valid if key.startswith(v) or v.startswith(key)]
    return sorted(hits, key=lambda v: abs(len(v) - len(key)))[:1]


def _format_errors(err: ValidationError, source: str, lines: dict[tuple, int], overridden: set[tuple]) -> list[str]:
    problems = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic adds union branch names (e.g. 'int', 'dict[...]') into loc; drop them for a clean YAML path.
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"int", "str", "float", "bool"})))
        msg = e["msg"].removeprefix("Value error, ")
        if not loc:
            # Cross-section checks raise at the top level; their message starts with the path they are about.
            m = re.match(r"([a-z_]+(?:\.[a-z_]+)+) ", msg)
            loc = tuple(m.group(1).split(".")) if m else loc
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        where = f"{source}:{lines[loc]}" if loc in lines else source
        if any(loc[: len(o)] == o for o in overridden):
            where = "--set"
        if e["type"] == "extra_forbidden":
            owner = _model_for_path(loc[:-1])
            valid = list(owner.model_fields) if owner else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5) or _abbreviation_of(str(loc[-1]), valid)
            hint = f" (did you mean {close[0]}?)" if close else (f" (valid keys: {', '.join(valid)})" if valid else "")
            problems.append(f"{where}: {dotted}: unknown key{hint}")
        elif e["type"] == "missing":
            problems.append(f"{where}: {dotted}: required key is missing")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, (dict, list)) or e["type"].startswith("value_error") else f" (got {got!r})"
            problems.append(f"{where}: {dotted}: {msg}{shown}")
    return problems


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, merge and validate a recipe. Raises RecipeError listing every problem."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(source, ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(source, [f"cannot read the file ({e})"]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
        lines = _key_lines(yaml.compose(text, Loader=yaml.SafeLoader)) if data is not None else {}
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = e.problem or str(e)
        if "python/" in problem or "could not determine a constructor" in problem:
            problem = f"{problem}: YAML tags that build Python objects are refused (recipes are plain data)"
        raise RecipeError(source, [f"{source}{line}: {problem}"]) from None
    except yaml.YAMLError as e:
        raise RecipeError(source, [f"not valid YAML: {e}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(source, [f"{source}: the recipe must be a mapping of sections, got {type(data).__name__}"])

    overridden: set[tuple] = set()
    for item in overrides:
        key_path, value = parse_override(item)
        _apply_override(data, key_path, value)
        overridden.add(tuple(key_path))
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(source, _format_errors(err, source, lines, overridden)) from None


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


