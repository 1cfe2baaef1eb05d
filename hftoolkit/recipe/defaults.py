"""Defaults chosen by measurement: per task and method, and per preference objective, filled in before validation.

A `training` or `lora` key the recipe leaves out takes the value its task declares for the method the recipe uses
(LoRA or full fine-tuning: `TaskBase.training_defaults`), and for DPO / ORPO its objective's
(`recipe_tuning.OBJECTIVE_DEFAULTS`); only keys still absent after `--set` / `--unset` are filled, so the precedence
stays schema default < measured default < YAML < `--set`. What was filled is kept on the recipe
(`Recipe.filled_defaults`) for `hft validate` to print, and lands in recipe.resolved.yaml like any value. The sweep
behind the numbers: `python -m bench task-defaults` / `preference-defaults` (bench/RESULTS.md).
"""

from __future__ import annotations

from typing import Any

from hftoolkit.recipe_tuning import OBJECTIVE_DEFAULTS

METHODS = ("lora", "full")


def method_of(data: dict[str, Any]) -> str:
    """"full" when the recipe turns LoRA off, else "lora" (the schema's default)."""
    lora = data.get("lora")
    return "full" if isinstance(lora, dict) and lora.get("enabled") is False else "lora"


def measured_defaults(task: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Dotted key -> the measured default that applies to this recipe (its task, method and objective)."""
    found = dict(task.training_defaults.get(method_of(data), {}))
    training = data.get("training")
    objective = training.get("objective") if isinstance(training, dict) else None
    found.update({f"training.{key}": value for key, value in OBJECTIVE_DEFAULTS.get(objective, {}).items()})
    return found


def fill_measured_defaults(data: Any, tasks: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(the raw recipe with the measured defaults of its absent keys filled in, what was filled)."""
    task = data.get("task") if isinstance(data, dict) else None
    if not isinstance(task, str) or task not in tasks:
        return data, {}  # not a recipe mapping, or no known task name (`task: []` too): validation reports it
    filled, applied = dict(data), {}
    for key, value in measured_defaults(tasks[task], data).items():
        section, name = key.split(".")
        given = filled.get(section, {})
        if not isinstance(given, dict) or name in given:
            continue  # written by the recipe (or not a mapping: validation says so)
        filled[section] = {**given, name: value}
        applied[key] = value
    return filled, applied


def describe(recipe: Any) -> str | None:
    """The `hft validate` line saying which measured defaults applied, or None."""
    if not recipe.filled_defaults:
        return None
    method = "LoRA" if recipe.lora.enabled else "full fine-tuning"
    objective = recipe.training.objective  # a causal-lm key; the other tasks leave it at sft
    source = f"{recipe.task}, {method}" + (f", objective {objective}" if objective != "sft" else "")
    values = ", ".join(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"
                       for key, value in recipe.filled_defaults.items())
    return f"measured defaults applied ({source}; bench/RESULTS.md): {values}"
