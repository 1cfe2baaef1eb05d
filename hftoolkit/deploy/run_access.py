"""The one place deploy/ reaches into the rest of hftoolkit: a trained run, its task, model and evaluation split.

Everything `hft export` and `hft serve` need from training goes through these few functions, so the architecture
issue's renames (rundir -> run/, pipeline -> commands/ and training/) are re-pointed here and nowhere else.
Predictions always go through the task's own `predict`, exactly as `hft predict` calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.recipe import Recipe
    from hftoolkit.tasks.base import Task


@dataclass
class TrainedRun:
    """A finished run directory (or a Hub repo pushed by `hft push`) with its recipe, task and manifest."""

    run: Any  # hftoolkit.rundir.RunDir or hftoolkit.hub.HubRun
    recipe: Recipe
    task: Task
    manifest: dict[str, Any]

    @property
    def model_dir(self) -> Path:
        return Path(self.run.model)

    @property
    def source(self) -> str:
        """What the run is called in reports: `org/name@commit` for a Hub repo, else the directory's name (local
        paths are not written into files that may be published)."""
        text = str(self.run)
        return text if "@" in text else Path(text).name

    @property
    def run_id(self) -> str | None:
        return self.manifest.get("run_id")


@dataclass
class EvaluationSplit:
    features: Dataset
    labels: list[str] | None
    split: str


def open_trained(target: str | Path) -> TrainedRun:
    """A run that finished training; an unfinished or missing one is a RunDirError naming it."""
    from hftoolkit.rundir import open_run
    from hftoolkit.tasks import get_task

    run = open_run(target)
    manifest = run.require_trained()
    recipe = run.load_recipe()
    return TrainedRun(run, recipe, get_task(recipe.task), manifest)


def load_model(trained: TrainedRun) -> tuple[Any, Any]:
    """Model and processor as the run saved them (base + adapter for LoRA runs), in eval mode."""
    from hftoolkit.modeling import load_trained

    return load_trained(trained.task, trained.recipe, trained.model_dir)


def evaluation_split(trained: TrainedRun, processor: Any) -> EvaluationSplit:
    """The split `hft evaluate` scores by default (the recipe's, else test, else validation), as model features."""
    from hftoolkit.errors import DataError
    from hftoolkit.pipeline import prepare_data

    data = prepare_data(trained.recipe, trained.task, processor)
    split = trained.recipe.evaluation.split or ("test" if "test" in data.features else "validation")
    if split not in data.features:
        raise DataError(f"the run's evaluation split {split!r} is not available; available: {', '.join(data.features)}")
    return EvaluationSplit(data.features[split], data.labels, split)


def task_by_name(name: str) -> Task:
    from hftoolkit.tasks import get_task

    return get_task(name)


def load_export_processor(task: Task, folder: Path) -> Any:
    """The tokenizer or image processor saved in an export folder, with the same file-reference check as a run's."""
    from hftoolkit.modeling import check_file_references

    check_file_references(folder)
    return task.load_processor(str(folder), {})


def collator(trained: TrainedRun, processor: Any, recipe: Recipe | None = None) -> Any:
    return trained.task.collator(processor, recipe or trained.recipe, on_gpu=False)


def predict(trained: TrainedRun, model: Any, processor: Any, inputs: list[str], options: dict[str, Any]) -> list[dict]:
    """The task's `predict` with the run's own defaults under the caller's options, as `hft predict` does."""
    return task_predict(trained.task, model, processor, inputs, {**predict_defaults(trained), **options})


def task_predict(task: Task, model: Any, processor: Any, inputs: list[Any], options: dict[str, Any]) -> list[dict]:
    return task.predict(model, processor, list(inputs), dict(options))


def predict_defaults(trained: TrainedRun) -> dict[str, Any]:
    """The run's `predict` defaults (causal LM: its generation settings, chat or not); {} for tasks without them."""
    defaults = getattr(trained.task, "predict_options", None)  # optional task hook, looked up as pipeline.predict_run does
    return defaults(trained.recipe) if defaults is not None else {}


def package_versions() -> dict[str, str]:
    from hftoolkit.pipeline import package_versions as versions

    return versions()
