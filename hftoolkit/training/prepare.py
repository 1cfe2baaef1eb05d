"""From the recipe's dataset to model-ready features, and the training plan those features make.

Order matters and is deliberate: raw splits -> checked values and labels -> validation carve-out -> max_samples ->
label coverage of train -> features. Everything the user can get wrong about the data is found here, before the run
directory is touched or a training step runs. `validate`, `finetune` and `evaluate` all prepare data this way.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hftoolkit.errors import DataError, PlanError
from hftoolkit.run.records import DataReport

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.data import DataSource
    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.tasks.base import Task

# A plan longer than this is a typo (epochs: 1e6), not a run: at 10 optimizer steps a second it would take 11 days.
MAX_PLANNED_STEPS = 10**7
_REPORT_TAIL = 3  # data report lines quoted when a split ends up empty
_SHOWN_EXACT_BELOW = 1e15  # step counts shown in full below this, in scientific notation above


@dataclass
class PreparedData:
    features: dict[str, Dataset]
    labels: list[str] | None
    source: DataSource
    report: DataReport = field(default_factory=DataReport)

    @property
    def fingerprints(self) -> dict[str, str]:
        """datasets' fingerprint of each split's features: the source files, carve-out, max_samples, tokenization."""
        return {role: f._fingerprint for role, f in self.features.items()}


def prepare_data(recipe: Recipe, task: Task, processor: Any, *, sample: int | None = None) -> PreparedData:
    """Raw splits -> checked values and labels -> validation carve-out -> max_samples -> label coverage of train
    -> model-ready features."""
    from hftoolkit.data import carve_validation, limit_rows, load_raw, pick_splits

    report = DataReport()
    raw, source = load_raw(recipe.dataset)
    splits = pick_splits(raw, recipe.dataset, source)
    labels = task.prepare(splits, recipe, report)
    label_col = task.stratify_column(recipe) if labels else None
    carve_validation(splits, recipe.dataset.validation_size, recipe.training.seed, label_col, source)
    limit_rows(splits, recipe.dataset.max_samples, recipe.training.seed)
    report.split_sizes = {role: len(s) for role, s in splits.items()}
    if labels and label_col:
        _count_labels(splits, label_col, labels, report)
        _require_every_label_in_train(report.label_counts["train"], recipe)
    if sample is not None:
        splits = {role: s.select(range(min(len(s), sample))) for role, s in splits.items()}
    features = task.preprocess(splits, recipe, processor, report)
    for role, feats in features.items():
        if len(feats) == 0:
            shown = "; ".join(report.lines()[-_REPORT_TAIL:])
            raise DataError(f"split {role!r} is empty after preprocessing ({shown})")
    report.notes += source.notes
    return PreparedData(features, labels, source, report)


def _count_labels(splits: dict[str, Dataset], label_col: str, labels: list[str], report: DataReport) -> None:
    from hftoolkit.data import column_values

    for role, split in splits.items():
        counts = Counter(column_values(split, label_col))
        report.label_counts[role] = {labels[i]: counts.get(i, 0) for i in range(len(labels))}


def _require_every_label_in_train(counts: dict[str, int], recipe: Recipe) -> None:
    """Checked after the carve-out and max_samples: a class with no training row would get a head it never learns."""
    missing = [name for name, n in counts.items() if n == 0]
    if not missing:
        return
    shown = ", ".join(f"{name}={n}" for name, n in counts.items())
    limit = recipe.dataset.max_samples
    cut = limit.get("train") if isinstance(limit, dict) else limit
    hint = f"raise dataset.max_samples (train keeps {cut} rows)" if cut is not None else "add training rows of it"
    raise DataError(
        f"split 'train' has no rows of label(s) {', '.join(missing)} after the validation carve-out and "
        f"max_samples (rows per label in train: {shown}); {hint}, or give a validation split"
    )


def planned_steps(recipe: Recipe, n_train: int, world_size: int = 1) -> int:
    t = recipe.training
    if t.max_steps:
        return t.max_steps
    batches = math.ceil(n_train / (t.batch_size * world_size))
    return max(1, math.ceil(t.epochs * max(1, batches // t.gradient_accumulation_steps)))


def check_plan(recipe: Recipe, n_train: int, world_size: int = 1) -> int:
    """The plan's optimizer steps, refused when no one can mean it. validate and finetune both call this."""
    t = recipe.training
    batches = math.ceil(n_train / (t.batch_size * world_size))
    if t.gradient_accumulation_steps > batches:
        on = f" on {world_size} processes" if world_size > 1 else ""
        raise PlanError(
            f"training.gradient_accumulation_steps is {t.gradient_accumulation_steps} but the training set makes only "
            f"{batches} batches of {t.batch_size}{on} ({n_train} rows): one optimizer step would need more than all of "
            f"it; set gradient_accumulation_steps to at most {batches}, or lower training.batch_size"
        )
    per_epoch = max(1, batches // t.gradient_accumulation_steps)
    # Compared before rounding: math.ceil of epochs: 1e300 x steps would overflow.
    steps = t.max_steps or t.epochs * per_epoch
    if steps > MAX_PLANNED_STEPS:
        shown = f"{steps:,.0f}" if steps < _SHOWN_EXACT_BELOW else f"{steps:.3g}"
        why = "training.max_steps" if t.max_steps else f"training.epochs {t.epochs:g} x {per_epoch:,} steps per epoch"
        raise PlanError(
            f"the plan has {shown} optimizer steps ({why}), more than the limit of {MAX_PLANNED_STEPS:,}; lower "
            "training.epochs or training.max_steps"
        )
    return planned_steps(recipe, n_train, world_size)
