"""The one place deploy/ reaches into the rest of hftoolkit: a trained run, its task, model and evaluation split.

Everything `hft export` and `hft serve` need from training goes through these few functions. What differs per task
(request kind, whether an ONNX export can be served, the export batches' recipe, the export README) is the task's
own: `TaskBase.serve_kind`, `onnx_servable`, `export_recipe`, `onnx_usage`. Predictions always go through the
task's own `predict`, with the run's `predict_options` under the caller's, exactly as `hft predict` calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftoolkit.errors import ExportError

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.run.layout import RunDir
    from hftoolkit.run.records import Manifest
    from hftoolkit.tasks.base import Task


@dataclass
class TrainedRun:
    """A finished run directory (or a Hub repo pushed by `hft push`) with its recipe, task and manifest."""

    run: RunDir  # or its HubRun subclass
    recipe: Recipe
    task: Task
    manifest: Manifest

    @property
    def model_dir(self) -> Path:
        return Path(self.run.model)

    @property
    def source(self) -> str:
        """What the run is called in reports: `org/name@commit` for a Hub repo, else the directory's name (local
        paths are not written into files that may be published)."""
        text = str(self.run)
        return text if "@" in text else Path(text).name


@dataclass
class EvaluationSplit:
    features: Dataset
    labels: list[str] | None
    split: str


def deployable_task(name: str) -> Task:
    """The task of a run or export, refused in one line when it cannot be exported or served yet."""
    from hftoolkit.tasks.registry import TASKS, get_task

    task = get_task(name)
    if task.serve_kind is None:
        supported = [n for n in TASKS if get_task(n).serve_kind is not None]
        raise ExportError(f"task {name!r} cannot be exported or served yet (supported: {', '.join(supported)})")
    return task


def open_trained(target: str | Path) -> TrainedRun:
    """A run that finished training; an unfinished or missing one is a RunDirError naming it."""
    from hftoolkit.run.hub_run import open_run

    run = open_run(target)
    manifest = run.require_trained()
    recipe = run.load_recipe()
    return TrainedRun(run, recipe, deployable_task(recipe.task), manifest)


def load_model(trained: TrainedRun) -> tuple[Any, Any]:
    """Model and processor as the run saved them (base + adapter for LoRA runs), in eval mode."""
    from hftoolkit.modeling import load_trained

    return load_trained(trained.task, trained.recipe, trained.model_dir)


def evaluation_split(trained: TrainedRun, processor: Any) -> EvaluationSplit:
    """The split `hft evaluate` scores by default (the recipe's, else test, else validation), as model features."""
    from hftoolkit.errors import DataError
    from hftoolkit.training.prepare import prepare_data

    data = prepare_data(trained.recipe, trained.task, processor)
    split = trained.recipe.evaluation.split or ("test" if "test" in data.features else "validation")
    if split not in data.features:
        raise DataError(f"the run's evaluation split {split!r} is not available; available: {', '.join(data.features)}")
    return EvaluationSplit(data.features[split], data.labels, split)


def load_export_processor(task: Task, folder: Path) -> Any:
    """The tokenizer or image processor saved in an export folder, with the same file-reference check as a run's."""
    from hftoolkit.model_checks import check_file_references

    check_file_references(folder)
    return task.load_processor(str(folder), {})


def export_collator(trained: TrainedRun, processor: Any) -> Any:
    """The task's own collator, built from the recipe the task exports with (TaskBase.export_recipe)."""
    return trained.task.collator(processor, trained.task.export_recipe(trained.recipe), on_gpu=False)


def predict_options(trained: TrainedRun, options: dict[str, Any]) -> dict[str, Any]:
    """The run's `predict` defaults (causal LM: its generation settings, chat or not) under the caller's options."""
    return {**trained.task.predict_options(trained.recipe), **options}


def predict(trained: TrainedRun, model: Any, processor: Any, inputs: list[Any], options: dict[str, Any]) -> list[dict]:
    """The task's `predict` with the run's own defaults under the caller's options, as `hft predict` does."""
    return trained.task.predict(model, processor, list(inputs), predict_options(trained, options))
