"""The recipe's `training` section as Trainer arguments: one mapping, used by `hft finetune` and `hft evaluate`.

`training_arguments` takes the arguments class, so a trainer with its own config class (TRL's `DPOConfig`, a
`TrainingArguments` subclass) gets the same mapping plus its own fields as overrides. The precision is decided here
once (`choose_precision`) and turned into bf16/fp16/use_cpu the same way for training and evaluation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hftoolkit.errors import HftError

if TYPE_CHECKING:
    from hftoolkit.recipe.schema import Recipe

# Column the length-grouped sampler reads (tasks write it into the features).
LENGTH_COLUMN = "length"
LABEL_NAMES = ["labels"]
EVAL_BATCH_FACTOR = 2  # evaluation keeps no gradients: twice the training batch fits by default
NO_REPORTING = "none"


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


def eval_batch_size(recipe: Recipe) -> int:
    t = recipe.training
    return t.eval_batch_size or EVAL_BATCH_FACTOR * t.batch_size


def precision_arguments(precision: str) -> dict[str, Any]:
    """bf16/fp16 flags for a precision choose_precision returned, and the device settings that go with them."""
    import torch

    on_gpu = torch.cuda.is_available()
    return {
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        # Without a bf16 GPU, transformers accepts bf16 (CPU autocast) only when told the run is on CPU.
        "use_cpu": precision == "bf16" and not on_gpu,
        "dataloader_pin_memory": on_gpu,
    }


def recipe_arguments(recipe: Recipe) -> dict[str, Any]:
    """Everything the recipe's training section says, as Trainer argument names."""
    t = recipe.training
    return {
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps or -1,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": eval_batch_size(recipe),
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.scheduler,
        "warmup_steps": t.warmup_ratio,  # transformers 5: a value below 1 is a share of the total steps
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "seed": t.seed,
        "data_seed": t.seed,
        "eval_strategy": t.eval_strategy,
        "eval_steps": t.eval_steps,
        "eval_on_start": t.eval_on_start,
        "save_strategy": t.save_strategy,
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        "logging_steps": t.logging_steps,
        "load_best_model_at_end": t.metric_for_best_model is not None,
        "metric_for_best_model": t.metric_for_best_model,
        "greater_is_better": t.greater_is_better,
        "report_to": [r for r in t.report_to if r != NO_REPORTING] or NO_REPORTING,
        "train_sampling_strategy": "group_by_length" if t.group_by_length else "random",
        "length_column_name": LENGTH_COLUMN,
        "gradient_checkpointing": t.gradient_checkpointing,
        "dataloader_num_workers": t.dataloader_num_workers,
        "torch_compile": t.torch_compile,
    }


def training_arguments(recipe: Recipe, output_dir: str, *, args_class: Any = None, **overrides: Any) -> Any:
    """`args_class` (default transformers.TrainingArguments) built from the recipe; `overrides` win.

    Creating TrainingArguments sets up the (possibly distributed) Accelerate state, so call this before anything
    that needs it (main_process_first).
    """
    if args_class is None:
        from transformers import TrainingArguments as args_class
    kwargs = {
        **recipe_arguments(recipe),
        **precision_arguments(choose_precision(recipe.training.precision)),
        # Our features hold exactly what the collator needs (plus `length` for the sampler), nothing to prune.
        "remove_unused_columns": False,
        "label_names": LABEL_NAMES,
        **overrides,
    }
    return args_class(output_dir=output_dir, **kwargs)


def precision_of(args: Any) -> str:
    """The precision a TrainingArguments object trains in, as the manifest records it."""
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


# What evaluation-only use of the arguments turns off: Trainer checks these against datasets it will not be given.
PREDICT_ONLY: dict[str, Any] = {
    "eval_strategy": "no",
    "save_strategy": "no",
    "eval_on_start": False,
    "load_best_model_at_end": False,
    "report_to": NO_REPORTING,
    # transformers 5 also length-groups evaluation batches under group_by_length, which needs a `length` column
    # (image features have none); predictions are read in dataset order, as hft evaluate always did.
    "train_sampling_strategy": "random",
}


def prediction_arguments(recipe: Recipe, output_dir: str, **overrides: Any) -> Any:
    """The run's own arguments (precision, batching, workers ...) for Trainer.predict: no evaluation schedule,
    no saving, no reporting."""
    return training_arguments(recipe, output_dir, **{**PREDICT_ONLY, **overrides})
