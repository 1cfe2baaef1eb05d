"""Preference tuning through TRL (`training.objective: dpo | orpo`) on hft's trainer layer and run contract.

- DPO is TRL's `DPOTrainer`, ORPO TRL's `ORPOTrainer` (in TRL 1.16 under `trl.experimental`, which may move between
  releases: the `preference` extra pins the tested range). hft mixes in only its resume behaviour (ResumableMixin);
  the losses, tokenization, collators and logged metrics (`rewards/accuracies`, `rewards/margins`, `logps/chosen`,
  `logps/rejected` ...) are TRL's. The arguments are hft's one recipe mapping (args.py) with TRL's config class.
- Reference model (DPO): with LoRA, the base with the adapter disabled, so there is no second copy in memory. TRL,
  given a PeftModel, copies its adapter into a frozen "ref" adapter; for an adapter that starts as a no-op that copy
  equals the disabled adapter, so it is dropped at once. PiSSA / OLoRA inits rewrite the base, where only TRL's copy
  gives the original model: it is kept until the final evaluation (objectives.drop_reference_adapter). With full
  fine-tuning the reference is a frozen copy passed explicitly as `ref_model` (TRL would rebuild it from a config
  path, which fails for GGUF and `package:` starts).
- `hft evaluate` builds the same trainer on the reloaded model and reports TRL's evaluation metrics.

Imports TRL, transformers and torch at the top: load this module only inside commands, for preference objectives.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from trl import DPOTrainer
from trl.experimental.orpo import ORPOTrainer

from hftoolkit.recipe_tuning import BASE_REWRITING_INITS
from hftoolkit.training.objectives import drop_reference_adapter, full_reference_copy, objective_arguments
from hftoolkit.training.trainer import ResumableMixin

if TYPE_CHECKING:
    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.tasks.base import Task

# TRL's logged metrics that eval_results.json and the model card keep (its others are diagnostics: entropy, logits,
# token counts). ORPO adds its odds-ratio terms.
PREFERENCE_METRICS = (
    "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected",
    "nll_loss", "log_odds_ratio", "log_odds_chosen",
)


class HftDPOTrainer(ResumableMixin, DPOTrainer):
    """TRL's DPOTrainer with hft's resume behaviour (epoch-seeded length grouping, RNG-neutral evaluation, loss sum)."""


class HftORPOTrainer(ResumableMixin, ORPOTrainer):
    """TRL's ORPOTrainer with hft's resume behaviour."""


TRAINERS = {"dpo": HftDPOTrainer, "orpo": HftORPOTrainer}


def build_trainer(
    recipe: Recipe, model: Any, args: Any, features: dict[str, Any], processor: Any, callbacks: list, *,
    ref_model: Any = None, eval_only: bool = False,
) -> Any:
    """TRL's trainer of the recipe's objective with hft's resume behaviour; the reference chosen as described above."""
    objective = recipe.training.objective
    kwargs: dict[str, Any] = dict(
        model=model, args=args, train_dataset=features["train"], eval_dataset=features.get("validation"),
        processing_class=processor, callbacks=callbacks,
    )
    if objective == "dpo":
        if ref_model is None and full_reference_copy(recipe):
            ref_model = copy.deepcopy(model).eval().requires_grad_(False)  # the model as it starts
        kwargs["ref_model"] = ref_model
    trainer = TRAINERS[objective](**kwargs)
    if eval_only or recipe.lora.init not in BASE_REWRITING_INITS:
        drop_reference_adapter(trainer)
    return trainer


def scores(metrics: dict[str, float]) -> dict[str, float]:
    """TRL's evaluation metrics as eval_results.json keeps them: the loss and the preference metrics, unprefixed."""
    kept = {"loss": metrics["eval_loss"]} if "eval_loss" in metrics else {}
    kept.update({name: float(metrics[f"eval_{name}"]) for name in PREFERENCE_METRICS if f"eval_{name}" in metrics})
    return kept


def evaluate_split(recipe: Recipe, task: Task, model: Any, processor: Any, features: Any, batch_size: int) -> tuple[dict, bool]:
    """`hft evaluate` on a preference run: the reloaded model scored by TRL's trainer with the run's settings (a full
    fine-tune's DPO reference is the base, loaded again); the scores and whether this is the main process."""
    import tempfile

    from hftoolkit.modeling import load_model
    from hftoolkit.training.args import prediction_arguments

    reference = None
    if full_reference_copy(recipe):
        reference = load_model(task, recipe, None).eval().requires_grad_(False)
    with tempfile.TemporaryDirectory(prefix="hft-eval-") as tmp:
        args = prediction_arguments(recipe, tmp, per_device_eval_batch_size=batch_size, **objective_arguments(recipe))
        # TRL needs a training set to build a trainer, and ORPO tokenizes only the datasets it is built with: the scored
        # split is both (datasets caches its tokenization under one fingerprint, so it is tokenized once).
        split = {"train": features, "validation": features}
        trainer = build_trainer(recipe, model, args, split, processor, [], ref_model=reference, eval_only=True)
        return scores(trainer.evaluate()), trainer.is_world_process_zero()
