"""The model card `hft push` publishes: metadata + Markdown rendered from templates/model_card.md, then validated.

Rendering goes through huggingface_hub (`ModelCardData`, `EvalResult`, `ModelCard.from_template`) so the YAML
header and its model-index are exactly what the Hub parses. The card is a pure function of `CardInputs`, which
publish/inspect.py builds from the run's (already sanitized) records: no dates, no absolute paths, no network, so the
same run always renders the same bytes (tests/golden/model_card.md pins them). What differs between tasks (pipeline
tag, Auto classes, generation or labels, the example input) comes from the task's `card_fields()`, never from its name.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftoolkit.errors import PushError
from hftoolkit.publish.card_tuning import quantized_loading, trainer_phrase, tuning_hyperparameters
from hftoolkit.publish.escape import code_fence, code_span, md_inline, md_text, python_str, shell_word

if TYPE_CHECKING:
    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.run.records import DataReport, EvalResults, Manifest
    from hftoolkit.tasks.base import CardFields

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"

# The Hub's license field takes lowercase SPDX ids (checked with `packaging.licenses`) plus a few ids of its own that
# no library lists; "other" needs license_name and license_link, which hft does not write, so it is not offered.
HUB_ONLY_LICENSES = frozenset({
    "openrail", "openrail++", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "cc", "gpl", "lgpl", "bsd", "lgpl-lr", "deepfloyd-if-license", "llama2", "llama3",
    "llama3.1", "llama3.2", "llama3.3", "llama4", "gemma", "apple-ascl", "apple-amlr", "intel-research",
})

# The snippet feeds an image processor images (PIL) and a tokenizer text: the processor class decides, not the task.
IMAGE_PROCESSOR = "AutoImageProcessor"
# Scores hft reports that are not metrics in the model-index sense.
NOT_METRICS = ("loss", "runtime", "samples_per_second", "steps_per_second", "epoch")
# `GROUP/metric` scores (token classification: `PER/f1`) form a table of their own, one row per group; the model-index
# and the main results table keep the overall scores.
GROUP_SEPARATOR = "/"


@dataclass
class CardInputs:
    """Everything the card says. publish/inspect.py fills it from a run; the golden test from fixed JSON."""

    repo_id: str
    kind: str  # adapter | merged | full
    task: str  # the recipe's task
    fields: CardFields  # what the task contributes (pipeline tag, Auto classes, ...)
    recipe: Recipe  # the published (sanitized) resolved recipe
    recipe_yaml: str
    manifest: Manifest  # the published (sanitized) manifest
    data_report: DataReport
    eval_results: EvalResults  # the published (sanitized) eval_results.json
    license: str | None
    license_source: str  # where the license came from, said in the card
    base_model: str | None  # Hub id of the base model, None for a local one
    base_revision: str | None  # commit (or revision) of the base model
    dataset_id: str | None  # Hub id of the dataset, None for local files or folders
    language: str | list[str] | None = None
    has_loss_curve: bool = True
    lora_targets: list[str] | None = None  # the modules the adapter was applied to (from adapter_config.json)
    notes: list[str] = field(default_factory=list)  # what push changed for publication (paths shortened ...)
    onnx: dict[str, Any] | None = None  # --with-onnx: the ONNX section, already escaped (publish/onnx.py)


def license_problem(value: str | None, field_name: str = "license") -> str | None:
    """Why `value` is not a license id the Hub accepts, or None when it is fine."""
    if not value:
        return (
            f"{field_name}: unknown; the base model's card states none, so set model.license in the recipe to the "
            "fine-tuned model's license id (e.g. apache-2.0)"
        )
    if value in HUB_ONLY_LICENSES:
        return None
    from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression

    try:
        canonical = canonicalize_license_expression(value)
    except InvalidLicenseExpression:
        return f"{field_name}: {value!r} is not a license id the Hub knows (SPDX ids such as apache-2.0, mit, cc-by-4.0)"
    if " " in canonical:
        return f"{field_name}: {value!r} is a license expression; the Hub takes a single license id"
    if value != value.lower():
        return f"{field_name}: the Hub writes license ids in lowercase: use {value.lower()!r}, not {value!r}"
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "–"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "–"
    return str(value)


_ABS_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/'\"]+/)+([^\s/'\"]+)")


def _no_paths(text: str) -> str:
    """Free-text notes may quote files (a skipped image, a data file); the card keeps only their names."""
    return _ABS_PATH.sub(r"\1", str(text))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _overall(inputs: CardInputs) -> dict[str, Any]:
    """The overall scores: all of them, less the per-group ones of a task that has groups (CardFields)."""
    grouped = inputs.fields.score_group_title is not None
    return {k: v for k, v in inputs.eval_results.metrics.items() if not (grouped and GROUP_SEPARATOR in k)}


def _metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, f"{v:.4f}") for k, v in metrics.items() if _is_number(v)]


def _group_table(inputs: CardInputs) -> tuple[list[str], list[list[str]]]:
    """`GROUP/metric` scores as (metric names, one row per group); counts (support) stay integers."""
    columns: list[str] = []
    rows: dict[str, dict[str, str]] = {}
    overall = _overall(inputs)
    for key, value in inputs.eval_results.metrics.items():
        if key in overall or not _is_number(value):
            continue
        group, metric = key.rsplit(GROUP_SEPARATOR, 1)
        columns += [] if metric in columns else [metric]
        rows.setdefault(group, {})[metric] = str(int(value)) if metric == "support" else f"{value:.4f}"
    return columns, [[group] + [cells.get(c, "–") for c in columns] for group, cells in rows.items()]


def _dataset(inputs: CardInputs) -> dict[str, Any]:
    ds_recipe, ds_manifest = inputs.recipe.dataset, inputs.manifest.dataset
    hub_id = inputs.dataset_id
    files = ds_recipe.files or {}
    formats = sorted({Path(f).suffix.lstrip(".").replace("jsonl", "json").replace("tsv", "csv") for f in files.values()})
    return {
        "hub_id": hub_id,
        "display": hub_id or ds_recipe.name or f"local {'/'.join(formats) or 'data'} files",
        "type": hub_id or (formats[0] if len(formats) == 1 else "local"),
        "name": hub_id or f"local {'/'.join(formats) or 'data'} files",
        "config": ds_recipe.config,
        "revision": ds_recipe.revision,
        "commit": ds_manifest.commit if ds_manifest else None,
        "files": files,
        "split_names": ds_manifest.split_names if ds_manifest else {},
        "notes": ds_manifest.notes if ds_manifest else [],
    }


def eval_results_metadata(inputs: CardInputs) -> list:
    """model-index entries (huggingface_hub EvalResult), one per metric of eval_results.json."""
    from huggingface_hub import EvalResult

    ev = inputs.eval_results
    ds = _dataset(inputs)
    split = ev.split
    out = []
    for name, value in _overall(inputs).items():
        if name in NOT_METRICS or not _is_number(value):
            continue
        out.append(
            EvalResult(
                task_type=inputs.fields.pipeline_tag,
                task_name=inputs.fields.title,
                dataset_type=ds["type"],
                dataset_name=ds["name"],
                dataset_config=ds["config"],
                dataset_split=ds["split_names"].get(split, split),
                dataset_revision=ds["commit"] or ds["revision"],
                metric_type=name,
                metric_name=name,
                metric_value=round(float(value), 4),
            )
        )
    return out


def card_data(inputs: CardInputs):
    from huggingface_hub import ModelCardData

    ds = _dataset(inputs)
    adapter = inputs.kind == "adapter"
    tags = ["hftoolkit", inputs.fields.pipeline_tag]
    if inputs.recipe.lora.enabled:
        tags += ["lora", "peft"] if adapter else ["lora", "merged-lora"]
    metric_names = [n for n in _overall(inputs) if n not in NOT_METRICS]
    return ModelCardData(
        base_model=inputs.base_model,
        datasets=[ds["hub_id"]] if ds["hub_id"] else None,
        language=inputs.language,
        library_name="peft" if adapter else "transformers",
        license=inputs.license,
        metrics=metric_names or None,
        model_name=inputs.repo_id.split("/")[-1],
        pipeline_tag=inputs.fields.pipeline_tag,
        tags=tags,
        eval_results=eval_results_metadata(inputs) or None,
    )


def _hyperparameters(inputs: CardInputs) -> list[tuple[str, Any]]:
    recipe, manifest = inputs.recipe, inputs.manifest
    train, lora = recipe.training, recipe.lora
    hyper = [
        ("epochs", train.epochs), ("max_steps", train.max_steps), ("per-device batch size", train.batch_size),
        ("gradient accumulation steps", train.gradient_accumulation_steps),
        ("world size (processes)", manifest.world_size), ("learning rate", train.learning_rate),
        ("scheduler", train.scheduler), ("warmup ratio", train.warmup_ratio), ("weight decay", train.weight_decay),
        ("max grad norm", train.max_grad_norm), ("precision", manifest.precision),
        ("seed", train.seed if manifest.seed is None else manifest.seed),
        ("max sequence length", recipe.dataset.max_length),
    ]
    if lora.enabled:
        hyper += [
            ("LoRA rank r", lora.r), ("LoRA alpha", lora.alpha), ("LoRA dropout", lora.dropout),
            ("LoRA target modules", sorted(inputs.lora_targets or lora.target_modules or []) or "PEFT default"),
            ("modules trained fully (saved with the adapter)", lora.modules_to_save or "the task head"),
        ]
    hyper += tuning_hyperparameters(recipe)
    params = manifest.parameters
    if params and params.total:
        share = 100 * params.trainable / params.total
        hyper.append(("trainable parameters", f"{params.trainable:,} of {params.total:,} ({share:.2f}%)"))
    return [(k, v) for k, v in hyper if v is not None]


def _limitations(inputs: CardInputs, ds: dict[str, Any], labels: list[str], truncated: dict[str, float]) -> list[str]:
    ev = inputs.eval_results
    limitations = [
        f"Scores come from {ev.num_examples} examples of the {ev.split} split of "
        f"{ds['display']}; expect different numbers on other data.",
    ]
    if truncated:
        worst = max(truncated.values())
        limitations.append(
            f"Inputs are cut at {inputs.recipe.dataset.max_length} tokens; up to {worst:.1%} of the "
            "examples of a split were truncated during training and evaluation."
        )
    if labels:
        limitations.append(
            f"The model only knows the labels {', '.join(map(str, labels))}; every input gets one of them, relevant "
            "or not."
        )
    if not ds["hub_id"]:
        limitations.append(
            "The training data were local files that are not published; reproducing the run needs them at the paths "
            "the recipe names."
        )
    if inputs.kind == "merged":
        limitations.append(
            "The LoRA adapter was merged into the base weights before upload (outputs checked against the adapter "
            "before publishing); the adapter itself is not in this repo."
        )
    return limitations


def _dataset_shown(ds: dict[str, Any]) -> dict[str, Any]:
    """The dataset facts as the card body shows them (the metadata gets the raw values)."""
    return {
        "hub_id": ds["hub_id"] and md_text(ds["hub_id"]),
        "display": md_text(ds["display"]),
        "config": ds["config"] and code_span(ds["config"]),
        "revision": ds["revision"] and code_span(ds["revision"]),
        "commit": ds["commit"] and code_span(ds["commit"]),
        "files": {md_text(role): code_span(path) for role, path in ds["files"].items()},
    }


def _usage(inputs: CardInputs, base_ref: str) -> dict[str, Any]:
    """The "How to use" snippets: what the task says loads and feeds the model, as Python and shell literals."""
    fields = inputs.fields
    return {
        "repo_id_py": python_str(inputs.repo_id),
        "repo_id_sh": shlex.quote(inputs.repo_id),
        "auto_model": fields.auto_model,
        "auto_processor": fields.auto_processor,
        "generates_text": fields.generates_text,
        "image_input": fields.auto_processor == IMAGE_PROCESSOR,
        "example_py": python_str(fields.predict_example),
        "example_sh": shell_word(fields.predict_example),
        "words_py": fields.example_words and json.dumps(list(fields.example_words)),  # a list of str literals
        "base_ref_py": python_str(base_ref),
        "base_revision_py": inputs.base_revision and python_str(inputs.base_revision),
    }


def _data(inputs: CardInputs, ds: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """The training-data section: labels, splits, dropped rows, token lengths, notes."""
    report = inputs.data_report
    counts = report.label_counts
    roles = [r for r in ("train", "validation", "test") if r in counts]
    label_rows = [[str(i), name] + [counts[r].get(name, 0) for r in roles] for i, name in enumerate(labels)]
    split_rows = [(role, ds["split_names"].get(role, role), n) for role, n in report.split_sizes.items()]
    return {
        "dataset": _dataset_shown(ds),
        "label_header": [md_text(h) for h in ["id", "label"] + [f"{r} {inputs.fields.label_counts_of}" for r in roles]],
        "label_rows": [[md_text(cell) for cell in row] for row in label_rows],
        "split_rows": [tuple(md_text(cell) for cell in row) for row in split_rows],
        "dropped": sorted((md_text(reason), md_text(n)) for reason, n in report.dropped.items()),
        "data_notes": [md_inline(_no_paths(n)) for n in list(ds["notes"]) + list(report.notes)],
        "token_lengths": {k: v if isinstance(v, (int, float)) else md_text(v) for k, v in report.token_lengths.items()},
    }


def _groups(inputs: CardInputs) -> dict[str, Any]:
    """The per-group scores table (token classification: one row per entity type)."""
    columns, rows = _group_table(inputs)
    title = inputs.fields.score_group_title or ""
    return {
        "group_title": md_text(title), "group_header": [md_text(h) for h in [title] + columns],
        "group_rows": [[md_text(cell) for cell in row] for row in rows],
    }


def _context(inputs: CardInputs) -> dict[str, Any]:
    """The template's variables, each escaped for the place it is rendered (see the helpers above)."""
    recipe, manifest, ev = inputs.recipe, inputs.manifest, inputs.eval_results
    ds = _dataset(inputs)
    labels = (manifest.labels or ev.labels or []) if inputs.fields.has_labels else []
    truncated = {k: v for k, v in inputs.data_report.truncated_share.items() if v}
    base_ref = inputs.base_model or recipe.model.name or "a local model"
    return {
        **_usage(inputs, base_ref),
        **_data(inputs, ds, labels),
        "title": md_text(inputs.repo_id.split("/")[-1]),
        "kind": inputs.kind,
        "task": md_text(inputs.task),
        "base_ref": md_text(base_ref),
        "license": md_text(inputs.license),
        "license_source": md_text(inputs.license_source),
        "truncated": {md_text(role): share for role, share in truncated.items()},
        "hyper": [(k, md_text(_fmt(v))) for k, v in _hyperparameters(inputs)],
        "eval_split": md_text(ev.split),
        "eval_examples": md_text(ev.num_examples),
        "eval_rows": [(md_text(name), value) for name, value in _metric_rows(_overall(inputs))],
        **_groups(inputs),
        "versions": sorted((md_text(k), md_text(v)) for k, v in manifest.versions.items()),
        "has_loss_curve": inputs.has_loss_curve,
        "trainer": trainer_phrase(recipe),
        "quantized": quantized_loading(recipe),
        "onnx": inputs.onnx,
        "recipe_yaml": inputs.recipe_yaml.rstrip("\n"),
        "recipe_fence": code_fence(inputs.recipe_yaml),
        "limitations": [md_text(item) for item in _limitations(inputs, ds, labels, truncated)],
        "notes": [md_inline(note) for note in inputs.notes],
    }


def render_card(inputs: CardInputs) -> str:
    """The README.md text. Deterministic: the same inputs give the same bytes."""
    from huggingface_hub import ModelCard

    card = ModelCard.from_template(card_data(inputs), template_path=str(TEMPLATE), **_context(inputs))
    return str(card).rstrip("\n") + "\n"


def validate_card(content: str, *, kind: str) -> Any:
    """Check what the Hub needs in the card's metadata, naming the first bad field, then parse it with huggingface_hub.

    The raw YAML is checked first: huggingface_hub's own parser stops at the first missing model-index key with a
    bare KeyError, which would not tell the user which field is wrong.
    """
    import yaml
    from huggingface_hub import ModelCard

    match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.S)
    try:
        meta = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError as e:
        raise PushError(f"model card: the metadata is not valid YAML ({e})") from None
    if not isinstance(meta, dict):
        raise PushError("model card: no YAML metadata block at the top")
    problems = []
    problem = license_problem(meta.get("license"))
    if problem:
        problems.append(problem)
    for key in ("library_name", "pipeline_tag"):
        if not meta.get(key):
            problems.append(f"{key}: missing")
    if kind == "adapter" and not meta.get("base_model"):
        problems.append("base_model: missing; an adapter is useless without the Hub id of its base model")
    index = meta.get("model-index") or []
    results = index[0].get("results") if index and isinstance(index[0], dict) else None
    if not results:
        problems.append("model-index: no evaluation results (metrics in eval_results.json; run `hft evaluate RUN_DIR`)")
    else:
        if not index[0].get("name"):
            problems.append("model-index[0].name: missing")
        for i, result in enumerate(results):
            where = f"model-index[0].results[{i}]"
            for section, key in (("task", "type"), ("dataset", "type"), ("dataset", "name")):
                if not (result.get(section) or {}).get(key):
                    problems.append(f"{where}.{section}.{key}: missing")
            metrics = result.get("metrics") or []
            if not metrics:
                problems.append(f"{where}.metrics: missing")
            for j, metric in enumerate(metrics):
                if not metric.get("type"):
                    problems.append(f"{where}.metrics[{j}].type: missing")
                value = metric.get("value")
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    problems.append(f"{where}.metrics[{j}].value: {value!r} is not a number")
    if problems:
        raise PushError("model card: " + "; ".join(problems))
    try:
        return ModelCard(content)
    except ValueError as e:
        raise PushError(f"model card: huggingface_hub cannot parse the metadata ({e})") from None
