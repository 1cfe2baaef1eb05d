"""What `training.objective` changes around the trainer, without importing TRL for SFT runs.

The arguments class and settings of a preference objective (TRL's DPOConfig / ORPOConfig, imported only then) for
the one recipe -> arguments mapping in args.py, the lines `hft validate` prints about it, and dropping TRL's frozen
adapter copy once it is not needed. The TRL trainers themselves are in preference.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hftoolkit.recipe.schema import Recipe

REFERENCE_ADAPTER = "ref"  # the name TRL gives its frozen copy of a PeftModel's adapter
TRAINER_NAMES = {"dpo": "TRL DPOTrainer", "orpo": "TRL ORPOTrainer (trl.experimental)"}


def objective_arguments(recipe: Recipe) -> dict[str, Any]:
    """`training_arguments` overrides for the recipe's objective: {} for SFT; TRL's config class and settings else."""
    t = recipe.training
    if t.objective == "sft":
        return {}
    if t.objective == "dpo":
        from trl import DPOConfig

        # TRL 1.16 supports only keep_start: the prompt is kept whole and the completions are cut at max_length.
        settings = {"args_class": DPOConfig, "loss_type": [t.loss_type], "truncation_mode": "keep_start"}
    else:
        from trl.experimental.orpo import ORPOConfig

        settings = {"args_class": ORPOConfig}
    return {**settings, "beta": t.beta, "max_length": recipe.dataset.max_length, "dataset_num_proc": recipe.dataset.num_proc}


def full_reference_copy(recipe: Recipe) -> bool:
    """DPO without LoRA keeps a frozen copy of the model as its reference (LoRA disables the adapter instead)."""
    return recipe.training.objective == "dpo" and not recipe.lora.enabled


def plan_lines(recipe: Recipe) -> list[str]:
    """`hft validate`: the objective, its metrics and (DPO) where the reference model comes from."""
    t = recipe.training
    if t.objective == "sft":
        return []
    detail = f"beta {t.beta:g}" + (f", loss {t.loss_type}" if t.loss_type else "")
    lines = [
        f"objective: {t.objective} through {TRAINER_NAMES[t.objective]} ({detail}; TRL disables dropout)",
        "metrics: TRL's rewards/accuracies, rewards/margins, logps/chosen, logps/rejected (and the rest it logs)",
    ]
    if t.objective == "dpo":
        reference = (
            "a frozen copy of the model, passed as ref_model (in the memory plan)" if full_reference_copy(recipe)
            else "the base with the adapter disabled (no second copy)"
        )
        lines.append(f"reference model: {reference}")
    return lines


def drop_reference_adapter(trainer: Any) -> None:
    """Remove TRL's frozen adapter copy, if there is one: the reference becomes the base with the adapter disabled."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(REFERENCE_ADAPTER)
