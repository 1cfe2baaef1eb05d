"""The model card `hft push` publishes: metadata + Markdown rendered from templates/model_card.md, then validated.

Rendering goes through huggingface_hub (`ModelCardData`, `EvalResult`, `ModelCard.from_template`) so the YAML
header and its model-index are exactly what the Hub parses. The card is a pure function of `CardInputs`, which
`push.py` builds from the run's (already sanitized) files: no dates, no absolute paths, no network, so the same
run always renders the same bytes (tests/golden/model_card.md pins them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftoolkit.errors import PushError

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"

# The Hub's license field takes lowercase SPDX ids (checked with `packaging.licenses`) plus a few ids of its own that
# no library lists; "other" needs license_name and license_link, which hft does not write, so it is not offered.
HUB_ONLY_LICENSES = frozenset({
    "openrail", "openrail++", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "cc", "gpl", "lgpl", "bsd", "lgpl-lr", "deepfloyd-if-license", "llama2", "llama3",
    "llama3.1", "llama3.2", "llama3.3", "llama4", "gemma", "apple-ascl", "apple-amlr", "intel-research",
})

TASK_TITLES = {
    "text-classification": "Text Classification",
    "image-classification": "Image Classification",
    "text-generation": "Text Generation",
    "token-classification": "Token Classification",
}
# Scores hft reports that are not metrics in the model-index sense.
NOT_METRICS = ("loss", "runtime", "samples_per_second", "steps_per_second", "epoch")
# `GROUP/metric` scores (token classification: `PER/f1`) form their own table, one row per group; the model-index
# and the main results table keep the overall scores.
GROUP_SEPARATOR = "/"
GROUP_TITLES = {"token-classification": "entity type"}
COUNTED_UNITS = {"token-classification": "words"}  # what the label table counts per split (default: rows)


@dataclass
class CardInputs:
    """Everything the card says. `push.py` fills it from a run; the golden test from fixed JSON."""

    repo_id: str
    kind: str  # adapter | merged | full
    task: str  # the recipe's task
    pipeline_tag: str
    auto_model: str  # transformers Auto class of the task
    recipe: dict[str, Any]  # the published (sanitized) resolved recipe
    recipe_yaml: str
    manifest: dict[str, Any]  # the published (sanitized) manifest
    data_report: dict[str, Any]
    eval_results: dict[str, Any]  # the published (sanitized) eval_results.json
    license: str | None
    license_source: str  # where the license came from, said in the card
    base_model: str | None  # Hub id of the base model, None for a local one
    base_revision: str | None  # commit (or revision) of the base model
    dataset_id: str | None  # Hub id of the dataset, None for local files or folders
    language: str | list[str] | None = None
    has_loss_curve: bool = True
    lora_targets: list[str] | None = None  # the modules the adapter was applied to (from adapter_config.json)
    notes: list[str] = field(default_factory=list)  # what push changed for publication (paths shortened ...)


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


def _metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, f"{v:.4f}") for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _group_table(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """`GROUP/metric` scores as (metric names, one row per group); counts (support) stay integers."""
    columns: list[str] = []
    rows: dict[str, dict[str, str]] = {}
    for key, value in metrics.items():
        if GROUP_SEPARATOR not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        group, metric = key.rsplit(GROUP_SEPARATOR, 1)
        if metric not in columns:
            columns.append(metric)
        rows.setdefault(group, {})[metric] = str(int(value)) if metric == "support" else f"{value:.4f}"
    return columns, [[group] + [cells.get(c, "–") for c in columns] for group, cells in rows.items()]


def _dataset(inputs: CardInputs) -> dict[str, Any]:
    ds_recipe = inputs.recipe.get("dataset", {})
    ds_manifest = inputs.manifest.get("dataset", {})
    hub_id = inputs.dataset_id
    files = ds_recipe.get("files") or {}
    formats = sorted({Path(f).suffix.lstrip(".").replace("jsonl", "json").replace("tsv", "csv") for f in files.values()})
    return {
        "hub_id": hub_id,
        "display": hub_id or ds_recipe.get("name") or f"local {'/'.join(formats) or 'data'} files",
        "type": hub_id or (formats[0] if len(formats) == 1 else "local"),
        "name": hub_id or f"local {'/'.join(formats) or 'data'} files",
        "config": ds_recipe.get("config"),
        "revision": ds_recipe.get("revision"),
        "commit": ds_manifest.get("commit"),
        "files": files,
        "split_names": ds_manifest.get("split_names") or {},
        "notes": ds_manifest.get("notes") or [],
    }


def eval_results_metadata(inputs: CardInputs) -> list:
    """model-index entries (huggingface_hub EvalResult), one per metric of eval_results.json."""
    from huggingface_hub import EvalResult

    ev = inputs.eval_results
    ds = _dataset(inputs)
    split = ev.get("split")
    out = []
    for name, value in (ev.get("metrics") or {}).items():
        if name in NOT_METRICS or GROUP_SEPARATOR in name or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        out.append(
            EvalResult(
                task_type=inputs.pipeline_tag,
                task_name=TASK_TITLES.get(inputs.pipeline_tag, inputs.pipeline_tag),
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
    tags = ["hftoolkit", inputs.pipeline_tag]
    if inputs.recipe.get("lora", {}).get("enabled"):
        tags += ["lora", "peft"] if adapter else ["lora", "merged-lora"]
    metric_names = [n for n in (inputs.eval_results.get("metrics") or {}) if n not in NOT_METRICS and GROUP_SEPARATOR not in n]
    return ModelCardData(
        base_model=inputs.base_model,
        datasets=[ds["hub_id"]] if ds["hub_id"] else None,
        language=inputs.language,
        library_name="peft" if adapter else "transformers",
        license=inputs.license,
        metrics=metric_names or None,
        model_name=inputs.repo_id.split("/")[-1],
        pipeline_tag=inputs.pipeline_tag,
        tags=tags,
        eval_results=eval_results_metadata(inputs) or None,
    )


def _context(inputs: CardInputs) -> dict[str, Any]:
    recipe, manifest, report, ev = inputs.recipe, inputs.manifest, inputs.data_report, inputs.eval_results
    ds = _dataset(inputs)
    labels = manifest.get("labels") or ev.get("labels") or []
    counts = report.get("label_counts") or {}
    roles = [r for r in ("train", "validation", "test") if r in counts]
    label_rows = [[str(i), name] + [str(counts[r].get(name, 0)) for r in roles] for i, name in enumerate(labels)]
    group_columns, group_rows = _group_table(ev.get("metrics") or {})
    sizes = report.get("split_sizes") or {}
    split_rows = [(role, ds["split_names"].get(role, role), str(n)) for role, n in sizes.items()]
    train, lora = recipe.get("training", {}), recipe.get("lora", {})
    hyper = [
        ("epochs", train.get("epochs")), ("max_steps", train.get("max_steps")),
        ("per-device batch size", train.get("batch_size")),
        ("gradient accumulation steps", train.get("gradient_accumulation_steps")),
        ("world size (processes)", manifest.get("world_size")), ("learning rate", train.get("learning_rate")),
        ("scheduler", train.get("scheduler")), ("warmup ratio", train.get("warmup_ratio")),
        ("weight decay", train.get("weight_decay")), ("max grad norm", train.get("max_grad_norm")),
        ("precision", manifest.get("precision")), ("seed", manifest.get("seed", train.get("seed"))),
        ("max sequence length", recipe.get("dataset", {}).get("max_length")),
    ]
    if lora.get("enabled"):
        hyper += [
            ("LoRA rank r", lora.get("r")), ("LoRA alpha", lora.get("alpha")), ("LoRA dropout", lora.get("dropout")),
            ("LoRA target modules", sorted(inputs.lora_targets or lora.get("target_modules") or []) or "PEFT default"),
            ("modules trained fully (saved with the adapter)", lora.get("modules_to_save") or "the task head"),
        ]
    params = manifest.get("parameters") or {}
    if params.get("total"):
        share = 100 * params["trainable"] / params["total"]
        hyper.append(("trainable parameters", f"{params['trainable']:,} of {params['total']:,} ({share:.2f}%)"))
    tl = report.get("token_lengths") or {}
    truncated = {k: v for k, v in (report.get("truncated_share") or {}).items() if v}
    limitations = [
        f"Scores come from {ev.get('num_examples', '?')} examples of the {ev.get('split', '?')} split of "
        f"{ds['display']}; expect different numbers on other data.",
    ]
    if truncated:
        worst = max(truncated.values())
        limitations.append(
            f"Inputs are cut at {recipe.get('dataset', {}).get('max_length')} tokens; up to {worst:.1%} of the "
            "examples of a split were truncated during training and evaluation."
        )
    if labels:
        limitations.append(
            f"The model only knows the labels {', '.join(labels)}; every input gets one of them, relevant or not."
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
    versions = manifest.get("versions") or {}
    return {
        "title": inputs.repo_id.split("/")[-1],
        "repo_id": inputs.repo_id,
        "kind": inputs.kind,
        "task": inputs.task,
        "auto_model": inputs.auto_model,
        "base_ref": inputs.base_model or (recipe.get("model", {}).get("name") or "a local model"),
        "base_is_hub": inputs.base_model is not None,
        "base_revision": inputs.base_revision,
        "license_source": inputs.license_source,
        "dataset": ds,
        "labels": labels,
        "label_header": ["id", "label"] + [f"{r} {COUNTED_UNITS.get(inputs.task, 'rows')}" for r in roles],
        "label_rows": label_rows,
        "example_label": labels[0] if labels else None,
        "split_rows": split_rows,
        "dropped": sorted((report.get("dropped") or {}).items()),
        "data_notes": [_no_paths(n) for n in list(ds["notes"]) + list(report.get("notes") or [])],
        "token_lengths": tl,
        "truncated": truncated,
        "hyper": [(k, _fmt(v)) for k, v in hyper if v is not None],
        "eval_split": ev.get("split"),
        "eval_examples": ev.get("num_examples"),
        "eval_rows": _metric_rows({k: v for k, v in (ev.get("metrics") or {}).items() if GROUP_SEPARATOR not in k}),
        "group_title": GROUP_TITLES.get(inputs.task, "group"),
        "group_header": [GROUP_TITLES.get(inputs.task, "group")] + group_columns,
        "group_rows": group_rows,
        "versions": sorted(versions.items()),
        "has_loss_curve": inputs.has_loss_curve,
        "recipe_yaml": inputs.recipe_yaml.rstrip("\n"),
        "limitations": limitations,
        "notes": inputs.notes,
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
