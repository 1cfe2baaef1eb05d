"""Preference tuning through TRL (`training.objective: dpo | orpo`) on hft's trainer layer and run contract.

- DPO is TRL's `DPOTrainer`, ORPO TRL's `ORPOTrainer` (in TRL 1.16 under `trl.experimental`, which may move between
  releases: pyproject pins the tested range). hft adds only its resume behaviour, mixed in (HftDPOTrainer,
  HftORPOTrainer); the losses, tokenization, collators and the logged metrics (`rewards/accuracies`,
  `rewards/margins`, `logps/chosen`, `logps/rejected` ...) are TRL's.
- Reference model (DPO): with LoRA the base with the adapter disabled, so there is no second copy in memory. TRL
  given a PeftModel copies its adapter into a frozen "ref" adapter; for an adapter that starts as a no-op that copy
  equals the disabled adapter, so it is dropped. PiSSA / OLoRA inits rewrite the base, where only TRL's copy gives the
  original model: it is kept, and dropped after the final evaluation, before saving. With full fine-tuning the
  reference is a frozen copy passed explicitly as `ref_model` (TRL would rebuild it from a config path, which fails
  for GGUF and `package:` starts); `hft validate` says so and counts it in the memory plan.
- Evaluation (`hft evaluate`) builds the same trainer on the trained model and reports TRL's eval metrics.

Imports TRL, transformers and torch: load this module only inside commands.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

from trl import DPOConfig, DPOTrainer
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from hftoolkit.recipe_tuning import BASE_REWRITING_INITS
from hftoolkit.resumable import ResumableTrainer

if TYPE_CHECKING:
    from hftoolkit.recipe import Recipe

log = logging.getLogger("hftoolkit")

REFERENCE_ADAPTER = "ref"  # the name TRL gives its copy of a PeftModel's adapter
# TRL's logged metrics that eval_results.json and the model card keep (its others are diagnostics: entropy, logits,
# token counts). ORPO adds its odds-ratio terms.
PREFERENCE_METRICS = (
    "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected",
    "nll_loss", "log_odds_ratio", "log_odds_chosen",
)


class HftDPOTrainer(ResumableTrainer, DPOTrainer):
    """TRL's DPOTrainer with hft's resume behaviour (epoch-seeded length grouping, RNG-neutral evaluation, loss sum)."""


class HftORPOTrainer(ResumableTrainer, ORPOTrainer):
    """TRL's ORPOTrainer with hft's resume behaviour."""


TRAINERS = {"dpo": HftDPOTrainer, "orpo": HftORPOTrainer}
CONFIGS = {"dpo": DPOConfig, "orpo": ORPOConfig}


def config_for(recipe: Recipe) -> tuple[type, dict[str, Any]]:
    """The TRL config class of the recipe's objective and its objective settings (the rest is the usual mapping)."""
    t = recipe.training
    settings: dict[str, Any] = {
        "beta": t.beta,
        "max_length": recipe.dataset.max_length,
        "dataset_num_proc": recipe.dataset.num_proc,
    }
    if t.objective == "dpo":
        settings.update(loss_type=[t.loss_type], truncation_mode="keep_start")
    return CONFIGS[t.objective], settings


def full_reference(model: Any, recipe: Recipe) -> Any | None:
    """DPO with full fine-tuning: a frozen copy of the model as it starts, passed to TRL as `ref_model`."""
    if recipe.training.objective != "dpo" or recipe.lora.enabled:
        return None
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def build_trainer(
    recipe: Recipe, model: Any, args: Any, features: dict[str, Any], processor: Any, callbacks: list,
    ref_model: Any = None, eval_only: bool = False,
) -> Any:
    """TRL's trainer of the recipe's objective with hft's resume behaviour; the reference chosen as described above."""
    objective = recipe.training.objective
    kwargs: dict[str, Any] = dict(
        model=model, args=args, train_dataset=features["train"], eval_dataset=features.get("validation"),
        processing_class=processor, callbacks=callbacks,
    )
    if objective == "dpo":
        kwargs["ref_model"] = ref_model
    trainer = TRAINERS[objective](**kwargs)
    keep_copy = recipe.lora.init in BASE_REWRITING_INITS and not eval_only
    if not keep_copy:
        drop_reference_adapter(trainer)
    return trainer


def drop_reference_adapter(trainer: Any) -> None:
    """Remove TRL's frozen adapter copy: the reference becomes the base with the adapter disabled."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(REFERENCE_ADAPTER)


def scores(metrics: dict[str, float]) -> dict[str, float]:
    """TRL's evaluation metrics as eval_results.json keeps them: the loss and the preference metrics, unprefixed."""
    kept = {"loss": metrics["eval_loss"]} if "eval_loss" in metrics else {}
    kept.update({name: float(metrics[f"eval_{name}"]) for name in PREFERENCE_METRICS if f"eval_{name}" in metrics})
    return kept


def evaluate_split(recipe: Recipe, model: Any, processor: Any, features: Any, args: Any, ref_model: Any = None) -> dict:
    """Score one split of preference pairs with TRL's trainer (as the end-of-training validation does)."""
    # TRL needs a training set to build a trainer, and ORPO tokenizes only the datasets it is built with: the scored
    # split is both (datasets caches its tokenization under one fingerprint, so it is tokenized once).
    split = {"train": features, "validation": features}
    trainer = build_trainer(recipe, model, args, split, processor, [], ref_model=ref_model, eval_only=True)
    return scores(trainer.evaluate())


def evaluate_run_split(recipe: Recipe, task: Any, model: Any, processor: Any, features: Any, batch_size: int | None) -> dict:
    """`hft evaluate` on a preference run: the loaded model scored by TRL's trainer with the run's settings (the DPO
    reference of a full fine-tune is the base, loaded again)."""
    import tempfile

    import torch

    from hftoolkit.modeling import load_model
    from hftoolkit.pipeline import choose_precision

    config_class, settings = config_for(recipe)
    precision = choose_precision(recipe.training.precision)
    reference = None
    if recipe.training.objective == "dpo" and not recipe.lora.enabled:
        reference = load_model(task, recipe, None, processor=processor).eval().requires_grad_(False)
    with tempfile.TemporaryDirectory(prefix="hft-eval-") as tmp:
        args = config_class(
            **settings, output_dir=tmp, report_to="none", remove_unused_columns=False, gradient_checkpointing=False,
            per_device_eval_batch_size=batch_size or recipe.training.eval_batch_size or 2 * recipe.training.batch_size,
            bf16=precision == "bf16", fp16=precision == "fp16",
            use_cpu=precision == "bf16" and not torch.cuda.is_available(), dataloader_pin_memory=torch.cuda.is_available(),
            seed=recipe.training.seed,
        )
        return evaluate_split(recipe, model, processor, features, args, ref_model=reference)
