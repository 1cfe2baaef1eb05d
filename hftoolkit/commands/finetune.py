"""`hft finetune RECIPE`: check everything, train, and write the run directory.

Order matters and is deliberate: everything the user can get wrong (recipe, run directory, data, labels, model,
metrics, plan, the checkpoint to resume from) is checked before the run directory is touched or a training step
runs. `finetune` reads top to bottom; each step is a named function below it.
"""

from __future__ import annotations

import logging
import platform
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftoolkit import __version__
from hftoolkit.errors import DataError, TrainingInterrupted
from hftoolkit.run.layout import RunDir
from hftoolkit.run.records import DatasetInfo, Manifest, ModelInfo, Parameters, ResumePoint, TrainResults, utc_now

if TYPE_CHECKING:
    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.tasks.base import Task
    from hftoolkit.training.prepare import PreparedData
    from hftoolkit.training.resume import Checkpoint

log = logging.getLogger("hftoolkit")
# Libraries whose versions the manifest records (the ones that decide what training computes).
RECORDED_PACKAGES = (
    "torch", "transformers", "datasets", "accelerate", "peft", "evaluate", "huggingface_hub", "safetensors", "tokenizers",
)
# Trainer's timing entries: not scores, so left out of the validation line.
NOT_SCORES = ("runtime", "per_second", "epoch")


def finetune_command(
    recipe_file: Path, overrides: list, *, argv: list[str], command: str, num_processes: int | None = None, **flags: Any
) -> Path:
    """`hft finetune`: the recipe checked once here, then either this process trains or `--num-processes N`
    re-executes the same command line (less that option) under accelerate's launcher."""
    from hftoolkit.recipe.schema import load_recipe

    recipe = load_recipe(recipe_file, overrides)
    if num_processes is not None and num_processes > 1:
        from hftoolkit.launch import relaunch

        relaunch(num_processes, argv, command=command)
    return finetune(recipe, command=command, recipe_file=recipe_file, **flags)


def finetune(
    recipe: Recipe,
    *,
    command: str,
    overwrite: bool = False,
    resume: bool = False,
    allow_recipe_change: bool = False,
    recipe_file: str | Path | None = None,
) -> Path:
    from transformers import set_seed

    from hftoolkit import metrics as metric_lib
    from hftoolkit.launch import prepare_worker_env
    from hftoolkit.lora_variants import initial_adapter, save_converted
    from hftoolkit.tasks.registry import get_task
    from hftoolkit.training.args import training_arguments
    from hftoolkit.training.objectives import drop_reference_adapter, objective_arguments
    from hftoolkit.training.prepare import prepare_data

    task = get_task(recipe.task)
    run = RunDir(recipe.output_dir)
    run.check_writable(
        recipe, overwrite=overwrite, resume=resume, allow_recipe_change=allow_recipe_change, recipe_file=recipe_file
    )
    set_seed(recipe.training.seed)
    metric_lib.check_available(metric_lib.recipe_metrics(recipe, task))
    # TrainingArguments first: it sets up the (possibly distributed) Accelerate state that main_process_first needs.
    prepare_worker_env()
    args = training_arguments(recipe, str(run.checkpoints), **objective_arguments(recipe))
    is_main = args.process_index == 0
    processor = _checked_processor(task, recipe)
    with args.main_process_first(desc="dataset preprocessing"):
        data = prepare_data(recipe, task, processor)
    _check_training_data(recipe, data, args, is_main)
    checkpoint, leftovers = _resume_point(run, recipe, data, resume=resume, allow_recipe_change=allow_recipe_change)
    model = _training_model(task, recipe, data, processor)
    initial = initial_adapter(model, recipe)  # PiSSA / OLoRA: the trained adapter is saved converted against it
    manifest = running_manifest(run.read_manifest() if resume else Manifest(), recipe, data, model, args, checkpoint,
                                command=command)
    if is_main:
        _start_run(run, recipe, data, manifest, checkpoint, leftovers, overwrite=overwrite, resume=resume)
    trainer, stopper = _trainer(task, recipe, run, data, model, processor, args, manifest.run_id, checkpoint)
    result = _train(trainer, stopper, run, checkpoint, is_main)
    validation = trainer.evaluate() if "validation" in data.features else {}
    drop_reference_adapter(trainer)  # DPO with PiSSA / OLoRA kept TRL's frozen copy until now; only ours is saved
    # Every rank takes part: FSDP and DeepSpeed gather the weights collectively; Trainer writes on the main one only.
    trainer.save_model(str(run.model))
    if is_main and initial is not None:
        save_converted(trainer.model, run.model, initial)
    if is_main:
        _write_outputs(task, recipe, run, data, trainer, processor, result, validation)
    return run.path


def _checked_processor(task: Task, recipe: Recipe) -> Any:
    """As validate does: no link out of a local model folder, weights present, max_length within the position limit."""
    from hftoolkit.model_checks import check_model_folder
    from hftoolkit.modeling import check_model, load_processor
    from hftoolkit.refs import resolve_model_ref

    check_model_folder(resolve_model_ref(recipe.model))  # before anything reads the folder
    check_model(task, recipe)
    return load_processor(task, recipe.model)


def _check_training_data(recipe: Recipe, data: PreparedData, args: Any, is_main: bool) -> None:
    from hftoolkit.training.args import LENGTH_COLUMN
    from hftoolkit.training.prepare import check_plan

    if "validation" not in data.features and recipe.training.eval_strategy != "no":
        raise DataError("there is no validation split to evaluate on during training; set training.eval_strategy: no")
    check_plan(recipe, len(data.features["train"]), args.world_size)
    if args.train_sampling_strategy == "group_by_length" and LENGTH_COLUMN not in data.features["train"].column_names:
        # Nothing to group (e.g. images: every example has the same size); without a `length` column the sampler
        # would run every example's transform just to measure it.
        args.train_sampling_strategy = "random"
    if is_main:
        for line in data.report.lines():
            log.info("data: %s", line)


def _resume_point(
    run: RunDir, recipe: Recipe, data: PreparedData, *, resume: bool, allow_recipe_change: bool
) -> tuple[Checkpoint | None, list[Checkpoint]]:
    """The checkpoint `--resume` continues from (files verified) and the incomplete ones after it; none without it."""
    if not resume:
        return None, []
    from hftoolkit.training.resume import find_resume_checkpoint, verify_checkpoint_files

    checkpoint, leftovers = find_resume_checkpoint(
        run, recipe, data_fingerprint=data.fingerprints["train"], allow_recipe_change=allow_recipe_change
    )
    verify_checkpoint_files(checkpoint.path)
    return checkpoint, leftovers


def _training_model(task: Task, recipe: Recipe, data: PreparedData, processor: Any) -> Any:
    from hftoolkit.modeling import apply_lora, count_parameters, declare_mean_loss, load_model

    model = load_model(task, recipe, data.labels, processor=processor)
    if recipe.lora.enabled:
        model = apply_lora(model, task, recipe)
    declare_mean_loss(model)
    trainable, total = count_parameters(model)
    log.info("model: trainable %s of %s parameters (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return model


def running_manifest(
    previous: Manifest, recipe: Recipe, data: PreparedData, model: Any, args: Any, checkpoint: Checkpoint | None,
    *, command: str,
) -> Manifest:
    """The manifest of a run that is starting (or resuming: the previous manifest's id, start time and history kept)."""
    from hftoolkit.modeling import count_parameters
    from hftoolkit.training.args import precision_of

    trainable, total = count_parameters(model)
    resumed = [ResumePoint(checkpoint=checkpoint.path.name, step=checkpoint.step, at=utc_now())] if checkpoint else []
    fields = dict(
        status="running",
        run_id=previous.run_id or uuid.uuid4().hex,
        resumed_from=previous.resumed_from + resumed,
        hftoolkit_version=__version__,
        recipe_fingerprint=recipe.fingerprint(),
        command=command,
        task=recipe.task,
        seed=recipe.training.seed,
        precision=precision_of(args),
        world_size=args.world_size,
        device=_device_name(),
        started=previous.started or utc_now(),
        model=ModelInfo(name=recipe.model.name, revision=recipe.model.revision, commit=_model_commit(model, recipe)),
        dataset=DatasetInfo(**data.source.as_dict(), fingerprints=data.fingerprints),
        labels=data.labels,
        adapter=recipe.lora.enabled,
        parameters=Parameters(trainable=trainable, total=total),
        versions=package_versions(),
    )
    manifest = previous.model_copy(deep=True)
    for name, value in fields.items():
        setattr(manifest, name, value)
    return manifest


def _start_run(
    run: RunDir, recipe: Recipe, data: PreparedData, manifest: Manifest, checkpoint: Checkpoint | None,
    leftovers: list[Checkpoint], *, overwrite: bool, resume: bool,
) -> None:
    """Main process only: the run directory prepared and its recipe, data report and manifest written."""
    from hftoolkit.recipe.schema import recipe_to_yaml
    from hftoolkit.run.records import write_atomic
    from hftoolkit.training.resume import remove_checkpoints, truncate_metrics

    run.start(overwrite=overwrite, resume=resume)
    if checkpoint is not None:
        # Whatever happened after the checkpoint is redone: drop half-written checkpoints and later log lines.
        remove_checkpoints(leftovers, run.checkpoints)
        truncate_metrics(run.metrics, checkpoint)
        log.info("resuming from %s (step %d)", checkpoint.path, checkpoint.step)
    write_atomic(run.recipe, recipe_to_yaml(recipe))
    data.report.write(run.data_report)
    manifest.write(run.manifest)


def _trainer(
    task: Task, recipe: Recipe, run: RunDir, data: PreparedData, model: Any, processor: Any, args: Any, run_id: str,
    checkpoint: Checkpoint | None,
) -> tuple[Any, Any]:
    import torch
    from transformers import EarlyStoppingCallback
    from transformers.integrations import TensorBoardCallback

    from hftoolkit.training.callbacks import (
        CheckpointMarker, GracefulStop, MetricsFile, RunTensorBoard, extra_callbacks_from_env,
    )
    from hftoolkit.training.trainer import ResumableTrainer

    # Order matters: a checkpoint is marked complete before any extra callback runs, and GracefulStop comes last so
    # it sees a signal that arrived while an earlier callback was running.
    stopper = GracefulStop()
    marker = CheckpointMarker(run_id=run_id, recipe=recipe, data_fingerprint=data.fingerprints["train"], metrics=run.metrics)
    callbacks = [MetricsFile(run.metrics), marker, *extra_callbacks_from_env(), stopper]
    if recipe.training.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.training.early_stopping_patience))
    if recipe.training.objective != "sft":  # TRL's trainer of the objective (its own collator and metrics)
        from hftoolkit.training.preference import build_trainer

        trainer = build_trainer(recipe, model, args, data.features, processor, callbacks)
    else:
        trainer = ResumableTrainer(
            model=model,
            args=args,
            data_collator=task.collator(processor, recipe, on_gpu=torch.cuda.is_available()),
            train_dataset=data.features["train"],
            eval_dataset=data.features.get("validation"),  # also scored once after training, whatever eval_strategy says
            processing_class=processor,
            compute_metrics=task.metrics(recipe, data.labels),
            preprocess_logits_for_metrics=task.preprocess_logits_for_metrics,
            callbacks=callbacks,
        )
    if trainer.pop_callback(TensorBoardCallback) is not None:
        # Events go to the run's tensorboard/ folder; a resumed run hides the first attempt's later steps.
        trainer.add_callback(RunTensorBoard(run.tensorboard, purge_step=checkpoint.step + 1 if checkpoint else None))
    return trainer, stopper


def _train(trainer: Any, stopper: Any, run: RunDir, checkpoint: Checkpoint | None, is_main: bool) -> Any:
    """trainer.train with the manifest saying how it ended; a signal-stopped run raises TrainingInterrupted."""
    from hftoolkit.run.records import Interruption

    try:
        with stopper:
            result = trainer.train(resume_from_checkpoint=str(checkpoint.path) if checkpoint else None)
    except BaseException:
        if is_main:
            run.update_manifest(status="interrupted" if isinstance(sys.exc_info()[1], KeyboardInterrupt) else "failed")
        raise
    if not stopper.stopped_by:
        return result
    saved = run.checkpoints / f"checkpoint-{stopper.stopped_step}"
    if is_main:
        stop = Interruption(signal=stopper.stopped_by, step=stopper.stopped_step, at=utc_now())
        run.update_manifest(status="interrupted", interrupted=stop)
    raise TrainingInterrupted(
        f"{stopper.stopped_by} received: training stopped at step {stopper.stopped_step} of {trainer.state.max_steps} "
        f"and saved {saved}",
        exit_code=stopper.exit_code,
        checkpoint=str(saved),
    )


def _write_outputs(
    task: Task, recipe: Recipe, run: RunDir, data: PreparedData, trainer: Any, processor: Any, result: Any,
    validation: dict[str, float],
) -> None:
    """Main process, after the model was saved: model extras, task files, results, loss curve, status completed."""
    from hftoolkit.modeling import save_model_extras
    from hftoolkit.plots import loss_curve_png

    save_model_extras(trainer.model, run.model)
    for name in task.write_train_artifacts(trainer.model, processor, recipe, run.path):
        log.info("wrote %s", run.path / name)
    TrainResults(
        train=result.metrics,
        validation=validation,
        global_step=result.global_step,
        best_checkpoint=trainer.state.best_model_checkpoint,
        split_sizes=data.report.split_sizes,
    ).write(run.train_results)
    loss_curve_png(run.metrics, run.loss_curve)
    run.update_manifest(status="completed", finished=utc_now())
    if validation:
        shown = ", ".join(
            f"{k.removeprefix('eval_')} {v:.4f}" for k, v in validation.items() if not any(s in k for s in NOT_SCORES)
        )
        log.info("validation: %s", shown)
    log.info("run written to %s", run.path)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "hftoolkit": __version__}
    for name in RECORDED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.processor() or platform.machine()}"


def _model_commit(model: Any, recipe: Recipe) -> str | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    found = getattr(base.config, "_commit_hash", None)
    if found:
        return found
    # transformers 5 no longer records the commit on the config; the Hub cache knows which snapshot was read.
    from hftoolkit.run.hub_run import cached_commit

    return cached_commit(recipe.model)
