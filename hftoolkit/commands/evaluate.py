"""`hft evaluate RUN`: score a finished run (or a Hub repo pushed by `hft push`) on a split; writes eval_results.json.

The data are rebuilt from the run's resolved recipe exactly as finetune built them, and the split's fingerprint is
compared with the one finetune recorded: changed data are scored with a warning, or refused with `--strict`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftoolkit.errors import DataError
from hftoolkit.run.records import DatasetInfo, EvalResults, FingerprintCheck, Manifest

if TYPE_CHECKING:
    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.tasks.base import Task
    from hftoolkit.training.prepare import PreparedData

log = logging.getLogger("hftoolkit")
TEMP_PREFIX = "hft-eval-"  # Trainer needs an output_dir; evaluation writes nothing there
NAME_WIDTH = 6  # metric column width when there are no metrics


def evaluate_command(run_path: str, **options: Any) -> list[str]:
    """`hft evaluate`: score, and the lines to print (none on the other processes of a launched job: every process
    has the same gathered scores, the main one prints them)."""
    from hftoolkit.launch import is_main_process

    results = score_run(run_path, **options)
    if not is_main_process():
        return []
    width = max((len(k) for k in results.metrics), default=NAME_WIDTH)
    return [f"{results.split} split, {results.num_examples} examples"] + [
        f"  {k:<{width}}  {v:.4f}" for k, v in results.metrics.items()
    ]


def evaluate_run(run_path: str | Path, **options: Any) -> dict[str, Any]:
    """`score_run` as plain data: what eval_results.json holds (for scripts and benchmarks)."""
    return score_run(run_path, **options).as_json()


def score_run(
    run_path: str | Path,
    *,
    split: str | None = None,
    batch_size: int | None = None,
    revision: str | None = None,
    strict: bool = False,
) -> EvalResults:
    """Score a trained run on a split (default: test, else validation); the main process writes the results."""
    import numpy as np
    from transformers import EvalPrediction

    from hftoolkit.launch import main_process_first
    from hftoolkit.modeling import declare_mean_loss, load_trained
    from hftoolkit.run.hub_run import open_run
    from hftoolkit.tasks.registry import get_task
    from hftoolkit.training.args import eval_batch_size
    from hftoolkit.training.prepare import prepare_data

    run = open_run(run_path, revision)
    manifest = run.require_trained()
    recipe = run.load_recipe()
    task = get_task(recipe.task)
    model, processor = load_trained(task, recipe, run.model)
    declare_mean_loss(model)
    # Under accelerate launch: one process tokenizes into the datasets cache, the others read it.
    with main_process_first():
        data = prepare_data(recipe, task, processor)
    split = _pick_split(data, manifest, recipe, split)
    features = data.features[split]
    fingerprint = check_fingerprint(manifest, split, features._fingerprint, strict=strict)
    if recipe.training.objective != "sft":  # TRL's preference metrics, from TRL's trainer of the objective
        from hftoolkit.training.preference import evaluate_split

        scores, is_main = evaluate_split(recipe, task, model, processor, features, batch_size or eval_batch_size(recipe))
        predictions = references = None
    else:
        out, is_main = _predict(task, recipe, model, processor, features, batch_size)
        # Predictions are whatever the task's preprocess_logits_for_metrics returns (class ids, or a tuple of per-token
        # arrays for causal LM): only the task's own metrics and artifacts read them, exactly as during training.
        predictions, references = out.predictions, np.asarray(out.label_ids)
        scores = task.metrics(recipe, data.labels)(EvalPrediction(predictions=predictions, label_ids=references))
        if out.metrics.get("test_loss") is not None:
            scores = {"loss": float(out.metrics["test_loss"]), **scores}
    results = EvalResults(
        split=split,
        num_examples=len(features),
        metrics=scores,
        dataset=DatasetInfo(**data.source.as_dict()),
        model=manifest.model,
        run=str(run),  # the directory, or org/name@commit for a Hub repo
        labels=data.labels,
        data_fingerprint=fingerprint,
    )
    if is_main:
        results.artifacts = task.write_eval_artifacts(run.path, predictions, references, data.labels)
        results.write(run.eval_results)
    return results


def _pick_split(data: PreparedData, manifest: Manifest, recipe: Recipe, split: str | None) -> str:
    """The split to score, after checking the data still has the labels the model was trained with."""
    if manifest.labels and data.labels != manifest.labels:
        raise DataError(
            f"the dataset's labels {data.labels} differ from the labels the model was trained with {manifest.labels}"
        )
    split = split or recipe.evaluation.split or ("test" if "test" in data.features else "validation")
    if split not in data.features:
        raise DataError(f"split {split!r} is not available; available: {', '.join(data.features)}")
    return split


def _predict(task: Task, recipe: Recipe, model: Any, processor: Any, features: Any, batch_size: int | None) -> tuple[Any, bool]:
    """Trainer.predict over the split with the run's precision and batching; and whether this is the main process."""
    import tempfile

    import torch
    from transformers import Trainer

    from hftoolkit.training.args import eval_batch_size, prediction_arguments

    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        args = prediction_arguments(recipe, tmp, per_device_eval_batch_size=batch_size or eval_batch_size(recipe))
        trainer = Trainer(
            model=model,
            args=args,
            data_collator=task.collator(processor, recipe, on_gpu=torch.cuda.is_available()),
            preprocess_logits_for_metrics=task.preprocess_logits_for_metrics,
        )
        return trainer.predict(features), trainer.is_world_process_zero()


def check_fingerprint(manifest: Manifest, split: str, current: str, *, strict: bool) -> FingerprintCheck:
    """Whether the evaluation data are the data the run recorded at training time (datasets' fingerprint of the
    split's features: the source files, the carve-out and max_samples, the tokenization)."""
    from hftoolkit.launch import is_main_process

    recorded = manifest.dataset.fingerprints.get(split) if manifest.dataset else None
    matched = None if recorded is None else recorded == current
    if matched is False:
        if strict:
            raise DataError(
                f"split {split!r} changed since training: its fingerprint is {current}, the run recorded {recorded}; "
                "restore the data the run was trained with, or drop --strict to score the new data"
            )
        if is_main_process():
            log.warning("split %r changed since training: fingerprint %s, the run recorded %s", split, current, recorded)
    return FingerprintCheck(split=split, fingerprint=current, recorded=recorded, matched=matched)
