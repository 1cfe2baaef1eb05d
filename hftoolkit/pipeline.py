"""What `hft validate`, `hft finetune` and `hft evaluate` do, as plain top-to-bottom functions.

Order matters and is deliberate: everything the user can get wrong (recipe, run directory, data, labels, model,
metrics) is checked before the run directory is touched or a training step runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftoolkit import __version__
from hftoolkit.errors import DataError, HftError, TrainingInterrupted
from hftoolkit.rundir import RunDir, check_output_dir, open_run, write_atomic, write_json
from hftoolkit.tasks.base import DataReport

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.data import DataSource
    from hftoolkit.recipe import Recipe
    from hftoolkit.tasks.base import Task

log = logging.getLogger("hftoolkit")
VALIDATE_SAMPLE = 2000  # rows per split tokenized by `hft validate` for length statistics


@dataclass
class PreparedData:
    features: dict[str, Dataset]
    labels: list[str] | None
    source: DataSource
    report: DataReport = field(default_factory=DataReport)


def prepare_data(recipe: Recipe, task: Task, processor: Any, *, sample: int | None = None) -> PreparedData:
    """Raw splits -> checked values and labels -> validation carve-out -> max_samples -> label coverage of train
    -> model-ready features."""
    from hftoolkit.data import carve_validation, column_values, limit_rows, load_raw, pick_splits

    report = DataReport()
    raw, source = load_raw(recipe.dataset)
    splits = pick_splits(raw, recipe.dataset, source)
    labels = task.prepare(splits, recipe, report)
    carve_validation(
        splits,
        recipe.dataset.validation_size,
        recipe.training.seed,
        task.stratify_column(recipe) if labels else None,
        source,
    )
    limit_rows(splits, recipe.dataset.max_samples, recipe.training.seed)
    report.split_sizes = {role: len(s) for role, s in splits.items()}
    label_col = task.stratify_column(recipe)
    if labels and label_col:
        for role, split in splits.items():
            counts = Counter(column_values(split, label_col))
            report.label_counts[role] = {labels[i]: counts.get(i, 0) for i in range(len(labels))}
        _require_every_label_in_train(report.label_counts["train"], recipe)
    if sample is not None:
        splits = {role: s.select(range(min(len(s), sample))) for role, s in splits.items()}
    features = task.preprocess(splits, recipe, processor, report)
    for role, feats in features.items():
        if len(feats) == 0:
            raise DataError(f"split {role!r} is empty after preprocessing ({'; '.join(report.lines()[-3:])})")
    report.notes += source.notes
    return PreparedData(features, labels, source, report)


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


def cpu_has_native_bf16() -> bool:
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up defensively
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def choose_precision(precision: str) -> str:
    import torch

    if precision == "auto":
        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        # bench/RESULTS.md: on a CPU with native bf16 (AVX512-BF16 or AMX), bf16 autocast trained MiniLM 1.48x
        # faster than fp32 at the same accuracy; without it bf16 is emulated and slower, so fp32 stays.
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and not torch.cuda.is_available():
        raise HftError("training.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on this machine")
    return precision


def planned_steps(recipe: Recipe, n_train: int, world_size: int = 1) -> int:
    t = recipe.training
    if t.max_steps:
        return t.max_steps
    batches = math.ceil(n_train / (t.batch_size * world_size))
    return max(1, math.ceil(t.epochs * max(1, batches // t.gradient_accumulation_steps)))


# A plan longer than this is a typo (epochs: 1e6), not a run: at 10 optimizer steps a second it would take 11 days.
MAX_PLANNED_STEPS = 10**7


def check_plan(recipe: Recipe, n_train: int, world_size: int = 1) -> int:
    """The plan's optimizer steps, refused when no one can mean it. validate and finetune both call this."""
    from hftoolkit.errors import PlanError

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
        shown = f"{steps:,.0f}" if steps < 1e15 else f"{steps:.3g}"
        why = "training.max_steps" if t.max_steps else f"training.epochs {t.epochs:g} x {per_epoch:,} steps per epoch"
        raise PlanError(
            f"the plan has {shown} optimizer steps ({why}), more than the limit of {MAX_PLANNED_STEPS:,}; lower "
            "training.epochs or training.max_steps"
        )
    return planned_steps(recipe, n_train, world_size)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "hftoolkit": __version__}
    for name in ("torch", "transformers", "datasets", "accelerate", "peft", "evaluate", "huggingface_hub", "safetensors", "tokenizers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


# ----------------------------------------------------------------------------------------------------------------------
# hft validate


def validate(recipe: Recipe, recipe_file: str | Path | None = None) -> list[str]:
    """Check recipe, data and model config without loading weights; return the plan as printable lines."""
    import torch
    import transformers

    from hftoolkit import metrics as metric_lib
    from hftoolkit.model_checks import check_model
    from hftoolkit.modeling import apply_lora, check_head, check_local_weights, load_processor, resolve_ref
    from hftoolkit.tasks import get_task

    task = get_task(recipe.task)
    check_output_dir(recipe, recipe_file)  # an output_dir finetune would refuse (".", a data folder) is refused now
    # The weights are never read here, but a folder finetune would refuse (pickle only) is refused now too.
    check_local_weights(resolve_ref(recipe.model), recipe.model)
    config = check_model(task, recipe)  # weights present, max_length within the position limit
    processor = load_processor(task, recipe.model)  # refuses a local folder without tokenizer/processor files
    data = prepare_data(recipe, task, processor, sample=VALIDATE_SAMPLE)
    steps = check_plan(recipe, data.report.split_sizes["train"])
    check_head(config, task, data.labels, recipe.model)
    for k, v in task.model_kwargs(data.labels).items():
        setattr(config, k, v)
    # Build the architecture on the meta device: parameter counts without reading or allocating any weights.
    with torch.device("meta"):
        model = getattr(transformers, task.auto_model).from_config(config)
        if recipe.lora.enabled:
            model = apply_lora(model, task, recipe)
    trainable, total = (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))
    metric_names = recipe.evaluation.metrics or list(task.default_metrics)
    metric_lib.check_available(metric_names)

    run = RunDir(recipe.output_dir)
    lines = [f"recipe ok: task {recipe.task}, model {recipe.model.name} ({resolve_ref(recipe.model)})"]
    lines += [f"data: {line}" for line in data.report.lines()]
    if data.labels:
        lines.append("label mapping: " + ", ".join(f"{i}={name}" for i, name in enumerate(data.labels)))
    mode = f"LoRA r={recipe.lora.r} on {', '.join(getattr(model, 'peft_config')['default'].target_modules)}" if recipe.lora.enabled else "full fine-tuning"
    lines.append(f"model: {config.model_type}, {mode}; trainable {trainable:,} of {total:,} parameters ({trainable / total:.2%})")
    t = recipe.training
    lines.append(
        f"training: {steps} optimizer steps (batch {t.batch_size} x accumulation "
        f"{t.gradient_accumulation_steps} per device, {t.epochs:g} epochs{', max_steps ' + str(t.max_steps) if t.max_steps else ''}), "
        f"precision {t.precision}, seed {t.seed}"
    )
    if t.objective == "sft":
        lines.append(f"metrics: {', '.join(metric_names)}")
    lines += _tuning_lines(model, recipe, trainable)
    lines.append(f"writes: {run.path}/ (model/, checkpoints/, metrics.jsonl, train_results.json, manifest.json, ...)")
    return lines


def _tuning_lines(model: Any, recipe: Recipe, trainable: int) -> list[str]:
    """The objective (and its reference model) and the memory plan with and without quantization."""
    from hftoolkit.quantization import memory_plan

    t = recipe.training
    lines = []
    full_copy = t.objective == "dpo" and not recipe.lora.enabled
    if t.objective != "sft":
        trainer = {"dpo": "TRL DPOTrainer", "orpo": "TRL ORPOTrainer (trl.experimental)"}[t.objective]
        detail = f"beta {t.beta:g}" + (f", loss {t.loss_type}" if t.loss_type else "")
        lines.append(f"objective: {t.objective} through {trainer} ({detail}; TRL disables dropout)")
        lines.append("metrics: TRL's rewards/accuracies, rewards/margins, logps/chosen, logps/rejected (and the rest it logs)")
        if t.objective == "dpo":
            reference = "a frozen copy of the model, passed as ref_model (in the memory plan)" if full_copy else (
                "the base with the adapter disabled (no second copy)"
            )
            lines.append(f"reference model: {reference}")
    return lines + [memory_plan(model, recipe, trainable, reference_copy=full_copy)]


# ----------------------------------------------------------------------------------------------------------------------
# hft finetune


def finetune(
    recipe: Recipe,
    *,
    command: str,
    overwrite: bool = False,
    resume: bool = False,
    allow_recipe_change: bool = False,
    recipe_file: str | Path | None = None,
) -> Path:
    import uuid

    import torch
    import transformers
    from transformers import EarlyStoppingCallback, TrainerCallback, TrainingArguments

    from hftoolkit import checkpoints as ckpt_lib
    from hftoolkit import metrics as metric_lib
    from hftoolkit.callbacks import MetricsFile
    from hftoolkit.launch import prepare_worker_env
    from hftoolkit.model_checks import check_model
    from hftoolkit.modeling import apply_lora, count_parameters, declare_mean_loss, load_model, load_processor
    from hftoolkit.modeling import check_model_folder, resolve_ref
    from hftoolkit.plots import loss_curve_png
    from hftoolkit.resumable import ResumableTrainer
    from hftoolkit.tasks import get_task

    task = get_task(recipe.task)
    run = RunDir(recipe.output_dir)
    run.check_writable(
        recipe, overwrite=overwrite, resume=resume, allow_recipe_change=allow_recipe_change, recipe_file=recipe_file
    )
    transformers.set_seed(recipe.training.seed)
    metric_names = recipe.evaluation.metrics or list(task.default_metrics)
    metric_lib.check_available(metric_names)
    precision = choose_precision(recipe.training.precision)

    # TrainingArguments first: it sets up the (possibly distributed) Accelerate state that main_process_first needs.
    prepare_worker_env()
    t = recipe.training
    args_class, objective_args = TrainingArguments, {}
    if t.objective != "sft":
        from hftoolkit.training.preference import config_for

        args_class, objective_args = config_for(recipe)
    args = args_class(
        **objective_args,
        output_dir=str(run.checkpoints),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or 2 * t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # Without a bf16 GPU, transformers accepts bf16 (CPU autocast) only when told the run is on CPU.
        use_cpu=precision == "bf16" and not torch.cuda.is_available(),
        eval_strategy=t.eval_strategy,
        eval_steps=t.eval_steps,
        eval_on_start=t.eval_on_start,
        save_strategy=t.save_strategy,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        load_best_model_at_end=t.metric_for_best_model is not None,
        metric_for_best_model=t.metric_for_best_model,
        greater_is_better=t.greater_is_better,
        report_to=[r for r in t.report_to if r != "none"] or "none",
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        length_column_name="length",
        # Our features hold exactly what the collator needs (plus `length` for the sampler), nothing to prune.
        remove_unused_columns=False,
        label_names=["labels"],
        gradient_checkpointing=t.gradient_checkpointing,
        dataloader_num_workers=t.dataloader_num_workers,
        torch_compile=t.torch_compile,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    is_main = args.process_index == 0

    check_model_folder(resolve_ref(recipe.model))  # no symlink out of a local model folder, before anything reads it
    check_model(task, recipe)  # as validate does: weights present, max_length within the position limit
    processor = load_processor(task, recipe.model)
    with args.main_process_first(desc="dataset preprocessing"):
        data = prepare_data(recipe, task, processor)
    if "validation" not in data.features and t.eval_strategy != "no":
        raise DataError("there is no validation split to evaluate on during training; set training.eval_strategy: no")
    check_plan(recipe, len(data.features["train"]), args.world_size)
    if args.train_sampling_strategy == "group_by_length" and "length" not in data.features["train"].column_names:
        # Nothing to group (e.g. images: every example has the same size); without a `length` column the sampler
        # would run every example's transform just to measure it.
        args.train_sampling_strategy = "random"
    if is_main:
        for line in data.report.lines():
            log.info("data: %s", line)
    train_fingerprint = data.features["train"]._fingerprint
    checkpoint, leftovers = None, []
    if resume:
        checkpoint, leftovers = ckpt_lib.find_resume_checkpoint(
            run, recipe, data_fingerprint=train_fingerprint, allow_recipe_change=allow_recipe_change
        )
        ckpt_lib.verify_checkpoint_files(checkpoint.path)

    model = load_model(task, recipe, data.labels, processor=processor)
    if recipe.lora.enabled:
        model = apply_lora(model, task, recipe)
    from hftoolkit.lora_variants import initial_adapter

    initial = initial_adapter(model, recipe)  # PiSSA / OLoRA: the trained adapter is saved converted against it
    declare_mean_loss(model)
    trainable, total = count_parameters(model)
    log.info("model: trainable %s of %s parameters (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)

    previous = run.load_manifest() if resume else {}
    run_id = previous.get("run_id") or uuid.uuid4().hex
    if is_main:
        run.start(overwrite=overwrite, resume=resume)
        if checkpoint is not None:
            # Whatever happened after the checkpoint is redone: drop half-written checkpoints and later log lines.
            ckpt_lib.remove_checkpoints(leftovers, run.checkpoints)
            ckpt_lib.truncate_metrics(run.metrics, checkpoint)
            log.info("resuming from %s (step %d)", checkpoint.path, checkpoint.step)
        write_atomic(run.recipe, _recipe_yaml(recipe))
        write_json(run.data_report, data.report.as_dict())
        run.update_manifest(
            status="running",
            run_id=run_id,
            resumed_from=previous.get("resumed_from", [])
            + ([{"checkpoint": checkpoint.path.name, "step": checkpoint.step, "at": _now()}] if checkpoint else []),
            hftoolkit_version=__version__,
            recipe_fingerprint=recipe.fingerprint(),
            command=command,
            task=recipe.task,
            seed=t.seed,
            precision=precision,
            world_size=args.world_size,
            device=_device_name(),
            started=previous.get("started") or _now(),
            model={"name": recipe.model.name, "revision": recipe.model.revision, "commit": _model_commit(model, recipe.model)},
            dataset={**data.source.as_dict(), "fingerprints": {r: f._fingerprint for r, f in data.features.items()}},
            labels=data.labels,
            adapter=recipe.lora.enabled,
            parameters={"trainable": trainable, "total": total},
            versions=package_versions(),
        )
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run.tensorboard))

    # Order matters: a checkpoint is marked complete before the test-only fault hooks run, and GracefulStop comes
    # last so it sees a signal that arrived while an earlier callback was running.
    stopper = ckpt_lib.GracefulStop()
    callbacks: list[TrainerCallback] = [
        MetricsFile(run.metrics),
        ckpt_lib.CheckpointMarker(run_id=run_id, recipe=recipe, data_fingerprint=train_fingerprint, metrics=run.metrics),
    ]
    faults = ckpt_lib.FaultInjection.from_env()
    if faults is not None:
        callbacks.append(faults)
    callbacks.append(stopper)
    if t.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
    if t.objective != "sft":
        from hftoolkit.training.preference import build_trainer, full_reference

        trainer = build_trainer(recipe, model, args, data.features, processor, callbacks, full_reference(model, recipe))
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
    if checkpoint is not None and is_main and "tensorboard" in t.report_to:
        _purge_tensorboard_after(trainer, run, checkpoint.step)
    try:
        with stopper:
            result = trainer.train(resume_from_checkpoint=str(checkpoint.path) if checkpoint else None)
    except BaseException:
        if is_main:
            run.update_manifest(status="failed" if not isinstance(sys.exc_info()[1], KeyboardInterrupt) else "interrupted")
        raise
    if stopper.stopped_by:
        saved = run.checkpoints / f"checkpoint-{stopper.stopped_step}"
        if is_main:
            run.update_manifest(
                status="interrupted", interrupted={"signal": stopper.stopped_by, "step": stopper.stopped_step, "at": _now()}
            )
        raise TrainingInterrupted(
            f"{stopper.stopped_by} received: training stopped at step {stopper.stopped_step} of {trainer.state.max_steps} "
            f"and saved {saved}",
            exit_code=stopper.exit_code,
            checkpoint=str(saved),
        )

    validation = trainer.evaluate() if "validation" in data.features else {}
    if t.objective != "sft":
        from hftoolkit.training.preference import drop_reference_adapter

        drop_reference_adapter(trainer)  # only the trained adapter is saved
    # Every rank takes part: FSDP and DeepSpeed gather the weights collectively; Trainer writes on the main one only.
    trainer.save_model(str(run.model))
    if is_main:
        if initial is not None:
            from hftoolkit.lora_variants import save_converted

            save_converted(trainer.model, run.model, initial)
        _save_model_extras(trainer.model, run.model)
        # Optional task hook, e.g. causal LM generating the recipe's prompts into samples.jsonl.
        train_artifacts = getattr(task, "write_train_artifacts", None)
        if train_artifacts is not None:
            for name in train_artifacts(trainer.model, processor, recipe, run.path):
                log.info("wrote %s", run.path / name)
        write_json(
            run.train_results,
            {
                "train": result.metrics,
                "validation": validation,
                "global_step": result.global_step,
                "best_checkpoint": trainer.state.best_model_checkpoint,
                "split_sizes": data.report.split_sizes,
            },
        )
        loss_curve_png(run.metrics, run.loss_curve)
        run.update_manifest(status="completed", finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if validation:
            skip = ("runtime", "per_second", "epoch")
            shown = ", ".join(
                f"{k.removeprefix('eval_')} {v:.4f}" for k, v in validation.items() if not any(s in k for s in skip)
            )
            log.info("validation: %s", shown)
        log.info("run written to %s", run.path)
    return run.path


def _recipe_yaml(recipe: Recipe) -> str:
    from hftoolkit.recipe import recipe_to_yaml

    return recipe_to_yaml(recipe)


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.processor() or platform.machine()}"


def _model_commit(model: Any, section: Any) -> str | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    found = getattr(base.config, "_commit_hash", None)
    if found:
        return found
    # transformers 5 no longer records the commit on the config; the Hub cache knows which snapshot was read.
    from hftoolkit.hub import cached_commit

    return cached_commit(section)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _purge_tensorboard_after(trainer: Any, run: RunDir, step: int) -> None:
    """Resumed runs log steps after `step` again; TensorBoard's purge_step hides the first attempt's events for them."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    trainer.remove_callback(TensorBoardCallback)
    trainer.add_callback(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run.tensorboard), purge_step=step + 1)))


def _save_model_extras(model: Any, model_dir: Path) -> None:
    """The base config (with id2label) next to an adapter, so labels survive; drop PEFT's placeholder card.

    training_args.bin is a pickle (Trainer writes it with torch.save); the resolved recipe already records
    every argument, and a pickle in the model folder would be refused by push and by safe loaders.
    """
    (model_dir / "training_args.bin").unlink(missing_ok=True)
    if hasattr(model, "get_base_model"):
        model.get_base_model().config.save_pretrained(str(model_dir))
        placeholder = model_dir / "README.md"
        if placeholder.is_file():
            placeholder.unlink()


# ----------------------------------------------------------------------------------------------------------------------
# hft evaluate


def evaluate_run(
    run_path: str | Path,
    *,
    split: str | None = None,
    batch_size: int | None = None,
    revision: str | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    """Score a finished run (or a Hub repo pushed by `hft push`) on a split; writes eval_results.json and artifacts.

    The split's data fingerprint is compared with the one finetune recorded: a changed file is scored with a
    warning, or refused with `strict`.
    """
    import tempfile

    import numpy as np
    import torch
    from transformers import EvalPrediction, Trainer, TrainingArguments

    from hftoolkit.launch import main_process_first
    from hftoolkit.modeling import declare_mean_loss, load_trained
    from hftoolkit.tasks import get_task

    run = open_run(run_path, revision)
    manifest = run.require_trained()
    recipe = run.load_recipe()
    task = get_task(recipe.task)
    model, processor = load_trained(task, recipe, run.model)
    declare_mean_loss(model)
    # Under accelerate launch: one process tokenizes into the datasets cache, the others read it.
    with main_process_first():
        data = prepare_data(recipe, task, processor)
    trained_labels = manifest.get("labels")
    if trained_labels and data.labels != trained_labels:
        raise DataError(
            f"the dataset's labels {data.labels} differ from the labels the model was trained with {trained_labels}"
        )
    split = split or recipe.evaluation.split or ("test" if "test" in data.features else "validation")
    if split not in data.features:
        raise DataError(f"split {split!r} is not available; available: {', '.join(data.features)}")
    features = data.features[split]
    fingerprint = _check_fingerprint(manifest, split, features._fingerprint, strict=strict)

    if recipe.training.objective != "sft":  # TRL's preference metrics, from TRL's own trainer
        from hftoolkit.training.preference import evaluate_run_split

        scores, predictions, references = evaluate_run_split(recipe, task, model, processor, features, batch_size), None, None
        is_main = os.environ.get("RANK", "0") == "0"
    else:
        with tempfile.TemporaryDirectory(prefix="hft-eval-") as tmp:
            args = TrainingArguments(
                output_dir=tmp,
                per_device_eval_batch_size=batch_size or recipe.training.eval_batch_size or 2 * recipe.training.batch_size,
                report_to="none",
                remove_unused_columns=False,
                label_names=["labels"],
                bf16=choose_precision(recipe.training.precision) == "bf16",
                use_cpu=choose_precision(recipe.training.precision) == "bf16" and not torch.cuda.is_available(),
                dataloader_pin_memory=torch.cuda.is_available(),
            )
            trainer = Trainer(
                model=model,
                args=args,
                data_collator=task.collator(processor, recipe, on_gpu=torch.cuda.is_available()),
                preprocess_logits_for_metrics=task.preprocess_logits_for_metrics,
            )
            out = trainer.predict(features)
        # Predictions are whatever the task's preprocess_logits_for_metrics returns (class ids, or a tuple of per-token
        # arrays for causal LM): only the task's own metrics and artifacts read them, exactly as during training.
        predictions, references = out.predictions, np.asarray(out.label_ids)
        scores = task.metrics(recipe, data.labels)(EvalPrediction(predictions=predictions, label_ids=references))
        if out.metrics.get("test_loss") is not None:
            scores = {"loss": float(out.metrics["test_loss"]), **scores}
        is_main = trainer.is_world_process_zero()
    results = {
        "split": split,
        "num_examples": int(len(features)),
        "metrics": scores,
        "dataset": data.source.as_dict(),
        "model": manifest.get("model"),
        "run": str(run),  # the directory, or org/name@commit for a Hub repo
        "labels": data.labels,
        "data_fingerprint": fingerprint,
    }
    if is_main:
        results["artifacts"] = task.write_eval_artifacts(run.path, predictions, references, data.labels)
        write_json(run.eval_results, results)
    return results


def _check_fingerprint(manifest: dict[str, Any], split: str, current: str, *, strict: bool) -> dict[str, Any]:
    """Whether the evaluation data are the data the run recorded at training time (datasets' fingerprint of the
    split's features: the source files, the carve-out and max_samples, the tokenization)."""
    recorded = ((manifest.get("dataset") or {}).get("fingerprints") or {}).get(split)
    matched = None if recorded is None else recorded == current
    if matched is False:
        if strict:
            raise DataError(
                f"split {split!r} changed since training: its fingerprint is {current}, the run recorded {recorded}; "
                "restore the data the run was trained with, or drop --strict to score the new data"
            )
        if os.environ.get("RANK", "0") == "0":
            log.warning("split %r changed since training: fingerprint %s, the run recorded %s", split, current, recorded)
    return {"split": split, "fingerprint": current, "recorded": recorded, "matched": matched}


# ----------------------------------------------------------------------------------------------------------------------
# hft predict


def predict_run(
    run_path: str | Path, inputs: list[str], options: dict[str, Any] | None = None, revision: str | None = None
) -> list[dict[str, Any]]:
    """A quick look at a trained run: the task's `predict` on raw inputs (texts, image paths or prompts)."""
    from hftoolkit.modeling import load_trained
    from hftoolkit.tasks import get_task

    run = open_run(run_path, revision)
    run.require_trained()
    recipe = run.load_recipe()
    if not inputs:
        raise HftError("give at least one input to predict on")
    task = get_task(recipe.task)
    check_inputs = getattr(task, "check_predict_inputs", None)  # optional hook: e.g. image paths exist
    if check_inputs is not None:
        check_inputs(list(inputs))
    model, processor = load_trained(task, recipe, run.model)
    import torch  # after the checks above: a wrong path or run fails without waiting for torch

    if torch.cuda.is_available():
        model.to("cuda")
    # The run's own generation settings (an optional task hook) are the defaults; what the user gave wins.
    defaults = getattr(task, "predict_options", None)
    options = {**(defaults(recipe) if defaults is not None else {}), **(options or {})}
    return task.predict(model, processor, list(inputs), options)
