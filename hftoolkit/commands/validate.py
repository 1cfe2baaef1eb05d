"""`hft validate RECIPE`: check recipe, data and model config without loading weights, and print the plan.

Refuses what `hft finetune` would refuse (output_dir, model folder, data, labels, plan, metrics), in the same order,
so a recipe that validates trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.tasks.base import Task

# Rows per split tokenized by `hft validate` for length statistics.
VALIDATE_SAMPLE = 2000


def validate_command(recipe_file: Path, overrides: list) -> list[str]:
    """`hft validate`: the recipe file with its --set/--unset overrides, checked; the plan's lines."""
    from hftoolkit.recipe.schema import load_recipe

    return validate(load_recipe(recipe_file, overrides), recipe_file=recipe_file)


def validate(recipe: Recipe, recipe_file: str | Path | None = None) -> list[str]:
    """Check recipe, data and model config without loading weights; return the plan as printable lines."""
    from hftoolkit import metrics as metric_lib
    from hftoolkit.model_checks import check_local_weights
    from hftoolkit.modeling import check_head, check_model, load_processor
    from hftoolkit.refs import resolve_model_ref
    from hftoolkit.run.layout import RunDir, check_output_dir
    from hftoolkit.tasks.registry import get_task
    from hftoolkit.training.prepare import check_plan, prepare_data

    task = get_task(recipe.task)
    check_output_dir(recipe, recipe_file)  # an output_dir finetune would refuse (".", a data folder) is refused now
    # The weights are never read here, but a folder finetune would refuse (pickle only) is refused now too.
    check_local_weights(resolve_model_ref(recipe.model), recipe.model)
    config = check_model(task, recipe)  # weights present, max_length within the position limit
    processor = load_processor(task, recipe.model)  # refuses a local folder without tokenizer/processor files
    data = prepare_data(recipe, task, processor, sample=VALIDATE_SAMPLE)
    steps = check_plan(recipe, data.report.split_sizes["train"])
    check_head(config, task, data.labels, recipe.model)
    model = _meta_model(config, task, recipe, data.labels)
    metric_names = metric_lib.recipe_metrics(recipe, task)
    metric_lib.check_available(metric_names)
    return _plan_lines(recipe, model, config, data, steps, metric_names, RunDir(recipe.output_dir))


def _meta_model(config: Any, task: Task, recipe: Recipe, labels: list[str] | None) -> Any:
    """The architecture on the meta device: parameter counts without reading or allocating any weights."""
    import torch
    import transformers

    from hftoolkit.modeling import apply_lora

    for k, v in task.model_kwargs(labels).items():
        setattr(config, k, v)
    with torch.device("meta"):
        model = getattr(transformers, task.auto_model).from_config(config)
        return apply_lora(model, task, recipe) if recipe.lora.enabled else model


def _plan_lines(recipe: Recipe, model: Any, config: Any, data: Any, steps: int, metrics: list[str], run: Any) -> list[str]:
    from hftoolkit.modeling import count_parameters
    from hftoolkit.quantization import memory_plan
    from hftoolkit.recipe.defaults import describe as describe_defaults
    from hftoolkit.refs import resolve_model_ref
    from hftoolkit.training.objectives import full_reference_copy, plan_lines

    trainable, total = count_parameters(model)
    lines = [f"recipe ok: task {recipe.task}, model {recipe.model.name} ({resolve_model_ref(recipe.model)})"]
    lines += [f"data: {line}" for line in data.report.lines()]
    if data.labels:
        lines.append("label mapping: " + ", ".join(f"{i}={name}" for i, name in enumerate(data.labels)))
    if recipe.lora.enabled:
        mode = f"LoRA r={recipe.lora.r} on {', '.join(model.peft_config['default'].target_modules)}"
    else:
        mode = "full fine-tuning"
    lines.append(f"model: {config.model_type}, {mode}; trainable {trainable:,} of {total:,} parameters ({trainable / total:.2%})")
    t = recipe.training
    max_steps = f", max_steps {t.max_steps}" if t.max_steps else ""
    lines.append(
        f"training: {steps} optimizer steps (batch {t.batch_size} x accumulation {t.gradient_accumulation_steps} per "
        f"device, {t.epochs:g} epochs{max_steps}), learning rate {t.learning_rate:g}, precision {t.precision}, seed {t.seed}"
    )
    lines += [line for line in [describe_defaults(recipe)] if line]
    # A preference objective reports TRL's metrics (plan_lines says so), not the task's.
    lines += plan_lines(recipe) or [f"metrics: {', '.join(metrics)}"]
    lines.append(memory_plan(model, recipe, trainable, reference_copy=full_reference_copy(recipe)))
    lines.append(f"writes: {run.path}/ (model/, checkpoints/, metrics.jsonl, train_results.json, manifest.json, ...)")
    return lines
